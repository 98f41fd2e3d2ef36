/* sock.c: see sock.h. */
#include "common/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <zmq.h>

#include "common/log.h"
#include "common/settings.h"

typedef enum { SOCK_MODE_UNSET = 0, SOCK_MODE_SECURE, SOCK_MODE_PLAINTEXT } sock_mode_t;

struct sock_ctx {
  void *z;
  sock_mode_t mode;
  sock_keys_t keys; /* SOCK_MODE_SECURE */
  int has_zap;      /* a ZAP handler is bound: servers may be made */
};

/* One accepted connection a monitor counts. */
typedef struct {
  int fd;
  char addr[INET6_ADDRSTRLEN];
} sock_conn_t;

/* A SOCK_MONITOR's state: the watched socket's connections, by fd. */
typedef struct {
  int per_addr, total;
  sock_conn_t *conns;
  int n, cap;
  uint64_t ended;
  int64_t last_warn_ms;
  void *watched; /* the socket whose monitor this is */
} sock_limits_t;

struct sock {
  void *z, *zctx; /* the socket, and its context (for monitors) */
  sock_ctx_t *ctx;
  sock_kind_t kind;
  proto_at_t at;
  sock_limits_t *lim; /* SOCK_MONITOR only */
};

/* The ZAP endpoint libzmq asks (RFC 27). */
#define SOCK_ZAP_ENDPOINT "inproc://zeromq.zap.01"

/* Wipes a secret from the stack (not optimised away). */
static void sodium_memzero_(void *p, size_t n) {
  volatile unsigned char *v = p;
  while (n--) *v++ = 0;
}

static int set_int(void *s, int opt, int v) {
  return zmq_setsockopt(s, opt, &v, sizeof v);
}

