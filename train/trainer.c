/* trainer.c: see trainer.h. The forward and backward passes of an MLP written against the
 * backend vtable, in the manner of llm.c: every buffer is allocated once in trainer_new,
 * a step only issues ops.
 *
 * Per layer l (in = sizes[l], out = sizes[l+1]), for a batch of n rows, with T the
 * activation type (F32, or BF16 under precision bf16):
 *   forward   act[l] = f(in_act @ W[l]^T + b[l])  (n, out)   one matmul, epilogue BIAS_RELU
 *                                                            or BIAS_GELU (pre[l] kept)
 *             logits = act[L-2] @ W[L-1]^T + b    (n, C)     epilogue BIAS, F32
 *   backward  dlogits = (softmax - onehot) / B    (n, C)     softmax_xent, F32
 *             db[L-1] = colsum(dlogits)                      bias_grad
 *             dW[l]  = dpre^T @ in_act            (out, in)  matmul, F32 into the gradients
 *             dpre[l-1] = (dpre @ W[l]) * f'(.)   (n, in)    matmul, epilogue DRELU_BGRAD
 *             db[l-1] = colsum(dpre[l-1])                    (or DGELU_BGRAD), same matmul
 * where in_act is the input batch for l = 0 and act[l-1] otherwise. After dW[l] the whole
 * tail [w_off[l], end) of the gradient buffer is issued, which the reducer hears.
 */
#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/safetensors.h"
#include "common/drv.h"
#include "common/log.h"
#include "common/rng.h"

#define TRAINER_MAX_LAYERS (JOBSPEC_MAX_HIDDEN + 1)
/* rng stream of layer l's initial weights: one stream per layer, apart from the streams
 * other modules draw from the same seed. */
#define TRAINER_INIT_STREAM 0x696e697400000000ULL /* "init" */
/* cuda_graphs: auto times this many steps each way after GRAPH_WARMUP eager ones. */
#define GRAPH_WARMUP 3
#define GRAPH_TRIAL 5

typedef enum { GRAPHS_OFF, GRAPHS_ON, GRAPHS_TRY_EAGER, GRAPHS_TRY_GRAPH } graph_state_t;

/* One staging slot: a batch and its step's schedule, on the host and on the device. */
typedef struct {
  float *h_x, *d_x;         /* (max_batch, features) */
  int32_t *h_y, *d_y;       /* (max_batch) */
  float *h_sched, *d_sched; /* (4): see be_optim_t */
  uint32_t n, batch;        /* what is staged */
  void *graph;              /* the step captured on this slot, for (graph_n, graph_batch) */
  uint32_t graph_n, graph_batch;
} slot_t;

struct trainer {
  const backend_t *be;
  jobspec_t spec;  /* a copy with every pointer nulled: model, optimizer, schedule */
  uint32_t layers; /* hidden layers + 1 */
  uint32_t sizes[TRAINER_MAX_LAYERS + 1]; /* features, hidden..., classes */
  size_t w_off[TRAINER_MAX_LAYERS];       /* offset of W[l] (out, in) in params, floats */
  size_t b_off[TRAINER_MAX_LAYERS];       /* offset of b[l] (out) in params, floats */
  size_t nparams;
  trainer_tensor_t tensors[TRAINER_MAX_TENSORS]; /* the state's names over the buffers */
  size_t ntensors;
  uint32_t max_batch;
  be_dtype_t act_type; /* T: F32, or BF16 under precision bf16 */

  float *d_params; /* (nparams) F32 master weights */
  float *d_grads;  /* (nparams + 2): gradients, then loss sum and correct count */
  float *d_opt;    /* SGD: momentum (nparams); AdamW: m (nparams) then v (nparams) */
  void *d_wlow;    /* (nparams) BF16 copy of the parameters (bf16 only) */
  float *d_commit; /* (nparams + nopt) the commit, once made */
  int committed;
  size_t nopt;

  /* Activations, carved out of one allocation (d_arena); T-typed buffers are sized as
   * F32 so one carve serves both precisions. */
  void *d_arena;
  void *d_xlow;                    /* (max_batch, features) the input as T (bf16 only) */
  void *d_pre[TRAINER_MAX_LAYERS]; /* (max_batch, sizes[l+1]) GELU pre-activations, T */
  void *d_act[TRAINER_MAX_LAYERS]; /* (max_batch, sizes[l+1]) hidden outputs, T */
  float *d_logits;                 /* (max_batch, classes) F32 */
  float *d_dlogits;                /* (max_batch, classes) F32 */
  void *d_ga, *d_gb;               /* (max_batch, max width) gradient ping-pong, T */
  float *d_losses;                 /* (max_batch) per-sample loss */
  int32_t *d_correct;              /* (max_batch) per-sample 0/1 */
  float *d_eval;                   /* (2) evaluation sums */

  slot_t slots[2];
  int fill;   /* the slot trainer_next_batch hands out */
  int staged; /* the slot holding the staged step, -1 when none */
  int active; /* the slot of the step launched and not finished, -1 when none */
  const trainer_reducer_t *reducer;

