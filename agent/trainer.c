/* trainer.c: see trainer.h. The forward and backward passes of an MLP written against the
 * backend vtable, in the manner of llm.c: every buffer is allocated once in trainer_new,
 * a step only issues ops.
 *
 * Per layer l (in = sizes[l], out = sizes[l+1]), for a batch of n rows:
 *   forward   pre[l] = in_act @ W[l]^T + b[l]     (n, out)   gemm(trans_b) + bias_add
 *             act[l] = f(pre[l])                   (n, out)   hidden layers only
 *   backward  dW[l]  = dpre^T @ in_act             (out, in)  gemm(trans_a)
 *             db[l]  = colsum(dpre)                (out)      bias_grad
 *             din    = dpre @ W[l]                 (n, in)    gemm
 *             dpre[l-1] = din * f'(pre[l-1])       (n, in)    activation backward, in place
 * where in_act is the input batch for l = 0 and act[l-1] otherwise, and the first dpre
 * is the softmax cross-entropy gradient of the logits pre[L-1].
 */
#include "agent/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/safetensors.h"
#include "common/rng.h"

#define TRAINER_MAX_LAYERS (JOBSPEC_MAX_HIDDEN + 1)
/* rng stream of layer l's initial weights: one stream per layer, apart from the streams
 * other modules draw from the same seed. */
#define TRAINER_INIT_STREAM 0x696e697400000000ULL /* "init" */

struct trainer {
  const backend_t *be;
  jobspec_t spec;  /* a copy with every pointer nulled: model, optimizer, schedule */
  uint32_t layers; /* hidden layers + 1 */
  uint32_t sizes[TRAINER_MAX_LAYERS + 1]; /* features, hidden..., classes */
  size_t w_off[TRAINER_MAX_LAYERS];       /* offset of W[l] (out, in) in params, floats */
  size_t b_off[TRAINER_MAX_LAYERS];       /* offset of b[l] (out) in params, floats */
  size_t nparams;
  uint32_t max_batch;

  float *d_params; /* (nparams) */
  float *d_grads;  /* (nparams), same layout */
  float *d_opt;    /* SGD: momentum (nparams); AdamW: m (nparams) then v (nparams) */
  size_t nopt;

  /* Activations, carved out of one allocation (d_arena). */
  void *d_arena;
  float *d_x;                       /* (max_batch, features) input batch */
  int32_t *d_y;                     /* (max_batch) labels */
  float *d_pre[TRAINER_MAX_LAYERS]; /* (max_batch, sizes[l+1]) before the activation */
  float *d_act[TRAINER_MAX_LAYERS]; /* (max_batch, sizes[l+1]) after it; hidden only */
  float *d_ga, *d_gb;               /* (max_batch, max width) gradient ping-pong */
  float *d_losses;                  /* (max_batch) per-sample loss */
  int32_t *d_correct;               /* (max_batch) per-sample 0/1 */

  float *h_losses;    /* (max_batch) host copies of the above */
  int32_t *h_correct; /* (max_batch) */
};

// --- construction -----------------------------------------------------------------------

/* Fills params (host, nparams) with the initial values, deterministically from the seed. */
static void init_params(const trainer_t *t, float *h_params) {
  memset(h_params, 0, t->nparams * sizeof *h_params); /* biases stay zero */
  for (uint32_t l = 0; l < t->layers; l++) {
    uint32_t in = t->sizes[l], out = t->sizes[l + 1];
    bool hidden = l + 1 < t->layers;
    /* He (Kaiming) normal for layers followed by ReLU keeps the activations' variance;
     * Xavier (Glorot) normal for GELU layers and the linear output layer. */
    double std = hidden && t->spec.model.activation == SPEC_ACT_RELU
                     ? sqrt(2.0 / in)
                     : sqrt(2.0 / ((double)in + (double)out));
    rng_t rng;
    rng_init(&rng, t->spec.train.seed, TRAINER_INIT_STREAM + l);
    float *w = h_params + t->w_off[l]; /* (out, in) */
    for (size_t i = 0; i < (size_t)out * in; i++) w[i] = (float)(std * rng_normal(&rng));
  }
}

/* Rounds a float count up to 64 bytes, so every arena slice stays aligned. */
static size_t align16(size_t floats) {
  return (floats + 15) & ~(size_t)15;
}

/* Takes the next slice of `floats` (rounded up to 64 bytes) from the arena at *p. Only
 * pointer arithmetic: the arena is device memory. */
static float *carve(float **p, size_t floats) {
  float *slice = *p;
  *p += align16(floats);
  return slice;
}