sock_ctx_t *sock_ctx_new(void) {
  sock_ctx_t *c = calloc(1, sizeof *c);
  if (!c || !(c->z = zmq_ctx_new())) {
    free(c);
    drv_error(DRV_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    return NULL;
  }
  /* libzmq 4.3.4 starts each ROUTER's generated routing ids (0x00 and a counter) at
   * rand(), and aborts when a generated id is one a peer announced itself: an unseeded
   * rand() lets a peer claim the ids to come. Seeded from the system's random source,
   * the counter's start is 32 unknown bits (drover's own peers announce random ids and
   * never take a generated one). */
  unsigned seed;
  if (getrandom(&seed, sizeof seed, 0) == (ssize_t)sizeof seed) srand(seed);
  return c;
}

void sock_ctx_secure(sock_ctx_t *ctx, const sock_keys_t *keys) {
  ctx->mode = SOCK_MODE_SECURE;
  ctx->keys = *keys;
}

void sock_ctx_plaintext(sock_ctx_t *ctx) {
  if (ctx->mode == SOCK_MODE_PLAINTEXT) return;
  ctx->mode = SOCK_MODE_PLAINTEXT;
  log_warn("PLAINTEXT: no CurveZMQ on this process's sockets (--insecure or DROVER_INSECURE=1): "
           "anyone who reaches its ports is believed and can read and forge every message");
}

int sock_ctx_is_secure(const sock_ctx_t *ctx) {
  return ctx->mode == SOCK_MODE_SECURE;
}

void sock_keypair(unsigned char pub[SOCK_KEY_BYTES], unsigned char sec[SOCK_KEY_BYTES]) {
  char zp[SOCK_Z85_LEN + 1], zs[SOCK_Z85_LEN + 1];
  zmq_curve_keypair(zp, zs); /* libsodium's randombytes and crypto_box_keypair */
  zmq_z85_decode(pub, zp);
  zmq_z85_decode(sec, zs);
  sodium_memzero_(zs, sizeof zs);
}

void sock_public_key(const unsigned char sec[SOCK_KEY_BYTES], unsigned char pub[SOCK_KEY_BYTES]) {
  char zs[SOCK_Z85_LEN + 1], zp[SOCK_Z85_LEN + 1];
  zmq_z85_encode(zs, sec, SOCK_KEY_BYTES);
  zmq_curve_public(zp, zs);
  zmq_z85_decode(pub, zp);
  sodium_memzero_(zs, sizeof zs);
}

void sock_z85_encode(const unsigned char key[SOCK_KEY_BYTES], char out[SOCK_Z85_LEN + 1]) {
  zmq_z85_encode(out, key, SOCK_KEY_BYTES);
}

drv_result_t sock_z85_decode(const char *z, unsigned char key[SOCK_KEY_BYTES]) {
  if (!z || strlen(z) != SOCK_Z85_LEN || !zmq_z85_decode(key, z))
    return drv_error(DRV_ERR_INVALID, "not a key: expected %d characters of Z85", SOCK_Z85_LEN);
  return DRV_OK;
}

void sock_ctx_destroy(sock_ctx_t **ctx) {
  if (!ctx || !*ctx) return;
  zmq_ctx_term((*ctx)->z);
  free(*ctx);
  *ctx = NULL;
}

/* drover's limits and the caller's options, on a new ZeroMQ socket of zmq type `type`. */
static int apply_options(void *s, int type, const sock_opts_t *o) {
  int64_t maxmsg = drv_setting(DRV_SET_MAX_MSG_BYTES);
  int hwm = (int)drv_setting(DRV_SET_HWM);
  int linger = o->no_linger ? 0 : o->linger_ms ? o->linger_ms : 200;
  /* No ZMTP heartbeats: libzmq 4.3.4 asserts (stream_engine_base.cpp:331, !_io_error) when
   * a heartbeat timeout resets a connection whose input is stopped at the high-water mark,
   * which a slow or hostile peer can bring about. drover's own heartbeats find dead peers;
   * TCP keepalive ends connections to hosts that vanished. */
  if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) || set_int(s, ZMQ_SNDHWM, hwm) ||
      set_int(s, ZMQ_RCVHWM, hwm) || set_int(s, ZMQ_LINGER, linger) ||
      set_int(s, ZMQ_TCP_KEEPALIVE, 1) || set_int(s, ZMQ_TCP_KEEPALIVE_IDLE, 30) ||
      set_int(s, ZMQ_TCP_KEEPALIVE_INTVL, 10) || set_int(s, ZMQ_TCP_KEEPALIVE_CNT, 3))
    return -1;
  if (type == ZMQ_ROUTER &&
      (set_int(s, ZMQ_ROUTER_MANDATORY, 1) || (o->handover && set_int(s, ZMQ_ROUTER_HANDOVER, 1))))
    return -1;
  if (o->identity && zmq_setsockopt(s, ZMQ_ROUTING_ID, o->identity, strlen(o->identity))) return -1;
  if (o->immediate && set_int(s, ZMQ_IMMEDIATE, 1)) return -1;
  return 0;
}

/* The ZAP domain of a server socket: which of the coordinator's ports it is. */
static const char *zap_domain(proto_at_t at) {
  return at == PROTO_AT_COORD ? "agents" : at == PROTO_AT_API ? "clients" : "events";
}

/* CurveZMQ on socket s of kind `kind` in a secure context: servers (ROUTER, PUB) with
 * the context's secret key, checked by its ZAP handler; clients pinning the server key. */
