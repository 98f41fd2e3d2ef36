/* cpu_backend.c: the CPU backend, the reference implementation of kernels/backend.h.
 *
 * Written to be read top to bottom (as llm.c's train_gpt2.c): GEMM goes through CBLAS
 * (OpenBLAS), everything else is a plain C loop. "Device" memory is host memory, so
 * copies are memcpy and synchronize is a no-op. The GPU backends are tested against it.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#include "kernels/backend.h"

// --- memory ---------------------------------------------------------------------------

static drv_result_t cpu_alloc(const backend_t *be, size_t bytes, void **d_ptr) {
  /* aligned_alloc wants a multiple of the alignment; round up (and never ask for 0). */
  size_t rounded = (bytes + 63) & ~(size_t)63;
  if (rounded < bytes) return drv_error(DRV_ERR_NOMEM, "cpu alloc: %zu bytes overflows", bytes);
  if (rounded == 0) rounded = 64;
  void *p = aligned_alloc(64, rounded);
  if (!p) return drv_error(DRV_ERR_NOMEM, "cpu alloc: out of memory for %zu bytes", bytes);
  *d_ptr = p;
  return DRV_OK;
}

static void cpu_free(const backend_t *be, void *d_ptr) {
  free(d_ptr);
}

static drv_result_t cpu_copy_in(const backend_t *be, void *d_dst, const void *h_src, size_t bytes) {
  if (bytes) memcpy(d_dst, h_src, bytes);
  return DRV_OK;
}

static drv_result_t cpu_copy_out(const backend_t *be, void *h_dst, const void *d_src,
                                 size_t bytes) {
  if (bytes) memcpy(h_dst, d_src, bytes);
  return DRV_OK;
}

static drv_result_t cpu_zero(const backend_t *be, void *d_ptr, size_t bytes) {
  if (bytes) memset(d_ptr, 0, bytes);
  return DRV_OK;
}

static drv_result_t cpu_synchronize(const backend_t *be) {
  return DRV_OK;
}

// --- linear algebra -------------------------------------------------------------------

static drv_result_t cpu_gemm(const backend_t *be, bool trans_a, bool trans_b, uint32_t m,
                             uint32_t n, uint32_t k, float alpha, const float *d_a,
                             const float *d_b, float beta, float *d_c) {
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
    return drv_error(DRV_ERR_INVALID, "cpu gemm: size %ux%ux%u too large for BLAS", m, n, k);
  if (m == 0 || n == 0) return DRV_OK;
  if (k == 0) {
    /* Nothing to multiply: C = beta * C, with beta == 0 ignoring C's old contents. */
    size_t count = (size_t)m * n;
    for (size_t i = 0; i < count; i++) d_c[i] = beta == 0.0f ? 0.0f : beta * d_c[i];
    return DRV_OK;
  }
  /* Row-major leading dimensions: the stored row length of each matrix. */
  int lda = trans_a ? (int)m : (int)k; /* A is (k, m) or (m, k) */
  int ldb = trans_b ? (int)k : (int)n; /* B is (n, k) or (k, n) */
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, d_a, lda, d_b,
              ldb, beta, d_c, (int)n);
  return DRV_OK;
}

static drv_result_t cpu_bias_add(const backend_t *be, float *d_y, const float *d_bias, uint32_t n,
                                 uint32_t c) {
  for (uint32_t i = 0; i < n; i++) {
    float *row = d_y + (size_t)i * c; /* (c) */
    for (uint32_t j = 0; j < c; j++) row[j] += d_bias[j];
  }
  return DRV_OK;
}

static drv_result_t cpu_bias_grad(const backend_t *be, float *d_dbias, const float *d_dy,
                                  uint32_t n, uint32_t c) {
  /* Row by row, so dy is read in memory order. */
  for (uint32_t j = 0; j < c; j++) d_dbias[j] = 0.0f;
  for (uint32_t i = 0; i < n; i++) {
    const float *row = d_dy + (size_t)i * c; /* (c) */
    for (uint32_t j = 0; j < c; j++) d_dbias[j] += row[j];
  }
  return DRV_OK;
}

// --- activations ----------------------------------------------------------------------

static drv_result_t cpu_relu_forward(const backend_t *be, float *d_y, const float *d_x,
                                     size_t count) {
  for (size_t i = 0; i < count; i++) d_y[i] = d_x[i] > 0.0f ? d_x[i] : 0.0f;
  return DRV_OK;
}