drv_result_t trainer_new(const jobspec_t *spec, const backend_t *be, uint32_t features,
                         uint32_t classes, uint32_t max_batch, trainer_t **out) {
  drv_result_t rc = DRV_OK;
  trainer_t *t = NULL;
  float *h_init = NULL;

  if (!out) return drv_error(DRV_ERR_INVALID, "trainer_new: NULL out");
  *out = NULL;
  if (!spec || !be) return drv_error(DRV_ERR_INVALID, "trainer_new: NULL spec or backend");
  if (features == 0 || classes < 2 || max_batch == 0)
    return drv_error(DRV_ERR_INVALID,
                     "trainer_new: need features > 0, classes >= 2, max_batch > 0 "
                     "(got %u, %u, %u)",
                     features, classes, max_batch);
  if (spec->model.hidden_count > JOBSPEC_MAX_HIDDEN)
    return drv_error(DRV_ERR_INVALID, "model.hidden: %u layers, at most %d",
                     spec->model.hidden_count, JOBSPEC_MAX_HIDDEN);
  if (spec->model.hidden_count && !spec->model.hidden)
    return drv_error(DRV_ERR_INVALID, "model.hidden: %u layers but no sizes",
                     spec->model.hidden_count);
  if (spec->model.activation != SPEC_ACT_RELU && spec->model.activation != SPEC_ACT_GELU)
    return drv_error(DRV_ERR_INVALID, "model.activation: unknown value %d",
                     (int)spec->model.activation);
  if (spec->train.optimizer.type != SPEC_OPT_SGD && spec->train.optimizer.type != SPEC_OPT_ADAMW)
    return drv_error(DRV_ERR_INVALID, "train.optimizer.type: unknown value %d",
                     (int)spec->train.optimizer.type);

  t = calloc(1, sizeof *t);
  if (!t) return drv_error(DRV_ERR_NOMEM, "trainer_new: out of memory");
  t->be = be;
  t->spec = *spec;
  t->spec.name = NULL;
  t->spec.model.type = NULL;
  t->spec.model.hidden = NULL;
  t->spec.model.hidden_count = 0;
  t->spec.data.train = t->spec.data.test = NULL;
  t->spec.data.synthetic = NULL;
  t->spec.run_dir = NULL;
  t->max_batch = max_batch;

  // Sizes and the parameter layout.
  t->layers = spec->model.hidden_count + 1;
  t->sizes[0] = features;
  for (uint32_t i = 0; i < spec->model.hidden_count; i++) {
    if (spec->model.hidden[i] == 0) {
      rc = drv_error(DRV_ERR_INVALID, "model.hidden[%u]: a layer needs at least one unit", i);
      goto fail;
    }
    t->sizes[i + 1] = spec->model.hidden[i];
  }
  t->sizes[t->layers] = classes;
  uint64_t np = 0;
  uint32_t max_width = 0;
  for (uint32_t l = 0; l < t->layers; l++) {
    t->w_off[l] = (size_t)np;
    np += (uint64_t)t->sizes[l] * t->sizes[l + 1];
    t->b_off[l] = (size_t)np;
    np += t->sizes[l + 1];
    max_width = DRV_MAX(max_width, t->sizes[l + 1]);
  }
  /* A sane bound (4G parameters) that also keeps every size_t product below overflow. */
  if (np > ((uint64_t)1 << 32)) {
    rc = drv_error(DRV_ERR_INVALID, "model: %llu parameters is too many", (unsigned long long)np);
    goto fail;
  }
  t->nparams = (size_t)np;
  t->nopt = spec->train.optimizer.type == SPEC_OPT_ADAMW ? 2 * t->nparams : t->nparams;

  // Device buffers: parameters, gradients, optimizer state, then the activation arena.
  size_t pbytes = t->nparams * sizeof(float);
  DRV_CHECK_GOTO(be->alloc(be, pbytes, (void **)&t->d_params), rc, fail);
  DRV_CHECK_GOTO(be->alloc(be, pbytes, (void **)&t->d_grads), rc, fail);
  DRV_CHECK_GOTO(be->alloc(be, t->nopt * sizeof(float), (void **)&t->d_opt), rc, fail);
  DRV_CHECK_GOTO(be->zero(be, t->d_grads, pbytes), rc, fail);
  DRV_CHECK_GOTO(be->zero(be, t->d_opt, t->nopt * sizeof(float)), rc, fail);

  size_t B = max_batch;
  if ((uint64_t)B * DRV_MAX(features, max_width) > ((uint64_t)1 << 36)) {
    rc = drv_error(DRV_ERR_INVALID, "trainer_new: max_batch %u is too large for this model",
                   max_batch);
    goto fail;
  }
  /* x, then y, losses and correct, then the two gradient buffers ... */
  size_t arena = align16(B * features) + 3 * align16(B) + 2 * align16(B * max_width);
  for (uint32_t l = 0; l < t->layers; l++)
    arena += align16(B * t->sizes[l + 1]) * (l + 1 < t->layers ? 2 : 1); /* ... pre, act */
  DRV_CHECK_GOTO(be->alloc(be, arena * sizeof(float), &t->d_arena), rc, fail);
  float *p = t->d_arena;
  t->d_x = carve(&p, B * features);
  t->d_y = (int32_t *)carve(&p, B); /* int32 slices take as many bytes as float ones */
  for (uint32_t l = 0; l < t->layers; l++) {
    t->d_pre[l] = carve(&p, B * t->sizes[l + 1]);
    if (l + 1 < t->layers) t->d_act[l] = carve(&p, B * t->sizes[l + 1]);
  }
  t->d_ga = carve(&p, B * max_width);
  t->d_gb = carve(&p, B * max_width);
  t->d_losses = carve(&p, B);
  t->d_correct = (int32_t *)carve(&p, B);

  t->h_losses = malloc(B * sizeof *t->h_losses);
  t->h_correct = malloc(B * sizeof *t->h_correct);
  h_init = malloc(pbytes ? pbytes : 1);
  if (!t->h_losses || !t->h_correct || !h_init) {
    rc = drv_error(DRV_ERR_NOMEM, "trainer_new: out of memory");
    goto fail;
  }
  init_params(t, h_init);
  DRV_CHECK_GOTO(be->copy_in(be, t->d_params, h_init, pbytes), rc, fail);
  DRV_CHECK_GOTO(be->synchronize(be), rc, fail);
  free(h_init);
  *out = t;
  return DRV_OK;

fail:
  free(h_init);
  trainer_destroy(&t);
  return rc;
}

