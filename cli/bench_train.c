/* bench_train.c: `drover bench train` and `drover bench overlap`.
 *
 * bench train times drover's training step as the worker runs it (trainer_stage of the
 * next batch while the current step runs, then trainer_step_finish) for one MLP, batch,
 * optimizer and precision, on the GPU when one answers (else the CPU): warm-up steps, then
 * `repeats` timed runs of `steps` steps, each run timed on the host from its first launch
 * to its last finish. It reports the median ms/step (min and max beside it), samples/s,
 * TFLOP/s counted as 6 x parameters x batch per step (forward 2, backward 4 flops per
 * parameter and sample), whether CUDA graphs were used, and the share of step time the
 * device sat waiting for input (data_wait_pct). Data: random batches made once in host
 * memory (the step alone), or --data fashion: real Fashion-MNIST samples gathered by
 * shuffled index per step, as the worker does.
 *
 * bench overlap forks two ranks that share GPU 0 through NCCL (each with its own
 * NCCL_HOSTID) and times, for an MLP with about 160 MB of gradients: the step without any
 * sum (compute), the all-reduce of the whole gradient alone, the step with one bucket
 * summed after the backward pass (serial), and the step with --bucket-mb buckets summed
 * while the backward pass runs (overlapped). hidden_pct = (serial - overlapped) /
 * all-reduce: how much of the all-reduce the backward pass hides.
 *
 * Both run their timed loops, medians and --json line through the benchmark driver
 * (bench.h), filling in the steps (or sums) to time and the figures to print.
 */
#include "cli/bench_train.h"

#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench.h"
#include "train/dataset.h"
#include "collective/nccl_reducer.h"
#include "train/shard.h"
#include "train/trainer.h"
#include "common/drv.h"
#include "common/jobspec.h"
#include "common/log.h"
#include "common/rng.h"
#include "kernels/backend.h"

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"
#define MAX_REPEATS 64

typedef struct {
  char sizes[256];
  uint32_t batch, steps, repeats, warmup;
  const char *precision, *graphs, *data, *optimizer, *backend;
  bool json;
  uint32_t bucket_mb;
} train_opts_t;

/* A spec for the benchmark's model, through the same loader as a job's (so every key is
 * validated as it would be). The caller destroys it. */
static drv_result_t make_spec(const train_opts_t *o, uint32_t *features, uint32_t *classes,
                              jobspec_t **out) {
  uint32_t sz[JOBSPEC_MAX_HIDDEN + 2], n = 0;
  char copy[256];
  snprintf(copy, sizeof copy, "%s", o->sizes);
  for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
    if (n == DRV_ARRAY_LEN(sz))
      return drv_error(DRV_ERR_INVALID, "--sizes: at most %d layers", JOBSPEC_MAX_HIDDEN + 2);
    char *end;
    unsigned long v = strtoul(tok, &end, 10);
    if (*end || v == 0 || v > (1u << 20))
      return drv_error(DRV_ERR_INVALID, "--sizes: '%s' is not a layer size", tok);
    sz[n++] = (uint32_t)v;
  }
  if (n < 2) return drv_error(DRV_ERR_INVALID, "--sizes: need at least input,classes");
  char hidden[256] = "";
  size_t len = 0;
  for (uint32_t i = 1; i + 1 < n; i++)
    len += (size_t)snprintf(hidden + len, sizeof hidden - len, "%s%u", i > 1 ? "," : "", sz[i]);
  char yaml[2048];
  snprintf(yaml, sizeof yaml,
           "name: bench\n"
           "model: {type: mlp, hidden: [%s], activation: relu}\n"
           "data: {format: synthetic}\n"
           "train:\n"
           "  epochs: 1\n"
           "  global_batch: %u\n"
           "  backend: %s\n"
           "  precision: %s\n"
           "  cuda_graphs: %s\n"
           "  optimizer: {type: %s, lr: 0.01, momentum: 0.9}\n"
           "  lr_schedule: {type: constant}\n",
           hidden, o->batch, o->backend, o->precision, o->graphs, o->optimizer);
  *features = sz[0];
  *classes = sz[n - 1];
  return jobspec_parse(yaml, strlen(yaml), "bench options", NULL, 0, out);
}