static drv_result_t apply_curve(sock_t *s) {
  const sock_keys_t *k = &s->ctx->keys;
  if (s->kind == SOCK_ROUTER || s->kind == SOCK_PUB) {
    if (!s->ctx->has_zap)
      return drv_error(DRV_ERR_INVALID, "a server socket needs the context's ZAP handler first");
    const char *domain = zap_domain(s->at);
    if (set_int(s->z, ZMQ_CURVE_SERVER, 1) ||
        zmq_setsockopt(s->z, ZMQ_CURVE_SECRETKEY, k->sec, SOCK_KEY_BYTES) ||
        zmq_setsockopt(s->z, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
        set_int(s->z, ZMQ_HANDSHAKE_IVL, (int)drv_setting(DRV_SET_HANDSHAKE_MS)))
      return drv_error(DRV_ERR_ZMQ, "CurveZMQ server options: %s", zmq_strerror(errno));
  } else if (s->kind == SOCK_DEALER || s->kind == SOCK_SUB) {
    if (zmq_setsockopt(s->z, ZMQ_CURVE_SERVERKEY, k->server, SOCK_KEY_BYTES) ||
        zmq_setsockopt(s->z, ZMQ_CURVE_PUBLICKEY, k->pub, SOCK_KEY_BYTES) ||
        zmq_setsockopt(s->z, ZMQ_CURVE_SECRETKEY, k->sec, SOCK_KEY_BYTES) ||
        set_int(s->z, ZMQ_HANDSHAKE_IVL, (int)drv_setting(DRV_SET_HANDSHAKE_MS)))
      return drv_error(DRV_ERR_ZMQ, "CurveZMQ client options: %s", zmq_strerror(errno));
  }
  return DRV_OK;
}

sock_t *sock_new(sock_ctx_t *ctx, sock_kind_t kind, proto_at_t at, const sock_opts_t *opts) {
  static const int types[] = {[SOCK_ROUTER] = ZMQ_ROUTER,
                              [SOCK_DEALER] = ZMQ_DEALER,
                              [SOCK_PUB] = ZMQ_PUB,
                              [SOCK_SUB] = ZMQ_SUB,
                              [SOCK_ZAP] = ZMQ_REP};
  static const sock_opts_t defaults = {0};
  sock_t *s = calloc(1, sizeof *s);
  if (!s) {
    drv_error(DRV_ERR_NOMEM, "sock_new: out of memory");
    return NULL;
  }
  s->kind = kind;
  s->at = at;
  s->ctx = ctx;
  s->zctx = ctx->z;
  if (!(s->z = zmq_socket(ctx->z, types[kind]))) {
    drv_error(DRV_ERR_ZMQ, "zmq_socket: %s", zmq_strerror(errno));
    free(s);
    return NULL;
  }
  if (apply_options(s->z, types[kind], opts ? opts : &defaults) < 0) {
    drv_error(DRV_ERR_ZMQ, "zmq_setsockopt: %s", zmq_strerror(errno));
    sock_destroy(&s);
  } else if (ctx->mode == SOCK_MODE_SECURE && apply_curve(s) != DRV_OK) {
    sock_destroy(&s);
  }
  return s;
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

sock_t *sock_zap_new(sock_ctx_t *ctx) {
  if (ctx->has_zap) {
    drv_error(DRV_ERR_INVALID, "this context has its ZAP handler already");
    return NULL;
  }
  sock_t *s = sock_new(ctx, SOCK_ZAP, 0, &(sock_opts_t){.no_linger = 1});
  if (s && zmq_bind(s->z, SOCK_ZAP_ENDPOINT) < 0) {
    drv_error(DRV_ERR_ZMQ, "bind %s: %s", SOCK_ZAP_ENDPOINT, zmq_strerror(errno));
    sock_destroy(&s);
  }
  if (s) ctx->has_zap = 1;
  return s;
}

sock_t *sock_limits_new(sock_t *s, int per_addr, int total) {
  char ep[64];
  snprintf(ep, sizeof ep, "inproc://sock-limits-%p", (void *)s);
  sock_t *m = calloc(1, sizeof *m);
  sock_limits_t *lim = calloc(1, sizeof *lim);
  if (!m || !lim) {
    free(m);
    free(lim);
    drv_error(DRV_ERR_NOMEM, "sock_limits_new: out of memory");
    return NULL;
  }
  *lim = (sock_limits_t){.per_addr = per_addr, .total = total, .watched = s->z};
  *m = (sock_t){.zctx = s->zctx, .ctx = s->ctx, .kind = SOCK_MONITOR, .lim = lim};
  if (zmq_socket_monitor(s->z, ep, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) < 0 ||
      !(m->z = zmq_socket(s->zctx, ZMQ_PAIR)) || zmq_connect(m->z, ep) < 0) {
    drv_error(DRV_ERR_ZMQ, "connection monitor: %s", zmq_strerror(errno));
    zmq_socket_monitor(s->z, NULL, 0);
    if (m->z) zmq_close(m->z);
    free(lim);
    free(m);
    return NULL;
  }
  set_int(m->z, ZMQ_LINGER, 0);
  return m;
}

/* A connection accepted on fd: counted, or ended when over a limit. */
static void limits_accepted(sock_limits_t *l, int fd) {
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  char addr[INET6_ADDRSTRLEN] = "?";
  if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0) {
    const void *a = peer.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&peer)->sin6_addr
                                               : (const void *)&((struct sockaddr_in *)&peer)->sin_addr;
    inet_ntop(peer.ss_family, a, addr, sizeof addr);
  }
  int from_addr = 0;
  for (int i = 0; i < l->n; i++) from_addr += !strcmp(l->conns[i].addr, addr);
  if (from_addr >= l->per_addr || l->n >= l->total) {
    l->ended++;
    shutdown(fd, SHUT_RD); /* libzmq reads the end of the stream and closes it */
    int64_t now = drv_now_ms();
    if (now - l->last_warn_ms >= 1000) {
      l->last_warn_ms = now;
      log_warn("ended a connection from %s: %d from that address and %d in all already (limits "
               "%d and %d; %llu ended so far)",
               addr, from_addr, l->n, l->per_addr, l->total, (unsigned long long)l->ended);
    }
    return;
  }
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 64;
    sock_conn_t *c = realloc(l->conns, (size_t)cap * sizeof *c);
    if (!c) return; /* uncounted: the limit is a little looser for it */
    l->conns = c;
    l->cap = cap;
  }
  l->conns[l->n].fd = fd;
  snprintf(l->conns[l->n].addr, sizeof l->conns[l->n].addr, "%s", addr);
  l->n++;
}

