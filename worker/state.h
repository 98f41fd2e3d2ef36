/* state.h: a rank's state on disk, rank 0's checkpoints. Private to worker/.
 *
 * The trainer's state is saved as train/checkpoint.h tensors: each layer's weight
 * "layers.<l>.weight" (out, in) and bias "layers.<l>.bias" (out), named as in the saved
 * model, then "optimizer.state". Checkpoints live in <run_dir>/checkpoints/step-<10 digits>;
 * a job may also start from another run's checkpoints (resume_dir). This file only moves
 * state between the trainer and the disk: the coordinator hears of a checkpoint from the
 * report (report_checkpoint), and the other ranks receive a loaded one through the world
 * (world_sync_state).
 */
#ifndef DROVER_WORKER_STATE_H
#define DROVER_WORKER_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

/* Writes the trainer's state with *meta (its lineage the job's) as a checkpoint in
 * <run_dir>/checkpoints (copied to host memory first), then keeps the newest `keep` of the
 * lineage there (a failed prune is logged, not an
 * error). On DRV_OK the checkpoint is durable and its directory is in path[pathsz]. */
drv_result_t state_save(trainer_t *tr, const char *run_dir, const ckpt_meta_t *meta, uint32_t keep,
                        char *path, size_t pathsz);

/* Loads the newest usable checkpoint of `lineage` (the job's) into the trainer: from
 * <run_dir>/checkpoints first, else from resume_dir (NULL or "": none); a checkpoint of
 * another lineage is never loaded (train/checkpoint.h). *found is 1 and *step its steps done when
 * one was loaded; none in run_dir is not an error, a resume_dir that is missing or has no usable
 * checkpoint is (DRV_ERR_INVALID). A checkpoint refused half-way leaves the trainer as it
 * was. */
drv_result_t state_load(trainer_t *tr, const char *run_dir, const char *resume_dir,
                        const char *lineage, int *found, uint64_t *step);

#endif