static drv_result_t open_backend(const jobspec_t *spec, backend_t **gpu, const backend_t **be) {
  *gpu = NULL;
  bool want = spec->train.backend == SPEC_BACKEND_CUDA ||
              (spec->train.backend == SPEC_BACKEND_AUTO && backend_cuda_available());
  if (want) {
    DRV_CHECK(backend_cuda_new(0, spec->train.precision == SPEC_PREC_TF32, gpu));
    *be = *gpu;
  } else {
    if (spec->train.precision != SPEC_PREC_FP32)
      return drv_error(DRV_ERR_INVALID, "--precision %s needs a GPU, and none answers",
                       spec->train.precision == SPEC_PREC_BF16 ? "bf16" : "tf32");
    *be = backend_cpu();
  }
  return DRV_OK;
}

// --- bench train ------------------------------------------------------------------------

typedef struct {
  uint32_t B, features, nbatches;
  float *x; /* synthetic: nbatches batches; fashion: unused */
  int32_t *y;
  dataset_t *ds;
  uint32_t *perm, n, epoch;
  uint64_t next;
} feed_t;

/* Writes batch number k into the trainer's staging buffers and stages it. */
static drv_result_t feed(feed_t *f, trainer_t *t, uint64_t k, uint64_t total) {
  float *x;
  int32_t *y;
  trainer_next_batch(t, &x, &y);
  if (f->ds) {
    uint32_t spe = f->n / f->B, si = (uint32_t)(k % spe), epoch = (uint32_t)(k / spe);
    if (epoch != f->epoch) {
      shard_permutation(7, epoch, f->n, f->perm);
      f->epoch = epoch;
    }
    dataset_gather(f->ds, f->perm + (size_t)si * f->B, f->B, x, y);
  } else {
    uint32_t b = (uint32_t)(k % f->nbatches);
    memcpy(x, f->x + (size_t)b * f->B * f->features, sizeof(float) * f->B * f->features);
    memcpy(y, f->y + (size_t)b * f->B, sizeof(int32_t) * f->B);
  }
  return trainer_stage(t, f->B, f->B, k, total);
}

static drv_result_t feed_init(feed_t *f, const train_opts_t *o, uint32_t features,
                              uint32_t classes) {
  *f = (feed_t){.B = o->batch, .features = features, .nbatches = 8, .epoch = UINT32_MAX};
  if (!strcmp(o->data, "fashion")) {
    DRV_CHECK(dataset_load_idx(FASHION_DIR "/train-images-idx3-ubyte.gz",
                               FASHION_DIR "/train-labels-idx1-ubyte.gz", &f->ds));
    if (dataset_features(f->ds) != features || dataset_classes(f->ds) > classes)
      return drv_error(DRV_ERR_INVALID,
                       "--data fashion has %u features and %u classes: --sizes must start "
                       "with 784 and end with at least 10",
                       dataset_features(f->ds), dataset_classes(f->ds));
    f->n = dataset_count(f->ds);
    if (f->B > f->n) return drv_error(DRV_ERR_INVALID, "--batch is larger than the dataset");
    f->perm = malloc(sizeof *f->perm * f->n);
    if (!f->perm) return drv_error(DRV_ERR_NOMEM, "bench: out of memory");
    return DRV_OK;
  }
  if (strcmp(o->data, "synthetic"))
    return drv_error(DRV_ERR_INVALID, "--data: synthetic or fashion, not '%s'", o->data);
  size_t nx = (size_t)f->nbatches * f->B * features;
  f->x = malloc(sizeof *f->x * nx);
  f->y = malloc(sizeof *f->y * (size_t)f->nbatches * f->B);
  if (!f->x || !f->y) return drv_error(DRV_ERR_NOMEM, "bench: out of memory for the batches");
  rng_t rng;
  rng_init(&rng, 1, 2);
  for (size_t i = 0; i < nx; i++) f->x[i] = (float)rng_normal(&rng);
  for (size_t i = 0; i < (size_t)f->nbatches * f->B; i++)
    f->y[i] = (int32_t)rng_below(&rng, classes);
  return DRV_OK;
}

static void feed_fini(feed_t *f) {
  free(f->x);
  free(f->y);
  free(f->perm);
  dataset_destroy(&f->ds);
}

