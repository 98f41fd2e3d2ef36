/* jobspec.h: the job spec, loaded from YAML through libcyaml with one schema.
 *
 * The schema (jobspec.c) is the single description of the format: it loads, validates,
 * resolves `--set key.path=value` overrides (by walking the schema), and saves the
 * resolved spec back to YAML. docs/user-guide.md documents every key.
 *
 *   name: fashion-mnist                # required: 1..64 of [A-Za-z0-9._-], not
 *                                      # starting with a dot
 *   target: local                      # local | attached | a target of the coordinator's
 *                                      # targets file, 1..32 of [A-Za-z0-9._-] (default local)
 *   nodes: 2                           # agents (nodes) to gang-schedule (default 1)
 *   workers_per_node: 0                # workers on each node, ranks node-major; 0: one
 *                                      # per GPU the agent has, one on a CPU agent
 *                                      # (0..64; max_nodes x it <= 256) (default 0)
 *   min_nodes: 1                       # fewest nodes a re-formed world may keep (in
 *                                      # workers: min_nodes x workers per node);
 *                                      # 1 <= min_nodes <= nodes       (default nodes)
 *   max_nodes: 4                       # most nodes a re-formed world may take (likewise);
 *                                      # nodes <= max_nodes, and max_nodes x
 *                                      # workers_per_node <= train.global_batch
 *                                      #                               (default nodes)
 *   max_restarts: 3                    # re-formations of the world after failures before
 *                                      # the job fails (0: fail at once) (default 3)
 *   rejoin_timeout: 60                 # seconds to wait for agents while fewer than
 *                                      # min_nodes are left, then fail  (default 60)
 *   priority: 0                        # queue order: higher first, then oldest first;
 *                                      # may be negative               (default 0)
 *   max_runtime: 0                     # seconds it runs at most, for backfill (it is not
 *                                      # stopped when it runs longer); 0: not known (default 0)
 *   resources:                         # what each worker needs of its agent, times the
 *                                      # workers per node (0: anything)
 *     cpus_per_worker: 0               # CPUs: also the worker's share (default 0)
 *     memory_mb: 0                     # memory, MB                   (default 0)
 *     gpus_per_worker: 0               # GPUs of its own               (default 0)
 *   model:
 *     type: mlp                        # only mlp for now
 *     hidden: [256, 128]               # hidden layer sizes, 0..8 of them
 *     activation: relu                 # relu | gelu                   (default relu)
 *   data:
 *     format: idx                      # idx | synthetic
 *     train: {images: PATH, labels: PATH}   # required for idx (plain or .gz)
 *     test:  {images: PATH, labels: PATH}   # required for idx
 *     synthetic: {train_samples: 60000, test_samples: 10000, features: 784,
 *                 classes: 10, seed: 1}      # used by format synthetic (all defaulted)
 *   train:
 *     epochs: 5                        # required
 *     global_batch: 128                # required; split across ranks
 *     max_steps: 0                     # stop after this many steps (0: all epochs)
 *     seed: 42                         # init and data order        (default 42)
 *     commit_every: 50                 # steps between in-memory snapshots, the point a
 *                                      # re-formed world resumes from (0: never) (default 50)
 *     checkpoint_every: 0              # steps between checkpoints in the run directory
 *                                      # (0: none; the final model is always saved) (default 0)
 *     keep_checkpoints: 3              # newest checkpoints kept, at least 1 (default 3)
 *     backend: auto                    # auto (the GPU the agent assigned, else the CPU)
 *                                      # | cpu | cuda (fail without a GPU) (default auto)
 *     precision: fp32                  # fp32 (exact, no TF32) | tf32 | bf16 (bf16
 *                                      # activations and GEMMs, fp32 master weights,
 *                                      # optimizer state and loss)  (default fp32)
 *     allreduce_dtype: fp32            # gradient all-reduce type, fp32 | bf16 (default fp32)
 *     allreduce_bucket_mb: 25          # gradient bucket size for the overlapped NCCL
 *                                      # all-reduce, 1..4096 MB      (default 25)
 *     cuda_graphs: auto                # capture the step as a CUDA graph: auto (when it is
 *                                      # faster, measured at the start) | on | off (default auto)
 *     optimizer:
 *       type: sgd                      # sgd | adamw
 *       lr: 0.1                        # required
 *       momentum: 0.9                  # sgd                           (default 0.9)
 *       weight_decay: 0.0              # sgd: L2; adamw: decoupled     (default 0)
 *       beta1: 0.9  beta2: 0.999  eps: 1e-8   # adamw
 *     lr_schedule:
 *       type: cosine                   # constant | cosine             (default cosine)
 *       warmup_steps: 100              # linear warmup from 0          (default 0)
 *       lr_min: 0.0                    # cosine floor                  (default 0)
 *   run_dir: runs                      # parent of the job's run directory, no '..'
 *                                      # component (default runs)
 */