static drv_result_t cpu_relu_backward(const backend_t *be, float *d_dx, const float *d_x,
                                      const float *d_dy, size_t count) {
  for (size_t i = 0; i < count; i++) d_dx[i] = d_x[i] > 0.0f ? d_dy[i] : 0.0f;
  return DRV_OK;
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_CUBE 0.044715f

/* With u = sqrt(2/pi) (x + 0.044715 x^3), the tanh form is rewritten through the identity
 * 0.5 (1 + tanh u) = sigmoid(2u) = s:
 *   gelu(x)  = 0.5 x (1 + tanh u) = x s
 *   gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx = s + 2 x s (1 - s) du/dx
 * One expf instead of tanhf (about four times faster in glibc, and tanhf dominated a GELU
 * step), and no cancellation in 1 + tanh u for negative x. Saturates: s -> 0 or 1. */
static inline float gelu_sigmoid(float x, float *du) {
  float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
  if (du) *du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x * x);
  return 1.0f / (1.0f + expf(-2.0f * u));
}

static drv_result_t cpu_gelu_forward(const backend_t *be, float *d_y, const float *d_x,
                                     size_t count) {
  for (size_t i = 0; i < count; i++) {
    float x = d_x[i];
    d_y[i] = x * gelu_sigmoid(x, NULL);
  }
  return DRV_OK;
}

static drv_result_t cpu_gelu_backward(const backend_t *be, float *d_dx, const float *d_x,
                                      const float *d_dy, size_t count) {
  for (size_t i = 0; i < count; i++) {
    float x = d_x[i], du;
    float s = gelu_sigmoid(x, &du);
    d_dx[i] = d_dy[i] * (s + 2.0f * x * s * (1.0f - s) * du);
  }
  return DRV_OK;
}

// --- loss -----------------------------------------------------------------------------

static drv_result_t cpu_softmax_xent(const backend_t *be, const float *d_logits,
                                     const int32_t *d_labels, uint32_t n, uint32_t c, float scale,
                                     float *d_dlogits, float *d_losses, int32_t *d_correct) {
  if (c == 0 && n > 0) return drv_error(DRV_ERR_INVALID, "cpu softmax_xent: zero classes");
  for (uint32_t i = 0; i < n; i++) {
    const float *row = d_logits + (size_t)i * c; /* (c) */
    int32_t label = d_labels[i];
    if (label < 0 || (uint32_t)label >= c)
      return drv_error(DRV_ERR_INVALID, "cpu softmax_xent: label %d of row %u outside [0, %u)",
                       label, i, c);
    /* Subtract the row max before exponentiating so that no exp overflows; the max is
     * also the argmax for the accuracy count. */
    float maxv = row[0];
    uint32_t argmax = 0;
    for (uint32_t j = 1; j < c; j++)
      if (row[j] > maxv) {
        maxv = row[j];
        argmax = j;
      }
    double sum = 0.0;
    for (uint32_t j = 0; j < c; j++) sum += exp((double)row[j] - maxv);
    double lse = (double)maxv + log(sum);
    float picked = row[label]; /* read before dlogits may overwrite the row */
    if (d_dlogits) {
      float *drow = d_dlogits + (size_t)i * c; /* (c) */
      for (uint32_t j = 0; j < c; j++) {
        float p = (float)(exp((double)row[j] - maxv) / sum);
        drow[j] = (p - ((int32_t)j == label ? 1.0f : 0.0f)) * scale;
      }
    }
    d_losses[i] = (float)(lse - picked);
    d_correct[i] = argmax == (uint32_t)label ? 1 : 0;
  }
  return DRV_OK;
}

// --- optimizers -----------------------------------------------------------------------

static drv_result_t cpu_optimizer_step(const backend_t *be, const be_optim_t *op);

/* The plain optimizer ops are the fused one with this step's schedule in host memory. */
static drv_result_t cpu_sgd_step(const backend_t *be, float *d_param, const float *d_grad,
                                 float *d_mom, size_t count, float lr, float momentum,
                                 float weight_decay) {
  float sched[4] = {lr, 0, 0, 0};
  be_optim_t op = {.type = BE_OPT_SGD,
                   .count = count,
                   .param = d_param,
                   .grad = d_grad,
                   .grad_scale = 1.0f,
                   .m = d_mom,
                   .sched = sched,
                   .momentum = momentum,
                   .weight_decay = weight_decay};
  return cpu_optimizer_step(be, &op);
}