/* Runs `steps` pipelined steps from step number *k; *wait_ms accumulates the data wait. */
static drv_result_t run_steps(trainer_t *t, feed_t *f, uint64_t *k, uint32_t steps, uint64_t total,
                              double *wait_ms, double *last_loss) {
  if (steps == 0) return DRV_OK;
  DRV_CHECK(feed(f, t, *k, total));
  for (uint32_t s = 0; s < steps; s++) {
    DRV_CHECK(trainer_step_launch(t, NULL));
    if (s + 1 < steps) DRV_CHECK(feed(f, t, *k + 1, total));
    double w = 0, loss = 0;
    DRV_CHECK(trainer_step_finish(t, &loss, &w));
    *wait_ms += w;
    *last_loss = loss / f->B;
    (*k)++;
  }
  return DRV_OK;
}

/* Training steps as the driver times them: a warm-up call runs `warmup` steps, a timed
 * call `steps` steps; the data wait of the timed calls adds up in wait_ms. */
typedef struct {
  trainer_t *t;
  feed_t *f;
  uint64_t k, total; /* the next step's number; steps in the whole run */
  uint32_t warmup, steps;
  double wait_ms, loss;
} steps_op_t;

static drv_result_t steps_once(void *arg, bool warmup) {
  steps_op_t *op = arg;
  double warm_wait = 0;
  return run_steps(op->t, op->f, &op->k, warmup ? op->warmup : op->steps, op->total,
                   warmup ? &warm_wait : &op->wait_ms, &op->loss);
}

/* The figures of one bench train run. */
typedef struct {
  bench_stat_t ms; /* per step, over the repeats */
  double sps, tflops, wait_pct;
  size_t params;
  bool graphs;
} train_fig_t;

static void print_train(const train_opts_t *o, const char *be, const train_fig_t *g, double loss) {
  printf(
      "%-28s batch %5u %-5s on %-7s %9.3f ms/step (min %.3f, max %.3f)  %10.0f samples/s  "
      "%7.2f TFLOP/s  graphs %s  data wait %.2f %%  loss %.4f\n",
      o->sizes, o->batch, o->precision, be, g->ms.med, g->ms.min, g->ms.max, g->sps, g->tflops,
      g->graphs ? "on" : "off", g->wait_pct, loss);
  if (!o->json) return;
  bench_json_t j;
  bench_json_begin(&j, stdout);
  bench_json_str(&j, "impl", "drover");
  bench_json_str(&j, "sizes", o->sizes);
  bench_json_uint(&j, "batch", o->batch);
  bench_json_str(&j, "precision", o->precision);
  bench_json_str(&j, "backend", be);
  bench_json_str(&j, "data", o->data);
  bench_json_fixed(&j, "ms_per_step", g->ms.med, 6);
  bench_json_fixed(&j, "ms_min", g->ms.min, 6);
  bench_json_fixed(&j, "ms_max", g->ms.max, 6);
  bench_json_fixed(&j, "samples_per_s", g->sps, 1);
  bench_json_fixed(&j, "tflops", g->tflops, 4);
  bench_json_uint(&j, "params", g->params);
  bench_json_bool(&j, "graphs", g->graphs);
  bench_json_fixed(&j, "data_wait_pct", g->wait_pct, 4);
  bench_json_uint(&j, "steps", o->steps);
  bench_json_uint(&j, "repeats", o->repeats);
  bench_json_end(&j);
}

static int bench_train(const train_opts_t *o) {
  jobspec_t *spec = NULL;
  backend_t *gpu = NULL;
  const backend_t *be = NULL;
  trainer_t *t = NULL;
  feed_t f = {0};
  uint32_t features = 0, classes = 0;
  int status = 1;
  double sec[MAX_REPEATS], ms[MAX_REPEATS];
  if (make_spec(o, &features, &classes, &spec) != DRV_OK ||
      open_backend(spec, &gpu, &be) != DRV_OK ||
      trainer_new(spec, be, features, classes, o->batch, &t) != DRV_OK ||
      feed_init(&f, o, features, classes) != DRV_OK) {
    fprintf(stderr, "drover bench train: %s\n", drv_last_error());
    goto out;
  }
  size_t params;
  trainer_params(t, &params);
  train_fig_t g = {.params = params};
  /* One warm-up call of o->warmup steps (cuBLASLt plans, and the CUDA graph trial under
   * --graphs auto), then o->repeats timed runs of o->steps steps. */
  steps_op_t sop = {.t = t,
                    .f = &f,
                    .total = (uint64_t)o->warmup + (uint64_t)o->steps * o->repeats,
                    .warmup = o->warmup,
                    .steps = o->steps,
                    .loss = NAN};
  bench_op_t op = {.run = steps_once, .arg = &sop, .warmup = 1, .iters = (int)o->repeats};
  if (bench_time(&op, sec) != DRV_OK) {
    fprintf(stderr, "drover bench train: %s\n", drv_last_error());
    goto out;
  }
  if (!isfinite(sop.loss)) {
    fprintf(stderr, "drover bench train: the loss became %g\n", sop.loss);
    goto out;
  }
  double busy = 0;
  for (uint32_t r = 0; r < o->repeats; r++) {
    busy += sec[r];
    ms[r] = 1e3 * sec[r] / o->steps;
  }
  g.ms = bench_stat(ms, (int)o->repeats);
  g.sps = o->batch / (g.ms.med / 1e3);
  g.tflops = 6.0 * (double)g.params * o->batch / (g.ms.med / 1e3) / 1e12;
  g.wait_pct = busy > 0 ? 100.0 * sop.wait_ms / (1e3 * busy) : 0;
  g.graphs = trainer_uses_graphs(t);
  print_train(o, be->name, &g, sop.loss);
  status = 0;
out:
  feed_fini(&f);
  trainer_destroy(&t);
  backend_cuda_destroy(&gpu);
  jobspec_destroy(&spec);
  return status;
}

