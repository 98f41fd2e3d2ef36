/* sock.h: the one place ZeroMQ sockets are made and messages cross them.
 *
 * sock_new applies drover's limits to every socket: ZMQ_MAXMSGSIZE (an oversized frame
 * is dropped by libzmq, which also disconnects that peer), send/receive high-water marks,
 * a short linger, ZMTP heartbeats, and ROUTER_MANDATORY on ROUTERs (sending to a peer that
 * is gone fails instead of vanishing). Security (CurveZMQ) will be switched on here too.
 *
 * Endpoints: a coordinator is named by its base endpoint "tcp://HOST:PORT"; agents and
 * workers use PORT, clients PORT+1, events PORT+2 (sock_endpoint).
 */
#ifndef DROVER_COMMON_SOCK_H
#define DROVER_COMMON_SOCK_H

#include <stddef.h>

#include "common/drv.h"
#include "common/proto.h"

#define SOCK_DEFAULT_ENDPOINT "tcp://127.0.0.1:7700"

typedef enum { SOCK_AGENTS = 0, SOCK_CLIENTS = 1, SOCK_EVENTS = 2 } sock_port_t;

/* A ZeroMQ socket of `type` (ZMQ_ROUTER, ZMQ_DEALER, ...) on ctx with the limits applied.
 * Returns NULL with the last error set on failure. Close with zmq_close. */
void *sock_new(void *ctx, int type);

/* Writes into out the endpoint of `port` for coordinator base endpoint `base`
 * ("tcp://h:7700", SOCK_CLIENTS -> "tcp://h:7701"). A wildcard bind endpoint ("tcp://" "*:7700")
 * works too. */
drv_result_t sock_endpoint(const char *base, sock_port_t port, char *out, size_t outsz);

/* Whether any of the three ports of coordinator endpoint `base` lies in this machine's
 * ephemeral port range (Linux: /proc/sys/net/ipv4/ip_local_port_range, into *lo..*hi).
 * Outgoing connections may then take those ports while the coordinator is down, and a
 * client dialling one can connect to itself (sock_fd_self_connected). */
int sock_ports_ephemeral(const char *base, int *lo, int *hi);

/* Encodes and sends m. identity (ROUTER only) is sent first as its own frame when
 * non-NULL. Non-blocking when dontwait; a ROUTER peer that is gone gives DRV_ERR_ZMQ. */
drv_result_t sock_send(void *s, const void *identity, size_t idlen, const proto_msg_t *m,
                       int dontwait);

/* Publishes m on a PUB socket under `topic`. */
drv_result_t sock_publish(void *pub, const char *topic, const proto_msg_t *m);

/* Whether TCP socket fd is connected to itself (its local and peer addresses are the same),
 * which happens on Linux when a client dials a port of the ephemeral range that nothing
 * listens on and the kernel gives the client that very port. The address goes into addr
 * ("127.0.0.1:40000") when addr is non-NULL. */
int sock_fd_self_connected(int fd, char *addr, size_t addrsz);

/* Ends a self-connected socket fd that another owner (libzmq) will close: its reading side
 * is shut, so the owner sees the end of the stream and closes it, and that close resets
 * the connection instead of leaving the port in TIME_WAIT. */
void sock_fd_end_self_connection(int fd);

/* Receives one message (blocking up to timeout_ms; -1 forever). On a ROUTER the identity
 * frame is copied into identity[*idlen] (capacity 256). A frame that fails to decode is
 * consumed and reported as DRV_ERR_PROTO (the caller answers or drops it and keeps going);
 * DRV_ERR_TIMEOUT when nothing arrived. On a connecting socket, a message that came back
 * over a connection to itself (sock_fd_self_connected) is dropped and reported as
 * DRV_ERR_ZMQ, and that connection is ended (sock_fd_end_self_connection) so ZeroMQ dials again:
 * without this a client would take its own request for the answer and hold the port its server
 * needs. m must be fini'ed by the caller in every case. */
drv_result_t sock_recv(void *s, int is_router, unsigned char *identity, size_t *idlen,
                       proto_msg_t *m, int timeout_ms);

/* Client helper: connects a fresh DEALER to the coordinator's client port, sends req,
 * waits up to timeout_ms for one reply. A PROTO_ERROR reply comes back as DRV_ERR_INVALID
 * with its message as the last error (the reply is still in *reply). */
drv_result_t sock_request(void *ctx, const char *base, const proto_msg_t *req, proto_msg_t *reply,
                          int timeout_ms);

#endif
