/* state.c: see state.h. */
#include "worker/state.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/log.h"

/* The trainer's state as checkpoint tensors over the buffers p (the flat parameter layout)
 * and o (the optimizer state), as trainer_tensors describes them: each layer's weight
 * (out, in) and bias (out), named as in the saved model, then the optimizer state. t must
 * hold TRAINER_MAX_TENSORS entries. */
static size_t state_tensors(trainer_t *tr, float *p, float *o, ckpt_tensor_t *t) {
  size_t n;
  const trainer_tensor_t *d = trainer_tensors(tr, &n);
  for (size_t i = 0; i < n; i++)
    t[i] = (ckpt_tensor_t){.name = d[i].name,
                           .data = (d[i].buffer == TRAINER_PARAMS ? p : o) + d[i].offset,
                           .count = d[i].count,
                           .ndim = d[i].ndim,
                           .shape = {d[i].shape[0], d[i].shape[1]}};
  return n;
}

drv_result_t state_save(trainer_t *tr, const char *run_dir, const ckpt_meta_t *meta, uint32_t keep,
                        char *path, size_t pathsz) {
  ckpt_tensor_t t[TRAINER_MAX_TENSORS];
  size_t np, no;
  trainer_params(tr, &np);
  trainer_opt_state(tr, &no);
  float *host = malloc(sizeof *host * (np + no));
  if (!host) return drv_error(DRV_ERR_NOMEM, "checkpoint: out of memory");
  drv_result_t rc = trainer_get_state(tr, host, host + np);
  size_t n = state_tensors(tr, host, host + np, t);
  char dir[1200];
  if (rc == DRV_OK) rc = fs_path(dir, sizeof dir, "%s/checkpoints", run_dir);
  double t0 = drv_now_s();
  if (rc == DRV_OK) rc = ckpt_write(dir, meta, t, n);
  free(host);
  DRV_CHECK(rc);
  uint32_t removed = 0;
  if (ckpt_prune(dir, meta->lineage, keep, &removed) != DRV_OK)
    log_warn("%s", drv_last_error()); /* old checkpoints left behind: not fatal */
  log_info("checkpoint of step %" PRIu64 " written in %.3f s (%u old removed)", meta->step,
           drv_now_s() - t0, removed);
  return fs_path(path, pathsz, "%s/step-%010" PRIu64, dir, meta->step);
}

drv_result_t state_load(trainer_t *tr, const char *run_dir, const char *resume_dir,
                        const char *lineage, int *found, uint64_t *step) {
  size_t np, no;
  trainer_params(tr, &np);
  trainer_opt_state(tr, &no);
  /* Load into scratch first: a checkpoint refused half-way must not touch the trainer. */
  float *scratch = malloc(sizeof *scratch * (np + no));
  if (!scratch) return drv_error(DRV_ERR_NOMEM, "restoring a checkpoint: out of memory");
  ckpt_tensor_t t[TRAINER_MAX_TENSORS];
  size_t n = state_tensors(tr, scratch, scratch + np, t);
  char own[1200], where[1400];
  const char *dirs[2] = {own, resume_dir};
  *found = 0;
  drv_result_t rc = fs_path(own, sizeof own, "%s/checkpoints", run_dir);
  for (int d = 0; rc == DRV_OK && d < 2 && !*found; d++) {
    if (!dirs[d] || !dirs[d][0]) continue;
    ckpt_meta_t meta;
    if (access(dirs[d], F_OK) != 0) {
      if (d == 1) rc = drv_error(DRV_ERR_INVALID, "resume: %s does not exist", dirs[d]);
      continue;
    }
    if (ckpt_load_latest(dirs[d], lineage, &meta, t, n, where, sizeof where) != DRV_OK) {
      if (d == 1)
        rc = drv_error_prefix(DRV_ERR_INVALID, "resume");
      else
        log_warn("no usable checkpoint in %s: %s", dirs[d], drv_last_error());
      continue;
    }
    log_info("resuming from %s: %" PRIu64 " steps done", where, meta.step);
    if ((rc = trainer_set_state(tr, scratch, scratch + np)) != DRV_OK) break;
    *found = 1;
    *step = meta.step;
  }
  free(scratch);
  return rc;
}