// --- bench overlap ----------------------------------------------------------------------

#define OVERLAP_SIZES "1024,4096,4096,4096,1024"
#define OVERLAP_BATCH 1024
#define OVERLAP_STEPS 10

/* Median ms of OVERLAP_STEPS steps, each timed alone (launch to finish), after 2 warm-up
 * steps. */
static drv_result_t time_steps(trainer_t *t, feed_t *f, uint64_t *k, double *out_ms) {
  double ms[OVERLAP_STEPS];
  steps_op_t sop = {.t = t, .f = f, .k = *k, .total = UINT32_MAX, .warmup = 2, .steps = 1};
  bench_op_t op = {.run = steps_once, .arg = &sop, .warmup = 1, .iters = OVERLAP_STEPS};
  drv_result_t rc = bench_time(&op, ms);
  *k = sop.k;
  DRV_CHECK(rc);
  for (int s = 0; s < OVERLAP_STEPS; s++) ms[s] *= 1e3;
  *out_ms = bench_stat(ms, OVERLAP_STEPS).med;
  return DRV_OK;
}

/* The all-reduce alone, of the whole gradient buffer, as the driver times it. */
typedef struct {
  nccl_reducer_t *serial;
  float *grads;
  size_t np;
} sum_op_t;

static drv_result_t sum_once(void *arg, bool warmup) {
  sum_op_t *op = arg;
  return nccl_reducer_sum(op->serial, op->grads, op->np);
}

/* Median ms of OVERLAP_STEPS all-reduces of the whole gradient buffer, no warm-up. */
static drv_result_t time_sum(nccl_reducer_t *serial, float *grads, size_t np, double *out_ms) {
  double ms[OVERLAP_STEPS];
  sum_op_t sum = {.serial = serial, .grads = grads, .np = np};
  bench_op_t op = {.run = sum_once, .arg = &sum, .iters = OVERLAP_STEPS};
  DRV_CHECK(bench_time(&op, ms));
  for (int s = 0; s < OVERLAP_STEPS; s++) ms[s] *= 1e3;
  *out_ms = bench_stat(ms, OVERLAP_STEPS).med;
  return DRV_OK;
}

/* The figures of bench overlap, milliseconds. */
typedef struct {
  double grad_mb, compute_ms, ar_ms, serial_ms, over_ms, hidden_pct;
} overlap_fig_t;

static void print_overlap(FILE *out, const train_opts_t *o, const overlap_fig_t *g) {
  fprintf(out,
          "2 ranks time-slicing one GPU (sums over loopback sockets, not NVLink), MLP %s, "
          "batch %u, %.0f MB of fp32 gradients:\n"
          "  step without sums %.2f ms, all-reduce alone %.2f ms\n"
          "  step + sum after the backward pass %.2f ms, with %u MB buckets during it %.2f ms:"
          " %.0f %% of the all-reduce hidden\n",
          OVERLAP_SIZES, OVERLAP_BATCH, g->grad_mb, g->compute_ms, g->ar_ms, g->serial_ms,
          o->bucket_mb, g->over_ms, g->hidden_pct);
  if (o->json) {
    bench_json_t j;
    bench_json_begin(&j, out);
    bench_json_uint(&j, "bucket_mb", o->bucket_mb);
    bench_json_fixed(&j, "grad_mb", g->grad_mb, 1);
    bench_json_fixed(&j, "allreduce_ms", g->ar_ms, 4);
    bench_json_fixed(&j, "compute_ms", g->compute_ms, 4);
    bench_json_fixed(&j, "serial_ms", g->serial_ms, 4);
    bench_json_fixed(&j, "overlapped_ms", g->over_ms, 4);
    bench_json_fixed(&j, "hidden_pct", g->hidden_pct, 2);
    bench_json_end(&j);
  }
  fflush(out);
}

