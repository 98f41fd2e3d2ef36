/* sock.c: see sock.h. */
#include "common/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "common/settings.h"

static int set_int(void *s, int opt, int v) {
  return zmq_setsockopt(s, opt, &v, sizeof v);
}

void *sock_new(void *ctx, int type) {
  void *s = zmq_socket(ctx, type);
  if (!s) {
    drv_error(DRV_ERR_ZMQ, "zmq_socket: %s", zmq_strerror(errno));
    return NULL;
  }
  int64_t maxmsg = drv_setting(DRV_SET_MAX_MSG_BYTES);
  int hwm = (int)drv_setting(DRV_SET_HWM);
  int hb = (int)drv_setting(DRV_SET_HEARTBEAT_MS);
  int timeout = (int)drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) || set_int(s, ZMQ_SNDHWM, hwm) ||
      set_int(s, ZMQ_RCVHWM, hwm) || set_int(s, ZMQ_LINGER, 200) ||
      set_int(s, ZMQ_HEARTBEAT_IVL, hb) || set_int(s, ZMQ_HEARTBEAT_TIMEOUT, timeout) ||
      set_int(s, ZMQ_HEARTBEAT_TTL, timeout) ||
      (type == ZMQ_ROUTER && set_int(s, ZMQ_ROUTER_MANDATORY, 1))) {
    drv_error(DRV_ERR_ZMQ, "zmq_setsockopt: %s", zmq_strerror(errno));
    zmq_close(s);
    return NULL;
  }
  return s;
}

/* The base port of coordinator endpoint "tcp://HOST:PORT" (its colon in *colon). */
static drv_result_t base_port(const char *base, const char **colon, long *port) {
  *colon = strrchr(base, ':');
  if (strncmp(base, "tcp://", 6) != 0 || !*colon || *colon < base + 6)
    return drv_error(DRV_ERR_INVALID, "%s: expected an endpoint like tcp://HOST:PORT", base);
  char *end;
  *port = strtol(*colon + 1, &end, 10);
  if (*end || *port <= 0 || *port + 2 > 65535)
    return drv_error(DRV_ERR_INVALID, "%s: bad port '%s'", base, *colon + 1);
  return DRV_OK;
}

drv_result_t sock_endpoint(const char *base, sock_port_t port, char *out, size_t outsz) {
  const char *colon;
  long p;
  DRV_CHECK(base_port(base, &colon, &p));
  int n = snprintf(out, outsz, "%.*s:%ld", (int)(colon - base), base, p + (long)port);
  if (n < 0 || (size_t)n >= outsz) return drv_error(DRV_ERR_INVALID, "%s: endpoint too long", base);
  return DRV_OK;
}

int sock_ports_ephemeral(const char *base, int *lo, int *hi) {
  const char *colon;
  long p;
  if (base_port(base, &colon, &p) != DRV_OK) return 0;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (!f) return 0;
  int n = fscanf(f, "%d %d", lo, hi);
  fclose(f);
  return n == 2 && p + 2 >= *lo && p <= *hi;
}

drv_result_t sock_send(void *s, const void *identity, size_t idlen, const proto_msg_t *m,
                       int dontwait) {
  char *buf;
  size_t len;
  DRV_CHECK(proto_pack(m, &buf, &len));
  int flags = dontwait ? ZMQ_DONTWAIT : 0;
  drv_result_t rc = DRV_OK;
  if (identity && zmq_send(s, identity, idlen, flags | ZMQ_SNDMORE) < 0) {
    rc = drv_error(DRV_ERR_ZMQ, "send %s: %s", proto_type_name(m->type), zmq_strerror(errno));
    goto out;
  }
  if (zmq_send(s, buf, len, flags) < 0)
    rc = drv_error(DRV_ERR_ZMQ, "send %s: %s", proto_type_name(m->type), zmq_strerror(errno));
out:
  free(buf);
  return rc;
}

drv_result_t sock_publish(void *pub, const char *topic, const proto_msg_t *m) {
  char *buf;
  size_t len;
  DRV_CHECK(proto_pack(m, &buf, &len));
  drv_result_t rc = DRV_OK;
  if (zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
      zmq_send(pub, buf, len, ZMQ_DONTWAIT) < 0)
    rc = drv_error(DRV_ERR_ZMQ, "publish %s: %s", topic, zmq_strerror(errno));
  free(buf);
  return rc;
}

/* Drops whatever frames remain of a multipart message. */
static void drain(void *s) {
  int more;
  size_t sz = sizeof more;
  while (zmq_getsockopt(s, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
    zmq_msg_t f;
    zmq_msg_init(&f);
    zmq_msg_recv(&f, s, 0);
    zmq_msg_close(&f);
    sz = sizeof more;
  }
}

int sock_fd_self_connected(int fd, char *addr, size_t addrsz) {
  struct sockaddr_storage me, peer;
  socklen_t lme = sizeof me, lpeer = sizeof peer;
  if (fd < 0 || getsockname(fd, (struct sockaddr *)&me, &lme) < 0 ||
      getpeername(fd, (struct sockaddr *)&peer, &lpeer) < 0 || lme != lpeer)
    return 0;
  int port;
  char host[INET6_ADDRSTRLEN] = "?";
  if (me.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const void *)&me, *b = (const void *)&peer;
    if (a->sin_port != b->sin_port || a->sin_addr.s_addr != b->sin_addr.s_addr) return 0;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (me.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const void *)&me, *b = (const void *)&peer;
    if (a->sin6_port != b->sin6_port || memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr))
      return 0;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
  } else {
    return 0;
  }
  if (addr) snprintf(addr, addrsz, "%s:%d", host, port);
  return 1;
}

