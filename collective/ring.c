/* ring.c: the host ring all-reduce over TCP; see ring.h for the contract and wire format.
 *
 * The all-reduce runs a precomputed schedule: flat lists of send items and recv items over
 * the 2(W-1) steps (reduce-scatter steps first, then all-gather). At global step t, rank r
 * sends segment (r-t) mod W to its right and receives segment (r-t-1) mod W from its left;
 * each segment is cut into the same chunks at every step, so send item (t, c) depends on
 * recv item (t-1, c) and nothing else. Recv items of the reduce-scatter land in a
 * chunk-sized scratch buffer and are added into data; those of the all-gather land in place.
 * The TCP streams keep items in order on both ends, so the only state is "next item, bytes
 * done" per direction, and one poll() loop drives both directions at once.
 *
 * Connecting comes first: a handshake per link (ring.h has its bytes) in which both ends
 * prove the job's ring key with libsodium (BLAKE2b for the generation's key, HMAC-SHA-256
 * for the proofs, random nonces, constant-time comparison) before the link is handed to
 * the all-reduce. Its cryptography is one section below, its state machines the next.
 */
#include "collective/ring.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "common/log.h"
#include "common/settings.h"
#include "common/sock.h"

#define RING_MAGIC_HELLO 0x474e5244u /* "DRNG" as little-endian bytes */
#define RING_MAGIC_CALL 0x52415244u  /* "DRAR" */
#define RING_HEAD_BYTES 24           /* a handshake message's head, and the per-call header */
#define RING_NONCE_BYTES 32          /* each side's fresh nonce */
#define RING_MAC_BYTES crypto_auth_hmacsha256_BYTES /* a proof: HMAC-SHA-256 */
#define RING_MSG_MAX (RING_HEAD_BYTES + RING_NONCE_BYTES + RING_MAC_BYTES) /* the challenge */
#define RING_PENDING_MAX 8 /* connections waiting for their hello at once */
/* Socket buffers asked for on every link (the kernel clamps them to net.core.{w,r}mem_max,
 * and doubles them). On loopback this measured as good as autotuning or better, and more
 * steady; 0 leaves the kernel's autotuning alone. */
#define RING_SOCKBUF_BYTES (4 << 20)
/* Bytes moved in one direction before the loop polls again and turns to the other: larger
 * than what the socket buffers can hold, so in practice each side drains what is ready
 * (a 1 MiB cap measured clearly slower), yet bounded so neither side can starve the other. */
#define RING_BURST_BYTES (16 << 20)

/* Handshake messages (ring.h has their layout). HELLO is the keyless one: the public tag
 * is all it shows. */
enum {
  RING_KIND_HELLO = 1,
  RING_KIND_ACCEPT = 2,
  RING_KIND_REFUSE = 3,
  RING_KIND_AUTH_HELLO = 4,
  RING_KIND_CHALLENGE = 5,
  RING_KIND_PROOF = 6,
};

typedef struct {
  size_t off;  /* first float of the chunk in data */
  size_t n;    /* floats in the chunk */
  int64_t dep; /* send item: index of the recv item that must be complete first; -1 none */
  bool reduce; /* recv item: add into data through scratch rather than land in place */
} ring_item_t;

struct ring {
  int listen_fd; /* until connected */
  int right_fd;  /* we send to rank+1 */
  int left_fd;   /* we receive from rank-1 */
  uint32_t rank, world;
  int64_t job;
  uint32_t generation;
  uint64_t tag; /* job << 32 | generation: what a hello shows in the clear */
  uint64_t seq; /* all-reduce calls made so far: both ends of a link must agree */
  bool connected;
  bool broken; /* an all-reduce failed part way: the streams are out of step */
  char addr[RING_ADDR_MAX];
  /* The schedule, cached for the last (count, chunk). */
  size_t sched_count, sched_chunk;
  bool sched_valid;
  ring_item_t *sends, *recvs;
  size_t nsend, nrecv;
  float *scratch; /* (chunk,) host: one reduce-scatter chunk in flight */
};

// --- small helpers ------------------------------------------------------------------------

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
  return v;
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* A handshake message's head: magic, kind, rank, world, tag. */
static void ring_msg_pack(unsigned char *p, uint32_t kind, uint32_t rank, uint32_t world,
                          uint64_t tag) {
  put_u32(p, RING_MAGIC_HELLO);
  put_u32(p + 4, kind);
  put_u32(p + 8, rank);
  put_u32(p + 12, world);
  put_u64(p + 16, tag);
}

static void ring_close(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void ring_sockbufs(int fd) {
  if (RING_SOCKBUF_BYTES <= 0) return;
  int sz = RING_SOCKBUF_BYTES;
  /* Best effort: a smaller buffer is slower, not wrong. */
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
}

/* Splits "HOST:PORT" / "[V6]:PORT" and resolves it. */
static drv_result_t ring_resolve(const char *addr, struct addrinfo **out) {
  char host[RING_ADDR_MAX];
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr || !colon[1] || (size_t)(colon - addr) >= sizeof host)
    return drv_error(DRV_ERR_INVALID, "'%s' is not HOST:PORT", addr);
  size_t hl = (size_t)(colon - addr);
  memcpy(host, addr, hl);
  host[hl] = '\0';
  char *h = host;
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    host[hl - 1] = '\0';
    h = host + 1;
  }
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  int gai = getaddrinfo(h, colon + 1, &hints, out);
  if (gai) return drv_error(DRV_ERR_INVALID, "cannot resolve '%s': %s", addr, gai_strerror(gai));
  return DRV_OK;
}

// --- listen --------------------------------------------------------------------------------

static bool ring_is_wildcard(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (sa->sa_family == AF_INET6)
    return !memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr, &in6addr_any, sizeof in6addr_any);
  return false;
}