/* One rank of bench overlap; rank 0 writes the figures to `out`. */
static drv_result_t overlap_rank(uint32_t rank, const char *id, const train_opts_t *o, FILE *out) {
  train_opts_t mo = *o;
  snprintf(mo.sizes, sizeof mo.sizes, "%s", OVERLAP_SIZES);
  mo.batch = OVERLAP_BATCH;
  mo.graphs = "off";
  mo.backend = "cuda";
  jobspec_t *spec = NULL;
  backend_t *gpu = NULL;
  const backend_t *be = NULL;
  trainer_t *t = NULL;
  nccl_reducer_t *serial = NULL;
  feed_t f = {0};
  uint32_t features, classes;
  drv_result_t rc = DRV_OK;
  DRV_CHECK_GOTO(make_spec(&mo, &features, &classes, &spec), rc, out);
  DRV_CHECK_GOTO(open_backend(spec, &gpu, &be), rc, out);
  DRV_CHECK_GOTO(trainer_new(spec, be, features, classes, mo.batch, &t), rc, out);
  DRV_CHECK_GOTO(feed_init(&f, &mo, features, classes), rc, out);
  size_t np;
  float *grads = trainer_grads(t, &np);
  nccl_config_t nc = {.id_hex = id,
                      .rank = rank,
                      .world = 2,
                      .be = gpu,
                      .grads = grads,
                      .count = np,
                      .bucket_bytes = (size_t)4096 << 20, /* one bucket: summed after */
                      .dtype = BE_F32,
                      .timeout_ms = 60000};
  DRV_CHECK_GOTO(nccl_reducer_new(&nc, &serial), rc, out);
  uint64_t k = 0;
  overlap_fig_t g = {.grad_mb = np * 4.0 / 1e6};
  trainer_set_reducer(t, NULL);
  DRV_CHECK_GOTO(time_steps(t, &f, &k, &g.compute_ms), rc, out);
  /* The all-reduce alone, of the whole gradient buffer. */
  DRV_CHECK_GOTO(time_sum(serial, grads, np, &g.ar_ms), rc, out);
  trainer_set_reducer(t, nccl_reducer_hooks(serial));
  DRV_CHECK_GOTO(time_steps(t, &f, &k, &g.serial_ms), rc, out);
  /* The same communicator, its gradient buffer cut into --bucket-mb buckets. */
  DRV_CHECK_GOTO(nccl_reducer_rebucket(serial, (size_t)o->bucket_mb << 20), rc, out);
  trainer_set_reducer(t, nccl_reducer_hooks(serial)); /* as the header asks after a re-cut */
  DRV_CHECK_GOTO(time_steps(t, &f, &k, &g.over_ms), rc, out);
  g.hidden_pct = g.ar_ms > 0 ? 100.0 * (g.serial_ms - g.over_ms) / g.ar_ms : 0;
  if (rank == 0 && out) print_overlap(out, o, &g);
out:
  if (t) trainer_set_reducer(t, NULL);
  nccl_reducer_destroy(&serial);
  feed_fini(&f);
  trainer_destroy(&t);
  backend_cuda_destroy(&gpu);
  jobspec_destroy(&spec);
  return rc;
}

