/* state.c: see state.h. */
#include "worker/state.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/jobspec.h"
#include "common/log.h"

#define MAX_STATE_TENSORS (2 * JOBSPEC_MAX_HIDDEN + 3)

/* The trainer's state as checkpoint tensors over the buffers p (the flat parameter layout)
 * and o (the optimizer state): each layer's weight (out, in) and bias (out), named as in
 * the saved model, then the optimizer state. t must hold 2 * layers + 1 entries; names
 * is storage for their names. */
static size_t state_tensors(trainer_t *tr, float *p, float *o, ckpt_tensor_t *t,
                            char (*names)[32]) {
  size_t no, n = 0;
  trainer_opt_state(tr, &no);
  for (uint32_t l = 0; l < trainer_layers(tr); l++) {
    uint64_t in = trainer_size(tr, l), out = trainer_size(tr, l + 1);
    snprintf(names[n], 32, "layers.%u.weight", l);
    t[n] = (ckpt_tensor_t){
        .name = names[n], .data = p, .count = out * in, .ndim = 2, .shape = {out, in}};
    p += out * in;
    n++;
    snprintf(names[n], 32, "layers.%u.bias", l);
    t[n] = (ckpt_tensor_t){.name = names[n], .data = p, .count = out, .ndim = 1, .shape = {out}};
    p += out;
    n++;
  }
  t[n++] =
      (ckpt_tensor_t){.name = "optimizer.state", .data = o, .count = no, .ndim = 1, .shape = {no}};
  return n;
}

drv_result_t state_save(trainer_t *tr, const char *run_dir, const ckpt_meta_t *meta, uint32_t keep,
                        char *path, size_t pathsz) {
  ckpt_tensor_t t[MAX_STATE_TENSORS];
  char names[MAX_STATE_TENSORS][32];
  size_t np, no;
  trainer_params(tr, &np);
  trainer_opt_state(tr, &no);
  float *host = malloc(sizeof *host * (np + no));
  if (!host) return drv_error(DRV_ERR_NOMEM, "checkpoint: out of memory");
  drv_result_t rc = trainer_get_state(tr, host, host + np);
  size_t n = state_tensors(tr, host, host + np, t, names);
  char dir[1200];
  snprintf(dir, sizeof dir, "%s/checkpoints", run_dir);
  double t0 = drv_now_s();
  if (rc == DRV_OK) rc = ckpt_write(dir, meta, t, n);
  free(host);
  DRV_CHECK(rc);
  uint32_t removed = 0;
  if (ckpt_prune(dir, keep, &removed) != DRV_OK)
    log_warn("%s", drv_last_error()); /* old checkpoints left behind: not fatal */
  log_info("checkpoint of step %" PRIu64 " written in %.3f s (%u old removed)", meta->step,
           drv_now_s() - t0, removed);
  snprintf(path, pathsz, "%s/step-%010" PRIu64, dir, meta->step);
  return DRV_OK;
}

drv_result_t state_load(trainer_t *tr, const char *run_dir, const char *resume_dir, int *found,
                        uint64_t *step) {
  size_t np, no;
  trainer_params(tr, &np);
  trainer_opt_state(tr, &no);
  /* Load into scratch first: a checkpoint refused half-way must not touch the trainer. */
  float *scratch = malloc(sizeof *scratch * (np + no));
  if (!scratch) return drv_error(DRV_ERR_NOMEM, "restoring a checkpoint: out of memory");
  ckpt_tensor_t t[MAX_STATE_TENSORS];
  char names[MAX_STATE_TENSORS][32];
  size_t n = state_tensors(tr, scratch, scratch + np, t, names);
  char own[1200], where[1400];
  snprintf(own, sizeof own, "%s/checkpoints", run_dir);
  const char *dirs[2] = {own, resume_dir};
  drv_result_t rc = DRV_OK;
  *found = 0;
  for (int d = 0; d < 2 && !*found; d++) {
    if (!dirs[d] || !dirs[d][0]) continue;
    ckpt_meta_t meta;
    if (access(dirs[d], F_OK) != 0) {
      if (d == 1) rc = drv_error(DRV_ERR_INVALID, "resume: %s does not exist", dirs[d]);
      continue;
    }
    if (ckpt_load_latest(dirs[d], &meta, t, n, where, sizeof where) != DRV_OK) {
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
