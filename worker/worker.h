/* worker.h: one rank of a job, run by an agent as `drover worker` in its own process.
 *
 * It reads its assignment from stdin (one packed `assign`: job, generation, rank, world,
 * device, the resolved spec, run directory, coordinator, the address its ring listens
 * on), loads the data, opens its ring port, checks in with the coordinator (rendezvous),
 * waits for `start` with every rank's ring address, then trains: for global step s of
 * epoch e, the global batch is P_e[s·B : (s+1)·B] of the epoch permutation P_e and this
 * rank takes its contiguous slice (train/shard.h); gradients are summed over ranks by the
 * host ring all-reduce and scaled by 1/B, so the loss curve does not depend on the world
 * size beyond float summation order. Each epoch ends with an evaluation on the test
 * split, shared across ranks. Rank 0 writes the run directory: spec.yaml, metrics.jsonl
 * and model.safetensors, and checkpoints every train.checkpoint_every steps and at the
 * end (train/checkpoint.h). A worker starts from the newest usable checkpoint in
 * <run_dir>/checkpoints, else in resume_dir: rank 0 reads it and every rank receives it
 * through the ring.
 */
#ifndef DROVER_WORKER_WORKER_H
#define DROVER_WORKER_WORKER_H

#include "common/drv.h"
#include "common/proto.h"

/* Reads the worker's assignment from fd (one packed `assign` message, as the agent writes
 * it, at most DROVER_MAX_MSG_BYTES) into m and checks it: DRV_ERR_INVALID or
 * DRV_ERR_PROTO naming what is wrong. m owns the strings; proto_msg_fini it in any case. */
drv_result_t worker_read_assignment(int fd, proto_msg_t *m);

/* Runs the worker of assignment `as` to the end. Reports `done` or `failed` to the
 * coordinator itself; the return value is for the exit status (DRV_OK: 0). */
drv_result_t worker_run(const proto_assign_t *as);

#endif
