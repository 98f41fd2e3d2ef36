/* sock.h: the one place ZeroMQ sockets are made and messages cross them; the only
 * user of zmq.h.
 *
 * A sock_t is a socket of one kind (ROUTER, DEALER, PUB, SUB) at one place of the
 * protocol (proto_at_t): sock_recv refuses a message that may not arrive there, with
 * DRV_ERR_PROTO and a message such as "'ok' is not a request clients may send".
 * sock_new applies drover's limits to every socket: ZMQ_MAXMSGSIZE (an oversized frame is
 * dropped by libzmq, which also disconnects that peer), send/receive high-water marks, a
 * short linger, TCP keepalive (no ZMTP heartbeats: see sock.c), and ROUTER_MANDATORY on
 * ROUTERs (sending to a peer that is gone fails instead of vanishing).
 *
 * Security is switched on here, for every socket of a context at once: a context given
 * keys (sock_ctx_secure) makes its ROUTER and PUB sockets CurveZMQ servers, each checked
 * by the context's ZAP handler (sock_zap_new, which must exist before any of them), and
 * its DEALER and SUB sockets CurveZMQ clients that pin the server's public key. A
 * context is plaintext only when told so (sock_ctx_plaintext); one that is neither
 * refuses every tcp:// bind and connect. On a secure server, every message received
 * carries the name the ZAP handler gave its sender's key (sock_peer_t.user), and a
 * connection that has not authenticated within DROVER_HANDSHAKE_MS is closed.
 *
 * Endpoints: a coordinator is named by its base endpoint "tcp://HOST:PORT"; agents and
 * workers use PORT, clients PORT+1, events PORT+2 (sock_endpoint).
 */
#ifndef DROVER_COMMON_SOCK_H
#define DROVER_COMMON_SOCK_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"
#include "common/proto.h"

#define SOCK_PEER_MAX 256
#define SOCK_KEY_BYTES 32 /* a CurveZMQ (Curve25519) key */
#define SOCK_Z85_LEN 40   /* the same key in Z85 text */
#define SOCK_USER_MAX 128 /* longest name the ZAP handler gives a key */

typedef enum { SOCK_AGENTS = 0, SOCK_CLIENTS = 1, SOCK_EVENTS = 2 } sock_port_t;

typedef enum { SOCK_ROUTER, SOCK_DEALER, SOCK_PUB, SOCK_SUB, SOCK_ZAP, SOCK_MONITOR } sock_kind_t;

typedef struct sock_ctx sock_ctx_t; /* a ZeroMQ context: its I/O thread */
typedef struct sock sock_t;

/* A ROUTER's name for one peer (its routing id), and who it proved to be. len 0: none. */
typedef struct {
  unsigned char id[SOCK_PEER_MAX];
  size_t len;
  char user[SOCK_USER_MAX]; /* the ZAP handler's name for its key ("agent:n1", "user:bob",
                               "worker:<hex>"); "" on a plaintext socket */
  char addr[64];            /* its IP address, "" when unknown */
} sock_peer_t;

/* This process's CurveZMQ keypair and, for connecting sockets, the server's public key. */
typedef struct {
  unsigned char pub[SOCK_KEY_BYTES], sec[SOCK_KEY_BYTES];
  unsigned char server[SOCK_KEY_BYTES]; /* the coordinator's public key: pinned */
} sock_keys_t;

/* The ZAP handler's decision for a connection to a server socket of `domain` ("agents",
 * "clients" or "events": the coordinator's three ports) from `address` with client key
 * `key`: 1 admits it, naming it in user (NUL-terminated, at most usersz bytes), 0 refuses
 * it (the handshake fails; the peer sees its connection closed). */
typedef int (*sock_authorize_fn)(void *arg, const char *domain, const char *address,
                                 const unsigned char key[SOCK_KEY_BYTES], char *user,
                                 size_t usersz);