static void limits_disconnected(sock_limits_t *l, int fd) {
  for (int i = 0; i < l->n; i++)
    if (l->conns[i].fd == fd) {
      l->conns[i] = l->conns[--l->n];
      return;
    }
}

void sock_limits_service(sock_t *mon) {
  for (;;) {
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, mon->z, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&f);
      return;
    }
    uint16_t ev = 0;
    uint32_t value = 0;
    if (zmq_msg_size(&f) >= 6) {
      memcpy(&ev, zmq_msg_data(&f), sizeof ev);
      memcpy(&value, (char *)zmq_msg_data(&f) + 2, sizeof value);
    }
    int more = zmq_msg_more(&f);
    zmq_msg_close(&f);
    if (more) drain(mon->z); /* the endpoint frame */
    /* Events come in order, so an fd number reused by a later connection is
     * disconnected before it is accepted again. */
    if (ev == ZMQ_EVENT_ACCEPTED)
      limits_accepted(mon->lim, (int)value);
    else if (ev == ZMQ_EVENT_DISCONNECTED)
      limits_disconnected(mon->lim, (int)value);
  }
}

void sock_limits_counts(const sock_t *mon, int *open, uint64_t *ended) {
  *open = mon->lim->n;
  *ended = mon->lim->ended;
}

