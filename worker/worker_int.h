/* worker_int.h: the state of one rank process, shared by its own files (worker.c: the
 * lifecycle and the training loop; world.c: rendezvous, re-formation, state sync, commits
 * and the coordinator's messages while training). Not a public interface: only worker/
 * includes it. report.c and state.c take narrower arguments and do not see it.
 * Everything runs on one thread.
 */
#ifndef DROVER_WORKER_WORKER_INT_H
#define DROVER_WORKER_WORKER_INT_H

#include <stdint.h>

#include "collective/nccl_reducer.h"
#include "collective/ring.h"
#include "common/jobspec.h"
#include "common/proto.h"
#include "common/sock.h"
#include "kernels/backend.h"
#include "train/dataset.h"
#include "train/trainer.h"
#include "worker/report.h"

typedef struct worker {
  const proto_assign_t *cfg;
  uint32_t rank, world, generation; /* change when the world is re-formed */
  jobspec_t *spec;
  char *spec_yaml;
  dataset_t *train, *test;
  sock_ctx_t *ctx;
  sock_t *sock;
  ring_t *ring;
  unsigned char ring_key[RING_KEY_BYTES]; /* the job's, from the assignment (ring_auth) */
  int ring_broken;                        /* a ring operation failed: the ring is unusable */
  int pause_pending;                      /* the coordinator asked for a planned re-formation */
  int planned;                            /* the current re-formation is a planned one */
  trainer_t *trainer;
  backend_t *gpu;             /* the CUDA backend, when training on a GPU */
  const backend_t *be;        /* gpu, or the CPU backend */
  nccl_reducer_t *nccl;       /* gradient sums of a GPU world of 2 or more */
  trainer_reducer_t ring_red; /* gradient sums of a CPU world: the host ring */
  char gpu_key[128];          /* "host/PCI bus id": ranks with the same key share a GPU */
  char nccl_id[NCCL_ID_HEX_LEN];
  /* progress reports, metrics.jsonl (rank 0) and the audit ($DROVER_AUDIT_DIR); it names
   * the sender as (cfg->job, generation, rank), kept in step by the world (report_as) */
  report_t report;
  /* the commit (kept by the trainer): state after commit_step steps */
  uint64_t commit_step;
  /* the step of the last evaluation, and of the last one rank 0 reported: whether a rank
   * evaluates (a collective) must not depend on its own history, so a new world takes
   * rank 0's (sync_state), and a world whose rank 0 did not report evaluates again */
  uint64_t last_eval, eval_reported;
  /* DROVER_FAULT_SLOW_MS: a fault-injection hook for tests, a sleep in every step */
  int64_t fault_slow_ms;
  /* DROVER_FAULT_KILL_AFTER_EVAL: killed right after the evaluation of this epoch (1-based) */
  uint32_t fault_kill_after_eval;
  /* DROVER_FAULT_FAIL_AT_STEP: fails with an error of its own after this step */
  uint64_t fault_fail_at_step;
} worker_t;

#endif