/* What may differ between sockets; zero is the default for each. */
typedef struct {
  const char *identity; /* DEALER: routing id its ROUTER sees (NULL: libzmq's) */
  int linger_ms;        /* how long unsent messages outlive sock_destroy (0: 200 ms) */
  int no_linger;        /* drop unsent messages at once on sock_destroy */
  int immediate;        /* DEALER: queue nothing while not connected */
  int handover;         /* ROUTER: a new connection with a known identity takes it over */
} sock_opts_t;

/* A new context, or NULL with the last error set. */
sock_ctx_t *sock_ctx_new(void);

/* Makes every socket made from now on in ctx use CurveZMQ with keys (copied). */
void sock_ctx_secure(sock_ctx_t *ctx, const sock_keys_t *keys);

/* Makes ctx's sockets plaintext: anyone who reaches them is believed. Only by explicit
 * choice (--insecure, DROVER_INSECURE=1); logs a warning saying so. */
void sock_ctx_plaintext(sock_ctx_t *ctx);

/* Whether ctx was given keys. */
int sock_ctx_is_secure(const sock_ctx_t *ctx);

/* The ZAP handler of a secure ctx: a socket to poll with the others (sock_poll) and to
 * answer with sock_zap_answer. Made before any ROUTER or PUB of ctx; one per context. */
sock_t *sock_zap_new(sock_ctx_t *ctx);

/* Answers one waiting authentication request on zap with fn's decision. DRV_ERR_TIMEOUT
 * when none waits; DRV_ERR_PROTO for a malformed request (refused). */
drv_result_t sock_zap_answer(sock_t *zap, sock_authorize_fn fn, void *arg);

/* Connection limits on bound socket s: at most per_addr TCP connections from one IP
 * address and `total` in all (authenticated or not yet). A connection over a limit is
 * ended as soon as it is accepted (its reading side shut: libzmq sees the end of the
 * stream and closes it), with a warning at most once a second. Returns the monitor that
 * counts them: poll it with the others and call sock_limits_service when it is
 * readable. NULL with the last error on failure. Destroy it before s. */
sock_t *sock_limits_new(sock_t *s, int per_addr, int total);

/* Handles the monitor's waiting events (accepted, disconnected). */
void sock_limits_service(sock_t *mon);

/* How many connections the monitor's socket has now, and how many it ended so far. */
void sock_limits_counts(const sock_t *mon, int *open, uint64_t *ended);

/* A new CurveZMQ keypair from the system's random source (libsodium). */
void sock_keypair(unsigned char pub[SOCK_KEY_BYTES], unsigned char sec[SOCK_KEY_BYTES]);

/* The public key of secret key sec. */
void sock_public_key(const unsigned char sec[SOCK_KEY_BYTES], unsigned char pub[SOCK_KEY_BYTES]);

/* Key <-> Z85 text (40 characters and a NUL). decode: DRV_ERR_INVALID unless z is exactly
 * one Z85 key. */
void sock_z85_encode(const unsigned char key[SOCK_KEY_BYTES], char out[SOCK_Z85_LEN + 1]);
drv_result_t sock_z85_decode(const char *z, unsigned char key[SOCK_KEY_BYTES]);

/* Ends the context (every socket must be destroyed first); NULL-safe, nulls *ctx. */
void sock_ctx_destroy(sock_ctx_t **ctx);

/* A socket of `kind` that receives the messages of `at`, with the limits applied and
 * opts (NULL: defaults). NULL with the last error set on failure. */
sock_t *sock_new(sock_ctx_t *ctx, sock_kind_t kind, proto_at_t at, const sock_opts_t *opts);

/* Closes the socket; NULL-safe, nulls *s. */
void sock_destroy(sock_t **s);

/* Binds or connects to endpoint "tcp://HOST:PORT" (a ZeroMQ endpoint). */
drv_result_t sock_bind(sock_t *s, const char *endpoint);
drv_result_t sock_connect(sock_t *s, const char *endpoint);

/* The endpoint the socket bound last ("tcp://127.0.0.1:41234" after binding port *). */
drv_result_t sock_bound_endpoint(sock_t *s, char *out, size_t n);