void trainer_destroy(trainer_t **tp) {
  if (!tp || !*tp) return;
  trainer_t *t = *tp;
  const backend_t *be = t->be;
  free(t->h_correct);
  free(t->h_losses);
  be->free(be, t->d_arena);
  be->free(be, t->d_opt);
  be->free(be, t->d_grads);
  be->free(be, t->d_params);
  free(t);
  *tp = NULL;
}

// --- forward and backward ---------------------------------------------------------------

/* Checks a batch's arguments and copies it to the device: x (n, features), y (n). */
static drv_result_t load_batch(trainer_t *t, const float *h_x, const int32_t *h_y, uint32_t n,
                               const char *who) {
  const backend_t *be = t->be;
  uint32_t classes = t->sizes[t->layers];
  if (n > t->max_batch)
    return drv_error(DRV_ERR_INVALID, "%s: batch of %u exceeds max_batch %u", who, n, t->max_batch);
  if (n && (!h_x || !h_y)) return drv_error(DRV_ERR_INVALID, "%s: NULL batch", who);
  for (uint32_t i = 0; i < n; i++)
    if (h_y[i] < 0 || (uint32_t)h_y[i] >= classes)
      return drv_error(DRV_ERR_INVALID, "%s: label %d of sample %u outside [0, %u)", who, h_y[i], i,
                       classes);
  DRV_CHECK(be->copy_in(be, t->d_x, h_x, (size_t)n * t->sizes[0] * sizeof(float)));
  DRV_CHECK(be->copy_in(be, t->d_y, h_y, (size_t)n * sizeof(int32_t)));
  return DRV_OK;
}

/* Forward pass of n rows from d_x: fills d_pre/d_act; the logits end in d_pre[L-1]. */
static drv_result_t forward(trainer_t *t, uint32_t n) {
  const backend_t *be = t->be;
  const float *in_act = t->d_x; /* (n, sizes[l]) */
  for (uint32_t l = 0; l < t->layers; l++) {
    uint32_t in = t->sizes[l], out = t->sizes[l + 1];
    const float *w = t->d_params + t->w_off[l]; /* (out, in) */
    const float *b = t->d_params + t->b_off[l]; /* (out) */
    /* pre (n, out) = in_act (n, in) @ W^T (in, out) + b */
    DRV_CHECK(be->gemm(be, false, true, n, out, in, 1.0f, in_act, w, 0.0f, t->d_pre[l]));
    DRV_CHECK(be->bias_add(be, t->d_pre[l], b, n, out));
    if (l + 1 == t->layers) break; /* logits: no activation */
    size_t count = (size_t)n * out;
    if (t->spec.model.activation == SPEC_ACT_GELU)
      DRV_CHECK(be->gelu_forward(be, t->d_act[l], t->d_pre[l], count));
    else
      DRV_CHECK(be->relu_forward(be, t->d_act[l], t->d_pre[l], count));
    in_act = t->d_act[l];
  }
  return DRV_OK;
}