  graph_state_t graphs;
  uint32_t graph_steps; /* steps since the graph state began */
  int eager_done;       /* a step has run op by op: captures may begin */
  double t_launch, trial_eager[GRAPH_TRIAL], trial_graph[GRAPH_TRIAL];
};

// --- construction -----------------------------------------------------------------------

static graph_state_t graphs_initial(const trainer_t *t);

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

/* The checks trainer_new makes before it allocates anything. */
static drv_result_t check_args(const jobspec_t *spec, const backend_t *be, uint32_t features,
                               uint32_t classes, uint32_t max_batch) {
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
  return DRV_OK;
}

/* The spec as the trainer keeps it: every pointer nulled (the trainer outlives nothing of
 * the caller's), the model sizes kept in t->sizes instead. */
static jobspec_t spec_kept(const jobspec_t *spec) {
  jobspec_t k = *spec;
  k.name = NULL;
  k.model.type = NULL;
  k.model.hidden = NULL;
  k.model.hidden_count = 0;
  k.data.train = k.data.test = NULL;
  k.data.synthetic = NULL;
  k.run_dir = NULL;
  return k;
}

/* Appends a tensor of (d0) or (d0, d1) to the trainer's list. */
static void describe(trainer_t *t, const char *name, uint32_t ndim, uint64_t d0, uint64_t d1,
                     trainer_buffer_t buffer, size_t offset) {
  trainer_tensor_t *d = &t->tensors[t->ntensors++];
  *d = (trainer_tensor_t){
      .ndim = ndim, .shape = {d0, ndim > 1 ? d1 : 0}, .buffer = buffer, .offset = offset};
  snprintf(d->name, sizeof d->name, "%s", name);
  d->count = ndim > 1 ? d0 * d1 : d0;
}

/* Sizes and the flat layout: each layer's W (out, in) then b (out), layer after layer, the
 * optimizer state's size, and the tensors that name them; *max_width the widest layer. */
static drv_result_t plan_layout(trainer_t *t, const jobspec_t *spec, uint32_t features,
                                uint32_t classes, uint32_t *max_width) {
  t->layers = spec->model.hidden_count + 1;
  t->sizes[0] = features;
  for (uint32_t i = 0; i < spec->model.hidden_count; i++) {
    if (spec->model.hidden[i] == 0)
      return drv_error(DRV_ERR_INVALID, "model.hidden[%u]: a layer needs at least one unit", i);
    t->sizes[i + 1] = spec->model.hidden[i];
  }
  t->sizes[t->layers] = classes;
  uint64_t np = 0;
  *max_width = 0;
  for (uint32_t l = 0; l < t->layers; l++) {
    t->w_off[l] = (size_t)np;
    np += (uint64_t)t->sizes[l] * t->sizes[l + 1];
    t->b_off[l] = (size_t)np;
    np += t->sizes[l + 1];
    *max_width = DRV_MAX(*max_width, t->sizes[l + 1]);
  }
  /* A sane bound (4G parameters) that also keeps every size_t product below overflow. */
  if (np > ((uint64_t)1 << 32))
    return drv_error(DRV_ERR_INVALID, "model: %llu parameters is too many", (unsigned long long)np);
  t->nparams = (size_t)np;
  t->nopt = spec->train.optimizer.type == SPEC_OPT_ADAMW ? 2 * t->nparams : t->nparams;
  t->act_type = spec->train.precision == SPEC_PREC_BF16 ? BE_BF16 : BE_F32;

  for (uint32_t l = 0; l < t->layers; l++) {
    char name[32];
    uint32_t in = t->sizes[l], out = t->sizes[l + 1];
    snprintf(name, sizeof name, "layers.%u.weight", l);
    describe(t, name, 2, out, in, TRAINER_PARAMS, t->w_off[l]);
    snprintf(name, sizeof name, "layers.%u.bias", l);
    describe(t, name, 1, out, 0, TRAINER_PARAMS, t->b_off[l]);
  }
  describe(t, "optimizer.state", 1, t->nopt, 0, TRAINER_OPT_STATE, 0);
  return DRV_OK;
}

/* Device buffers of the state: parameters, gradients (+ the loss pair), optimizer state,
 * and the BF16 copy of the parameters under bf16. */
static drv_result_t alloc_state(trainer_t *t) {
  const backend_t *be = t->be;
  size_t pbytes = t->nparams * sizeof(float);
  DRV_CHECK(be->alloc(be, pbytes, (void **)&t->d_params));
  DRV_CHECK(be->alloc(be, pbytes + 2 * sizeof(float), (void **)&t->d_grads));
  DRV_CHECK(be->alloc(be, t->nopt * sizeof(float), (void **)&t->d_opt));
  DRV_CHECK(be->zero(be, t->d_grads, pbytes + 2 * sizeof(float)));
  DRV_CHECK(be->zero(be, t->d_opt, t->nopt * sizeof(float)));
  if (t->act_type == BE_BF16)
    DRV_CHECK(be->alloc(be, t->nparams * be_dtype_size(BE_BF16), &t->d_wlow));
  return DRV_OK;
}

