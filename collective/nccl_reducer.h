/* nccl_reducer.h: data-parallel gradient sums over NCCL, overlapped with the backward pass.
 *
 * Rank 0 makes the communicator's unique id (nccl_reducer_new_id), the coordinator relays
 * it to every rank in `start` (as hex), and each rank joins with nccl_reducer_new. The
 * communicator is non-blocking (ncclConfig_t.blocking = 0): joining, every call and every
 * wait poll ncclCommGetAsyncError against a deadline, so a missing or dead peer is an
 * error after timeout_ms, never a hang. The reducer never aborts the communicator by
 * itself inside a step: a CUDA graph holding its operations would make the abort wait
 * forever. The trainer frees its graphs and then calls the abort hook (trainer.h).
 *
 * The trainer's gradient buffer is cut into buckets of bucket_bytes from its end (the
 * backward pass produces the last layer first). As the trainer reports that a tail of
 * the buffer has been issued (trainer_reducer_t.ready), each bucket wholly inside it is
 * all-reduced on a communication stream of its own, after an event on the compute stream:
 * the sums run while the rest of the backward pass computes. finish() issues what is left
 * and makes the compute stream wait for the communication stream (events, no host wait).
 * With dtype BF16 each bucket is converted to BF16 on the compute stream first and summed
 * in BF16 (half the bytes); the optimizer then reads the BF16 sums, and the loss pair is
 * summed in F32 on its own.
 *
 * Several ranks on one GPU: NCCL refuses two ranks on one device unless they look like
 * different hosts. nccl_reducer_share_device() sets a distinct NCCL_HOSTID for this process
 * (and NCCL_SOCKET_IFNAME=lo when the peers are on loopback) before joining.
 */
#ifndef DROVER_COLLECTIVE_NCCL_REDUCER_H
#define DROVER_COLLECTIVE_NCCL_REDUCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train/trainer.h"
#include "common/drv.h"
#include "kernels/backend.h"

/* ncclUniqueId (128 bytes) as lowercase hex, terminator included. */
#define NCCL_ID_HEX_LEN 257

typedef struct nccl_reducer nccl_reducer_t;

typedef struct {
  const char *id_hex; /* from rank 0's nccl_reducer_new_id */
  uint32_t rank, world;
  const backend_t *be; /* a CUDA backend (backend_cuda_new) */
  float *grads;        /* the trainer's gradient buffer, count + 2 floats (loss pair last) */
  size_t count;        /* gradients, without the loss pair */
  size_t bucket_bytes; /* bucket size, in bytes of the reduced type */
  be_dtype_t dtype;    /* F32, or BF16 to sum the gradients in bfloat16 */
  int64_t timeout_ms;  /* the deadline for joining and for each wait */
  /* Called while waiting, about every millisecond; an error ends the wait, aborts the
   * communicator and is returned (for example: the ring to a peer closed). May be NULL. */
  drv_result_t (*poll)(void *ctx);
  void *poll_ctx;
  /* Sums one value over the ranks on the host (trainer_reducer_t.agree). May be NULL. */
  drv_result_t (*agree)(void *ctx, double *value);
  void *agree_ctx;
} nccl_config_t;

/* Whether this drover was built with NCCL. */
bool nccl_reducer_available(void);

/* Rank 0: a new unique id, as hex into id_hex[NCCL_ID_HEX_LEN]. */
drv_result_t nccl_reducer_new_id(char *id_hex);

/* Sets NCCL_HOSTID to a value of this process's own (`tag`, e.g. "job7-g2-r1"), and
 * NCCL_SOCKET_IFNAME=lo and NCCL_IB_DISABLE=1 when `loopback`, unless the user set them. Call before joining,
 * when another rank uses the same GPU. */
void nccl_reducer_share_device(const char *tag, bool loopback);

/* Joins the communicator (a deadline of cfg->timeout_ms) and prepares the buckets. On
 * success the caller owns *out (nccl_reducer_destroy). */
drv_result_t nccl_reducer_new(const nccl_config_t *cfg, nccl_reducer_t **out);

/* Cuts the gradient buffer into buckets of bucket_bytes again (same communicator). Not
 * while a step is running; a trainer must be given the hooks again (trainer_set_reducer),
 * which drops graphs that captured the old cut. */
drv_result_t nccl_reducer_rebucket(nccl_reducer_t *r, size_t bucket_bytes);

/* The trainer hooks (ready, finish, wait, and for BF16 the summed gradients). Owned by the
 * reducer. */
const trainer_reducer_t *nccl_reducer_hooks(nccl_reducer_t *r);

/* Collectives completed (its collective sequence number), for progress reports. */
uint64_t nccl_reducer_seq(const nccl_reducer_t *r);

/* Milliseconds the last step's compute stream sat waiting for the sums after its backward
 * pass (the all-reduce time not hidden behind it), measured with events. */
double nccl_reducer_wait_ms(const nccl_reducer_t *r);

/* Sums count floats of device memory across the ranks now and waits (deadline and poll as
 * every wait): for the few sums outside the step. */
drv_result_t nccl_reducer_sum(nccl_reducer_t *r, float *d_data, size_t count);

/* Copies rank 0's count floats of device memory to every rank, and waits. */
drv_result_t nccl_reducer_broadcast(nccl_reducer_t *r, float *d_data, size_t count);

/* Aborts the communicator: every rank's pending NCCL work ends. For a failure; no CUDA
 * graph that captured its operations may be alive. */
void nccl_reducer_abort(nccl_reducer_t *r);

/* Leaves the communicator (aborting it if it failed) and frees everything; NULL-safe,
 * nulls the pointer. */
void nccl_reducer_destroy(nccl_reducer_t **r);

#endif
