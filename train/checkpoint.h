/* checkpoint.h: checkpoints that cannot tear, written by rank 0 of a CPU (or GPU, after a
 * copy to host) job and read back when a job resumes.
 *
 * On disk, one directory per checkpoint:
 *   <dir>/step-0000000200/model.safetensors   the tensors whose name starts with "layers."
 *                                             (F32, loadable by safetensors.torch.load_file)
 *   <dir>/step-0000000200/state.safetensors   every other tensor (optimizer state, ...)
 *   <dir>/step-0000000200/manifest.json       written last: the meta below and, for each of
 *                                             the two files, its size and CRC32 (zlib)
 * The directory is assembled as <dir>/.tmp-step-<n>-<pid>/ and renamed into place, so a
 * step-* directory either exists complete or not at all, whenever the writer dies.
 *
 * manifest.json (version 2), written by hand and read by a strict parser of its own:
 *   {
 *     "format": "drover-checkpoint",
 *     "version": 2,
 *     "step": 200, "epoch": 1, "world": 4, "seed": 42, "job": 7,
 *     "spec_sha": "<0..64 hex digits>",
 *     "lineage": "<1..64 hex digits>",
 *     "files": [
 *       {"name": "model.safetensors", "size": 123456, "crc32": "89abcdef"},
 *       {"name": "state.safetensors", "size": 654321, "crc32": "01234567"}
 *     ],
 *     "manifest_crc32": "<CRC32 of every byte before the key "manifest_crc32">"
 *   }
 * Every key is required exactly once, no other key is accepted, numbers are plain decimal
 * integers, and "manifest_crc32" comes last, so that a flipped bit in the meta is caught too.
 * "step" must match the directory's name. "lineage" names the job (and the jobs resumed
 * from it) that wrote the checkpoint: a checkpoint is only ever loaded, or pruned, by its
 * own lineage. A version 1 manifest (no "lineage", written by an older drover) still
 * parses, and is refused for its lineage like any other's.
 *
 * Temporary names all end in "-<pid>" of the process that made them:
 *   .tmp-step-<n>-<pid>      a checkpoint being assembled, or the earlier copy of step-<n>
 *                            that a rewrite swapped out and is removing
 *   .tmp-del-step-<n>-<pid>  a checkpoint being removed by ckpt_prune
 * ckpt_prune removes those whose process is gone. Pids are only meaningful on one host:
 * the directory is meant to be written by one host at a time.
 */
#ifndef DROVER_TRAIN_CHECKPOINT_H
#define DROVER_TRAIN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

#define CKPT_MAX_DIMS 4

/* One tensor of state: name, float32 data (host memory), element count, shape.
 * count must equal the product of shape[0..ndim) (1 when ndim is 0, a scalar). */
typedef struct {
  const char *name; /* unique; "layers.*" goes to model.safetensors, the rest to state */
  float *data;      /* (count) host memory: read by ckpt_write, filled by ckpt_load_latest */
  uint64_t count;
  uint32_t ndim; /* 0 .. CKPT_MAX_DIMS */
  uint64_t shape[CKPT_MAX_DIMS];
} ckpt_tensor_t;

/* What a checkpoint records besides tensors (all go into the manifest). */
typedef struct {
  uint64_t step;     /* global steps done when it was taken */
  uint32_t epoch;    /* epoch of the next step */
  uint32_t world;    /* world size that wrote it */
  uint64_t seed;     /* the job's seed */
  int64_t job;       /* the job id */
  char spec_sha[65]; /* optional fingerprint of the spec, 0..64 hex digits; "" if unused */
  char lineage[65];  /* the job's lineage, 1..64 hex digits (a version 1 manifest: "") */
} ckpt_meta_t;

/* Writes the n tensors of t and *meta as <dir>/step-<%010llu of meta->step>/ (see the top
 * of this file): creates dir (mkdir -p), writes model.safetensors, state.safetensors and
 * then manifest.json into <dir>/.tmp-step-<n>-<pid>/ (each file written, fsynced, closed),
 * fsyncs that directory, renames it to step-<n>, and fsyncs dir.
 *
 * When step-<n> already exists it is replaced atomically (renameat2 RENAME_EXCHANGE: at
 * every instant step-<n> is either the old complete checkpoint or the new one), and the old
 * copy is then removed; this makes a rewrite of the same step after a resume, or over a
 * step-<n> that turned out corrupt, work. Where the filesystem cannot exchange, the old
 * copy is first renamed away, so step-<n> is briefly absent (never incomplete).
 *
 * Borrows everything. Returns DRV_OK only once the checkpoint is durable; DRV_ERR_INVALID
 * for a bad argument (duplicate or empty name, count != prod(shape), ndim > 4, spec_sha not
 * hex, lineage empty or not hex), DRV_ERR_SYS when the disk refuses; on failure the temporary
 * directory is removed and any earlier step-<n> is left as it was. */
drv_result_t ckpt_write(const char *dir, const ckpt_meta_t *meta, const ckpt_tensor_t *t, size_t n);

/* Finds the newest usable checkpoint of `lineage` in dir and loads it: for each step-*
 * directory, newest first, checks manifest.json (present, parseable, its own CRC32, step
 * matching the name, the lineage exactly `lineage`: another's is "of another job's
 * lineage", never loaded), that both files have the recorded size and CRC32, and that each t[i] is
 * in its file (model.safetensors for "layers.*", state.safetensors otherwise) as an F32 tensor of
 * exactly t[i].count elements and t[i].shape; only then reads the tensors into t[i].data.
 * A checkpoint that fails a check is skipped with a log_warn saying which and why
 * ("<dir>/step-0000000200: model.safetensors: CRC32 mismatch (expected 0x..., found 0x...)")
 * and the one before it is tried.
 *
 * On DRV_OK: *meta holds the manifest's meta, every t[i].data is filled, and found_dir (may
 * be NULL; found_sz bytes) holds the path of the checkpoint used. DRV_ERR_INVALID when no
 * checkpoint is usable (none at all, or each refused: the message lists why), with *meta
 * zeroed and found_dir ""; the buffers may then hold data from a checkpoint refused while
 * being read (an I/O error midway), never from one that failed a check. DRV_ERR_INVALID too
 * when found_sz is too small for the path. DRV_ERR_NOMEM when memory runs out. */
drv_result_t ckpt_load_latest(const char *dir, const char *lineage, ckpt_meta_t *meta,
                              ckpt_tensor_t *t, size_t n, char *found_dir, size_t found_sz);

/* Removes the checkpoints of `lineage` older than its newest `keep` complete ones
 * (complete: manifest parses, names `lineage`, and both files have the recorded sizes;
 * CRCs are not read), and leftover .tmp-*
 * directories whose writer process is gone. A checkpoint is first renamed to
 * .tmp-del-step-<n>-<pid> and then deleted, so a crash midway never leaves a partial
 * step-* directory. Checkpoints newer than the keep-th complete one are left alone, even
 * broken ones; a checkpoint whose manifest names another lineage is never touched.
 * *removed (may be NULL) receives how many directories were removed.
 * DRV_ERR_INVALID when keep is 0 (use rm for that); DRV_ERR_SYS when dir cannot be read or
 * a removal fails (*removed still counts the removals done). A missing dir is not an
 * error: nothing to remove. */
drv_result_t ckpt_prune(const char *dir, const char *lineage, uint32_t keep, uint32_t *removed);

#endif