/* Receives ZAP request frame i into buf (NUL-terminated when text); its size in *len. */
static int zap_frame(void *z, char *buf, size_t cap, size_t *len, int *more) {
  zmq_msg_t f;
  zmq_msg_init(&f);
  if (zmq_msg_recv(&f, z, ZMQ_DONTWAIT) < 0) {
    zmq_msg_close(&f);
    return -1;
  }
  *len = zmq_msg_size(&f);
  size_t n = DRV_MIN(*len, cap - 1);
  memcpy(buf, zmq_msg_data(&f), n);
  buf[n] = '\0';
  *more = zmq_msg_more(&f);
  zmq_msg_close(&f);
  return 0;
}

drv_result_t sock_zap_answer(sock_t *zap, sock_authorize_fn fn, void *arg) {
  /* RFC 27: version, request id, domain, address, identity, mechanism, credentials. */
  enum { VERSION, REQUEST_ID, DOMAIN, ADDRESS, IDENTITY, MECHANISM, KEY, NFRAMES };
  char f[NFRAMES][256];
  size_t len[NFRAMES] = {0};
  int more = 1, n = 0;
  while (more && n < NFRAMES) {
    if (zap_frame(zap->z, f[n], sizeof f[n], &len[n], &more) < 0) {
      if (n == 0) return drv_error(DRV_ERR_TIMEOUT, "no ZAP request waiting");
      break;
    }
    n++;
  }
  if (more) drain(zap->z);
  int ok = n == NFRAMES && !more && strcmp(f[VERSION], "1.0") == 0 &&
           strcmp(f[MECHANISM], "CURVE") == 0 && len[KEY] == SOCK_KEY_BYTES;
  char user[SOCK_USER_MAX] = "";
  if (ok) ok = fn(arg, f[DOMAIN], f[ADDRESS], (const unsigned char *)f[KEY], user, sizeof user);
  /* The reply: version, request id, status code, status text, user id, metadata. */
  const char *code = ok ? "200" : "400", *text = ok ? "OK" : "not authorized";
  zmq_send(zap->z, "1.0", 3, ZMQ_SNDMORE);
  /* (libzmq's request ids are short; one longer than the buffer is sent back cut) */
  zmq_send(zap->z, f[REQUEST_ID], n > REQUEST_ID ? DRV_MIN(len[REQUEST_ID], sizeof f[0] - 1) : 0,
           ZMQ_SNDMORE);
  zmq_send(zap->z, code, 3, ZMQ_SNDMORE);
  zmq_send(zap->z, text, strlen(text), ZMQ_SNDMORE);
  zmq_send(zap->z, user, ok ? strlen(user) : 0, ZMQ_SNDMORE);
  zmq_send(zap->z, "", 0, 0);
  if (n != NFRAMES) return drv_error(DRV_ERR_PROTO, "malformed ZAP request (%d frames)", n);
  return DRV_OK;
}

void sock_destroy(sock_t **s) {
  if (!s || !*s) return;
  if ((*s)->lim) {
    zmq_socket_monitor((*s)->lim->watched, NULL, 0);
    free((*s)->lim->conns);
    free((*s)->lim);
  }
  zmq_close((*s)->z);
  free(*s);
  *s = NULL;
}

/* A tcp:// endpoint of a context that was given neither keys nor leave to be plaintext.
 * inproc:// stays in the process and ipc:// on the machine, guarded by its directory's
 * permissions (a command job's report socket: a 0700 directory of the worker's). */
static drv_result_t check_mode(const sock_t *s, const char *endpoint) {
  if (s->ctx->mode == SOCK_MODE_UNSET && strncmp(endpoint, "inproc://", 9) != 0 &&
      strncmp(endpoint, "ipc://", 6) != 0)
    return drv_error(DRV_ERR_INVALID,
                     "%s: refusing an unauthenticated connection: no CurveZMQ keys were set "
                     "(plaintext only with --insecure or DROVER_INSECURE=1)",
                     endpoint);
  return DRV_OK;
}

drv_result_t sock_bind(sock_t *s, const char *endpoint) {
  DRV_CHECK(check_mode(s, endpoint));
  if (zmq_bind(s->z, endpoint) < 0)
    return drv_error(DRV_ERR_ZMQ, "bind %s: %s", endpoint, zmq_strerror(errno));
  return DRV_OK;
}