static int bench_overlap(const train_opts_t *o) {
  if (!nccl_reducer_available()) {
    fprintf(stderr, "drover bench overlap: this drover was built without NCCL\n");
    return 1;
  }
  /* The id is made in a child too: the parent never touches CUDA, so forking is safe. */
  int idpipe[2];
  if (pipe(idpipe) != 0) return 1;
  pid_t pids[2];
  for (uint32_t rank = 0; rank < 2; rank++) {
    pids[rank] = fork();
    if (pids[rank] < 0) return 1;
    if (pids[rank] == 0) {
      char id[NCCL_ID_HEX_LEN] = "", tag[64];
      close(rank == 0 ? idpipe[0] : idpipe[1]); /* a dead rank 0 then ends rank 1's read */
      /* Before any NCCL call: the id's bootstrap must already use loopback. */
      snprintf(tag, sizeof tag, "drover-bench-%d", (int)getpid());
      nccl_reducer_share_device(tag, true);
      if (rank == 0) {
        if (nccl_reducer_new_id(id) != DRV_OK) _exit(1);
        if (write(idpipe[1], id, sizeof id) != (ssize_t)sizeof id) _exit(1);
      } else if (read(idpipe[0], id, sizeof id) != (ssize_t)sizeof id) {
        _exit(1);
      }
      drv_result_t rc = overlap_rank(rank, id, o, rank == 0 ? stdout : NULL);
      if (rc != DRV_OK)
        fprintf(stderr, "drover bench overlap: rank %u: %s\n", rank, drv_last_error());
      fflush(stdout);
      _exit(rc == DRV_OK ? 0 : 1);
    }
  }
  close(idpipe[0]);
  close(idpipe[1]);
  int status = 0;
  for (int r = 0; r < 2; r++) {
    int ws = 0;
    waitpid(pids[r], &ws, 0);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) status = 1;
  }
  return status;
}

// --- options ----------------------------------------------------------------------------

static const char *USAGE =
    "usage: drover bench train [--sizes 784,1024,1024,10] [--batch 256] [--precision "
    "fp32|tf32|bf16]\n"
    "                          [--steps 100] [--repeats 5] [--warmup 20] [--graphs "
    "auto|on|off]\n"
    "                          [--data synthetic|fashion] [--optimizer sgd|adamw]\n"
    "                          [--backend auto|cpu|cuda] [--json]\n"
    "       drover bench overlap [--bucket-mb 64] [--json]\n";

/* Parses the options of bench train and bench overlap into *o; 0, or 2 (bad usage, the
 * usage printed). */
static int parse_opts(int argc, char **argv, train_opts_t *o) {
  *o = (train_opts_t){.sizes = "784,1024,1024,10",
                      .batch = 256,
                      .steps = 100,
                      .repeats = 5,
                      .warmup = 20,
                      .precision = "fp32",
                      .graphs = "auto",
                      .data = "synthetic",
                      .optimizer = "sgd",
                      .backend = "auto",
                      .bucket_mb = 64};
  static const struct option longopts[] = {{"sizes", required_argument, 0, 's'},
                                           {"batch", required_argument, 0, 'b'},
                                           {"precision", required_argument, 0, 'p'},
                                           {"steps", required_argument, 0, 'n'},
                                           {"repeats", required_argument, 0, 'r'},
                                           {"warmup", required_argument, 0, 'w'},
                                           {"graphs", required_argument, 0, 'g'},
                                           {"data", required_argument, 0, 'd'},
                                           {"optimizer", required_argument, 0, 'o'},
                                           {"backend", required_argument, 0, 'B'},
                                           {"bucket-mb", required_argument, 0, 'm'},
                                           {"json", no_argument, 0, 'j'},
                                           {0, 0, 0, 0}};
  optind = 1;
  int ch;
  while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (ch) {
    case 's': snprintf(o->sizes, sizeof o->sizes, "%s", optarg); break;
    case 'b': o->batch = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'p': o->precision = optarg; break;
    case 'n': o->steps = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'r': o->repeats = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'w': o->warmup = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'g': o->graphs = optarg; break;
    case 'd': o->data = optarg; break;
    case 'o': o->optimizer = optarg; break;
    case 'B': o->backend = optarg; break;
    case 'm': o->bucket_mb = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'j': o->json = true; break;
    default: fputs(USAGE, stderr); return 2;
    }
  }
  if (o->batch == 0 || o->steps == 0 || o->repeats == 0 || o->repeats > MAX_REPEATS ||
      o->bucket_mb == 0) {
    fprintf(stderr,
            "drover bench: --batch, --steps, --bucket-mb must be > 0 and --repeats in "
            "1..%d\n%s",
            MAX_REPEATS, USAGE);
    return 2;
  }
  return 0;
}

int bench_train_main(int argc, char **argv) {
  train_opts_t o;
  int rc = parse_opts(argc, argv, &o);
  return rc ? rc : bench_train(&o);
}

int bench_overlap_main(int argc, char **argv) {
  train_opts_t o;
  int rc = parse_opts(argc, argv, &o);
  return rc ? rc : bench_overlap(&o);
}
