/* ring.h: the host ring all-reduce over TCP, used by CPU workers for gradients.
 *
 * Each of W ranks opens a listening socket (ring_listen), the addresses are exchanged out of
 * band (the coordinator relays them), then every rank connects to its right neighbour
 * (rank+1)%W and accepts its left neighbour (rank-1)%W (ring_connect). Both sides of each
 * link say who they are with a hello carrying their rank and a caller-chosen 64-bit tag
 * (job id and generation), so a stale peer from an earlier generation is refused.
 *
 * ring_allreduce sums a float array in place: a reduce-scatter then an all-gather, W-1 steps
 * each, over W segments of nearly equal size. Each step is cut into chunks
 * (DROVER_RING_CHUNK_BYTES) and pipelined: sending to the right and receiving from the left
 * proceed together over non-blocking sockets, and a chunk is forwarded as soon as it has
 * been received and reduced. Every segment is summed by the same chain of ranks in the same
 * order and then copied, so all ranks end with bitwise-identical results.
 *
 * Nothing blocks without a bound: connecting is limited by the caller's timeout, and an
 * all-reduce that makes no progress for DROVER_RING_TIMEOUT_MS fails with DRV_ERR_TIMEOUT.
 * A peer that dies gives DRV_ERR_SYS naming it; SIGPIPE is never raised. After a failed
 * all-reduce the ring is broken (the streams are out of step) and must be rebuilt.
 *
 * Wire format (every integer little-endian):
 *   hello/answer: u32 magic "DRNG", u32 kind (1 hello, 2 accept, 3 refuse), u32 rank,
 *                 u32 world, u64 tag                                             (24 bytes)
 *   per all-reduce: header u32 magic "DRAR", u32 0, u64 sequence number, u64 count
 *                 (24 bytes), then raw float32 chunks in schedule order.
 */
#ifndef DROVER_COLLECTIVE_RING_H
#define DROVER_COLLECTIVE_RING_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

typedef struct ring ring_t;

/* Longest address ring_address() returns, terminator included. */
#define RING_ADDR_MAX 320

/* Opens a TCP socket listening on `bind_host` ("127.0.0.1", "0.0.0.0", "::", a name) at an
 * ephemeral port. `advertise` is the host others should dial, put in ring_address(); NULL
 * means bind_host, or this machine's host name when bind_host is a wildcard. On success
 * *out is a new ring owned by the caller (ring_destroy). */
drv_result_t ring_listen(const char *bind_host, const char *advertise, ring_t **out);

/* "HOST:PORT" ("[v6addr]:PORT" for IPv6 literals) where this ring accepts its left
 * neighbour. Owned by the ring, valid until ring_destroy. */
const char *ring_address(const ring_t *r);

/* How many all-reduces this ring has completed (its collective sequence number); 0 for
 * NULL. A rank stuck in a collective reports the one it is in as this + 1. */
uint64_t ring_seq(const ring_t *r);

/* Connects the ring: dials addrs[(rank+1)%world] and accepts one connection from rank
 * (rank-1)%world, each side checking the other's rank, world and `tag` (a peer with other
 * values is refused and, on the accepting side, the wait goes on for the right one).
 * addrs[world] are every rank's ring_address (borrowed). world 1 opens no socket.
 * Everything is bounded by timeout_ms: a peer that does not show up gives DRV_ERR_TIMEOUT
 * naming it; a refused hello gives DRV_ERR_PROTO. The listening socket is closed after. */
drv_result_t ring_connect(ring_t *r, uint32_t rank, uint32_t world, const char *const *addrs,
                          uint64_t tag, int timeout_ms);

/* In-place sum of data[count] (host memory) across the ring; every rank must call it with
 * the same count (checked: a mismatch gives DRV_ERR_PROTO). Any count, 0 included.
 * Returns DRV_ERR_TIMEOUT after DROVER_RING_TIMEOUT_MS without progress, DRV_ERR_SYS when
 * a neighbour closes or resets (the message names its rank). After any failure the ring
 * refuses further calls (DRV_ERR_INVALID): rebuild it. */
drv_result_t ring_allreduce(ring_t *r, float *data, size_t count);

/* Between all-reduces, without blocking: DRV_OK while both links are open, DRV_ERR_SYS
 * naming the rank when a neighbour has closed or reset its link (it died, or its own ring
 * broke), after which the ring is broken. For workers whose gradients travel elsewhere
 * (NCCL) and keep the ring as a watch on their peers. */
drv_result_t ring_check(ring_t *r);

/* Closes the sockets and frees the ring; NULL-safe, sets *r to NULL. */
void ring_destroy(ring_t **r);

#endif