/* The two staging slots (device slices and host buffers) and the activations, carved out
 * of one device arena sized for max_batch rows. */
static drv_result_t alloc_activations(trainer_t *t, uint32_t max_width) {
  const backend_t *be = t->be;
  size_t B = t->max_batch, C = t->sizes[t->layers], features = t->sizes[0];
  if ((uint64_t)B * DRV_MAX(features, max_width) > ((uint64_t)1 << 36))
    return drv_error(DRV_ERR_INVALID, "trainer_new: max_batch %u is too large for this model",
                     t->max_batch);
  /* two input slots (x, y, sched), x as T, losses, correct, eval sums, logits, dlogits,
   * the gradient ping-pong, then per layer act and pre */
  size_t arena = 2 * (align16(B * features) + align16(B) + align16(4)) + align16(B * features) +
                 2 * align16(B) + align16(2) + 2 * align16(B * C) + 2 * align16(B * max_width);
  for (uint32_t l = 0; l + 1 < t->layers; l++) arena += 2 * align16(B * t->sizes[l + 1]);
  DRV_CHECK(be->alloc(be, arena * sizeof(float), &t->d_arena));
  float *p = t->d_arena;
  for (int k = 0; k < 2; k++) {
    slot_t *sl = &t->slots[k];
    sl->d_x = carve(&p, B * features);
    sl->d_y = (int32_t *)carve(&p, B); /* int32 slices take as many bytes as float ones */
    sl->d_sched = carve(&p, 4);
    DRV_CHECK(be->host_alloc(be, B * features * sizeof(float), (void **)&sl->h_x));
    DRV_CHECK(be->host_alloc(be, B * sizeof(int32_t), (void **)&sl->h_y));
    DRV_CHECK(be->host_alloc(be, 4 * sizeof(float), (void **)&sl->h_sched));
  }
  t->d_xlow = carve(&p, B * features);
  t->d_losses = carve(&p, B);
  t->d_correct = (int32_t *)carve(&p, B);
  t->d_eval = carve(&p, 2);
  t->d_logits = carve(&p, B * C);
  t->d_dlogits = carve(&p, B * C);
  t->d_ga = carve(&p, B * max_width);
  t->d_gb = carve(&p, B * max_width);
  for (uint32_t l = 0; l + 1 < t->layers; l++) {
    t->d_act[l] = carve(&p, B * t->sizes[l + 1]);
    t->d_pre[l] = carve(&p, B * t->sizes[l + 1]);
  }
  return DRV_OK;
}

/* The initial parameters (init_params) onto the device. */
static drv_result_t init_state(trainer_t *t) {
  float *h_init = malloc(t->nparams ? t->nparams * sizeof(float) : 1);
  if (!h_init) return drv_error(DRV_ERR_NOMEM, "trainer_new: out of memory");
  init_params(t, h_init);
  drv_result_t rc = trainer_set_state(t, h_init, NULL);
  free(h_init);
  return rc;
}

drv_result_t trainer_new(const jobspec_t *spec, const backend_t *be, uint32_t features,
                         uint32_t classes, uint32_t max_batch, trainer_t **out) {
  drv_result_t rc = DRV_OK;
  trainer_t *t = NULL;
  uint32_t max_width = 0;

  if (!out) return drv_error(DRV_ERR_INVALID, "trainer_new: NULL out");
  *out = NULL;
  DRV_CHECK(check_args(spec, be, features, classes, max_batch));
  t = calloc(1, sizeof *t);
  if (!t) return drv_error(DRV_ERR_NOMEM, "trainer_new: out of memory");
  t->be = be;
  t->spec = spec_kept(spec);
  t->max_batch = max_batch;
  DRV_CHECK_GOTO(plan_layout(t, spec, features, classes, &max_width), rc, fail);
  DRV_CHECK_GOTO(alloc_state(t), rc, fail);
  DRV_CHECK_GOTO(alloc_activations(t, max_width), rc, fail);
  t->staged = t->active = -1;
  t->graphs = graphs_initial(t);
  DRV_CHECK_GOTO(init_state(t), rc, fail);
  *out = t;
  return DRV_OK;

fail:
  trainer_destroy(&t);
  return rc;
}

static void drop_graphs(trainer_t *t) {
  for (int k = 0; k < 2; k++) {
    if (t->slots[k].graph) t->be->graph_free(t->be, t->slots[k].graph);
    t->slots[k].graph = NULL;
  }
}

/* A step failed: free the graphs (a communicator cannot be aborted while a graph holds its
 * operations), abort the reducer's pending collectives, then wait for the device. */
static void step_failed(trainer_t *t) {
  const trainer_reducer_t *r = t->reducer;
  drop_graphs(t);
  if (r && r->abort) r->abort(r->ctx);
  t->be->synchronize(t->be);
  t->active = -1;
}

/* Ends a step still running (a caller that stops between launch and finish): waited for
 * through the reducer, which has a deadline, and aborted when that fails; a device
 * synchronize alone could wait forever on a collective whose peer is gone. */
