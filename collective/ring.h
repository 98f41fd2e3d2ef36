/* ring.h: the host ring all-reduce over TCP, used by CPU workers for gradients.
 *
 * Each of W ranks opens a listening socket (ring_listen), the addresses are exchanged out of
 * band (the coordinator relays them), then every rank connects to its right neighbour
 * (rank+1)%W and accepts its left neighbour (rank-1)%W (ring_connect). Before any gradient
 * byte moves, the two ends of each link prove to each other that they hold the job's ring
 * key: each sends a fresh random nonce and an HMAC-SHA-256, under a key derived from the
 * ring key for this generation, over both nonces, both ranks, the world, the generation,
 * the job and both ring addresses, with a label per direction, checked in constant time. A
 * connection that does not prove it is closed and logged (by its address), and the rank
 * goes on waiting for its real neighbour. Links are authenticated when they are set up;
 * what follows is neither encrypted nor authenticated message by message (NCCL's sockets
 * are not either). Without a key (the caller's explicit choice) a link is checked by its
 * public tag alone, rank, world and (job << 32) | generation: enough to keep out a stale
 * peer, and nobody else.
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
 * all-reduce the ring is broken (the streams are out of step) and must be rebuilt. In a
 * handshake, every message has a fixed length, a connection that has not finished within
 * DROVER_RING_HANDSHAKE_MS is closed (on either side), and at most 8 accepted connections
 * wait for theirs at once: one more closes the oldest.
 *
 * Wire format (every integer little-endian). A handshake message starts with a 24-byte
 * head, its sender's: u32 magic "DRNG", u32 kind, u32 rank, u32 world, u64 tag
 * (job << 32 | generation). Then, by kind:
 *   1 hello      dialer, no key   nothing more                          24 bytes
 *   2 accept     acceptor         nothing more                          24 bytes
 *   3 refuse     acceptor         nothing more                          24 bytes
 *   4 auth hello dialer           nonce_d[32]                           56 bytes
 *   5 challenge  acceptor         nonce_a[32], proof_a[32]              88 bytes
 *   6 proof      dialer           proof_d[32]                           56 bytes
 * With a key: auth hello, challenge, proof, accept (a refuse may come instead of any
 * answer). Without: hello, accept. The generation's key is k = BLAKE2b-256 keyed with the
 * ring key over "drover ring generation key v1" and its NUL, u64 job, u32 generation; a
 * proof is HMAC-SHA-256(k, s(label), nonce_d, nonce_a, u32 rank_d, u32 rank_a, u32 world,
 * u32 generation, u64 job, s(addr_d), s(addr_a)), s() being a u32 length and the bytes, the
 * label "drover ring acceptor proof v1" or "drover ring dialer proof v1", and each address
 * that side's ring address as the prover knows it (its own, the one it has for the other).
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

/* Bytes of a ring key, the secret every rank of a job holds. */
#define RING_KEY_BYTES 32

/* Who may be a neighbour: the job and generation every link names, and the job's ring key
 * that both ends of a link prove they hold. */
typedef struct {
  int64_t job;
  uint32_t generation;
  const unsigned char *key; /* RING_KEY_BYTES, borrowed; NULL: no proof, the public tag only */
} ring_auth_t;

/* A ring key from its 64 hex digits. DRV_ERR_INVALID (key zeroed) when it is not that. */
drv_result_t ring_key_parse(const char *hex, unsigned char key[RING_KEY_BYTES]);

/* A fresh random ring key (tests, benchmarks: a job's key comes with its assignment). */
drv_result_t ring_key_new(unsigned char key[RING_KEY_BYTES]);

/* Connects the ring: dials addrs[(rank+1)%world] and accepts one connection from rank
 * (rank-1)%world. Each side checks the other's rank, world and tag, then, when auth->key
 * is set, that it proves the key (see above). The accepting side refuses a peer that fails
 * any of it and goes on waiting for the right one; on the dialling side a refusal, or a
 * peer that names another rank, world or generation, is an error, and one that does not
 * prove the key is closed and dialled again. addrs[world] are every rank's ring_address
 * and auth the job's (both borrowed). world 1 opens no socket. Everything is bounded by
 * timeout_ms: a peer that does not show up (or never proves the key) gives DRV_ERR_TIMEOUT
 * naming it; a refusal gives DRV_ERR_PROTO. The listening socket is closed after. */
drv_result_t ring_connect(ring_t *r, uint32_t rank, uint32_t world, const char *const *addrs,
                          const ring_auth_t *auth, int timeout_ms);

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