void sock_fd_end_self_connection(int fd) {
  /* Reset, not a FIN: a closed self-connection would sit in TIME_WAIT on the port for a
   * minute, and the listener that should have it (SO_REUSEADDR or not) could not bind,
   * since this end was bound without SO_REUSEADDR. Reading shut makes the owner see EOF
   * and close the fd, which then sends the reset; no write of the owner fails meanwhile. */
  struct linger hard = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
  shutdown(fd, SHUT_RD);
}

drv_result_t sock_recv(void *s, int is_router, unsigned char *identity, size_t *idlen,
                       proto_msg_t *m, int timeout_ms) {
  proto_msg_init(m, PROTO_TYPE_COUNT);
  if (timeout_ms >= 0) {
    zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
    int n = zmq_poll(&it, 1, timeout_ms);
    if (n < 0 && errno == EINTR) return drv_error(DRV_ERR_TIMEOUT, "interrupted");
    if (n < 0) return drv_error(DRV_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
    if (n == 0) return drv_error(DRV_ERR_TIMEOUT, "no message within %d ms", timeout_ms);
  }
  zmq_msg_t f;
  if (is_router) {
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, s, 0) < 0) {
      zmq_msg_close(&f);
      return drv_error(DRV_ERR_ZMQ, "recv: %s", zmq_strerror(errno));
    }
    size_t n = zmq_msg_size(&f);
    if (n > 256) n = 256;
    memcpy(identity, zmq_msg_data(&f), n);
    *idlen = n;
    int more = zmq_msg_more(&f);
    zmq_msg_close(&f);
    if (!more) return drv_error(DRV_ERR_PROTO, "identity frame without a message");
  }
  zmq_msg_init(&f);
  if (zmq_msg_recv(&f, s, 0) < 0) {
    zmq_msg_close(&f);
    return drv_error(DRV_ERR_ZMQ, "recv: %s", zmq_strerror(errno));
  }
  int more = zmq_msg_more(&f);
  drv_result_t rc;
  char self[INET6_ADDRSTRLEN + 8];
  /* ZMQ_SRCFD is deprecated in libzmq but still the one way to reach the connection a
   * message came over; -1 for transports without one. */
  int fd = is_router ? -1 : zmq_msg_get(&f, ZMQ_SRCFD);
  if (sock_fd_self_connected(fd, self, sizeof self)) {
    /* A connecting socket's own message: nothing listened on that port and the kernel
     * picked the same port for this end, so the connection reached itself. End it (ZeroMQ
     * reconnects) so the port is free for whoever should listen there. */
    sock_fd_end_self_connection(fd);
    rc = drv_error(DRV_ERR_ZMQ,
                   "the connection to %s reached this socket itself (nothing listened there "
                   "and the port lies in the ephemeral range): dropped it",
                   self);
    if (more) drain(s);
  } else if (more) {
    rc = drv_error(DRV_ERR_PROTO, "unexpected multipart message");
    drain(s);
  } else {
    rc = proto_unpack(zmq_msg_data(&f), zmq_msg_size(&f),
                      (size_t)drv_setting(DRV_SET_MAX_MSG_BYTES), m);
  }
  zmq_msg_close(&f);
  return rc;
}

drv_result_t sock_request(void *ctx, const char *base, const proto_msg_t *req, proto_msg_t *reply,
                          int timeout_ms) {
  char ep[256];
  proto_msg_init(reply, PROTO_TYPE_COUNT);
  DRV_CHECK(sock_endpoint(base, SOCK_CLIENTS, ep, sizeof ep));
  void *s = sock_new(ctx, ZMQ_DEALER);
  if (!s) return DRV_ERR_ZMQ;
  set_int(s, ZMQ_LINGER, 0);
  drv_result_t rc = DRV_OK;
  if (zmq_connect(s, ep) < 0) {
    rc = drv_error(DRV_ERR_ZMQ, "connect %s: %s", ep, zmq_strerror(errno));
    goto out;
  }
  DRV_CHECK_GOTO(sock_send(s, NULL, 0, req, 0), rc, out);
  rc = sock_recv(s, 0, NULL, NULL, reply, timeout_ms);
  if (rc == DRV_ERR_TIMEOUT) {
    rc = drv_error(DRV_ERR_TIMEOUT, "no coordinator answered at %s within %d ms", ep, timeout_ms);
  } else if (rc == DRV_OK && reply->type == PROTO_ERROR) {
    rc = drv_error(DRV_ERR_INVALID, "%s", reply->u.error.message ? reply->u.error.message : "");
  }
out:
  zmq_close(s);
  return rc;
}
