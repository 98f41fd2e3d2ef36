/* test_sock.c: the ZeroMQ helpers' guard against TCP self-connections. On Linux a client
 * that dials a free port of the ephemeral range can be given that very port as its own
 * and connect to itself; the tests make such connections on purpose (a socket bound to a
 * port and connected to it; ZeroMQ's "source;destination" endpoint) and check that they
 * are recognised, that a looped-back message is never taken for a reply, and that real
 * peers still are. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/sock.h"

/* A TCP socket bound to 127.0.0.1 on a port the kernel picked; the port in *port. */
static int bound_socket(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t l = sizeof a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static struct sockaddr_in loopback_port(int port) {
  return (struct sockaddr_in){.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
}

/* A socket connected to itself, as the kernel may make one by chance. */
static int self_connected_socket(int *port) {
  int fd = bound_socket(port);
  struct sockaddr_in to = loopback_port(*port);
  assert_int_equal(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
  return fd;
}

static void test_self_connected_fd_is_recognised(void **state) {
  (void)state;
  int port;
  int fd = self_connected_socket(&port);
  char addr[64], want[64];
  assert_true(sock_fd_self_connected(fd, addr, sizeof addr));
  snprintf(want, sizeof want, "127.0.0.1:%d", port);
  assert_string_equal(addr, want);
  close(fd);

  /* A connection between two sockets is not. */
  int lfd = bound_socket(&port);
  assert_int_equal(listen(lfd, 1), 0);
  int cfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in to = loopback_port(port);
  assert_int_equal(connect(cfd, (struct sockaddr *)&to, sizeof to), 0);
  int afd = accept(lfd, NULL, NULL);
  assert_true(afd >= 0);
  assert_false(sock_fd_self_connected(cfd, NULL, 0));
  assert_false(sock_fd_self_connected(afd, NULL, 0));
  assert_false(sock_fd_self_connected(lfd, NULL, 0)); /* not connected at all */
  assert_false(sock_fd_self_connected(-1, NULL, 0));
  close(afd);
  close(cfd);
  close(lfd);
}

/* An ended self-connection leaves its port free at once (no TIME_WAIT): a listener without
 * SO_REUSEADDR binds it right after the owner closes the fd. */
static void test_ended_self_connection_frees_the_port(void **state) {
  (void)state;
  int port;
  int fd = self_connected_socket(&port);
  assert_int_equal(send(fd, "x", 1, 0), 1);
  char c;
  assert_int_equal(recv(fd, &c, 1, 0), 1); /* its own byte */
  sock_fd_end_self_connection(fd);
  assert_int_equal(recv(fd, &c, 1, 0), 0); /* the owner sees the end of the stream */
  close(fd);
  struct sockaddr_in to = loopback_port(port);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(l >= 0);
  assert_int_equal(bind(l, (struct sockaddr *)&to, sizeof to), 0);
  assert_int_equal(listen(l, 1), 0);
  close(l);
}

static void test_looped_back_message_is_not_a_reply(void **state) {
  (void)state;
  int port;
  close(bound_socket(&port)); /* a port nothing listens on */
  sock_ctx_t *ctx = sock_ctx_new();
  sock_t *s = sock_new(ctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL);
  assert_non_null(s);
  char ep[128];
  /* Dial from the port to itself: what the kernel may do by chance, made certain. */
  snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d;127.0.0.1:%d", port, port);
  assert_int_equal(sock_connect(s, ep), DRV_OK);
  proto_msg_t req, m;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.limit = 1;
  assert_int_equal(sock_send(s, NULL, &req), DRV_OK);
  drv_result_t rc = sock_recv(s, NULL, &m, 5000);
  proto_msg_fini(&m);
  assert_int_equal(rc, DRV_ERR_ZMQ);
  assert_non_null(strstr(drv_last_error(), "reached this socket itself"));
  sock_destroy(&s);
  sock_ctx_destroy(&ctx);
}

static void test_real_peer_still_answers(void **state) {
  (void)state;
  sock_ctx_t *ctx = sock_ctx_new();
  sock_t *srv = sock_new(ctx, SOCK_ROUTER, PROTO_AT_API, NULL);
  sock_t *cli = sock_new(ctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL);
  assert_non_null(srv);
  assert_non_null(cli);
  assert_int_equal(sock_bind(srv, "tcp://127.0.0.1:*"), DRV_OK);
  char ep[128];
  assert_int_equal(sock_bound_endpoint(srv, ep, sizeof ep), DRV_OK);
  assert_int_equal(sock_connect(cli, ep), DRV_OK);

  proto_msg_t req, got, rep;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.limit = 3;
  assert_int_equal(sock_send(cli, NULL, &req), DRV_OK);
  sock_peer_t from;
  assert_int_equal(sock_recv(srv, &from, &got, 5000), DRV_OK);
  assert_int_equal(got.type, PROTO_STATUS);
  assert_int_equal(got.u.status.limit, 3);
  proto_msg_fini(&got);
  proto_msg_t ok;
  proto_msg_init(&ok, PROTO_OK);
  assert_int_equal(sock_send(srv, &from, &ok), DRV_OK);
  assert_int_equal(sock_recv(cli, NULL, &rep, 5000), DRV_OK);
  assert_int_equal(rep.type, PROTO_OK);
  proto_msg_fini(&rep);
  sock_destroy(&cli);
  sock_destroy(&srv);
  sock_ctx_destroy(&ctx);
}

/* A socket refuses a message that may not arrive at it, names why, and keeps the sender's
 * identity so a ROUTER can answer; the next good message goes through. */
static void test_message_for_another_socket_is_refused(void **state) {
  (void)state;
  sock_ctx_t *ctx = sock_ctx_new();
  sock_t *srv = sock_new(ctx, SOCK_ROUTER, PROTO_AT_API, NULL);
  sock_t *cli = sock_new(ctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL);
  assert_int_equal(sock_bind(srv, "tcp://127.0.0.1:*"), DRV_OK);
  char ep[128];
  assert_int_equal(sock_bound_endpoint(srv, ep, sizeof ep), DRV_OK);
  assert_int_equal(sock_connect(cli, ep), DRV_OK);
  proto_msg_t ok, st, got;
  proto_msg_init(&ok, PROTO_OK); /* a reply, not a request */
  proto_msg_init(&st, PROTO_STATUS);
  assert_int_equal(sock_send(cli, NULL, &ok), DRV_OK);
  assert_int_equal(sock_send(cli, NULL, &st), DRV_OK);
  sock_peer_t from;
  assert_int_equal(sock_recv(srv, &from, &got, 5000), DRV_ERR_PROTO);
  assert_non_null(strstr(drv_last_error(), "'ok' is not a request clients may send"));
  assert_true(from.len > 0);
  proto_msg_fini(&got);
  assert_int_equal(sock_recv(srv, &from, &got, 5000), DRV_OK);
  assert_int_equal(got.type, PROTO_STATUS);
  proto_msg_fini(&got);
  sock_destroy(&cli);
  sock_destroy(&srv);
  sock_ctx_destroy(&ctx);
}

static void test_ephemeral_port_check(void **state) {
  (void)state;
  int lo = 0, hi = 0;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (!f) skip();
  assert_int_equal(fscanf(f, "%d %d", &lo, &hi), 2);
  fclose(f);
  char ep[64];
  int l2, h2;
  snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", lo);
  assert_true(sock_ports_ephemeral(ep, &l2, &h2));
  assert_int_equal(l2, lo);
  assert_int_equal(h2, hi);
  snprintf(ep, sizeof ep, "tcp://*:%d", lo - 2); /* its events port is the first of the range */
  assert_true(sock_ports_ephemeral(ep, &l2, &h2));
  if (lo > 4) {
    snprintf(ep, sizeof ep, "tcp://*:%d", lo - 3);
    assert_false(sock_ports_ephemeral(ep, &l2, &h2));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_self_connected_fd_is_recognised),
      cmocka_unit_test(test_ended_self_connection_frees_the_port),
      cmocka_unit_test(test_looped_back_message_is_not_a_reply),
      cmocka_unit_test(test_real_peer_still_answers),
      cmocka_unit_test(test_message_for_another_socket_is_refused),
      cmocka_unit_test(test_ephemeral_port_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