drv_result_t sock_connect(sock_t *s, const char *endpoint) {
  DRV_CHECK(check_mode(s, endpoint));
  if (zmq_connect(s->z, endpoint) < 0)
    return drv_error(DRV_ERR_ZMQ, "connect %s: %s", endpoint, zmq_strerror(errno));
  return DRV_OK;
}

drv_result_t sock_bound_endpoint(sock_t *s, char *out, size_t n) {
  size_t len = n;
  if (zmq_getsockopt(s->z, ZMQ_LAST_ENDPOINT, out, &len) < 0)
    return drv_error(DRV_ERR_ZMQ, "ZMQ_LAST_ENDPOINT: %s", zmq_strerror(errno));
  return DRV_OK;
}

void sock_set_linger(sock_t *s, int ms) {
  set_int(s->z, ZMQ_LINGER, ms);
}

/* Waits up to timeout_ms for `event` on the monitor PAIR socket mon. */
static int wait_event(void *mon, int event, int timeout_ms) {
  int64_t deadline = drv_now_ms() + timeout_ms;
  for (;;) {
    int64_t left = deadline - drv_now_ms();
    zmq_pollitem_t it = {.socket = mon, .events = ZMQ_POLLIN};
    if (left <= 0 || zmq_poll(&it, 1, (long)left) <= 0) return 0;
    zmq_msg_t f;
    zmq_msg_init(&f);
    int got = 0;
    if (zmq_msg_recv(&f, mon, 0) >= 6) {
      uint16_t ev;
      memcpy(&ev, zmq_msg_data(&f), sizeof ev);
      got = ev == event;
    }
    int more = zmq_msg_more(&f);
    zmq_msg_close(&f);
    while (more) { /* the event's second frame: the endpoint */
      zmq_msg_init(&f);
      zmq_msg_recv(&f, mon, 0);
      more = zmq_msg_more(&f);
      zmq_msg_close(&f);
    }
    if (got) return 1;
  }
}