drv_result_t ring_listen(const char *bind_host, const char *advertise, ring_t **out) {
  drv_result_t rc = DRV_OK;
  struct addrinfo *ai = NULL;
  ring_t *r = NULL;
  if (!bind_host || !out) return drv_error(DRV_ERR_INVALID, "ring_listen: NULL argument");
  *out = NULL;
  r = calloc(1, sizeof *r);
  if (!r) return drv_error(DRV_ERR_NOMEM, "ring_listen: out of memory");
  r->listen_fd = r->right_fd = r->left_fd = -1;

  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  int gai = getaddrinfo(bind_host, "0", &hints, &ai);
  if (gai) {
    rc = drv_error(DRV_ERR_INVALID, "ring: cannot resolve bind host '%s': %s", bind_host,
                   gai_strerror(gai));
    goto fail;
  }
  r->listen_fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  SYS_CHECK_GOTO(r->listen_fd, rc, fail, "ring: socket");
  int one = 1;
  (void)setsockopt(r->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ring_sockbufs(r->listen_fd); /* accepted sockets inherit them, window scale included */
  if (bind(r->listen_fd, ai->ai_addr, ai->ai_addrlen) < 0) {
    rc = drv_error(DRV_ERR_SYS, "ring: bind to %s: %s", bind_host, strerror(errno));
    goto fail;
  }
  if (listen(r->listen_fd, 16) < 0) {
    rc = drv_error(DRV_ERR_SYS, "ring: listen on %s: %s", bind_host, strerror(errno));
    goto fail;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  SYS_CHECK_GOTO(getsockname(r->listen_fd, (struct sockaddr *)&ss, &sl), rc, fail,
                 "ring: getsockname");
  unsigned port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);

  char hostname[256];
  const char *host = advertise;
  if (!host || !*host) {
    host = bind_host;
    if (ring_is_wildcard(ai->ai_addr)) {
      if (gethostname(hostname, sizeof hostname) < 0) {
        rc = drv_error(DRV_ERR_SYS, "ring: gethostname: %s", strerror(errno));
        goto fail;
      }
      hostname[sizeof hostname - 1] = '\0';
      host = hostname;
    }
  }
  int n = snprintf(r->addr, sizeof r->addr, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
  if (n < 0 || (size_t)n >= sizeof r->addr) {
    rc = drv_error(DRV_ERR_INVALID, "ring: advertised host '%s' is too long", host);
    goto fail;
  }
  freeaddrinfo(ai);
  *out = r;
  return DRV_OK;

fail:
  if (ai) freeaddrinfo(ai);
  ring_destroy(&r);
  return rc;
}

const char *ring_address(const ring_t *r) {
  return r ? r->addr : "";
}

uint64_t ring_seq(const ring_t *r) {
  return r ? r->seq : 0;
}

// --- the handshake's cryptography ----------------------------------------------------------
// Each generation's links are proven with a key of their own, derived from the job's ring
// key: BLAKE2b-256 keyed with the ring key over a label, the job and the generation. A
// proof is HMAC-SHA-256 under that key over a label naming the side that proves, both
// nonces, both ranks, the world, the generation, the job and both listening addresses (as
// each side knows them: its own, and the one it has for its neighbour), every field fixed
// in size or length-prefixed.

static const char ring_label_gen[] = "drover ring generation key v1";
static const char ring_label_dialer[] = "drover ring dialer proof v1";
static const char ring_label_acceptor[] = "drover ring acceptor proof v1";

/* What both ends of one link put in their proofs. */
typedef struct {
  const unsigned char *nonce_d, *nonce_a; /* the dialer's and the acceptor's */
  uint32_t rank_d, rank_a;
  const char *addr_d, *addr_a; /* the dialer's and the acceptor's ring addresses */
} ring_transcript_t;

static void mac_put(crypto_auth_hmacsha256_state *st, const void *p, size_t n) {
  crypto_auth_hmacsha256_update(st, p, n);
}

static void mac_put_u32(crypto_auth_hmacsha256_state *st, uint32_t v) {
  unsigned char b[4];
  put_u32(b, v);
  mac_put(st, b, sizeof b);
}

/* A length-prefixed string. */
static void mac_put_str(crypto_auth_hmacsha256_state *st, const char *s) {
  size_t n = strlen(s);
  mac_put_u32(st, (uint32_t)n);
  mac_put(st, s, n);
}

/* This generation's key, from the job's ring key. */
static void ring_key_derive(const unsigned char key[RING_KEY_BYTES], int64_t job,
                            uint32_t generation, unsigned char out[RING_KEY_BYTES]) {
  unsigned char msg[sizeof ring_label_gen + 12];
  memcpy(msg, ring_label_gen, sizeof ring_label_gen); /* the NUL ends the label */
  put_u64(msg + sizeof ring_label_gen, (uint64_t)job);
  put_u32(msg + sizeof ring_label_gen + 8, generation);
  crypto_generichash(out, RING_KEY_BYTES, msg, sizeof msg, key, RING_KEY_BYTES);
  sodium_memzero(msg, sizeof msg);
}

/* One side's proof of the generation key over the link's transcript; `dialer` picks the
 * label, so neither side's proof can stand for the other's. */
static void ring_proof(const ring_t *r, const unsigned char *kgen, const ring_transcript_t *t,
                       bool dialer, unsigned char mac[RING_MAC_BYTES]) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, kgen, RING_KEY_BYTES);
  mac_put_str(&st, dialer ? ring_label_dialer : ring_label_acceptor);
  mac_put(&st, t->nonce_d, RING_NONCE_BYTES);
  mac_put(&st, t->nonce_a, RING_NONCE_BYTES);
  mac_put_u32(&st, t->rank_d);
  mac_put_u32(&st, t->rank_a);
  mac_put_u32(&st, r->world);
  mac_put_u32(&st, r->generation);
  unsigned char job[8];
  put_u64(job, (uint64_t)r->job);
  mac_put(&st, job, sizeof job);
  mac_put_str(&st, t->addr_d);
  mac_put_str(&st, t->addr_a);
  crypto_auth_hmacsha256_final(&st, mac);
  sodium_memzero(&st, sizeof st);
}

/* Whether `got` is the proof the other side should have sent: computed here, compared in
 * constant time. */
static bool ring_proof_ok(const ring_t *r, const unsigned char *kgen, const ring_transcript_t *t,
                          bool dialer, const unsigned char *got) {
  unsigned char want[RING_MAC_BYTES];
  ring_proof(r, kgen, t, dialer, want);
  bool ok = sodium_memcmp(want, got, RING_MAC_BYTES) == 0;
  sodium_memzero(want, sizeof want);
  return ok;
}

drv_result_t ring_key_parse(const char *hex, unsigned char key[RING_KEY_BYTES]) {
  size_t n = 0;
  const char *end = NULL;
  if (!hex || strlen(hex) != 2 * RING_KEY_BYTES ||
      sodium_hex2bin(key, RING_KEY_BYTES, hex, strlen(hex), NULL, &n, &end) != 0 ||
      n != RING_KEY_BYTES || *end) {
    sodium_memzero(key, RING_KEY_BYTES);
    return drv_error(DRV_ERR_INVALID, "the ring key is not %d hex digits", 2 * RING_KEY_BYTES);
  }
  return DRV_OK;
}

drv_result_t ring_key_new(unsigned char key[RING_KEY_BYTES]) {
  if (sodium_init() < 0) return drv_error(DRV_ERR_SYS, "ring: libsodium could not start");
  randombytes_buf(key, RING_KEY_BYTES);
  return DRV_OK;
}

// --- connect -------------------------------------------------------------------------------
// ring_connect dials the right neighbour and accepts the left one at the same time, in one
// poll() loop: each side may come up in any order, and a peer that is not listening yet is
// dialled again with a growing backoff. The dial runs through DIAL_WAIT (until the next try),
// DIAL_CONNECTING, DIAL_HELLO (ours going out), DIAL_CHALLENGE (the acceptor's nonce and
// proof coming in; the plain answer without a key), DIAL_ANSWER (its verdict on our proof),
// DIAL_DONE. Accepted connections wait in `pend` until their handshake is complete and
// judged; each has RING_HANDSHAKE_MS to finish it, and a full table makes room by closing
// its oldest, so that no stranger, silent or slow, can keep the left neighbour out.