static void settle_step(trainer_t *t) {
  if (t->active < 0) return;
  const trainer_reducer_t *r = t->reducer;
  if (r && r->wait && r->wait(r->ctx) != DRV_OK) {
    step_failed(t);
    return;
  }
  t->be->synchronize(t->be);
  t->active = -1;
}

void trainer_destroy(trainer_t **tp) {
  if (!tp || !*tp) return;
  trainer_t *t = *tp;
  const backend_t *be = t->be;
  settle_step(t);
  drop_graphs(t);
  for (int k = 0; k < 2; k++) {
    be->host_free(be, t->slots[k].h_x);
    be->host_free(be, t->slots[k].h_y);
    be->host_free(be, t->slots[k].h_sched);
  }
  be->free(be, t->d_arena);
  be->free(be, t->d_commit);
  be->free(be, t->d_wlow);
  be->free(be, t->d_opt);
  be->free(be, t->d_grads);
  be->free(be, t->d_params);
  free(t);
  *tp = NULL;
}

// --- state ------------------------------------------------------------------------------

/* After the F32 parameters change outside the optimizer: refresh their BF16 copy. */
static drv_result_t refresh_low(trainer_t *t) {
  if (!t->d_wlow) return DRV_OK;
  return t->be->convert(t->be, t->d_wlow, BE_BF16, t->d_params, BE_F32, t->nparams);
}

drv_result_t trainer_get_state(trainer_t *t, float *h_params, float *h_opt) {
  const backend_t *be = t->be;
  if (h_params) DRV_CHECK(be->copy_out(be, h_params, t->d_params, t->nparams * sizeof(float)));
  if (h_opt) DRV_CHECK(be->copy_out(be, h_opt, t->d_opt, t->nopt * sizeof(float)));
  return DRV_OK;
}

drv_result_t trainer_set_state(trainer_t *t, const float *h_params, const float *h_opt) {
  const backend_t *be = t->be;
  if (h_params) DRV_CHECK(be->copy_in(be, t->d_params, h_params, t->nparams * sizeof(float)));
  if (h_opt) DRV_CHECK(be->copy_in(be, t->d_opt, h_opt, t->nopt * sizeof(float)));
  DRV_CHECK(refresh_low(t));
  return be->synchronize(be);
}

drv_result_t trainer_commit(trainer_t *t) {
  const backend_t *be = t->be;
  size_t pb = t->nparams * sizeof(float), ob = t->nopt * sizeof(float);
  if (!t->d_commit) DRV_CHECK(be->alloc(be, pb + ob, (void **)&t->d_commit));
  DRV_CHECK(be->copy(be, t->d_commit, t->d_params, pb));
  DRV_CHECK(be->copy(be, t->d_commit + t->nparams, t->d_opt, ob));
  t->committed = 1;
  return be->synchronize(be);
}

drv_result_t trainer_rollback(trainer_t *t) {
  const backend_t *be = t->be;
  if (!t->committed) return drv_error(DRV_ERR_INVALID, "trainer_rollback: nothing committed");
  DRV_CHECK(be->copy(be, t->d_params, t->d_commit, t->nparams * sizeof(float)));
  DRV_CHECK(be->copy(be, t->d_opt, t->d_commit + t->nparams, t->nopt * sizeof(float)));
  DRV_CHECK(refresh_low(t));
  return be->synchronize(be);
}

// --- forward and backward ---------------------------------------------------------------

/* The weights the GEMMs read: the F32 masters, or their BF16 copy. */
static const void *weights(const trainer_t *t, uint32_t l) {
  if (t->d_wlow) return (const uint16_t *)t->d_wlow + t->w_off[l];
  return t->d_params + t->w_off[l];
}

/* Forward pass of n rows from x (F32): fills act/pre; the logits end in d_logits. */
static drv_result_t forward(trainer_t *t, const float *d_x, uint32_t n) {
  const backend_t *be = t->be;
  const void *in_act = d_x; /* (n, sizes[l]) of act_type */
  if (t->act_type != BE_F32) {
    DRV_CHECK(be->convert(be, t->d_xlow, t->act_type, d_x, BE_F32, (size_t)n * t->sizes[0]));
    in_act = t->d_xlow;
  }
  bool gelu = t->spec.model.activation == SPEC_ACT_GELU;
  for (uint32_t l = 0; l < t->layers; l++) {
    bool last = l + 1 == t->layers;
    be_matmul_t op = {
        .trans_b = true, /* (n, in) @ W^T, W (out, in) */
        .m = n,
        .n = t->sizes[l + 1],
        .k = t->sizes[l],
        .a = in_act,
        .b = weights(t, l),
        .ab_type = t->act_type,
        .c = last ? (void *)t->d_logits : t->d_act[l],
        .c_type = last ? BE_F32 : t->act_type,
        .epilogue = last   ? BE_EPI_BIAS
                    : gelu ? BE_EPI_BIAS_GELU
                           : BE_EPI_BIAS_RELU,
        /* the bias in C's type: F32, or for BF16 activations the optimizer's BF16 copy */
        .bias = last || !t->d_wlow ? (const void *)(t->d_params + t->b_off[l])
                                   : (const void *)((const uint16_t *)t->d_wlow + t->b_off[l]),
        .bias_type = last ? BE_F32 : t->act_type,
        .aux = gelu && !last ? t->d_pre[l] : NULL,
    };
    DRV_CHECK(be->matmul(be, &op));
    in_act = t->d_act[l];
  }
  return DRV_OK;
}

