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

#include "common/log.h"
#include "common/settings.h"
#include "common/sock.h"

#define RING_MAGIC_HELLO 0x474e5244u /* "DRNG" as little-endian bytes */
#define RING_MAGIC_CALL 0x52415244u  /* "DRAR" */
#define RING_MSG_BYTES 24            /* hello/answer and per-call header alike */
#define RING_PENDING_MAX 8           /* connections waiting for their hello at once */
/* Socket buffers asked for on every link (the kernel clamps them to net.core.{w,r}mem_max,
 * and doubles them). On loopback this measured as good as autotuning or better, and more
 * steady; 0 leaves the kernel's autotuning alone. */
#define RING_SOCKBUF_BYTES (4 << 20)
/* Bytes moved in one direction before the loop polls again and turns to the other: larger
 * than what the socket buffers can hold, so in practice each side drains what is ready
 * (a 1 MiB cap measured clearly slower), yet bounded so neither side can starve the other. */
#define RING_BURST_BYTES (16 << 20)

enum { RING_KIND_HELLO = 1, RING_KIND_ACCEPT = 2, RING_KIND_REFUSE = 3 };

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
  uint64_t tag;
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

/* hello/answer: magic, kind, rank, world, tag */
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

// --- connect -------------------------------------------------------------------------------
// ring_connect dials the right neighbour and accepts the left one at the same time, in one
// poll() loop: each side may come up in any order, and a peer that is not listening yet is
// dialled again with a growing backoff. The dial runs through DIAL_WAIT (until the next try),
// DIAL_CONNECTING, DIAL_HELLO (ours going out), DIAL_ANSWER (theirs coming in), DIAL_DONE;
// accepted connections wait in `pend` until their hello is complete and judged.

typedef struct {
  int fd;
  size_t got;
  unsigned char buf[RING_MSG_BYTES];
} ring_pending_t;

typedef enum { DIAL_WAIT, DIAL_CONNECTING, DIAL_HELLO, DIAL_ANSWER, DIAL_DONE } ring_dial_t;

/* The state of one ring_connect. */
typedef struct {
  ring_t *r;
  uint32_t right, left;
  const char *right_addr;
  struct addrinfo *ai; /* the right neighbour's address */
  /* dialling the right neighbour */
  ring_dial_t dial;
  int rfd;
  size_t dio; /* bytes of the hello sent, then of the answer received */
  unsigned char hello[RING_MSG_BYTES], ans[RING_MSG_BYTES];
  int64_t next_try;
  int backoff;   /* ms before the next try, doubling up to 500 */
  char why[160]; /* why the last try failed */
  /* accepting the left neighbour */
  int lfd; /* -1 until its hello is accepted */
  ring_pending_t pend[RING_PENDING_MAX];
  int npend;
} ring_link_t;

/* A hello from a would-be left neighbour is complete: accept or refuse it. Returns true
 * when it is the neighbour we wait for (the answer has been sent). */
static bool ring_judge_hello(ring_t *r, ring_pending_t *p, uint32_t left) {
  const unsigned char *b = p->buf;
  uint32_t magic = get_u32(b), kind = get_u32(b + 4), rank = get_u32(b + 8);
  uint32_t world = get_u32(b + 12);
  uint64_t tag = get_u64(b + 16);
  unsigned char ans[RING_MSG_BYTES];
  if (magic != RING_MAGIC_HELLO || kind != RING_KIND_HELLO) {
    log_warn("ring: rank %u refused a connection that is not a ring hello", r->rank);
    return false;
  }
  bool ok = rank == left && world == r->world && tag == r->tag;
  ring_msg_pack(ans, ok ? RING_KIND_ACCEPT : RING_KIND_REFUSE, r->rank, r->world, r->tag);
  /* A fresh socket's send buffer is empty: 24 bytes go out at once or the peer is gone. */
  ssize_t k = send(p->fd, ans, sizeof ans, MSG_NOSIGNAL);
  if (!ok) {
    log_warn(
        "ring: rank %u of %u (tag %#llx) refused rank %u of %u with tag %#llx "
        "(expected rank %u)",
        r->rank, r->world, (unsigned long long)r->tag, rank, world, (unsigned long long)tag, left);
    return false;
  }
  return k == (ssize_t)sizeof ans;
}

/* Starts a connection to the right neighbour (DIAL_WAIT, its time has come). A connect
 * that fails at once schedules the next try. */