/* Copies the per-sample losses and hits of n rows back and adds them up, in row order and
 * in double, so the sum does not depend on the backend. */
static drv_result_t collect(trainer_t *t, uint32_t n, double *loss_sum, uint32_t *correct) {
  const backend_t *be = t->be;
  DRV_CHECK(be->copy_out(be, t->h_losses, t->d_losses, (size_t)n * sizeof(float)));
  DRV_CHECK(be->copy_out(be, t->h_correct, t->d_correct, (size_t)n * sizeof(int32_t)));
  double sum = 0.0;
  uint32_t hits = 0;
  for (uint32_t i = 0; i < n; i++) {
    sum += t->h_losses[i];
    hits += t->h_correct[i] ? 1 : 0;
  }
  if (loss_sum) *loss_sum += sum;
  if (correct) *correct += hits;
  return DRV_OK;
}

drv_result_t trainer_forward_backward(trainer_t *t, const float *h_x, const int32_t *h_y,
                                      uint32_t n, uint32_t global_batch, double *loss_sum,
                                      uint32_t *correct) {
  const backend_t *be = t->be;
  if (global_batch == 0)
    return drv_error(DRV_ERR_INVALID, "trainer_forward_backward: global_batch is 0");
  DRV_CHECK(load_batch(t, h_x, h_y, n, "trainer_forward_backward"));
  if (n == 0) return be->zero(be, t->d_grads, t->nparams * sizeof(float));
  /* Every gradient below is written with beta = 0 (or overwritten by bias_grad), which is
   * the zeroing: no separate pass over the buffer. */
  DRV_CHECK(forward(t, n));

  uint32_t L = t->layers;
  /* dlogits (n, classes) = (softmax - onehot) / global_batch */
  DRV_CHECK(be->softmax_xent(be, t->d_pre[L - 1], t->d_y, n, t->sizes[L],
                             1.0f / (float)global_batch, t->d_ga, t->d_losses, t->d_correct));
  float *dpre = t->d_ga, *spare = t->d_gb;
  for (uint32_t l = L; l-- > 0;) {
    uint32_t in = t->sizes[l], out = t->sizes[l + 1];
    const float *in_act = l == 0 ? t->d_x : t->d_act[l - 1]; /* (n, in) */
    /* dW (out, in) = dpre^T (out, n) @ in_act (n, in) */
    DRV_CHECK(
        be->gemm(be, true, false, out, in, n, 1.0f, dpre, in_act, 0.0f, t->d_grads + t->w_off[l]));
    /* db (out) = column sums of dpre (n, out) */
    DRV_CHECK(be->bias_grad(be, t->d_grads + t->b_off[l], dpre, n, out));
    if (l == 0) break; /* no gradient needed for the input */
    /* din (n, in) = dpre (n, out) @ W (out, in), then through the activation in place */
    DRV_CHECK(
        be->gemm(be, false, false, n, in, out, 1.0f, dpre, t->d_params + t->w_off[l], 0.0f, spare));
    size_t count = (size_t)n * in;
    if (t->spec.model.activation == SPEC_ACT_GELU)
      DRV_CHECK(be->gelu_backward(be, spare, t->d_pre[l - 1], spare, count));
    else
      DRV_CHECK(be->relu_backward(be, spare, t->d_pre[l - 1], spare, count));
    float *tmp = dpre;
    dpre = spare;
    spare = tmp;
  }
  return collect(t, n, loss_sum, correct);
}

drv_result_t trainer_evaluate(trainer_t *t, const float *h_x, const int32_t *h_y, uint32_t n,
                              double *loss_sum, uint32_t *correct) {
  const backend_t *be = t->be;
  uint32_t L = t->layers;
  size_t features = t->sizes[0];
  for (uint32_t start = 0; start < n; start += t->max_batch) {
    uint32_t m = DRV_MIN(t->max_batch, n - start);
    DRV_CHECK(load_batch(t, h_x + (size_t)start * features, h_y + start, m, "trainer_evaluate"));
    DRV_CHECK(forward(t, m));
    DRV_CHECK(be->softmax_xent(be, t->d_pre[L - 1], t->d_y, m, t->sizes[L], 1.0f, NULL, t->d_losses,
                               t->d_correct));
    DRV_CHECK(collect(t, m, loss_sum, correct));
  }
  return DRV_OK;
}