/* Backward pass of n rows with loss scale 1/global_batch, after forward(): the gradients,
 * and the loss sum and correct count at d_grads[nparams..]. */
static drv_result_t backward(trainer_t *t, const float *d_x, const int32_t *d_y, uint32_t n,
                             uint32_t global_batch) {
  const backend_t *be = t->be;
  const trainer_reducer_t *r = t->reducer;
  uint32_t L = t->layers, C = t->sizes[L];
  if (n == 0) {
    /* No sample here this step (a short last batch): zero gradients, still reduced. */
    DRV_CHECK(be->zero(be, t->d_grads, (t->nparams + 2) * sizeof(float)));
    if (r && r->ready) DRV_CHECK(r->ready(r->ctx, 0));
    return DRV_OK;
  }
  DRV_CHECK(be->softmax_xent(be, t->d_logits, d_y, n, C, 1.0f / (float)global_batch, t->d_dlogits,
                             t->d_losses, t->d_correct));
  DRV_CHECK(be->loss_sum(be, t->d_losses, t->d_correct, n, t->d_grads + t->nparams));
  DRV_CHECK(be->bias_grad(be, t->d_grads + t->b_off[L - 1], t->d_dlogits, n, C));
  const void *dpre = t->d_dlogits;
  if (t->act_type != BE_F32) {
    DRV_CHECK(be->convert(be, t->d_ga, t->act_type, t->d_dlogits, BE_F32, (size_t)n * C));
    dpre = t->d_ga;
  }
  void *spare = dpre == t->d_ga ? t->d_gb : t->d_ga;
  const void *x = t->act_type != BE_F32 ? t->d_xlow : d_x;
  bool gelu = t->spec.model.activation == SPEC_ACT_GELU;
  for (uint32_t l = L; l-- > 0;) {
    uint32_t in = t->sizes[l], out = t->sizes[l + 1];
    /* dW (out, in) = dpre^T (out, n) @ in_act (n, in), accumulated in F32 */
    be_matmul_t dw = {.trans_a = true,
                      .m = out,
                      .n = in,
                      .k = n,
                      .a = dpre,
                      .b = l == 0 ? x : t->d_act[l - 1],
                      .ab_type = t->act_type,
                      .c = t->d_grads + t->w_off[l],
                      .c_type = BE_F32};
    DRV_CHECK(be->matmul(be, &dw));
    if (r && r->ready) DRV_CHECK(r->ready(r->ctx, t->w_off[l]));
    if (l == 0) break; /* no gradient needed for the input */
    /* dpre[l-1] (n, in) = (dpre (n, out) @ W (out, in)) * f'(.), db[l-1] = its column sums */
    be_matmul_t dx = {.m = n,
                      .n = in,
                      .k = out,
                      .a = dpre,
                      .b = weights(t, l),
                      .ab_type = t->act_type,
                      .c = spare,
                      .c_type = t->act_type,
                      .epilogue = gelu ? BE_EPI_DGELU_BGRAD : BE_EPI_DRELU_BGRAD,
                      .aux = gelu ? t->d_pre[l - 1] : t->d_act[l - 1],
                      .bgrad = t->d_grads + t->b_off[l - 1]};
    DRV_CHECK(be->matmul(be, &dx));
    /* ping-pong between d_ga and d_gb; d_dlogits (sized for the classes) is never reused */
    void *next = spare == t->d_ga ? t->d_gb : t->d_ga;
    dpre = spare;
    spare = next;
  }
  return DRV_OK;
}

/* Checks a batch's labels. */
static drv_result_t check_labels(const trainer_t *t, const int32_t *h_y, uint32_t n,
                                 const char *who) {
  uint32_t classes = t->sizes[t->layers];
  for (uint32_t i = 0; i < n; i++)
    if (h_y[i] < 0 || (uint32_t)h_y[i] >= classes)
      return drv_error(DRV_ERR_INVALID, "%s: label %d of sample %u outside [0, %u)", who, h_y[i], i,
                       classes);
  return DRV_OK;
}

// --- the pipelined step -----------------------------------------------------------------

/* The cuda_graphs state a trainer starts from (and returns to with a new reducer). */
static graph_state_t graphs_initial(const trainer_t *t) {
  if (!t->be->graph_begin || t->spec.train.cuda_graphs == SPEC_OFF) return GRAPHS_OFF;
  return t->spec.train.cuda_graphs == SPEC_ON ? GRAPHS_ON : GRAPHS_TRY_EAGER;
}

void trainer_set_reducer(trainer_t *t, const trainer_reducer_t *r) {
  settle_step(t);
  drop_graphs(t); /* they captured the old reducer's operations: free them first */
  t->reducer = r;
  t->graphs = graphs_initial(t);
  t->graph_steps = 0;
  t->eager_done = 0; /* a new communicator's first collective runs outside a capture */
}