static drv_result_t dial_start(ring_link_t *c, int64_t now) {
  drv_result_t rc = DRV_OK;
  c->rfd = socket(c->ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  SYS_CHECK_GOTO(c->rfd, rc, fail, "ring: socket");
  ring_sockbufs(c->rfd);
  c->dio = 0;
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

/* DIAL_HELLO: sends what is left of our hello (then on to DIAL_ANSWER); false (with why)
 * when the link failed. */
static bool dial_hello(ring_link_t *c) {
  bool ok = true;
  ssize_t k = send(c->rfd, c->hello + c->dio, sizeof c->hello - c->dio, MSG_NOSIGNAL);
  if (k > 0) {
    c->dio += (size_t)k;
  } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
    snprintf(c->why, sizeof c->why, "hello: %s", strerror(errno));
    ok = false;
  }
  if (c->dio == sizeof c->hello) {
    c->dial = DIAL_ANSWER;
    c->dio = 0;
  }
  return ok;
}

/* DIAL_ANSWER: reads what is left of the answer; false (with why) when the link failed. */
static bool dial_answer(ring_link_t *c) {
  ssize_t k = recv(c->rfd, c->ans + c->dio, sizeof c->ans - c->dio, 0);
  if (k > 0) {
    c->dio += (size_t)k;
  } else if (k == 0) {
    snprintf(c->why, sizeof c->why, "it closed the connection before answering");
    return false;
  } else if (errno != EAGAIN && errno != EINTR) {
    snprintf(c->why, sizeof c->why, "answer: %s", strerror(errno));
    return false;
  }
  return true;
}

/* The right neighbour's whole answer: it must be a ring peer that accepted us and is who
 * we dialled. DRV_ERR_PROTO otherwise (no retry: the address belongs to someone else). */
static drv_result_t answer_check(const ring_link_t *c) {
  const ring_t *r = c->r;
  const unsigned char *a = c->ans;
  uint32_t magic = get_u32(a), kind = get_u32(a + 4), prank = get_u32(a + 8);
  uint32_t pworld = get_u32(a + 12);
  uint64_t ptag = get_u64(a + 16);
  if (magic != RING_MAGIC_HELLO || (kind != RING_KIND_ACCEPT && kind != RING_KIND_REFUSE))
    return drv_error(DRV_ERR_PROTO, "ring: rank %u: %s did not answer as a ring peer", r->rank,
                     c->right_addr);
  if (kind == RING_KIND_REFUSE || prank != c->right || pworld != r->world || ptag != r->tag)
    return drv_error(DRV_ERR_PROTO,
                     "ring: rank %u of %u (tag %#llx): the peer at %s %s: it is rank %u "
                     "of %u with tag %#llx, expected rank %u",
                     r->rank, r->world, (unsigned long long)r->tag, c->right_addr,
                     kind == RING_KIND_REFUSE ? "refused us" : "is someone else", prank, pworld,
                     (unsigned long long)ptag, c->right);
  return DRV_OK;
}

/* The dialled socket is ready: one step of connect, hello, answer. A failed try is retried
 * after the backoff; a wrong peer is an error. */
static drv_result_t dial_step(ring_link_t *c) {
  bool retry = false;
  if (c->dial == DIAL_CONNECTING) retry = !dial_connected(c);
  if (c->dial == DIAL_HELLO && !retry) {
    retry = !dial_hello(c);
  } else if (c->dial == DIAL_ANSWER && !retry) {
    retry = !dial_answer(c);
    if (c->dio == sizeof c->ans) {
      DRV_CHECK(answer_check(c));
      c->dial = DIAL_DONE;
    }
  }
  if (retry) dial_retry(c);
  return DRV_OK;
}

/* Reads the hellos of would-be left neighbours that have data (pfd[i] for pend[i]): the
 * one we wait for becomes the left link, stale or foreign ones are refused and closed. */
static void hellos_read(ring_link_t *c, const struct pollfd *pfd) {
  for (int i = 0; i < c->npend; i++) {
    if (!pfd[i].revents) continue;
    ring_pending_t *p = &c->pend[i];
    ssize_t k = recv(p->fd, p->buf + p->got, sizeof p->buf - p->got, 0);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    bool drop = k <= 0;
    if (k > 0) p->got += (size_t)k;
    if (!drop && p->got == sizeof p->buf) {
      if (c->lfd < 0 && ring_judge_hello(c->r, p, c->left)) {
        c->lfd = p->fd;
        p->fd = -1;
      }
      drop = true;
    }
    if (drop) ring_close(&p->fd);
  }
  int keep = 0;
  for (int i = 0; i < c->npend; i++)
    if (c->pend[i].fd >= 0) c->pend[keep++] = c->pend[i];
  c->npend = keep;
}

/* Takes every connection waiting on the listening socket, to wait for its hello. */
static void accept_pending(ring_link_t *c) {
  for (;;) {
    int fd = accept4(c->r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break; /* EAGAIN, or a connection that died before we took it */
    if (c->npend == RING_PENDING_MAX) {
      log_warn("ring: rank %u: too many connections without a hello; dropping one", c->r->rank);
      close(fd);
      continue;
    }
    c->pend[c->npend++] = (ring_pending_t){.fd = fd, .got = 0};
  }
}

/* What to poll: [0] the listening socket (until the left link is in), [1] the dialled
 * socket in its current state, [2..] the pending hellos. Returns how many entries. */
static nfds_t link_pollfds(const ring_link_t *c, struct pollfd *pfd) {
  pfd[0] = (struct pollfd){.fd = c->lfd < 0 ? c->r->listen_fd : -1, .events = POLLIN};
  short ev = c->dial == DIAL_CONNECTING || c->dial == DIAL_HELLO ? POLLOUT
             : c->dial == DIAL_ANSWER                            ? POLLIN
                                                                 : 0;
  pfd[1] = (struct pollfd){.fd = ev ? c->rfd : -1, .events = ev};
  for (int i = 0; i < c->npend; i++)
    pfd[2 + i] = (struct pollfd){.fd = c->pend[i].fd, .events = POLLIN};
  return (nfds_t)(2 + c->npend);
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

/* Closes every socket of a connect that is over and frees the address. */
static void link_close(ring_link_t *c) {
  for (int i = 0; i < c->npend; i++) ring_close(&c->pend[i].fd);
  c->npend = 0;
  ring_close(&c->rfd);
  ring_close(&c->lfd);
  if (c->ai) freeaddrinfo(c->ai);
  c->ai = NULL;
}

drv_result_t ring_connect(ring_t *r, uint32_t rank, uint32_t world, const char *const *addrs,
                          uint64_t tag, int timeout_ms) {
  drv_result_t rc = DRV_OK;
  if (!r) return drv_error(DRV_ERR_INVALID, "ring_connect: NULL ring");
  if (r->connected || r->listen_fd < 0)
    return drv_error(DRV_ERR_INVALID, "ring_connect: ring already connected");
  if (world == 0 || rank >= world)
    return drv_error(DRV_ERR_INVALID, "ring_connect: rank %u of world %u", rank, world);
  if (timeout_ms < 0) timeout_ms = 0;
  r->rank = rank;
  r->world = world;
  r->tag = tag;
  if (world == 1) {
    ring_close(&r->listen_fd);
    r->connected = true;
    return DRV_OK;
  }
  ring_link_t c = {.r = r,
                   .right = (rank + 1) % world,
                   .left = (rank + world - 1) % world,
                   .dial = DIAL_WAIT,
                   .rfd = -1,
                   .backoff = 10,
                   .why = "no attempt finished",
                   .lfd = -1};
  if (!addrs || !addrs[c.right])
    return drv_error(DRV_ERR_INVALID, "ring_connect: no address for rank %u", c.right);
  c.right_addr = addrs[c.right];
  DRV_CHECK_GOTO(ring_resolve(c.right_addr, &c.ai), rc, fail);
  ring_msg_pack(c.hello, RING_KIND_HELLO, rank, world, tag);

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
    int64_t until = c.dial == DIAL_WAIT ? DRV_MIN(deadline, c.next_try) : deadline;
    int n = poll(pfd, nfds, (int)DRV_MAX(0, until - now));
    if (n < 0) {
      if (errno == EINTR) continue;
      rc = drv_error(DRV_ERR_SYS, "ring: poll: %s", strerror(errno));
      goto fail;
    }
    if (n == 0) continue;
    if (pfd[1].revents) DRV_CHECK_GOTO(dial_step(&c), rc, fail);
    hellos_read(&c, pfd + 2);
    if (c.lfd < 0 && (pfd[0].revents & POLLIN)) accept_pending(&c);
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
  unsigned char hdr_out[RING_MSG_BYTES], hdr_in[RING_MSG_BYTES];
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