drv_result_t sock_subscribe(sock_t *s, const char *endpoint, const char *prefix, int timeout_ms) {
  if (zmq_setsockopt(s->z, ZMQ_SUBSCRIBE, prefix, strlen(prefix)) < 0)
    return drv_error(DRV_ERR_ZMQ, "subscribe %s: %s", prefix, zmq_strerror(errno));
  /* The subscription leaves right after the handshake: watch for it on a monitor. */
  char mon_ep[64];
  snprintf(mon_ep, sizeof mon_ep, "inproc://sock-monitor-%p", (void *)s);
  void *mon = NULL;
  if (zmq_socket_monitor(s->z, mon_ep, ZMQ_EVENT_HANDSHAKE_SUCCEEDED) == 0 &&
      (mon = zmq_socket(s->zctx, ZMQ_PAIR)) && zmq_connect(mon, mon_ep) < 0) {
    zmq_close(mon);
    mon = NULL;
  }
  drv_result_t rc = sock_connect(s, endpoint);
  if (rc == DRV_OK && !(mon && wait_event(mon, ZMQ_EVENT_HANDSHAKE_SUCCEEDED, timeout_ms)))
    log_debug("subscribe %s: no handshake within %d ms", endpoint, timeout_ms);
  zmq_socket_monitor(s->z, NULL, 0);
  if (mon) {
    set_int(mon, ZMQ_LINGER, 0);
    zmq_close(mon);
  }
  return rc;
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

drv_result_t sock_send(sock_t *s, const sock_peer_t *to, const proto_msg_t *m) {
  char *buf;
  size_t len;
  DRV_CHECK(proto_pack(m, &buf, &len));
  drv_result_t rc = DRV_OK;
  if (s->kind == SOCK_ROUTER &&
      zmq_send(s->z, to ? to->id : NULL, to ? to->len : 0, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0) {
    rc = drv_error(DRV_ERR_ZMQ, "send %s: %s", proto_type_name(m->type), zmq_strerror(errno));
    goto out;
  }
  if (zmq_send(s->z, buf, len, ZMQ_DONTWAIT) < 0)
    rc = drv_error(DRV_ERR_ZMQ, "send %s: %s", proto_type_name(m->type), zmq_strerror(errno));
out:
  free(buf);
  return rc;
}

drv_result_t sock_publish(sock_t *pub, const char *topic, const proto_msg_t *m) {
  char *buf;
  size_t len;
  DRV_CHECK(proto_pack(m, &buf, &len));
  drv_result_t rc = DRV_OK;
  if (zmq_send(pub->z, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
      zmq_send(pub->z, buf, len, ZMQ_DONTWAIT) < 0)
    rc = drv_error(DRV_ERR_ZMQ, "publish %s: %s", topic, zmq_strerror(errno));
  free(buf);
  return rc;
}

drv_result_t sock_poll(sock_t *const socks[], int n, int timeout_ms, int ready[]) {
  zmq_pollitem_t items[8];
  if (n > (int)DRV_ARRAY_LEN(items)) return drv_error(DRV_ERR_INVALID, "sock_poll: %d sockets", n);
  for (int i = 0; i < n; i++)
    items[i] = (zmq_pollitem_t){.socket = socks[i]->z, .events = ZMQ_POLLIN};
  int got = zmq_poll(items, n, timeout_ms);
  for (int i = 0; i < n; i++) ready[i] = got > 0 && (items[i].revents & ZMQ_POLLIN);
  if (got < 0 && errno != EINTR) return drv_error(DRV_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
  return got > 0 ? DRV_OK : drv_error(DRV_ERR_TIMEOUT, "no message within %d ms", timeout_ms);
}

int sock_readable(sock_t *s) {
  zmq_pollitem_t it = {.socket = s->z, .events = ZMQ_POLLIN};
  return zmq_poll(&it, 1, 0) > 0;
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

/* Receives one frame into f (initialised here); its "more" flag in *more. */
static drv_result_t recv_frame(sock_t *s, zmq_msg_t *f, int *more) {
  zmq_msg_init(f);
  if (zmq_msg_recv(f, s->z, 0) < 0) {
    zmq_msg_close(f);
    return drv_error(DRV_ERR_ZMQ, "recv: %s", zmq_strerror(errno));
  }
  *more = zmq_msg_more(f);
  return DRV_OK;
}

/* The first frame of a ROUTER (the sender's identity) or a SUB (the topic) message. */
static drv_result_t recv_envelope(sock_t *s, sock_peer_t *from) {
  zmq_msg_t f;
  int more;
  DRV_CHECK(recv_frame(s, &f, &more));
  if (s->kind == SOCK_ROUTER && from) {
    from->len = DRV_MIN(zmq_msg_size(&f), sizeof from->id);
    memcpy(from->id, zmq_msg_data(&f), from->len);
  }
  zmq_msg_close(&f);
  if (!more)
    return drv_error(DRV_ERR_PROTO, "%s frame without a message",
                     s->kind == SOCK_ROUTER ? "identity" : "topic");
  return DRV_OK;
}

/* Decodes frame f of socket s into m: refused when it came over a connection to itself,
 * is multipart, malformed, or not a message for this socket. */
static drv_result_t decode_frame(sock_t *s, zmq_msg_t *f, int more, proto_msg_t *m) {
  char self[INET6_ADDRSTRLEN + 8];
  /* ZMQ_SRCFD is deprecated in libzmq but still the one way to reach the connection a
   * message came over; -1 for transports without one. */
  int fd = s->kind == SOCK_DEALER ? zmq_msg_get(f, ZMQ_SRCFD) : -1;
  if (sock_fd_self_connected(fd, self, sizeof self)) {
    /* A connecting socket's own message: nothing listened on that port and the kernel
     * picked the same port for this end, so the connection reached itself. End it (ZeroMQ
     * reconnects) so the port is free for whoever should listen there. */
    sock_fd_end_self_connection(fd);
    if (more) drain(s->z);
    return drv_error(DRV_ERR_ZMQ,
                     "the connection to %s reached this socket itself (nothing listened there "
                     "and the port lies in the ephemeral range): dropped it",
                     self);
  }
  if (more) {
    drain(s->z);
    return drv_error(DRV_ERR_PROTO, "unexpected multipart message");
  }
  DRV_CHECK(proto_unpack(zmq_msg_data(f), zmq_msg_size(f),
                         (size_t)drv_setting(DRV_SET_MAX_MSG_BYTES), m));
  if (!proto_arrives_at(m->type, s->at)) {
    char why[160];
    proto_refusal(m->type, s->at, why, sizeof why);
    proto_msg_fini(m);
    proto_msg_init(m, PROTO_TYPE_COUNT);
    return drv_error(DRV_ERR_PROTO, "%s", why);
  }
  return DRV_OK;
}

drv_result_t sock_recv(sock_t *s, sock_peer_t *from, proto_msg_t *m, int timeout_ms) {
  proto_msg_init(m, PROTO_TYPE_COUNT);
  if (from) {
    from->len = 0;
    from->user[0] = from->addr[0] = '\0';
  }
  if (timeout_ms >= 0) {
    int ready;
    DRV_CHECK(sock_poll(&s, 1, timeout_ms, &ready));
  }
  if (s->kind == SOCK_ROUTER || s->kind == SOCK_SUB) DRV_CHECK(recv_envelope(s, from));
  zmq_msg_t f;
  int more;
  DRV_CHECK(recv_frame(s, &f, &more));
  if (from && s->kind == SOCK_ROUTER) {
    /* Who the ZAP handler said the sender's key is, and where it connected from. */
    const char *user = zmq_msg_gets(&f, "User-Id"), *addr = zmq_msg_gets(&f, "Peer-Address");
    snprintf(from->user, sizeof from->user, "%s", user ? user : "");
    snprintf(from->addr, sizeof from->addr, "%s", addr ? addr : "");
  }
  drv_result_t rc = decode_frame(s, &f, more, m);
  zmq_msg_close(&f);
  return rc;
}

drv_result_t sock_request(sock_ctx_t *ctx, const char *base, const proto_msg_t *req,
                          proto_msg_t *reply, int timeout_ms) {
  char ep[256];
  proto_msg_init(reply, PROTO_TYPE_COUNT);
  DRV_CHECK(sock_endpoint(base, SOCK_CLIENTS, ep, sizeof ep));
  sock_t *s = sock_new(ctx, SOCK_DEALER, PROTO_AT_CLIENT, &(sock_opts_t){.no_linger = 1});
  if (!s) return DRV_ERR_ZMQ;
  drv_result_t rc = DRV_OK;
  DRV_CHECK_GOTO(sock_connect(s, ep), rc, out);
  DRV_CHECK_GOTO(sock_send(s, NULL, req), rc, out);
  rc = sock_recv(s, NULL, reply, timeout_ms);
  if (rc == DRV_ERR_TIMEOUT) {
    rc = drv_error(DRV_ERR_TIMEOUT,
                   "no coordinator answered at %s within %d ms%s", ep, timeout_ms,
                   ctx->mode == SOCK_MODE_SECURE
                       ? " (if one runs there, it may not know this key, or this is not its "
                         "public key: its log says which)"
                       : "");
  } else if (rc == DRV_OK && reply->type == PROTO_ERROR) {
    rc = drv_error(DRV_ERR_INVALID, "%s", reply->u.error.message ? reply->u.error.message : "");
  }
out:
  sock_destroy(&s);
  return rc;
}