typedef struct {
  int fd;
  int64_t deadline; /* closed unless its handshake is over by then */
  bool proving;     /* our challenge went out: its proof is what comes next */
  size_t got;       /* bytes of the message being read */
  unsigned char buf[RING_MSG_MAX];
  uint32_t rank; /* the rank it claimed in its hello */
  unsigned char nonce_d[RING_NONCE_BYTES], nonce_a[RING_NONCE_BYTES];
  char from[RING_ADDR_MAX]; /* its address, for the log */
} ring_pending_t;

typedef enum {
  DIAL_WAIT,
  DIAL_CONNECTING,
  DIAL_HELLO,
  DIAL_CHALLENGE,
  DIAL_ANSWER,
  DIAL_DONE
} ring_dial_t;

/* The state of one ring_connect. */
typedef struct {
  ring_t *r;
  uint32_t right, left;
  const char *right_addr, *left_addr;
  struct addrinfo *ai; /* the right neighbour's address */
  bool keyed;          /* links are proven with kgen; else the public tag check only */
  unsigned char kgen[RING_KEY_BYTES]; /* this generation's key */
  int handshake_ms;
  /* dialling the right neighbour */
  ring_dial_t dial;
  int rfd;
  size_t dio; /* bytes of the hello sent, then of the message being received */
  unsigned char hello[RING_MSG_MAX], msg[RING_MSG_MAX];
  unsigned char nonce_d[RING_NONCE_BYTES]; /* ours, for this try */
  int64_t next_try, try_end;               /* the next try; the end of the current one */
  int backoff;                             /* ms before the next try, doubling up to 500 */
  char why[160];                           /* why the last try failed */
  /* accepting the left neighbour */
  int lfd; /* -1 until its handshake is complete */
  ring_pending_t pend[RING_PENDING_MAX];
  int npend;
} ring_link_t;

/* The length of a handshake message of this kind, its head included; 0: no such kind. */
static size_t ring_msg_len(uint32_t kind) {
  switch (kind) {
  case RING_KIND_HELLO:
  case RING_KIND_ACCEPT:
  case RING_KIND_REFUSE: return RING_HEAD_BYTES;
  case RING_KIND_AUTH_HELLO: return RING_HEAD_BYTES + RING_NONCE_BYTES;
  case RING_KIND_CHALLENGE: return RING_HEAD_BYTES + RING_NONCE_BYTES + RING_MAC_BYTES;
  case RING_KIND_PROOF: return RING_HEAD_BYTES + RING_MAC_BYTES;
  default: return 0;
  }
}

/* Reads what has come of one handshake message into buf[RING_MSG_MAX]: its head, then as
 * many bytes as its kind says, never more (what follows belongs to the next message).
 * 1: complete; 0: more to come; -1 (why says it): closed, failed, or not a ring message. */
static int msg_recv(int fd, unsigned char *buf, size_t *got, char *why, size_t whylen) {
  for (;;) {
    size_t want = *got < RING_HEAD_BYTES ? RING_HEAD_BYTES : ring_msg_len(get_u32(buf + 4));
    if (*got == want) return 1;
    ssize_t k = recv(fd, buf + *got, want - *got, 0);
    if (k == 0) {
      snprintf(why, whylen, "it closed the connection");
      return -1;
    }
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      snprintf(why, whylen, "%s", strerror(errno));
      return -1;
    }
    *got += (size_t)k;
    if (*got == RING_HEAD_BYTES &&
        (get_u32(buf) != RING_MAGIC_HELLO || ring_msg_len(get_u32(buf + 4)) == 0)) {
      snprintf(why, whylen, "it sent something that is not a ring handshake");
      return -1;
    }
  }
}

/* Sends a whole handshake message. A handshake socket's send buffer holds far more than
 * the few bytes in flight, so they go at once or the link is gone. */
static bool msg_send(int fd, const unsigned char *buf, size_t len) {
  ssize_t k;
  errno = 0;
  do k = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (k < 0 && errno == EINTR);
  return k == (ssize_t)len;
}

/* The acceptor's side of the transcript of a pending connection. */
static ring_transcript_t pend_transcript(const ring_link_t *c, const ring_pending_t *p) {
  return (ring_transcript_t){.nonce_d = p->nonce_d,
                             .nonce_a = p->nonce_a,
                             .rank_d = c->left,
                             .rank_a = c->r->rank,
                             .addr_d = c->left_addr,
                             .addr_a = c->r->addr};
}

/* A refusal: the verdict to the peer (best effort), and the log line naming it. */
static void pend_refuse(const ring_link_t *c, ring_pending_t *p, const char *why) {
  const ring_t *r = c->r;
  unsigned char ans[RING_HEAD_BYTES];
  ring_msg_pack(ans, RING_KIND_REFUSE, r->rank, r->world, r->tag);
  (void)msg_send(p->fd, ans, sizeof ans);
  log_warn("ring: rank %u of %u refused the connection from %s: %s", r->rank, r->world, p->from,
           why);
}

/* The hello of a would-be left neighbour is complete. Returns true when it is the
 * neighbour we wait for as far as its hello says: without a key, it is accepted now (the
 * answer has gone out); with one, our challenge has gone out and its proof is awaited
 * (p->proving). False: refused, to be closed. */
static bool pend_hello(ring_link_t *c, ring_pending_t *p) {
  ring_t *r = c->r;
  const unsigned char *b = p->buf;
  uint32_t kind = get_u32(b + 4), rank = get_u32(b + 8), world = get_u32(b + 12);
  uint64_t tag = get_u64(b + 16);
  char why[256];
  if (kind != (c->keyed ? RING_KIND_AUTH_HELLO : RING_KIND_HELLO)) {
    pend_refuse(c, p,
                c->keyed ? "an unauthenticated hello (public tag only): this ring needs the key"
                         : "a hello that asks for a ring key, and this rank has none");
    return false;
  }
  if (rank != c->left || world != r->world || tag != r->tag) {
    snprintf(why, sizeof why,
             "it is rank %u of %u with tag %#llx, expected rank %u of %u (tag %#llx)", rank, world,
             (unsigned long long)tag, c->left, r->world, (unsigned long long)r->tag);
    pend_refuse(c, p, why);
    return false;
  }
  p->rank = rank;
  unsigned char out[RING_MSG_MAX];
  size_t len = RING_HEAD_BYTES;
  if (!c->keyed) {
    ring_msg_pack(out, RING_KIND_ACCEPT, r->rank, r->world, r->tag);
  } else {
    memcpy(p->nonce_d, b + RING_HEAD_BYTES, RING_NONCE_BYTES);
    randombytes_buf(p->nonce_a, RING_NONCE_BYTES);
    ring_msg_pack(out, RING_KIND_CHALLENGE, r->rank, r->world, r->tag);
    memcpy(out + RING_HEAD_BYTES, p->nonce_a, RING_NONCE_BYTES);
    ring_transcript_t t = pend_transcript(c, p);
    ring_proof(r, c->kgen, &t, false, out + RING_HEAD_BYTES + RING_NONCE_BYTES);
    len = ring_msg_len(RING_KIND_CHALLENGE);
    p->proving = true;
    p->got = 0;
  }
  return msg_send(p->fd, out, len);
}