/* The slot the next staging writes: the staged one again (replacing it), else the free
 * one. Never the slot of a step that is running. */
static int stage_slot(const trainer_t *t) {
  return t->staged >= 0 ? t->staged : t->fill;
}

void trainer_next_batch(trainer_t *t, float **h_x, int32_t **h_y) {
  /* Restaging (after a recovery): the staged slot's upload may still be reading these
   * host buffers; let it finish before the caller overwrites them. An error here shows
   * again at the next op. */
  if (t->staged >= 0) t->be->synchronize(t->be);
  *h_x = t->slots[stage_slot(t)].h_x;
  *h_y = t->slots[stage_slot(t)].h_y;
}

/* The optimizer's per-step values (be_optim_t's sched) for `step`. */
static void fill_sched(const trainer_t *t, uint64_t step, uint64_t total, float *sched) {
  const jobspec_t *s = &t->spec;
  /* AdamW counts its steps from t = 1 */
  be_optim_sched(trainer_lr(s, step, total), s->train.optimizer.beta1, s->train.optimizer.beta2,
                 s->train.optimizer.weight_decay, step + 1, sched);
}

drv_result_t trainer_stage(trainer_t *t, uint32_t n, uint32_t global_batch, uint64_t step,
                           uint64_t total_steps) {
  const backend_t *be = t->be;
  if (global_batch == 0) return drv_error(DRV_ERR_INVALID, "trainer_stage: global_batch is 0");
  if (n > t->max_batch)
    return drv_error(DRV_ERR_INVALID, "trainer_stage: batch of %u exceeds max_batch %u", n,
                     t->max_batch);
  int k = stage_slot(t);
  slot_t *sl = &t->slots[k];
  DRV_CHECK(check_labels(t, sl->h_y, n, "trainer_stage"));
  fill_sched(t, step, total_steps, sl->h_sched);
  DRV_CHECK(be->upload(be, sl->d_x, sl->h_x, (size_t)n * t->sizes[0] * sizeof(float)));
  DRV_CHECK(be->upload(be, sl->d_y, sl->h_y, (size_t)n * sizeof(int32_t)));
  DRV_CHECK(be->upload(be, sl->d_sched, sl->h_sched, 4 * sizeof(float)));
  sl->n = n;
  sl->batch = global_batch;
  t->staged = k;
  t->fill = 1 - k;
  return DRV_OK;
}

/* The update from the gradients: the reducer's own copy when it sums one (BF16), else
 * d_grads. r: the step's reducer, NULL for gradients the caller summed into d_grads. */
static drv_result_t optimizer(trainer_t *t, const trainer_reducer_t *r, const float *d_sched) {
  const backend_t *be = t->be;
  const jobspec_t *s = &t->spec;
  be_optim_t op = {
      .type = s->train.optimizer.type == SPEC_OPT_ADAMW ? BE_OPT_ADAMW : BE_OPT_SGD,
      .count = t->nparams,
      .param = t->d_params,
      .grad = r && r->grads ? r->grads : t->d_grads,
      .grad_type = r && r->grads ? r->grads_type : BE_F32,
      .grad_scale = 1.0f,
      .m = t->d_opt,
      .v = s->train.optimizer.type == SPEC_OPT_ADAMW ? t->d_opt + t->nparams : NULL,
      .param_copy = t->d_wlow,
      .copy_type = BE_BF16,
      .sched = d_sched,
      .momentum = s->train.optimizer.momentum,
      .weight_decay = s->train.optimizer.weight_decay,
      .beta1 = s->train.optimizer.beta1,
      .beta2 = s->train.optimizer.beta2,
      .eps = s->train.optimizer.eps,
  };
  return be->optimizer_step(be, &op);
}

/* Everything a step issues after the input is on the device. */
static drv_result_t issue_step(trainer_t *t, const slot_t *sl) {
  const trainer_reducer_t *r = t->reducer;
  if (r && r->begin) DRV_CHECK(r->begin(r->ctx));
  if (sl->n) DRV_CHECK(forward(t, sl->d_x, sl->n));
  DRV_CHECK(backward(t, sl->d_x, sl->d_y, sl->n, sl->batch));
  if (r && r->finish) DRV_CHECK(r->finish(r->ctx));
  return optimizer(t, t->reducer, sl->d_sched);
}

static drv_result_t launch_graph(trainer_t *t, slot_t *sl) {
  const backend_t *be = t->be;
  if (sl->graph && (sl->graph_n != sl->n || sl->graph_batch != sl->batch)) {
    be->graph_free(be, sl->graph);
    sl->graph = NULL;
  }
  if (!sl->graph) {
    DRV_CHECK(be->graph_begin(be));
    drv_result_t rc = issue_step(t, sl);
    void *g = NULL;
    drv_result_t end = be->graph_end(be, &g);
    if (rc != DRV_OK) {
      if (end == DRV_OK) be->graph_free(be, g);
      return rc;
    }
    DRV_CHECK(end);
    sl->graph = g;
    sl->graph_n = sl->n;
    sl->graph_batch = sl->batch;
  }
  return be->graph_launch(be, sl->graph);
}