static drv_result_t cpu_adamw_step(const backend_t *be, float *d_param, const float *d_grad,
                                   float *d_m, float *d_v, size_t count, float lr, float beta1,
                                   float beta2, float eps, float weight_decay, uint64_t t) {
  if (t == 0) return drv_error(DRV_ERR_INVALID, "cpu adamw_step: step t must be >= 1");
  float sched[4];
  be_optim_sched(lr, beta1, beta2, weight_decay, t, sched);
  be_optim_t op = {.type = BE_OPT_ADAMW,
                   .count = count,
                   .param = d_param,
                   .grad = d_grad,
                   .grad_scale = 1.0f,
                   .m = d_m,
                   .v = d_v,
                   .sched = sched,
                   .weight_decay = weight_decay,
                   .beta1 = beta1,
                   .beta2 = beta2,
                   .eps = eps};
  return cpu_optimizer_step(be, &op);
}

// --- fused and mixed-precision ops ------------------------------------------------------

void be_optim_sched(float lr, float beta1, float beta2, float weight_decay, uint64_t t,
                    float sched[4]) {
  /* As torch.optim.AdamW (single-tensor path): step_size = lr / bc1,
   * denom = sqrt(v) / sqrt(bc2) + eps. */
  double bc1 = 1.0 - pow((double)beta1, (double)t);
  double bc2 = 1.0 - pow((double)beta2, (double)t);
  sched[0] = lr;
  sched[1] = (float)(lr / bc1);
  sched[2] = (float)sqrt(bc2);
  sched[3] = 1.0f - lr * weight_decay;
}

uint16_t be_f32_to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
  return (uint16_t)(u >> 16);
}

