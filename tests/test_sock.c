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
  sock_ctx_plaintext(ctx);
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
  sock_ctx_plaintext(ctx);
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
  sock_ctx_plaintext(ctx);
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

/* A context given neither keys nor leave to be plaintext refuses tcp://, naming why. */
static void test_no_keys_no_connection(void **state) {
  (void)state;
  sock_ctx_t *ctx = sock_ctx_new();
  sock_t *s = sock_new(ctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL);
  assert_int_equal(sock_connect(s, "tcp://127.0.0.1:7"), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "no CurveZMQ keys"));
  sock_destroy(&s);
  sock_ctx_destroy(&ctx);
}

typedef struct {
  unsigned char allowed[SOCK_KEY_BYTES];
  int asked;
} zap_fixture_t;

static int allow_one(void *arg, const char *domain, const char *address,
                     const unsigned char key[SOCK_KEY_BYTES], char *user, size_t n) {
  zap_fixture_t *z = arg;
  z->asked++;
  assert_string_equal(domain, "clients");
  assert_non_null(strstr(address, "127.0.0.1"));
  if (memcmp(key, z->allowed, SOCK_KEY_BYTES)) return 0;
  snprintf(user, n, "user:alice");
  return 1;
}

/* Serves srv's ZAP handler and waits for one message on srv, up to ms. */
static drv_result_t serve_and_recv(sock_t *zap, sock_t *srv, zap_fixture_t *z, sock_peer_t *from,
                                   proto_msg_t *m, int ms) {
  proto_msg_init(m, PROTO_TYPE_COUNT);
  for (int64_t end = drv_now_ms() + ms; drv_now_ms() < end;) {
    sock_t *socks[2] = {zap, srv};
    int ready[2];
    if (sock_poll(socks, 2, 50, ready) != DRV_OK) continue;
    if (ready[0]) sock_zap_answer(zap, allow_one, z);
    if (ready[1]) return sock_recv(srv, from, m, 0);
  }
  return DRV_ERR_TIMEOUT;
}

/* CurveZMQ with the ZAP handler: the admitted key's message arrives named as the handler
 * said; an unknown key, and a client pinning another server key, get nothing through. */
static void test_curve_admits_only_known_keys(void **state) {
  (void)state;
  sock_keys_t server = {0}, good = {0}, bad = {0}, wrong_pin = {0};
  sock_keypair(server.pub, server.sec);
  sock_keypair(good.pub, good.sec);
  sock_keypair(bad.pub, bad.sec);
  memcpy(good.server, server.pub, SOCK_KEY_BYTES);
  memcpy(bad.server, server.pub, SOCK_KEY_BYTES);
  wrong_pin = good;
  sock_keypair(wrong_pin.server, bad.sec); /* some other server's public key */
  sock_keypair(bad.pub, bad.sec);
  zap_fixture_t z = {0};
  memcpy(z.allowed, good.pub, SOCK_KEY_BYTES);

  sock_ctx_t *sctx = sock_ctx_new(), *gctx = sock_ctx_new(), *bctx = sock_ctx_new(),
             *wctx = sock_ctx_new();
  sock_ctx_secure(sctx, &server);
  sock_ctx_secure(gctx, &good);
  sock_ctx_secure(bctx, &bad);
  sock_ctx_secure(wctx, &wrong_pin);
  assert_null(sock_new(sctx, SOCK_ROUTER, PROTO_AT_API, NULL)); /* no ZAP handler yet */
  sock_t *zap = sock_zap_new(sctx);
  assert_non_null(zap);
  sock_t *srv = sock_new(sctx, SOCK_ROUTER, PROTO_AT_API, NULL);
  assert_int_equal(sock_bind(srv, "tcp://127.0.0.1:*"), DRV_OK);
  char ep[128];
  assert_int_equal(sock_bound_endpoint(srv, ep, sizeof ep), DRV_OK);
  sock_t *g = sock_new(gctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL),
         *b = sock_new(bctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL),
         *w = sock_new(wctx, SOCK_DEALER, PROTO_AT_CLIENT, NULL);
  proto_msg_t st, got;
  proto_msg_init(&st, PROTO_STATUS);
  st.u.status.limit = 7;
  sock_peer_t from;

  assert_int_equal(sock_connect(b, ep), DRV_OK);
  assert_int_equal(sock_connect(w, ep), DRV_OK);
  assert_int_equal(sock_send(b, NULL, &st), DRV_OK);
  assert_int_equal(sock_send(w, NULL, &st), DRV_OK);
  assert_int_equal(serve_and_recv(zap, srv, &z, &from, &got, 1500), DRV_ERR_TIMEOUT);
  proto_msg_fini(&got);
  assert_int_equal(z.asked >= 1, 1); /* the unknown key was asked about and refused */

  assert_int_equal(sock_connect(g, ep), DRV_OK);
  assert_int_equal(sock_send(g, NULL, &st), DRV_OK);
  assert_int_equal(serve_and_recv(zap, srv, &z, &from, &got, 5000), DRV_OK);
  assert_int_equal(got.u.status.limit, 7);
  assert_string_equal(from.user, "user:alice");
  assert_string_equal(from.addr, "127.0.0.1");
  proto_msg_fini(&got);
  /* Nothing of the refused ones came in meanwhile either. */
  assert_int_equal(serve_and_recv(zap, srv, &z, &from, &got, 300), DRV_ERR_TIMEOUT);
  proto_msg_fini(&got);

  sock_destroy(&g);
  sock_destroy(&b);
  sock_destroy(&w);
  sock_destroy(&srv);
  sock_destroy(&zap);
  sock_ctx_destroy(&gctx);
  sock_ctx_destroy(&bctx);
  sock_ctx_destroy(&wctx);
  sock_ctx_destroy(&sctx);
}

/* Z85 round trip, and what is not a key. */
static void test_z85_keys(void **state) {
  (void)state;
  unsigned char pub[SOCK_KEY_BYTES], sec[SOCK_KEY_BYTES], back[SOCK_KEY_BYTES], derived[SOCK_KEY_BYTES];
  sock_keypair(pub, sec);
  sock_public_key(sec, derived);
  assert_memory_equal(pub, derived, SOCK_KEY_BYTES);
  char z[SOCK_Z85_LEN + 1];
  sock_z85_encode(pub, z);
  assert_int_equal(strlen(z), SOCK_Z85_LEN);
  assert_int_equal(sock_z85_decode(z, back), DRV_OK);
  assert_memory_equal(pub, back, SOCK_KEY_BYTES);
  assert_int_equal(sock_z85_decode("short", back), DRV_ERR_INVALID);
  z[3] = '~'; /* not in the alphabet */
  assert_int_equal(sock_z85_decode(z, back), DRV_ERR_INVALID);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_self_connected_fd_is_recognised),
      cmocka_unit_test(test_ended_self_connection_frees_the_port),
      cmocka_unit_test(test_looped_back_message_is_not_a_reply),
      cmocka_unit_test(test_real_peer_still_answers),
      cmocka_unit_test(test_message_for_another_socket_is_refused),
      cmocka_unit_test(test_ephemeral_port_check),
      cmocka_unit_test(test_no_keys_no_connection),
      cmocka_unit_test(test_curve_admits_only_known_keys),
      cmocka_unit_test(test_z85_keys),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