drv_result_t trainer_step_launch(trainer_t *t, float *lr) {
  const backend_t *be = t->be;
  if (t->staged < 0) return drv_error(DRV_ERR_INVALID, "trainer_step_launch: nothing staged");
  if (t->active >= 0) return drv_error(DRV_ERR_INVALID, "trainer_step_launch: a step is running");
  int k = t->staged;
  slot_t *sl = &t->slots[k];
  t->staged = -1;
  t->active = k;
  if (lr) *lr = sl->h_sched[0]; /* the host copy of what the step reads */
  t->t_launch = drv_now_s();
  drv_result_t fence = be->upload_fence(be);
  if (fence != DRV_OK) {
    step_failed(t);
    return fence;
  }
  /* The first step of a trainer always runs op by op: lazy module loading, cuBLASLt's
   * first plans and NCCL's first connections happen outside any capture. */
  bool graph = (t->graphs == GRAPHS_ON || t->graphs == GRAPHS_TRY_GRAPH) && t->eager_done;
  drv_result_t rc = graph ? launch_graph(t, sl) : issue_step(t, sl);
  if (rc != DRV_OK) {
    step_failed(t); /* the step is over: a reducer that lost a peer ends its collectives */
    return rc;
  }
  if (!graph) t->eager_done = 1;
  return DRV_OK;
}

/* cuda_graphs: auto: a few eager steps, then as many replayed ones; keep the faster. */
static void graph_trial(trainer_t *t, double dt) {
  uint32_t i = t->graph_steps++;
  if (t->graphs == GRAPHS_TRY_EAGER) {
    if (i >= GRAPH_WARMUP) t->trial_eager[i - GRAPH_WARMUP] = dt;
    if (i + 1 == GRAPH_WARMUP + GRAPH_TRIAL) {
      t->graphs = GRAPHS_TRY_GRAPH;
      t->graph_steps = 0;
    }
  } else if (t->graphs == GRAPHS_TRY_GRAPH) {
    if (i >= 1) t->trial_graph[i - 1] = dt; /* the first one also captured */
    if (i == GRAPH_TRIAL) {
      double e = drv_median(t->trial_eager, GRAPH_TRIAL);
      double g = drv_median(t->trial_graph, GRAPH_TRIAL);
      /* Every rank must decide alike (graph capture of collectives is a collective
       * property): the ranks' gains are summed and the sign decides. */
      double gain = e - g;
      const trainer_reducer_t *r = t->reducer;
      if (r && r->agree && r->agree(r->ctx, &gain) != DRV_OK) {
        log_warn("CUDA graphs: the ranks could not agree (%s): off", drv_last_error());
        gain = -1;
      }
      t->graphs = gain > 0 ? GRAPHS_ON : GRAPHS_OFF;
      log_info("CUDA graphs %s: a step takes %.3f ms replayed, %.3f ms issued op by op",
               t->graphs == GRAPHS_ON ? "on" : "off", 1e3 * g, 1e3 * e);
      if (t->graphs == GRAPHS_OFF) drop_graphs(t);
    }
  }
}

drv_result_t trainer_step_finish(trainer_t *t, double *loss_sum, double *data_wait_ms) {
  const backend_t *be = t->be;
  if (t->active < 0) return drv_error(DRV_ERR_INVALID, "trainer_step_finish: no step running");
  const trainer_reducer_t *r = t->reducer;
  float pair[2];
  drv_result_t rc = r && r->wait ? r->wait(r->ctx) : DRV_OK;
  if (rc == DRV_OK) rc = be->copy_out(be, pair, t->d_grads + t->nparams, sizeof pair);
  if (rc != DRV_OK) {
    step_failed(t);
    return rc;
  }
  t->active = -1;
  double dt = drv_now_s() - t->t_launch;
  if (t->graphs == GRAPHS_TRY_EAGER || t->graphs == GRAPHS_TRY_GRAPH) graph_trial(t, dt);
  if (loss_sum) *loss_sum = pair[0];
  if (data_wait_ms) *data_wait_ms = be->data_wait_ms(be);
  return DRV_OK;
}

bool trainer_uses_graphs(const trainer_t *t) {
  return t->graphs == GRAPHS_ON;
}

// --- the single-call API (tests, evaluation) ---------------------------------------------