#ifndef DROVER_COMMON_JOBSPEC_H
#define DROVER_COMMON_JOBSPEC_H

#include <stdint.h>
#include <stdio.h>

#include <cyaml/cyaml.h>

#include "common/drv.h"

#define JOBSPEC_MAX_HIDDEN 8
#define JOBSPEC_NAME_MAX 64 /* bytes of a job name */
#define JOBSPEC_TARGET_MAX 32 /* bytes of a target name */
#define JOBSPEC_MAX_WORKERS_PER_NODE 64
#define JOBSPEC_MAX_WORLD 256 /* workers of one world: nodes (max_nodes) x workers_per_node */
#define JOBSPEC_MAX_WORDS 256 /* words of a command, entries of env */
#define JOBSPEC_PATH_MAX 1024 /* bytes of a path in a submitted spec (DROVER_MAX_PATH_BYTES at most) */

typedef enum { SPEC_ACT_RELU = 0, SPEC_ACT_GELU } spec_activation_t;
typedef enum { SPEC_DATA_IDX = 0, SPEC_DATA_SYNTHETIC } spec_data_format_t;
typedef enum { SPEC_OPT_SGD = 0, SPEC_OPT_ADAMW } spec_optimizer_t;
typedef enum { SPEC_LR_CONSTANT = 0, SPEC_LR_COSINE } spec_lr_schedule_t;
typedef enum { SPEC_BACKEND_AUTO = 0, SPEC_BACKEND_CPU, SPEC_BACKEND_CUDA } spec_backend_t;
typedef enum { SPEC_PREC_FP32 = 0, SPEC_PREC_TF32, SPEC_PREC_BF16 } spec_precision_t;
typedef enum { SPEC_DTYPE_FP32 = 0, SPEC_DTYPE_BF16 } spec_dtype_t;
typedef enum { SPEC_AUTO = 0, SPEC_ON, SPEC_OFF } spec_switch_t;

typedef struct {
  char *images; /* path, owned */
  char *labels; /* path, owned */
} spec_split_t;

typedef struct {
  uint32_t train_samples, test_samples, features, classes;
  uint64_t seed;
} spec_synthetic_t;

typedef struct {
  char *name;
  char *target; /* local, attached, or a target of the coordinator's targets file */
  /* A command job: the user's program per rank (model, data and train then unused). */
  char **command;         /* NULL: the built-in trainer */
  uint32_t command_count;
  char *workdir;          /* its working directory (a path key: absolute once submitted) */
  char **env;             /* "KEY=VALUE" added to its environment */
  uint32_t env_count;
  uint32_t hang_timeout_s; /* YAML `hang_timeout`: a rank that reported once and then stops
                              reporting this long is hung; 0: no check */
  uint32_t nodes;
  uint32_t workers_per_node;     /* 0: one per GPU of the agent (1 on a CPU agent) */
  uint32_t min_nodes, max_nodes; /* 1 <= min_nodes <= nodes <= max_nodes */
  uint32_t max_restarts;
  uint32_t rejoin_timeout_s; /* YAML key `rejoin_timeout` */
  int32_t priority;          /* higher first */
  uint32_t max_runtime_s;    /* YAML key `max_runtime`; 0: not known */
  struct {
    uint32_t cpus_per_worker, gpus_per_worker;
    uint64_t memory_mb;
  } resources; /* 0: no requirement */
  struct {
    char *type; /* "mlp" */
    uint32_t *hidden;
    uint32_t hidden_count;
    spec_activation_t activation;
  } model;
  struct {
    spec_data_format_t format;
    spec_split_t *train;         /* NULL when absent */
    spec_split_t *test;          /* NULL when absent */
    spec_synthetic_t *synthetic; /* always set after load (defaults filled in) */
  } data;
  struct {
    uint32_t epochs;
    uint32_t global_batch;
    uint32_t max_steps;
    uint64_t seed;
    uint32_t commit_every;     /* steps; 0: never */
    uint32_t checkpoint_every; /* steps; 0: only the final model */
    uint32_t keep_checkpoints; /* >= 1 */
    spec_backend_t backend;
    spec_precision_t precision;
    spec_dtype_t allreduce_dtype;
    uint32_t allreduce_bucket_mb; /* 1..4096 */
    spec_switch_t cuda_graphs;
    struct {
      spec_optimizer_t type;
      float lr, momentum, weight_decay, beta1, beta2, eps;
    } optimizer;
    struct {
      spec_lr_schedule_t type;
      uint32_t warmup_steps;
      float lr_min;
    } lr_schedule;
  } train;
  char *run_dir;
} jobspec_t;