// --- buffers ----------------------------------------------------------------------------

float *trainer_grads(trainer_t *t, size_t *count) {
  if (count) *count = t->nparams;
  return t->d_grads;
}

float *trainer_params(trainer_t *t, size_t *count) {
  if (count) *count = t->nparams;
  return t->d_params;
}

float *trainer_opt_state(trainer_t *t, size_t *count) {
  if (count) *count = t->nopt;
  return t->d_opt;
}

uint32_t trainer_layers(const trainer_t *t) {
  return t->layers;
}

uint32_t trainer_size(const trainer_t *t, uint32_t i) {
  return i <= t->layers ? t->sizes[i] : 0;
}

// --- optimizer --------------------------------------------------------------------------

float trainer_lr(const jobspec_t *spec, uint64_t step, uint64_t total_steps) {
  double lr = spec->train.optimizer.lr;
  double lr_min = spec->train.lr_schedule.lr_min;
  uint64_t warmup = spec->train.lr_schedule.warmup_steps;
  if (step < warmup) return (float)(lr * (double)step / (double)warmup);
  if (spec->train.lr_schedule.type != SPEC_LR_COSINE) return (float)lr;
  if (step >= total_steps) return (float)lr_min;
  /* Here warmup <= step < total_steps, so the span is at least one step. */
  double progress = (double)(step - warmup) / (double)(total_steps - warmup);
  return (float)(lr_min + 0.5 * (lr - lr_min) * (1.0 + cos(M_PI * progress)));
}

drv_result_t trainer_apply(trainer_t *t, uint64_t step, uint64_t total_steps, float *lr) {
  const backend_t *be = t->be;
  float rate = trainer_lr(&t->spec, step, total_steps);
  if (lr) *lr = rate;
  if (t->spec.train.optimizer.type == SPEC_OPT_ADAMW)
    return be->adamw_step(be, t->d_params, t->d_grads, t->d_opt, t->d_opt + t->nparams, t->nparams,
                          rate, t->spec.train.optimizer.beta1, t->spec.train.optimizer.beta2,
                          t->spec.train.optimizer.eps, t->spec.train.optimizer.weight_decay,
                          step + 1);
  return be->sgd_step(be, t->d_params, t->d_grads, t->d_opt, t->nparams, rate,
                      t->spec.train.optimizer.momentum, t->spec.train.optimizer.weight_decay);
}

// --- saving -----------------------------------------------------------------------------

drv_result_t trainer_save(const trainer_t *t, const char *path) {
  drv_result_t rc = DRV_OK;
  const backend_t *be = t->be;
  float *h_params = malloc(t->nparams ? t->nparams * sizeof(float) : 1);
  char names[2 * TRAINER_MAX_LAYERS][32];
  safetensors_tensor_t tensors[2 * TRAINER_MAX_LAYERS];
  char sizes[16 * (TRAINER_MAX_LAYERS + 1)];
  if (!h_params) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  DRV_CHECK_GOTO(be->copy_out(be, h_params, t->d_params, t->nparams * sizeof(float)), rc, fail);

  size_t len = 0;
  for (uint32_t i = 0; i <= t->layers; i++)
    len += (size_t)snprintf(sizes + len, sizeof sizes - len, "%s%u", i ? "," : "", t->sizes[i]);
  for (uint32_t l = 0; l < t->layers; l++) {
    safetensors_tensor_t *w = &tensors[2 * l], *b = &tensors[2 * l + 1];
    snprintf(names[2 * l], sizeof names[0], "layers.%u.weight", l);
    snprintf(names[2 * l + 1], sizeof names[0], "layers.%u.bias", l);
    *w = (safetensors_tensor_t){.name = names[2 * l],
                                .dtype = "F32",
                                .ndim = 2,
                                .shape = {t->sizes[l + 1], t->sizes[l]},
                                .data = h_params + t->w_off[l]};
    *b = (safetensors_tensor_t){.name = names[2 * l + 1],
                                .dtype = "F32",
                                .ndim = 1,
                                .shape = {t->sizes[l + 1]},
                                .data = h_params + t->b_off[l]};
  }
  const safetensors_meta_t meta[] = {
      {"format", "pt"},
      {"model", "mlp"},
      {"activation", t->spec.model.activation == SPEC_ACT_GELU ? "gelu" : "relu"},
      {"sizes", sizes},
  };
  DRV_CHECK_GOTO(safetensors_write(path, tensors, 2 * (size_t)t->layers, meta, DRV_ARRAY_LEN(meta)),
                 rc, fail);
fail:
  free(h_params);
  return rc;
}