drv_result_t trainer_forward_backward(trainer_t *t, const float *h_x, const int32_t *h_y,
                                      uint32_t n, uint32_t global_batch, double *loss_sum,
                                      uint32_t *correct) {
  const backend_t *be = t->be;
  if (global_batch == 0)
    return drv_error(DRV_ERR_INVALID, "trainer_forward_backward: global_batch is 0");
  if (n > t->max_batch)
    return drv_error(DRV_ERR_INVALID, "trainer_forward_backward: batch of %u exceeds max_batch %u",
                     n, t->max_batch);
  if (n && (!h_x || !h_y))
    return drv_error(DRV_ERR_INVALID, "trainer_forward_backward: NULL batch");
  DRV_CHECK(check_labels(t, h_y, n, "trainer_forward_backward"));
  if (t->active >= 0)
    return drv_error(DRV_ERR_INVALID, "trainer_forward_backward: a step is running");
  slot_t *sl = &t->slots[t->fill];
  DRV_CHECK(be->copy_in(be, sl->d_x, h_x, (size_t)n * t->sizes[0] * sizeof(float)));
  DRV_CHECK(be->copy_in(be, sl->d_y, h_y, (size_t)n * sizeof(int32_t)));
  const trainer_reducer_t *r = t->reducer;
  t->reducer = NULL; /* this call computes the local gradients only */
  drv_result_t rc = DRV_OK;
  if (n) rc = forward(t, sl->d_x, n);
  if (rc == DRV_OK) rc = backward(t, sl->d_x, sl->d_y, n, global_batch);
  t->reducer = r;
  DRV_CHECK(rc);
  float pair[2];
  DRV_CHECK(be->copy_out(be, pair, t->d_grads + t->nparams, sizeof pair));
  if (loss_sum) *loss_sum += pair[0];
  if (correct) *correct += (uint32_t)pair[1];
  return DRV_OK;
}

drv_result_t trainer_evaluate(trainer_t *t, const float *h_x, const int32_t *h_y, uint32_t n,
                              double *loss_sum, uint32_t *correct) {
  const backend_t *be = t->be;
  uint32_t L = t->layers;
  size_t features = t->sizes[0];
  if (t->active >= 0) return drv_error(DRV_ERR_INVALID, "trainer_evaluate: a step is running");
  /* The slot that holds no staged step: a batch staged for the next step stays intact. */
  slot_t *sl = &t->slots[t->staged >= 0 ? 1 - t->staged : t->fill];
  for (uint32_t start = 0; start < n; start += t->max_batch) {
    uint32_t m = DRV_MIN(t->max_batch, n - start);
    DRV_CHECK(check_labels(t, h_y + start, m, "trainer_evaluate"));
    DRV_CHECK(
        be->copy_in(be, sl->d_x, h_x + (size_t)start * features, m * features * sizeof(float)));
    DRV_CHECK(be->copy_in(be, sl->d_y, h_y + start, m * sizeof(int32_t)));
    DRV_CHECK(forward(t, sl->d_x, m));
    DRV_CHECK(be->softmax_xent(be, t->d_logits, sl->d_y, m, t->sizes[L], 1.0f, NULL, t->d_losses,
                               t->d_correct));
    DRV_CHECK(be->loss_sum(be, t->d_losses, t->d_correct, m, t->d_eval));
    float pair[2];
    DRV_CHECK(be->copy_out(be, pair, t->d_eval, sizeof pair));
    if (loss_sum) *loss_sum += pair[0];
    if (correct) *correct += (uint32_t)pair[1];
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

const trainer_tensor_t *trainer_tensors(const trainer_t *t, size_t *count) {
  if (count) *count = t->ntensors;
  return t->tensors;
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
  slot_t *sl = &t->slots[t->fill];
  fill_sched(t, step, total_steps, sl->h_sched);
  if (lr) *lr = sl->h_sched[0];
  DRV_CHECK(be->copy_in(be, sl->d_sched, sl->h_sched, 4 * sizeof(float)));
  /* The single-call API's gradients are the caller's, in d_grads (F32), not a reducer's. */
  DRV_CHECK(optimizer(t, NULL, sl->d_sched));
  return be->synchronize(be);
}

// --- saving -----------------------------------------------------------------------------

drv_result_t trainer_save(const trainer_t *t, const char *path) {
  drv_result_t rc = DRV_OK;
  const backend_t *be = t->be;
  size_t nmodel = 2 * (size_t)t->layers; /* the tensors before the optimizer state */
  safetensors_tensor_t tensors[TRAINER_MAX_TENSORS];
  char sizes[16 * (TRAINER_MAX_LAYERS + 1)];
  float *h_params = malloc(t->nparams ? t->nparams * sizeof(float) : 1);
  if (!h_params) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  DRV_CHECK_GOTO(be->copy_out(be, h_params, t->d_params, t->nparams * sizeof(float)), rc, fail);

  size_t len = 0;
  for (uint32_t i = 0; i <= t->layers; i++)
    len += (size_t)snprintf(sizes + len, sizeof sizes - len, "%s%u", i ? "," : "", t->sizes[i]);
  for (size_t i = 0; i < nmodel; i++) {
    const trainer_tensor_t *d = &t->tensors[i];
    tensors[i] = (safetensors_tensor_t){.name = d->name,
                                        .dtype = "F32",
                                        .ndim = d->ndim,
                                        .shape = {d->shape[0], d->shape[1]},
                                        .data = h_params + d->offset};
  }
  const safetensors_meta_t meta[] = {
      {"format", "pt"},
      {"model", "mlp"},
      {"activation", t->spec.model.activation == SPEC_ACT_GELU ? "gelu" : "relu"},
      {"sizes", sizes},
  };
  DRV_CHECK_GOTO(safetensors_write(path, tensors, nmodel, meta, DRV_ARRAY_LEN(meta)), rc, fail);
fail:
  free(h_params);
  return rc;
}