/* The proof of a would-be left neighbour is complete: true when it proves the key (our
 * ACCEPT has gone out), false (refused, logged) otherwise. */
static bool pend_proof(ring_link_t *c, ring_pending_t *p) {
  ring_t *r = c->r;
  const unsigned char *b = p->buf;
  ring_transcript_t t = pend_transcript(c, p);
  if (get_u32(b + 4) != RING_KIND_PROOF || get_u32(b + 8) != p->rank ||
      get_u32(b + 12) != r->world || get_u64(b + 16) != r->tag ||
      !ring_proof_ok(r, c->kgen, &t, true, b + RING_HEAD_BYTES)) {
    pend_refuse(c, p, "it did not prove the ring key");
    return false;
  }
  unsigned char ans[RING_HEAD_BYTES];
  ring_msg_pack(ans, RING_KIND_ACCEPT, r->rank, r->world, r->tag);
  return msg_send(p->fd, ans, sizeof ans);
}

/* Starts a connection to the right neighbour (DIAL_WAIT, its time has come). A connect
 * that fails at once schedules the next try. */
static drv_result_t dial_start(ring_link_t *c, int64_t now) {
  drv_result_t rc = DRV_OK;
  c->rfd = socket(c->ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  SYS_CHECK_GOTO(c->rfd, rc, fail, "ring: socket");
  ring_sockbufs(c->rfd);
  c->dio = 0;
  c->try_end = now + c->handshake_ms;
  if (connect(c->rfd, c->ai->ai_addr, c->ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
    c->dial = DIAL_CONNECTING; /* an immediate success is checked like one in progress */
  } else {
    snprintf(c->why, sizeof c->why, "connect: %s", strerror(errno));
    ring_close(&c->rfd);
    c->next_try = now + c->backoff;
    c->backoff = DRV_MIN(c->backoff * 2, 500);
  }
fail:
  return rc;
}

/* The try failed (c->why says how): close it and try again after the backoff. */
static void dial_retry(ring_link_t *c) {
  ring_close(&c->rfd);
  c->dial = DIAL_WAIT;
  c->next_try = drv_now_ms() + c->backoff;
  c->backoff = DRV_MIN(c->backoff * 2, 500);
}

/* DIAL_CONNECTING, the socket is writable: on to DIAL_HELLO, or false (with why). */
static bool dial_connected(ring_link_t *c) {
  int err = 0;
  socklen_t el = sizeof err;
  if (getsockopt(c->rfd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
  if (err) {
    snprintf(c->why, sizeof c->why, "connect: %s", strerror(err));
    return false;
  }
  if (sock_fd_self_connected(c->rfd, NULL, 0)) {
    /* The peer's port is free and was handed to us as our own: dial again. */
    snprintf(c->why, sizeof c->why, "nothing listens there (the connection reached itself)");
    return false;
  }
  c->dial = DIAL_HELLO;
  return true;
}

/* DIAL_HELLO: our hello, with a fresh nonce when links are proven (then on to
 * DIAL_CHALLENGE); false (with why) when the link failed. */
static bool dial_hello(ring_link_t *c) {
  const ring_t *r = c->r;
  size_t len = RING_HEAD_BYTES;
  ring_msg_pack(c->hello, c->keyed ? RING_KIND_AUTH_HELLO : RING_KIND_HELLO, r->rank, r->world,
                r->tag);
  if (c->keyed) {
    randombytes_buf(c->nonce_d, RING_NONCE_BYTES);
    memcpy(c->hello + RING_HEAD_BYTES, c->nonce_d, RING_NONCE_BYTES);
    len += RING_NONCE_BYTES;
  }
  if (!msg_send(c->rfd, c->hello, len)) {
    snprintf(c->why, sizeof c->why, "hello: %s", errno ? strerror(errno) : "short send");
    return false;
  }
  c->dial = DIAL_CHALLENGE;
  c->dio = 0;
  return true;
}

/* A refusal, or an answer that names someone else, from the right neighbour's address:
 * DRV_ERR_PROTO, no retry (a stale or misplaced peer learns at once). Checks the head of
 * c->msg; DRV_OK when it is the rank we dialled, in this world and generation. */
static drv_result_t answer_check(const ring_link_t *c) {
  const ring_t *r = c->r;
  const unsigned char *a = c->msg;
  uint32_t kind = get_u32(a + 4), prank = get_u32(a + 8), pworld = get_u32(a + 12);
  uint64_t ptag = get_u64(a + 16);
  if (kind == RING_KIND_REFUSE || prank != c->right || pworld != r->world || ptag != r->tag)
    return drv_error(DRV_ERR_PROTO,
                     "ring: rank %u of %u (tag %#llx): the peer at %s %s: it is rank %u "
                     "of %u with tag %#llx, expected rank %u",
                     r->rank, r->world, (unsigned long long)r->tag, c->right_addr,
                     kind == RING_KIND_REFUSE ? "refused us" : "is someone else", prank, pworld,
                     (unsigned long long)ptag, c->right);
  return DRV_OK;
}

/* A complete message from the right neighbour in DIAL_CHALLENGE or DIAL_ANSWER: on to the
 * next state (our proof goes out after its proof checks), or *retry when it did not prove
 * the key (closed, logged, dialled again: the real neighbour may yet answer there), or an
 * error for a refusal. */
static drv_result_t dial_judge(ring_link_t *c, bool *retry) {
  const ring_t *r = c->r;
  uint32_t kind = get_u32(c->msg + 4);
  DRV_CHECK(answer_check(c)); /* a refusal, or another rank, world or generation */
  if (kind == RING_KIND_CHALLENGE && !c->keyed)
    return drv_error(DRV_ERR_PROTO,
                     "ring: rank %u: the peer at %s asks for a ring key, and this rank has none",
                     r->rank, c->right_addr);
  uint32_t want = c->dial == DIAL_ANSWER || !c->keyed ? RING_KIND_ACCEPT : RING_KIND_CHALLENGE;
  ring_transcript_t t = {.nonce_d = c->nonce_d,
                         .nonce_a = c->msg + RING_HEAD_BYTES,
                         .rank_d = r->rank,
                         .rank_a = c->right,
                         .addr_d = r->addr,
                         .addr_a = c->right_addr};
  /* With a key, an ACCEPT before the peer has proven itself (the public-tag answer) is no
   * better than a wrong proof: nothing goes to it. */
  if (kind != want ||
      (kind == RING_KIND_CHALLENGE &&
       !ring_proof_ok(r, c->kgen, &t, false, c->msg + RING_HEAD_BYTES + RING_NONCE_BYTES))) {
    const char *what = c->keyed ? "did not prove the ring key" : "did not answer as a ring peer";
    snprintf(c->why, sizeof c->why, "the peer there %s", what);
    log_warn("ring: rank %u of %u: the peer at %s %s: closed, dialling again", r->rank, r->world,
             c->right_addr, what);
    *retry = true;
    return DRV_OK;
  }
  if (kind == RING_KIND_ACCEPT) {
    c->dial = DIAL_DONE;
    return DRV_OK;
  }
  unsigned char proof[RING_MSG_MAX];
  ring_msg_pack(proof, RING_KIND_PROOF, r->rank, r->world, r->tag);
  ring_proof(r, c->kgen, &t, true, proof + RING_HEAD_BYTES);
  if (!msg_send(c->rfd, proof, ring_msg_len(RING_KIND_PROOF))) {
    snprintf(c->why, sizeof c->why, "proof: %s", errno ? strerror(errno) : "short send");
    *retry = true;
    return DRV_OK;
  }
  c->dial = DIAL_ANSWER;
  c->dio = 0;
  return DRV_OK;
}

/* The dialled socket is ready: one step of connect, hello, challenge, answer. A failed
 * try is retried after the backoff; a refusal is an error. */
static drv_result_t dial_step(ring_link_t *c) {
  bool retry = false;
  if (c->dial == DIAL_CONNECTING) retry = !dial_connected(c);
  if (c->dial == DIAL_HELLO && !retry) {
    retry = !dial_hello(c);
  } else if ((c->dial == DIAL_CHALLENGE || c->dial == DIAL_ANSWER) && !retry) {
    errno = 0;
    int got = msg_recv(c->rfd, c->msg, &c->dio, c->why, sizeof c->why);
    if (got < 0) retry = true;
    if (got > 0) DRV_CHECK(dial_judge(c, &retry));
  }
  if (retry) dial_retry(c);
  return DRV_OK;
}

/* Reads the handshakes of would-be left neighbours that have data (pfd[i] for pend[i]):
 * the one we wait for becomes the left link once it is complete (and, with a key, proven),
 * others are refused and closed. */
static void pend_read(ring_link_t *c, const struct pollfd *pfd) {
  for (int i = 0; i < c->npend; i++) {
    if (!pfd[i].revents) continue;
    ring_pending_t *p = &c->pend[i];
    char why[160];
    int got = msg_recv(p->fd, p->buf, &p->got, why, sizeof why);
    if (got < 0) {
      log_warn("ring: rank %u: the connection from %s ended before its handshake: %s", c->r->rank,
               p->from, why);
      ring_close(&p->fd);
    }
    if (got <= 0) continue;
    bool proving = p->proving;
    bool ok = c->lfd < 0 && (proving ? pend_proof(c, p) : pend_hello(c, p));
    if (ok && !proving && p->proving) continue; /* our challenge went out: its proof next */
    if (ok) {
      c->lfd = p->fd;
      p->fd = -1;
    }
    ring_close(&p->fd);
  }
  int keep = 0;
  for (int i = 0; i < c->npend; i++)
    if (c->pend[i].fd >= 0) c->pend[keep++] = c->pend[i];
  c->npend = keep;
}

/* Closes the pending connections whose handshake time is over. */
static void pend_expire(ring_link_t *c, int64_t now) {
  int keep = 0;
  for (int i = 0; i < c->npend; i++) {
    ring_pending_t *p = &c->pend[i];
    if (now >= p->deadline) {
      log_warn("ring: rank %u: the connection from %s had no handshake in %d ms: closed",
               c->r->rank, p->from, c->handshake_ms);
      ring_close(&p->fd);
      continue;
    }
    c->pend[keep++] = *p;
  }
  c->npend = keep;
}

/* "HOST:PORT" of a peer, for the log. */
static void ring_peer_name(const struct sockaddr_storage *ss, socklen_t sl, char *out, size_t n) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo((const struct sockaddr *)ss, sl, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    snprintf(out, n, "an unknown address");
  else
    snprintf(out, n, ss->ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* Takes every connection waiting on the listening socket, to wait for its handshake. A
 * full table closes its oldest to make room: a stranger cannot hold every place. */
static void pend_accept(ring_link_t *c, int64_t now) {
  for (;;) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(c->r->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break; /* EAGAIN, or a connection that died before we took it */
    if (c->npend == RING_PENDING_MAX) {
      log_warn(
          "ring: rank %u: %d connections without a finished handshake; closing the oldest, "
          "from %s",
          c->r->rank, RING_PENDING_MAX, c->pend[0].from);
      ring_close(&c->pend[0].fd);
      memmove(c->pend, c->pend + 1, sizeof c->pend[0] * (RING_PENDING_MAX - 1));
      c->npend--;
    }
    ring_pending_t *p = &c->pend[c->npend++];
    *p = (ring_pending_t){.fd = fd, .deadline = now + c->handshake_ms};
    ring_peer_name(&ss, sl, p->from, sizeof p->from);
  }
}

/* What to poll: [0] the listening socket (until the left link is in), [1] the dialled
 * socket in its current state, [2..] the pending handshakes. Returns how many entries. */
static nfds_t link_pollfds(const ring_link_t *c, struct pollfd *pfd) {
  pfd[0] = (struct pollfd){.fd = c->lfd < 0 ? c->r->listen_fd : -1, .events = POLLIN};
  short ev = c->dial == DIAL_CONNECTING || c->dial == DIAL_HELLO   ? POLLOUT
             : c->dial == DIAL_CHALLENGE || c->dial == DIAL_ANSWER ? POLLIN
                                                                   : 0;
  pfd[1] = (struct pollfd){.fd = ev ? c->rfd : -1, .events = ev};
  for (int i = 0; i < c->npend; i++)
    pfd[2 + i] = (struct pollfd){.fd = c->pend[i].fd, .events = POLLIN};
  return (nfds_t)(2 + c->npend);
}

/* When the loop must wake next: the deadline, the next dial, the end of the current try,
 * the first pending handshake's end. */
static int64_t link_wake(const ring_link_t *c, int64_t deadline) {
  int64_t until = deadline;
  if (c->dial == DIAL_WAIT) until = DRV_MIN(until, c->next_try);
  if (c->dial != DIAL_WAIT && c->dial != DIAL_DONE) until = DRV_MIN(until, c->try_end);
  for (int i = 0; i < c->npend; i++) until = DRV_MIN(until, c->pend[i].deadline);
  return until;
}

/* The deadline passed: which neighbour is missing, and why. */
static drv_result_t link_timeout(const ring_link_t *c, int timeout_ms) {
  char lmsg[96] = "", rmsg[RING_ADDR_MAX + 200] = "";
  if (c->lfd < 0) snprintf(lmsg, sizeof lmsg, "rank %u (left) never connected", c->left);
  if (c->dial != DIAL_DONE)
    snprintf(rmsg, sizeof rmsg, "rank %u (right) at %s did not answer (%s)", c->right,
             c->right_addr, c->why);
  return drv_error(DRV_ERR_TIMEOUT, "ring: rank %u of %u: %s%s%s within %d ms", c->r->rank,
                   c->r->world, lmsg, *lmsg && *rmsg ? "; " : "", rmsg, timeout_ms);
}

/* Closes every socket of a connect that is over, frees the address, wipes the key. */
static void link_close(ring_link_t *c) {
  for (int i = 0; i < c->npend; i++) ring_close(&c->pend[i].fd);
  c->npend = 0;
  ring_close(&c->rfd);
  ring_close(&c->lfd);
  if (c->ai) freeaddrinfo(c->ai);
  c->ai = NULL;
  sodium_memzero(c->kgen, sizeof c->kgen);
}

/* One pass of the connect loop, after poll: the dial, the pending handshakes, new
 * connections, expired tries. */
static drv_result_t link_step(ring_link_t *c, const struct pollfd *pfd) {
  if (pfd[1].revents) DRV_CHECK(dial_step(c));
  pend_read(c, pfd + 2);
  int64_t now = drv_now_ms();
  if (c->lfd < 0 && (pfd[0].revents & POLLIN)) pend_accept(c, now);
  pend_expire(c, now);
  if (c->dial != DIAL_WAIT && c->dial != DIAL_DONE && now >= c->try_end) {
    snprintf(c->why, sizeof c->why, "no complete handshake within %d ms", c->handshake_ms);
    dial_retry(c);
  }
  return DRV_OK;
}

/* Checks ring_connect's arguments and fills in the ring's identity. */
static drv_result_t connect_args(ring_t *r, uint32_t rank, uint32_t world,
                                 const ring_auth_t *auth) {
  if (!r || !auth) return drv_error(DRV_ERR_INVALID, "ring_connect: NULL argument");
  if (r->connected || r->listen_fd < 0)
    return drv_error(DRV_ERR_INVALID, "ring_connect: ring already connected");
  if (world == 0 || rank >= world)
    return drv_error(DRV_ERR_INVALID, "ring_connect: rank %u of world %u", rank, world);
  if (auth->key && sodium_init() < 0)
    return drv_error(DRV_ERR_SYS, "ring: libsodium could not start");
  r->rank = rank;
  r->world = world;
  r->job = auth->job;
  r->generation = auth->generation;
  r->tag = ((uint64_t)auth->job << 32) | auth->generation;
  return DRV_OK;
}

drv_result_t ring_connect(ring_t *r, uint32_t rank, uint32_t world, const char *const *addrs,
                          const ring_auth_t *auth, int timeout_ms) {
  drv_result_t rc = DRV_OK;
  DRV_CHECK(connect_args(r, rank, world, auth));
  if (timeout_ms < 0) timeout_ms = 0;
  if (world == 1) {
    ring_close(&r->listen_fd);
    r->connected = true;
    return DRV_OK;
  }
  ring_link_t c = {.r = r,
                   .right = (rank + 1) % world,
                   .left = (rank + world - 1) % world,
                   .keyed = auth->key != NULL,
                   .handshake_ms = (int)DRV_MAX(drv_setting(DRV_SET_RING_HANDSHAKE_MS), 1),
                   .dial = DIAL_WAIT,
                   .rfd = -1,
                   .backoff = 10,
                   .why = "no attempt finished",
                   .lfd = -1};
  if (!addrs || !addrs[c.right] || !addrs[c.left])
    return drv_error(DRV_ERR_INVALID, "ring_connect: no address for rank %u",
                     addrs && addrs[c.right] ? c.left : c.right);
  c.right_addr = addrs[c.right];
  c.left_addr = addrs[c.left];
  if (c.keyed)
    ring_key_derive(auth->key, auth->job, auth->generation, c.kgen);
  else
    log_warn(
        "ring: rank %u of %u connects WITHOUT a ring key: its links are checked by the "
        "public tag only, and anyone who can reach its port can join the ring",
        rank, world);
  DRV_CHECK_GOTO(ring_resolve(c.right_addr, &c.ai), rc, fail);

  int64_t deadline = drv_now_ms() + timeout_ms;
  while (c.dial != DIAL_DONE || c.lfd < 0) {
    int64_t now = drv_now_ms();
    if (now >= deadline) {
      rc = link_timeout(&c, timeout_ms);
      goto fail;
    }
    if (c.dial == DIAL_WAIT && now >= c.next_try) DRV_CHECK_GOTO(dial_start(&c, now), rc, fail);
    struct pollfd pfd[2 + RING_PENDING_MAX];
    nfds_t nfds = link_pollfds(&c, pfd);
    int n = poll(pfd, nfds, (int)DRV_MAX(0, link_wake(&c, deadline) - now));
    if (n < 0) {
      if (errno == EINTR) continue;
      rc = drv_error(DRV_ERR_SYS, "ring: poll: %s", strerror(errno));
      goto fail;
    }
    DRV_CHECK_GOTO(link_step(&c, pfd), rc, fail);
  }

  int one = 1;
  (void)setsockopt(c.rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  (void)setsockopt(c.lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  r->right_fd = c.rfd;
  r->left_fd = c.lfd;
  c.rfd = c.lfd = -1; /* the ring's now */
  ring_close(&r->listen_fd);
  r->connected = true;

fail:
  link_close(&c);
  return rc;
}

// --- the schedule --------------------------------------------------------------------------

/* Segment s of W over count floats: the first count%W segments get one extra float. */
static size_t ring_seg_len(size_t count, uint32_t world, uint32_t s) {
  return count / world + (s < count % world ? 1 : 0);
}

static size_t ring_seg_off(size_t count, uint32_t world, uint32_t s) {
  return s * (count / world) + DRV_MIN((size_t)s, count % world);
}

static drv_result_t ring_schedule(ring_t *r, size_t count, size_t chunk) {
  if (r->sched_valid && r->sched_count == count && r->sched_chunk == chunk) return DRV_OK;
  uint32_t w = r->world;
  size_t steps = 2 * (size_t)(w - 1);
  size_t seg_max = ring_seg_len(count, w, 0); /* segment 0 is never shorter than the rest */
  size_t per_step = (seg_max + chunk - 1) / chunk;
  size_t cap = DRV_MAX(steps * per_step, (size_t)1);
  size_t scratch_n = DRV_MAX(DRV_MIN(chunk, seg_max), (size_t)1);

  r->sched_valid = false;
  free(r->sends);
  free(r->recvs);
  free(r->scratch);
  r->sends = malloc(cap * sizeof *r->sends);
  r->recvs = malloc(cap * sizeof *r->recvs);
  r->scratch = malloc(scratch_n * sizeof *r->scratch);
  if (!r->sends || !r->recvs || !r->scratch)
    return drv_error(DRV_ERR_NOMEM, "ring: schedule for %zu floats: out of memory", count);

  size_t ns = 0, nr = 0, prev_base = 0;
  for (size_t t = 0; t < steps; t++) {
    uint32_t s_send = (uint32_t)((r->rank + w - t % w) % w); /* (rank - t) mod W */
    uint32_t s_recv = (s_send + w - 1) % w;                  /* (rank - t - 1) mod W */
    size_t off = ring_seg_off(count, w, s_send), len = ring_seg_len(count, w, s_send);
    size_t c = 0;
    for (size_t o = 0; o < len; o += chunk, c++)
      r->sends[ns++] = (ring_item_t){
          .off = off + o, .n = DRV_MIN(chunk, len - o), .dep = t ? (int64_t)(prev_base + c) : -1};
    size_t base = nr;
    off = ring_seg_off(count, w, s_recv);
    len = ring_seg_len(count, w, s_recv);
    for (size_t o = 0; o < len; o += chunk)
      r->recvs[nr++] = (ring_item_t){
          .off = off + o, .n = DRV_MIN(chunk, len - o), .dep = -1, .reduce = t < w - 1};
    prev_base = base;
  }
  r->nsend = ns;
  r->nrecv = nr;
  r->sched_count = count;
  r->sched_chunk = chunk;
  r->sched_valid = true;
  return DRV_OK;
}

/* dst[i] += src[i]; blocks of 8 so the compiler vectorizes it at -O2. */
static void ring_add(float *restrict dst, const float *restrict src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t k = 0; k < 8; k++) dst[i + k] += src[i + k];
  for (; i < n; i++) dst[i] += src[i];
}

// --- all-reduce ----------------------------------------------------------------------------
// One poll() loop moves both directions: receive from the left (the call's header, then the
// recv items in order, each reduced or landed), watch the right link for a close, send to
// the right (the header, then each send item once its input has arrived).

/* Where one all-reduce stands in each direction. */
typedef struct {
  ring_t *r;
  float *data;
  size_t count;
  uint32_t right, left;
  unsigned char hdr_out[RING_HEAD_BYTES], hdr_in[RING_HEAD_BYTES];
  size_t si, ri;       /* next send / recv item */
  size_t sdone, rdone; /* bytes of the current item (or header) done */
  bool hdr_sent, hdr_got;
} ring_call_t;

static bool call_send_left(const ring_call_t *c) {
  return !c->hdr_sent || c->si < c->r->nsend;
}

static bool call_recv_left(const ring_call_t *c) {
  return !c->hdr_got || c->ri < c->r->nrecv;
}

/* The header, or the next send item once the recv item it depends on is complete. */
static bool call_send_ready(const ring_call_t *c) {
  if (!c->hdr_sent) return true;
  if (c->si >= c->r->nsend) return false;
  int64_t dep = c->r->sends[c->si].dep;
  return dep < 0 || (size_t)dep < c->ri;
}

/* Our header and the first attempt to send it. It goes out first of all, so a neighbour
 * always learns what we called even when we stop at its header (a mismatch fails both
 * ends, neither waits for a timeout). */
static void call_begin(ring_call_t *c) {
  put_u32(c->hdr_out, RING_MAGIC_CALL);
  put_u32(c->hdr_out + 4, 0);
  put_u64(c->hdr_out + 8, c->r->seq);
  put_u64(c->hdr_out + 16, (uint64_t)c->count);
  ssize_t k = send(c->r->right_fd, c->hdr_out, sizeof c->hdr_out, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (k > 0) c->sdone = (size_t)k;
  if (c->sdone == sizeof c->hdr_out) {
    c->hdr_sent = true;
    c->sdone = 0;
  }
}

/* The left neighbour's header: the same call (sequence number) with the same count. */
static drv_result_t call_header_check(const ring_call_t *c) {
  uint64_t seq = get_u64(c->hdr_in + 8), cnt = get_u64(c->hdr_in + 16);
  if (get_u32(c->hdr_in) != RING_MAGIC_CALL || seq != c->r->seq || cnt != (uint64_t)c->count)
    return drv_error(DRV_ERR_PROTO,
                     "ring all-reduce: rank %u (call %llu, %zu floats): rank %u (left) "
                     "sent call %llu with %llu floats",
                     c->r->rank, (unsigned long long)c->r->seq, c->count, c->left,
                     (unsigned long long)seq, (unsigned long long)cnt);
  return DRV_OK;
}

/* Receives from the left what is there (up to a burst): the header, then recv items
 * strictly in order, each added into data through scratch or landed in place. *moved is
 * set when bytes came. */
static drv_result_t call_recv(ring_call_t *c, bool *moved) {
  ring_t *r = c->r;
  size_t burst = 0;
  while (burst < RING_BURST_BYTES && call_recv_left(c)) {
    const ring_item_t *it = c->hdr_got ? &r->recvs[c->ri] : NULL;
    char *dst;
    size_t want;
    if (!it) {
      dst = (char *)c->hdr_in + c->rdone;
      want = sizeof c->hdr_in - c->rdone;
    } else {
      dst = (it->reduce ? (char *)r->scratch : (char *)(c->data + it->off)) + c->rdone;
      want = it->n * sizeof(float) - c->rdone;
    }
    ssize_t k = recv(r->left_fd, dst, want, 0);
    if (k == 0)
      return drv_error(DRV_ERR_SYS,
                       "ring all-reduce: rank %u: rank %u (left) closed the connection", r->rank,
                       c->left);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return drv_error(DRV_ERR_SYS, "ring all-reduce: rank %u: link from rank %u (left): %s",
                       r->rank, c->left, strerror(errno));
    }
    *moved = true;
    burst += (size_t)k;
    c->rdone += (size_t)k;
    if (c->rdone < (it ? it->n * sizeof(float) : sizeof c->hdr_in)) continue;
    c->rdone = 0;
    if (!it) {
      DRV_CHECK(call_header_check(c));
      c->hdr_got = true;
    } else {
      if (it->reduce) ring_add(c->data + it->off, r->scratch, it->n);
      c->ri++;
    }
  }
  return DRV_OK;
}

/* The right link polled readable while we owe it data: the neighbour never writes to us, so
 * it closed or reset (or broke the protocol). */
static drv_result_t call_check_right(const ring_call_t *c) {
  const ring_t *r = c->r;
  char b;
  ssize_t k = recv(r->right_fd, &b, 1, MSG_DONTWAIT);
  if (k == 0)
    return drv_error(DRV_ERR_SYS, "ring all-reduce: rank %u: rank %u (right) closed the connection",
                     r->rank, c->right);
  if (k > 0)
    return drv_error(DRV_ERR_PROTO,
                     "ring all-reduce: rank %u: rank %u (right) sent data on a send-only link",
                     r->rank, c->right);
  if (errno != EAGAIN && errno != EINTR)
    return drv_error(DRV_ERR_SYS, "ring all-reduce: rank %u: link to rank %u (right): %s", r->rank,
                     c->right, strerror(errno));
  return DRV_OK;
}

/* Sends to the right what can go (up to a burst): the header, then every send item whose
 * input is complete. *moved is set when bytes went. */
static drv_result_t call_send(ring_call_t *c, bool *moved) {
  ring_t *r = c->r;
  size_t burst = 0;
  while (burst < RING_BURST_BYTES && call_send_ready(c)) {
    const ring_item_t *it = c->hdr_sent ? &r->sends[c->si] : NULL;
    const char *src;
    size_t want;
    if (!it) {
      src = (const char *)c->hdr_out + c->sdone;
      want = sizeof c->hdr_out - c->sdone;
    } else {
      src = (const char *)(c->data + it->off) + c->sdone;
      want = it->n * sizeof(float) - c->sdone;
    }
    ssize_t k = send(r->right_fd, src, want, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return drv_error(DRV_ERR_SYS, "ring all-reduce: rank %u: link to rank %u (right): %s",
                       r->rank, c->right, strerror(errno));
    }
    *moved = true;
    burst += (size_t)k;
    c->sdone += (size_t)k;
    if ((size_t)k < want) continue;
    c->sdone = 0;
    if (!it)
      c->hdr_sent = true;
    else
      c->si++;
  }
  return DRV_OK;
}

/* Nothing moved for `timeout` ms: the neighbour we wait for, named. */
static drv_result_t call_timeout(const ring_call_t *c, bool recv_left, bool send_ready,
                                 int64_t timeout) {
  const ring_t *r = c->r;
  if (recv_left && !send_ready)
    return drv_error(DRV_ERR_TIMEOUT,
                     "ring all-reduce: rank %u got nothing from rank %u (left) for %lld ms "
                     "(recv item %zu of %zu)",
                     r->rank, c->left, (long long)timeout, c->ri, r->nrecv);
  return drv_error(DRV_ERR_TIMEOUT,
                   "ring all-reduce: rank %u: rank %u (right) took nothing for %lld ms "
                   "(send item %zu of %zu)",
                   r->rank, c->right, (long long)timeout, c->si, r->nsend);
}

drv_result_t ring_allreduce(ring_t *r, float *data, size_t count) {
  drv_result_t rc = DRV_OK;
  if (!r) return drv_error(DRV_ERR_INVALID, "ring_allreduce: NULL ring");
  if (!r->connected) return drv_error(DRV_ERR_INVALID, "ring_allreduce: ring not connected");
  if (r->broken)
    return drv_error(DRV_ERR_INVALID,
                     "ring_allreduce: rank %u: the ring broke in an earlier all-reduce; "
                     "rebuild it",
                     r->rank);
  if (count && !data) return drv_error(DRV_ERR_INVALID, "ring_allreduce: NULL data");
  if (r->world == 1) return DRV_OK;

  int64_t timeout = drv_setting(DRV_SET_RING_TIMEOUT_MS);
  size_t chunk = (size_t)drv_setting(DRV_SET_RING_CHUNK_BYTES) / sizeof(float);
  if (chunk == 0) chunk = 1;
  DRV_CHECK_GOTO(ring_schedule(r, count, chunk), rc, fail);

  ring_call_t c = {.r = r,
                   .data = data,
                   .count = count,
                   .right = (r->rank + 1) % r->world,
                   .left = (r->rank + r->world - 1) % r->world};
  call_begin(&c);
  int64_t last = drv_now_ms(); /* when bytes last moved */
  for (;;) {
    bool send_left = call_send_left(&c), recv_left = call_recv_left(&c);
    if (!send_left && !recv_left) break;
    bool send_ready = call_send_ready(&c);
    /* While we still owe the right neighbour data, POLLIN on its socket means it closed
     * or reset (it never writes to us). */
    struct pollfd pfd[2] = {
        {.fd = send_left ? r->right_fd : -1, .events = POLLIN | (send_ready ? POLLOUT : 0)},
        {.fd = recv_left ? r->left_fd : -1, .events = POLLIN},
    };
    int64_t now = drv_now_ms();
    int n = poll(pfd, 2, (int)DRV_MIN(DRV_MAX(0, last + timeout - now), (int64_t)INT32_MAX));
    if (n < 0) {
      if (errno == EINTR) continue;
      rc = drv_error(DRV_ERR_SYS, "ring: rank %u: poll: %s", r->rank, strerror(errno));
      goto fail;
    }
    if (n == 0) {
      if (drv_now_ms() - last < timeout) continue;
      rc = call_timeout(&c, recv_left, send_ready, timeout);
      goto fail;
    }
    bool moved = false;
    if (pfd[1].revents) DRV_CHECK_GOTO(call_recv(&c, &moved), rc, fail);
    // After receiving (data already queued from a neighbour that then closed is still
    // read and checked first), a closed or reset right link.
    if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP))
      DRV_CHECK_GOTO(call_check_right(&c), rc, fail);
    // Tried whenever something is ready: the receive above may just have unlocked it.
    if ((pfd[0].revents & POLLOUT) || (moved && send_left))
      DRV_CHECK_GOTO(call_send(&c, &moved), rc, fail);
    if (moved) last = drv_now_ms();
  }
  r->seq++;
  return DRV_OK;

fail:
  r->broken = true;
  return rc;
}

// --- teardown ------------------------------------------------------------------------------

drv_result_t ring_check(ring_t *r) {
  if (!r || !r->connected || r->world < 2) return DRV_OK;
  if (r->broken) return drv_error(DRV_ERR_INVALID, "ring: broken by an earlier failure");
  const struct {
    int fd;
    uint32_t peer;
  } links[2] = {{r->left_fd, (r->rank + r->world - 1) % r->world},
                {r->right_fd, (r->rank + 1) % r->world}};
  for (int i = 0; i < 2; i++) {
    struct pollfd p = {.fd = links[i].fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) continue;
    /* Between all-reduces nothing is in flight: anything readable is an end. */
    char c;
    ssize_t n = recv(links[i].fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ||
        (p.revents & (POLLERR | POLLHUP))) {
      r->broken = true;
      return drv_error(DRV_ERR_SYS, "ring: rank %u closed its link%s%s", links[i].peer,
                       n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
    }
  }
  return DRV_OK;
}

void ring_destroy(ring_t **rp) {
  if (!rp || !*rp) return;
  ring_t *r = *rp;
  ring_close(&r->listen_fd);
  ring_close(&r->right_fd);
  ring_close(&r->left_fd);
  free(r->sends);
  free(r->recvs);
  free(r->scratch);
  free(r);
  *rp = NULL;
}