float be_bf16_to_f32(uint16_t x) {
  uint32_t u = (uint32_t)x << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static drv_result_t cpu_copy(const backend_t *be, void *d_dst, const void *d_src, size_t bytes) {
  if (bytes) memmove(d_dst, d_src, bytes);
  return DRV_OK;
}

static drv_result_t cpu_convert(const backend_t *be, void *d_dst, be_dtype_t dst_type,
                                const void *d_src, be_dtype_t src_type, size_t count) {
  if (dst_type == src_type) return cpu_copy(be, d_dst, d_src, count * be_dtype_size(src_type));
  if (dst_type == BE_BF16) {
    const float *src = d_src;
    uint16_t *dst = d_dst;
    for (size_t i = 0; i < count; i++) dst[i] = be_f32_to_bf16(src[i]);
  } else {
    const uint16_t *src = d_src;
    float *dst = d_dst;
    for (size_t i = 0; i < count; i++) dst[i] = be_bf16_to_f32(src[i]);
  }
  return DRV_OK;
}

/* The reference matmul: gemm, then the epilogue as plain loops, F32 only (the CPU has no
 * use for BF16 arithmetic; the GPU's BF16 results are checked against this on F32
 * copies of the same inputs). */
static drv_result_t cpu_matmul(const backend_t *be, const be_matmul_t *op) {
  if (op->ab_type != BE_F32 || op->c_type != BE_F32 || op->bias_type != BE_F32)
    return drv_error(DRV_ERR_INVALID, "cpu matmul: only F32 operands (precision bf16 needs a GPU)");
  float *c = op->c;
  DRV_CHECK(
      cpu_gemm(be, op->trans_a, op->trans_b, op->m, op->n, op->k, 1.0f, op->a, op->b, 0.0f, c));
  size_t count = (size_t)op->m * op->n;
  switch (op->epilogue) {
  case BE_EPI_NONE: return DRV_OK;
  case BE_EPI_BIAS: return cpu_bias_add(be, c, op->bias, op->m, op->n);
  case BE_EPI_BIAS_RELU:
    DRV_CHECK(cpu_bias_add(be, c, op->bias, op->m, op->n));
    return cpu_relu_forward(be, c, c, count);
  case BE_EPI_BIAS_GELU:
    DRV_CHECK(cpu_bias_add(be, c, op->bias, op->m, op->n));
    memcpy(op->aux, c, count * sizeof(float));
    return cpu_gelu_forward(be, c, op->aux, count);
  case BE_EPI_DRELU_BGRAD:
    /* relu'(pre) = (pre > 0) = (relu(pre) > 0): the forward output serves as the mask. */
    DRV_CHECK(cpu_relu_backward(be, c, op->aux, c, count));
    return cpu_bias_grad(be, op->bgrad, c, op->m, op->n);
  case BE_EPI_DGELU_BGRAD:
    DRV_CHECK(cpu_gelu_backward(be, c, op->aux, c, count));
    return cpu_bias_grad(be, op->bgrad, c, op->m, op->n);
  }
  return drv_error(DRV_ERR_INVALID, "cpu matmul: unknown epilogue %d", (int)op->epilogue);
}

static drv_result_t cpu_loss_sum(const backend_t *be, const float *d_losses,
                                 const int32_t *d_correct, uint32_t n, float *d_out) {
  double sum = 0.0;
  uint32_t hits = 0;
  for (uint32_t i = 0; i < n; i++) {
    sum += d_losses[i];
    hits += d_correct[i] ? 1 : 0;
  }
  d_out[0] = (float)sum;
  d_out[1] = (float)hits;
  return DRV_OK;
}

static drv_result_t cpu_optimizer_step(const backend_t *be, const be_optim_t *op) {
  if (op->grad_type != BE_F32)
    return drv_error(DRV_ERR_INVALID, "cpu optimizer_step: only F32 gradients");
  const float *grad = op->grad;
  float *p = op->param, *m = op->m, *v = op->v;
  float lr = op->sched[0], gs = op->grad_scale;
  if (op->type == BE_OPT_SGD) {
    for (size_t i = 0; i < op->count; i++) {
      float g = grad[i] * gs + op->weight_decay * p[i];
      float mom = op->momentum * m[i] + g;
      m[i] = mom;
      p[i] -= lr * mom;
    }
  } else {
    float step_size = op->sched[1], bc2_sqrt = op->sched[2], decay = op->sched[3];
    for (size_t i = 0; i < op->count; i++) {
      float g = grad[i] * gs;
      float mi = op->beta1 * m[i] + (1.0f - op->beta1) * g;
      float vi = op->beta2 * v[i] + (1.0f - op->beta2) * g * g;
      m[i] = mi;
      v[i] = vi;
      float denom = sqrtf(vi) / bc2_sqrt + op->eps;
      p[i] = p[i] * decay - step_size * mi / denom;
    }
  }
  if (op->param_copy) return cpu_convert(be, op->param_copy, op->copy_type, p, BE_F32, op->count);
  return DRV_OK;
}

// --- input pipeline: plain host memory, synchronous copies ---------------------------------

static drv_result_t cpu_host_alloc(const backend_t *be, size_t bytes, void **h_ptr) {
  return cpu_alloc(be, bytes, h_ptr);
}

static drv_result_t cpu_upload(const backend_t *be, void *d_dst, const void *h_src, size_t bytes) {
  return cpu_copy_in(be, d_dst, h_src, bytes);
}

static drv_result_t cpu_upload_fence(const backend_t *be) {
  return DRV_OK;
}

static double cpu_data_wait_ms(const backend_t *be) {
  return 0.0;
}

// --- the table ------------------------------------------------------------------------

static const backend_t cpu_backend = {
    .name = "cpu",
    .ctx = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_in = cpu_copy_in,
    .copy_out = cpu_copy_out,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .synchronize = cpu_synchronize,
    .matmul = cpu_matmul,
    .bias_grad = cpu_bias_grad,
    .softmax_xent = cpu_softmax_xent,
    .loss_sum = cpu_loss_sum,
    .convert = cpu_convert,
    .optimizer_step = cpu_optimizer_step,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_free,
    .upload = cpu_upload,
    .upload_fence = cpu_upload_fence,
    .data_wait_ms = cpu_data_wait_ms,
    /* no graphs: the trainer runs every step eagerly */
    /* reference ops, for the tests */
    .gemm = cpu_gemm,
    .bias_add = cpu_bias_add,
    .relu_forward = cpu_relu_forward,
    .relu_backward = cpu_relu_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .sgd_step = cpu_sgd_step,
    .adamw_step = cpu_adamw_step,
};

const backend_t *backend_cpu(void) {
  return &cpu_backend;
}

int backend_cpu_threads(int threads) {
  if (threads > 0) openblas_set_num_threads(threads);
  return openblas_get_num_threads();
}