/* SUB: subscribes to topics starting with `prefix` and connects to endpoint, then waits
 * up to timeout_ms for the connection's handshake so the subscription is on its way
 * before the caller asks for what it wants to see. */
drv_result_t sock_subscribe(sock_t *s, const char *endpoint, const char *prefix, int timeout_ms);

/* Sets how long unsent messages outlive sock_destroy (say, a last `bye`). */
void sock_set_linger(sock_t *s, int ms);

/* Writes into out the endpoint of `port` for coordinator base endpoint `base`
 * ("tcp://h:7700", SOCK_CLIENTS -> "tcp://h:7701"). A wildcard bind endpoint ("tcp://" "*:7700")
 * works too. */
drv_result_t sock_endpoint(const char *base, sock_port_t port, char *out, size_t outsz);

/* Whether any of the three ports of coordinator endpoint `base` lies in this machine's
 * ephemeral port range (Linux: /proc/sys/net/ipv4/ip_local_port_range, into *lo..*hi).
 * Outgoing connections may then take those ports while the coordinator is down, and a
 * client dialling one can connect to itself (sock_fd_self_connected). */
int sock_ports_ephemeral(const char *base, int *lo, int *hi);

/* Encodes and sends m without blocking. `to` (ROUTER only) names the peer; a ROUTER peer
 * that is gone gives DRV_ERR_ZMQ. */
drv_result_t sock_send(sock_t *s, const sock_peer_t *to, const proto_msg_t *m);

/* Publishes m on a PUB socket under `topic`. */
drv_result_t sock_publish(sock_t *pub, const char *topic, const proto_msg_t *m);

/* Waits up to timeout_ms (-1: forever) until one of socks[0..n) has a message; ready[i]
 * says which. DRV_ERR_TIMEOUT when none did (or a signal came). */
drv_result_t sock_poll(sock_t *const socks[], int n, int timeout_ms, int ready[]);

/* Whether a message is waiting on s now. */
int sock_readable(sock_t *s);

/* Whether TCP socket fd is connected to itself (its local and peer addresses are the same),
 * which happens on Linux when a client dials a port of the ephemeral range that nothing
 * listens on and the kernel gives the client that very port. The address goes into addr
 * ("127.0.0.1:40000") when addr is non-NULL. */
int sock_fd_self_connected(int fd, char *addr, size_t addrsz);

/* Ends a self-connected socket fd that another owner (libzmq) will close: its reading side
 * is shut, so the owner sees the end of the stream and closes it, and that close resets
 * the connection instead of leaving the port in TIME_WAIT. */
void sock_fd_end_self_connection(int fd);

/* Receives one message (blocking up to timeout_ms; -1 forever). On a ROUTER the sender's
 * identity goes into *from (may be NULL elsewhere); on a SUB the topic frame is dropped.
 * A frame that fails to decode, or a message that may not arrive at this socket, is
 * consumed and reported as DRV_ERR_PROTO (the caller answers or drops it and keeps
 * going); DRV_ERR_TIMEOUT when nothing arrived. On a connecting socket, a message that
 * came back over a connection to itself (sock_fd_self_connected) is dropped and reported
 * as DRV_ERR_ZMQ, and that connection is ended (sock_fd_end_self_connection) so ZeroMQ
 * dials again: without this a client would take its own request for the answer and hold
 * the port its server needs. On a ROUTER, from->user and from->addr say who sent it.
 * m must be fini'ed by the caller in every case. */
drv_result_t sock_recv(sock_t *s, sock_peer_t *from, proto_msg_t *m, int timeout_ms);

/* Client helper: connects a fresh DEALER to the coordinator's client port, sends req,
 * waits up to timeout_ms for one reply. A PROTO_ERROR reply comes back as DRV_ERR_INVALID
 * with its message as the last error (the reply is still in *reply). */
drv_result_t sock_request(sock_ctx_t *ctx, const char *base, const proto_msg_t *req,
                          proto_msg_t *reply, int timeout_ms);

#endif
