/* worker.h: one rank of a job, run by an agent as `drover worker ...` in its own process.
 *
 * It reads the resolved job spec from stdin, loads the data, opens its ring port, checks in
 * with the coordinator (rendezvous), waits for `start` with every rank's ring address,
 * then trains: for global step s of epoch e, the global batch is P_e[s·B : (s+1)·B] of the
 * epoch permutation P_e and this rank takes its contiguous slice (train/shard.h);
 * gradients are summed over ranks by the host ring all-reduce and scaled by 1/B, so the
 * loss curve does not depend on the world size beyond float summation order. Each epoch
 * ends with an evaluation on the test split, shared across ranks. Rank 0 writes the run
 * directory: spec.yaml, metrics.jsonl and model.safetensors, and checkpoints every
 * train.checkpoint_every steps and at the end (train/checkpoint.h). A worker starts from
 * the newest usable checkpoint in <run_dir>/checkpoints, else in resume_dir: rank 0 reads
 * it and every rank receives it through the ring.
 */
#ifndef DROVER_WORKER_WORKER_H
#define DROVER_WORKER_WORKER_H

#include <stdint.h>
#include <stdio.h>

#include "common/drv.h"

typedef struct {
  const char *coordinator; /* base endpoint */
  int64_t job;
  uint32_t generation, rank, world, local_rank;
  int32_t device; /* -1: CPU */
  const char *run_dir;
  const char *host;       /* address the ring listens on and advertises */
  FILE *spec_in;          /* where the spec YAML is read from (stdin) */
  const char *resume_dir; /* NULL or checkpoints to start from when run_dir has none */
} worker_config_t;

/* Runs the worker to the end. Reports `done` or `failed` to the coordinator itself; the
 * return value is for the exit status (DRV_OK: 0). */
drv_result_t worker_run(const worker_config_t *cfg);

#endif