/* Parses YAML text (`len` bytes) into a new spec, applies `nset` overrides of the form
 * "key.path=value" (e.g. "train.optimizer.lr=0.05", "model.hidden=[512,256]"), fills
 * defaults and validates. min_nodes and max_nodes, when neither the text nor an override
 * wrote them, take the final value of nodes (so `--set nodes=4` moves them too).
 * `origin` names the source in errors ("examples/x.yaml"). Before libyaml sees the text, a
 * linear pre-scan refuses one over DROVER_MAX_SPEC_BYTES, one that is not UTF-8, and
 * nesting deeper than 16 levels (libyaml's scanner is quadratic in it), naming the line.
 * On failure returns DRV_ERR_INVALID with a message naming the key (or line) and what is
 * wrong, and *out stays NULL. The caller owns *out (jobspec_destroy). */
drv_result_t jobspec_parse(const char *yaml, size_t len, const char *origin,
                           const char *const *sets, int nset, jobspec_t **out);

/* What a job may ask of the cluster, checked where a job is admitted (the coordinator's
 * submit, and drover submit before it sends): nodes and max_nodes, epochs, global_batch,
 * the model's and the synthetic data's bytes, each path's length (DROVER_MAX_*, 0: no
 * limit; paths at most JOBSPEC_PATH_MAX whatever the setting). Not on a spec already
 * admitted (a worker's assignment, a job a restarted coordinator reloads), so that limits
 * lowered later stop no running job.
 * DRV_ERR_INVALID naming the key, the value and the setting, e.g.
 * "x.yaml: train.epochs: 4294967295, more than DROVER_MAX_EPOCHS (10000)". */
drv_result_t jobspec_check_limits(const jobspec_t *spec, const char *origin);

/* Reads `path` and calls jobspec_parse. */
drv_result_t jobspec_load(const char *path, const char *const *sets, int nset, jobspec_t **out);

/* Serialises the resolved spec (every field, defaults included) to YAML. The caller
 * frees *yaml with free(). Parsing the result gives an equal spec. */
drv_result_t jobspec_dump(const jobspec_t *spec, char **yaml, size_t *len);

/* Frees a spec and nulls the caller's pointer. NULL-safe. */
void jobspec_destroy(jobspec_t **spec);

/* The spec keys that are paths (run_dir, data.{train,test}.{images,labels}) are listed once,
 * in jobspec.c. A spec file's relative paths are relative to where it is submitted; a
 * submitted spec's paths must be absolute, for its workers run elsewhere. */

/* Makes each relative path of spec absolute against directory dir, and drops empty and
 * "." components of every path ("./x" -> "<dir>/x", "/a//b/" -> "/a/b"). */
drv_result_t jobspec_absolutize(jobspec_t *spec, const char *dir);

/* The key of the first path of spec that is not absolute ("data.train.images"), or NULL. */
const char *jobspec_relative_path(const jobspec_t *spec);

/* What the coordinator asks of a submitted spec's paths: every one absolute, and run_dir
 * normalised (no empty, "." or ".." component, no trailing '/'), so that the run
 * directory <run_dir>/<name>-<id> is exactly the one it names. DRV_ERR_INVALID naming the
 * key ("<origin>: run_dir: ... is not a normalised path ..."). */
drv_result_t jobspec_check_submitted(const jobspec_t *spec, const char *origin);

/* The i-th path key of spec (i = 0, 1, ...): its name in *key and the spec's string slot,
 * NULL when that part of the spec is absent; *key NULL past the last. A caller may replace
 * *slot with a malloc'ed string (the spec frees it). */
char **jobspec_path_at(jobspec_t *spec, unsigned i, const char **key);

/* The error-level lines libcyaml logged while loading, '\n'-separated: what a loader
 * turns into one message naming the key and line (the job spec's, the targets file's). */
typedef struct {
  char text[2048];
  size_t len;
} jobspec_cyaml_log_t;

/* The libcyaml configuration drover loads YAML with: errors captured into log, aliases
 * refused (no use for them, and they allow expansion bombs), block style when saving. */
cyaml_config_t jobspec_cyaml_config(jobspec_cyaml_log_t *log);

/* Whether name is 1 to max letters, digits, '.', '_' or '-', not starting with '.': a job
 * name (JOBSPEC_NAME_MAX) or a target name (JOBSPEC_TARGET_MAX). */
int jobspec_name_ok(const char *name, size_t max);

#endif
