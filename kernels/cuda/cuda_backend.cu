/* cuda_backend.cu: the CUDA backend of kernels/backend.h.
 *
 * C-style CUDA: plain __global__ kernels and extern "C" entry points, no classes. One
 * backend owns one device, a compute stream (every op, in issue order) and a copy stream
 * (upload(): input batches overlap the step that runs), cuBLAS for the plain gemm(), and
 * cuBLASLt for matmul() so that bias and activation (forward) and activation derivative
 * and bias gradient (backward) ride in the GEMM's epilogue. Where cuBLASLt has no algorithm
 * for a combination (or has no such epilogue: its ReLU derivative wants a bitmask, which
 * this interface does not keep), matmul() runs a plain GEMM and one fused kernel for the
 * epilogue instead, so every combination works and the fast one is used where it exists.
 *
 * Numerics follow the CPU reference (kernels/cpu/cpu_backend.c) formula by formula: the
 * same GELU identity, the same optimizer expressions, expf/sqrtf rather than fast-math
 * intrinsics. F32 GEMMs use exact F32 arithmetic unless the backend was made with tf32.
 *
 * Every launch is followed by a check of cudaGetLastError(); every API call's status is
 * checked and turned into a drv_result_t naming the call (kernels/cuda/checks.h).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/log.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda.h"
#include "kernels/cuda/checks.h"
}

// --- state -------------------------------------------------------------------------------

#define LT_WORKSPACE_BYTES (32u << 20)
#define LT_PLANS 64
#define WAIT_PAIRS 8

/* A cuBLASLt plan: descriptors and the algorithm chosen for one shape and epilogue. The
 * pointers (bias, aux, bgrad) are set on the descriptor at each call. */
typedef struct {
  int used;
  /* key */
  bool trans_a, trans_b;
  uint32_t m, n, k;
  be_dtype_t ab_type, c_type, bias_type;
  be_epilogue_t epilogue;
  /* pointer alignments in bytes: cuBLASLt's A (our b), B (our a), C and D (our c), and the
   * smallest of the epilogue's vectors (the heuristic reads those pointers itself) */
  unsigned align[4];
  /* value */
  int fallback; /* 1: cuBLASLt has no algorithm: GEMM + fused epilogue kernel */
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatmulAlgo_t algo;
} lt_plan_t;

/* The compute stream's arrival at an upload_fence (ready) and the upload it waits for
 * (arrived): ready before arrived means the compute stream sat idle for the data. */
typedef struct {
  cudaEvent_t ready, arrived;
  int pending;
} wait_pair_t;

typedef struct {
  int device;
  bool tf32;
  cudaStream_t compute, copy;
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  void *blas_ws, *lt_ws;
  lt_plan_t plans[LT_PLANS];
  int plan_next;
  wait_pair_t waits[WAIT_PAIRS];
  int wait_cur;       /* the pair the next fence uses */
  int last_fence;     /* the pair of the last fence, -1 before the first */
  int upload_pending; /* an upload was issued since the last fence */
  double wait_ms;
  int warned_fallback;
  int *d_bad_label; /* &g_bad_label on this device */
  char name[32];
} cuda_ctx_t;

static cuda_ctx_t *ctx_of(const backend_t *be) {
  return (cuda_ctx_t *)be->ctx;
}

static unsigned grid_for(size_t count, unsigned block) {
  size_t g = (count + block - 1) / block;
  return (unsigned)(g > 65535u * 16u ? 65535u * 16u : (g ? g : 1)); /* grid-stride beyond */
}

// --- element access for the two dtypes ---------------------------------------------------

__device__ __forceinline__ float ld(const void *p, size_t i, be_dtype_t t) {
  return t == BE_BF16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}

__device__ __forceinline__ void st(void *p, size_t i, be_dtype_t t, float v) {
  if (t == BE_BF16)
    ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
  else
    ((float *)p)[i] = v;
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_CUBE 0.044715f

/* As the CPU: with u = sqrt(2/pi)(x + 0.044715 x^3), gelu(x) = x s with s = sigmoid(2u),
 * gelu'(x) = s + 2 x s (1 - s) du/dx. */
__device__ __forceinline__ float gelu_s(float x, float *du) {
  float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
  if (du) *du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x * x);
  return 1.0f / (1.0f + expf(-2.0f * u));
}

__device__ __forceinline__ float gelu_grad(float x) {
  float du, s = gelu_s(x, &du);
  return s + 2.0f * x * s * (1.0f - s) * du;
}

// --- elementwise kernels -----------------------------------------------------------------

#define GRID_STRIDE(i, count)                                                 \
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (count); \
       i += (size_t)gridDim.x * blockDim.x)

__global__ void k_bias_add(float *y, const float *bias, size_t count, uint32_t c) {
  GRID_STRIDE(i, count) y[i] += bias[i % c];
}

__global__ void k_relu_fwd(float *y, const float *x, size_t count) {
  GRID_STRIDE(i, count) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void k_relu_bwd(float *dx, const float *x, const float *dy, size_t count) {
  GRID_STRIDE(i, count) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void k_gelu_fwd(float *y, const float *x, size_t count) {
  GRID_STRIDE(i, count) {
    float v = x[i];
    y[i] = v * gelu_s(v, NULL);
  }
}

__global__ void k_gelu_bwd(float *dx, const float *x, const float *dy, size_t count) {
  GRID_STRIDE(i, count) dx[i] = dy[i] * gelu_grad(x[i]);
}

__global__ void k_convert(void *dst, be_dtype_t dt, const void *src, be_dtype_t stype,
                          size_t count) {
  GRID_STRIDE(i, count) st(dst, i, dt, ld(src, i, stype));
}

/* Column sums of dy (n, c): block (32, 8) covers 32 columns; each thread walks every 8th
 * row, then the 8 partial sums are added in a fixed order: deterministic. */
__global__ void k_bias_grad(float *dbias, const float *dy, uint32_t n, uint32_t c) {
  __shared__ float part[8][33];
  uint32_t col = blockIdx.x * 32 + threadIdx.x;
  float sum = 0.0f;
  if (col < c)
    for (uint32_t r = threadIdx.y; r < n; r += 8) sum += dy[(size_t)r * c + col];
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < c) {
    float total = 0.0f;
    for (int k = 0; k < 8; k++) total += part[k][threadIdx.x];
    dbias[col] = total;
  }
}

/* The fallback forward epilogue over C (m, n) as the GEMM left it (F32 or BF16): bias,
 * then the activation; aux (GELU) keeps the pre-activation. */
__global__ void k_epi_forward(void *c, be_dtype_t ct, const void *bias, be_dtype_t bt, void *aux,
                              be_epilogue_t epi, size_t count, uint32_t n) {
  GRID_STRIDE(i, count) {
    float v = ld(c, i, ct);
    if (bias) v += ld(bias, i % n, bt);
    if (epi == BE_EPI_BIAS_RELU) {
      v = v > 0.0f ? v : 0.0f;
    } else if (epi == BE_EPI_BIAS_GELU) {
      st(aux, i, ct, v);
      v = ld(aux, i, ct); /* the rounded pre-activation, as cuBLASLt's aux would hold */
      v = v * gelu_s(v, NULL);
    }
    st(c, i, ct, v);
  }
}

/* The fallback backward epilogue: C (m, n) *= act'(aux), in place, and bgrad = column sums
 * of the result. Block (32, 8) per 32 columns as k_bias_grad. */
__global__ void k_epi_backward(void *c, be_dtype_t ct, const void *aux, be_epilogue_t epi,
                               float *bgrad, uint32_t m, uint32_t n) {
  __shared__ float part[8][33];
  uint32_t col = blockIdx.x * 32 + threadIdx.x;
  float sum = 0.0f;
  if (col < n)
    for (uint32_t r = threadIdx.y; r < m; r += 8) {
      size_t i = (size_t)r * n + col;
      float a = ld(aux, i, ct), g = ld(c, i, ct);
      g = epi == BE_EPI_DRELU_BGRAD ? (a > 0.0f ? g : 0.0f) : g * gelu_grad(a);
      st(c, i, ct, g);
      sum += g; /* before rounding to C's type, as the reference sums in F32 */
    }
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    float total = 0.0f;
    for (int k = 0; k < 8; k++) total += part[k][threadIdx.x];
    bgrad[col] = total;
  }
}

// --- loss --------------------------------------------------------------------------------

/* Set by k_softmax_xent when a label is outside [0, c). */
__device__ int g_bad_label;

/* One warp per row: max and first argmax, sum of exponentials, then the loss, the hit and
 * (when asked) the gradient, written after every lane has read what it needs. */
__global__ void k_softmax_xent(const float *logits, const int32_t *labels, uint32_t n, uint32_t c,
                               float scale, float *dlogits, float *losses, int32_t *correct,
                               int *bad_label) {
  uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  uint32_t lane = threadIdx.x % 32;
  if (row >= n) return;
  const float *x = logits + (size_t)row * c;
  int32_t label = labels[row];
  if (label < 0 || (uint32_t)label >= c) {
    if (lane == 0) atomicExch(bad_label, 1);
    return;
  }
  /* Each lane's first maximum, then across lanes the larger value, the smaller index on a
   * tie: the first maximum of the row, as the CPU. Lanes past the row hold (-inf, none). */
  float maxv = lane < c ? x[lane] : -INFINITY;
  uint32_t arg = lane < c ? lane : 0xffffffffu;
  for (uint32_t j = lane + 32; j < c; j += 32)
    if (x[j] > maxv) {
      maxv = x[j];
      arg = j;
    }
  for (int off = 16; off > 0; off /= 2) {
    float om = __shfl_xor_sync(0xffffffffu, maxv, off);
    uint32_t oa = __shfl_xor_sync(0xffffffffu, arg, off);
    if (om > maxv || (om == maxv && oa < arg)) {
      maxv = om;
      arg = oa;
    }
  }
  float sum = 0.0f;
  for (uint32_t j = lane; j < c; j += 32) sum += expf(x[j] - maxv);
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  float picked = x[label];
  __syncwarp();
  if (dlogits) {
    float *d = dlogits + (size_t)row * c;
    float inv = 1.0f / sum;
    for (uint32_t j = lane; j < c; j += 32) {
      float p = expf(x[j] - maxv) * inv;
      d[j] = (p - ((int32_t)j == label ? 1.0f : 0.0f)) * scale;
    }
  }
  if (lane == 0) {
    /* log(sum) - (picked - max): no cancellation between two large numbers */
    losses[row] = logf(sum) - (picked - maxv);
    correct[row] = arg == (uint32_t)label ? 1 : 0;
  }
}

/* One block: each thread sums a strided part in double, then a fixed tree: the same
 * result every run. */
__global__ void k_loss_sum(const float *losses, const int32_t *correct, uint32_t n, float *out) {
  __shared__ double ls[256];
  __shared__ unsigned hs[256];
  double s = 0.0;
  unsigned h = 0;
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    s += losses[i];
    h += correct[i] ? 1u : 0u;
  }
  ls[threadIdx.x] = s;
  hs[threadIdx.x] = h;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) {
      ls[threadIdx.x] += ls[threadIdx.x + w];
      hs[threadIdx.x] += hs[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[0] = (float)ls[0];
    out[1] = (float)hs[0];
  }
}

// --- optimizers --------------------------------------------------------------------------

/* One parameter's update, shared by the plain ops and the fused one: the formulas of the
 * CPU reference. */
__device__ __forceinline__ float sgd_update(float p, float g, float *mom, float lr, float momentum,
                                            float wd) {
  g += wd * p;
  float v = momentum * *mom + g;
  *mom = v;
  return p - lr * v;
}

__device__ __forceinline__ float adamw_update(float p, float g, float *m, float *v,
                                              const float *sched, float beta1, float beta2,
                                              float eps) {
  float mi = beta1 * *m + (1.0f - beta1) * g;
  float vi = beta2 * *v + (1.0f - beta2) * g * g;
  *m = mi;
  *v = vi;
  float denom = sqrtf(vi) / sched[2] + eps;
  return p * sched[3] - sched[1] * mi / denom;
}

__global__ void k_sgd(float *p, const float *g, float *mom, size_t count, float lr, float momentum,
                      float wd) {
  GRID_STRIDE(i, count) p[i] = sgd_update(p[i], g[i], &mom[i], lr, momentum, wd);
}

/* sched by value: be_optim_sched's values of this call */
struct sched4 {
  float v[4];
};

__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t count, sched4 s,
                        float beta1, float beta2, float eps) {
  GRID_STRIDE(i, count) p[i] = adamw_update(p[i], g[i], &m[i], &v[i], s.v, beta1, beta2, eps);
}

/* Every parameter in one launch; lr and the bias corrections come from device memory, so a
 * captured graph replays with this step's values. */
__global__ void k_optimizer(be_optim_t o) {
  GRID_STRIDE(i, o.count) {
    float g = ld(o.grad, i, o.grad_type) * o.grad_scale;
    float p = o.type == BE_OPT_SGD
                  ? sgd_update(o.param[i], g, &o.m[i], o.sched[0], o.momentum, o.weight_decay)
                  : adamw_update(o.param[i], g, &o.m[i], &o.v[i], o.sched, o.beta1, o.beta2, o.eps);
    o.param[i] = p;
    if (o.param_copy) st(o.param_copy, i, o.copy_type, p);
  }
}

// --- memory ------------------------------------------------------------------------------

static drv_result_t cu_alloc(const backend_t *be, size_t bytes, void **d_ptr) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 64);
  if (e != cudaSuccess)
    return drv_error(DRV_ERR_NOMEM, "%s: cudaMalloc of %zu bytes: %s", be->name, bytes,
                     cudaGetErrorString(e));
  *d_ptr = p;
  return DRV_OK;
}

static void cu_free(const backend_t *be, void *d_ptr) {
  if (d_ptr) cudaFree(d_ptr);
}

static drv_result_t cu_copy_in(const backend_t *be, void *d_dst, const void *h_src, size_t bytes) {
  if (!bytes) return DRV_OK;
  cudaStream_t s = ctx_of(be)->compute;
  CUDA_CHECK(cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, s));
  /* h_src may be pageable and reused at once by the caller: finish before returning. */
  CUDA_CHECK(cudaStreamSynchronize(s));
  return DRV_OK;
}

static drv_result_t cu_copy_out(const backend_t *be, void *h_dst, const void *d_src, size_t bytes) {
  if (!bytes) return DRV_OK;
  cudaStream_t s = ctx_of(be)->compute;
  CUDA_CHECK(cudaMemcpyAsync(h_dst, d_src, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  return DRV_OK;
}

static drv_result_t cu_copy(const backend_t *be, void *d_dst, const void *d_src, size_t bytes) {
  if (!bytes) return DRV_OK;
  CUDA_CHECK(cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, ctx_of(be)->compute));
  return DRV_OK;
}

static drv_result_t cu_zero(const backend_t *be, void *d_ptr, size_t bytes) {
  if (!bytes) return DRV_OK;
  CUDA_CHECK(cudaMemsetAsync(d_ptr, 0, bytes, ctx_of(be)->compute));
  return DRV_OK;
}

/* Every op issued so far: the compute stream's and the uploads on the copy stream. */
static drv_result_t cu_synchronize(const backend_t *be) {
  CUDA_CHECK(cudaStreamSynchronize(ctx_of(be)->compute));
  CUDA_CHECK(cudaStreamSynchronize(ctx_of(be)->copy));
  return DRV_OK;
}

// --- plain GEMM (cuBLAS) -----------------------------------------------------------------

/* Row-major C (m, n) = op(A) op(B) is column-major C^T (n, m) = op(B)^T op(A)^T: cuBLAS is
 * called with the operands swapped, m and n swapped, and the row-major leading dimensions
 * (the stored row lengths). */
static drv_result_t cu_gemm(const backend_t *be, bool trans_a, bool trans_b, uint32_t m, uint32_t n,
                            uint32_t k, float alpha, const float *d_a, const float *d_b, float beta,
                            float *d_c) {
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
    return drv_error(DRV_ERR_INVALID, "cuda gemm: size %ux%ux%u too large", m, n, k);
  if (m == 0 || n == 0) return DRV_OK;
  cuda_ctx_t *c = ctx_of(be);
  if (k == 0) {
    if (beta == 0.0f) return cu_zero(be, d_c, (size_t)m * n * sizeof(float));
    CUBLAS_CHECK(cublasSscal_64(c->blas, (int64_t)m * n, &beta, d_c, 1));
    return DRV_OK;
  }
  int lda = trans_a ? (int)m : (int)k, ldb = trans_b ? (int)k : (int)n;
  CUBLAS_CHECK(cublasSgemm(c->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m, (int)k, &alpha, d_b,
                           ldb, d_a, lda, &beta, d_c, (int)n));
  return DRV_OK;
}

static drv_result_t cu_bias_add(const backend_t *be, float *d_y, const float *d_bias, uint32_t n,
                                uint32_t c) {
  size_t count = (size_t)n * c;
  if (!count) return DRV_OK;
  k_bias_add<<<grid_for(count, 256), 256, 0, ctx_of(be)->compute>>>(d_y, d_bias, count, c);
  CUDA_LAUNCH_CHECK("bias_add");
  return DRV_OK;
}

static drv_result_t cu_bias_grad(const backend_t *be, float *d_dbias, const float *d_dy, uint32_t n,
                                 uint32_t c) {
  if (!c) return DRV_OK;
  k_bias_grad<<<(c + 31) / 32, dim3(32, 8), 0, ctx_of(be)->compute>>>(d_dbias, d_dy, n, c);
  CUDA_LAUNCH_CHECK("bias_grad");
  return DRV_OK;
}

#define ELEMENTWISE(fn, kernel, ...)                                                   \
  do {                                                                                 \
    if (!count) return DRV_OK;                                                         \
    kernel<<<grid_for(count, 256), 256, 0, ctx_of(be)->compute>>>(__VA_ARGS__, count); \
    CUDA_LAUNCH_CHECK(fn);                                                             \
    return DRV_OK;                                                                     \
  } while (0)

static drv_result_t cu_relu_forward(const backend_t *be, float *d_y, const float *d_x,
                                    size_t count) {
  ELEMENTWISE("relu_forward", k_relu_fwd, d_y, d_x);
}

static drv_result_t cu_relu_backward(const backend_t *be, float *d_dx, const float *d_x,
                                     const float *d_dy, size_t count) {
  ELEMENTWISE("relu_backward", k_relu_bwd, d_dx, d_x, d_dy);
}

static drv_result_t cu_gelu_forward(const backend_t *be, float *d_y, const float *d_x,
                                    size_t count) {
  ELEMENTWISE("gelu_forward", k_gelu_fwd, d_y, d_x);
}

static drv_result_t cu_gelu_backward(const backend_t *be, float *d_dx, const float *d_x,
                                     const float *d_dy, size_t count) {
  ELEMENTWISE("gelu_backward", k_gelu_bwd, d_dx, d_x, d_dy);
}

static drv_result_t cu_softmax_xent(const backend_t *be, const float *d_logits,
                                    const int32_t *d_labels, uint32_t n, uint32_t c, float scale,
                                    float *d_dlogits, float *d_losses, int32_t *d_correct) {
  if (c == 0 && n > 0) return drv_error(DRV_ERR_INVALID, "cuda softmax_xent: zero classes");
  if (!n) return DRV_OK;
  cuda_ctx_t *x = ctx_of(be);
  /* Labels are checked on the device (a bad one would index out of the row); the flag
   * is read back only when capture is off, since reading it means a host wait. */
  int *d_bad = x->d_bad_label;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(x->compute, &cap));
  if (cap == cudaStreamCaptureStatusNone)
    CUDA_CHECK(cudaMemsetAsync(d_bad, 0, sizeof(int), x->compute));
  unsigned rows_per_block = 8;
  k_softmax_xent<<<(n + rows_per_block - 1) / rows_per_block, 32 * rows_per_block, 0, x->compute>>>(
      d_logits, d_labels, n, c, scale, d_dlogits, d_losses, d_correct, d_bad);
  CUDA_LAUNCH_CHECK("softmax_xent");
  if (cap == cudaStreamCaptureStatusNone && d_dlogits == NULL) {
    /* Evaluation calls are few: check the labels there. Training checks them on the host
     * before upload (trainer.c). */
    int bad = 0;
    CUDA_CHECK(cudaMemcpyAsync(&bad, d_bad, sizeof bad, cudaMemcpyDeviceToHost, x->compute));
    CUDA_CHECK(cudaStreamSynchronize(x->compute));
    if (bad) return drv_error(DRV_ERR_INVALID, "cuda softmax_xent: a label outside [0, %u)", c);
  }
  return DRV_OK;
}

static drv_result_t cu_sgd_step(const backend_t *be, float *d_param, const float *d_grad,
                                float *d_mom, size_t count, float lr, float momentum,
                                float weight_decay) {
  if (!count) return DRV_OK;
  k_sgd<<<grid_for(count, 256), 256, 0, ctx_of(be)->compute>>>(d_param, d_grad, d_mom, count, lr,
                                                               momentum, weight_decay);
  CUDA_LAUNCH_CHECK("sgd_step");
  return DRV_OK;
}

static drv_result_t cu_adamw_step(const backend_t *be, float *d_param, const float *d_grad,
                                  float *d_m, float *d_v, size_t count, float lr, float beta1,
                                  float beta2, float eps, float weight_decay, uint64_t t) {
  if (t == 0) return drv_error(DRV_ERR_INVALID, "cuda adamw_step: step t must be >= 1");
  if (!count) return DRV_OK;
  sched4 s;
  be_optim_sched(lr, beta1, beta2, weight_decay, t, s.v);
  k_adamw<<<grid_for(count, 256), 256, 0, ctx_of(be)->compute>>>(d_param, d_grad, d_m, d_v, count,
                                                                 s, beta1, beta2, eps);
  CUDA_LAUNCH_CHECK("adamw_step");
  return DRV_OK;
}

// --- fused and mixed-precision ops --------------------------------------------------------

static drv_result_t cu_convert(const backend_t *be, void *d_dst, be_dtype_t dst_type,
                               const void *d_src, be_dtype_t src_type, size_t count) {
  if (!count) return DRV_OK;
  if (dst_type == src_type) return cu_copy(be, d_dst, d_src, count * be_dtype_size(src_type));
  k_convert<<<grid_for(count, 256), 256, 0, ctx_of(be)->compute>>>(d_dst, dst_type, d_src, src_type,
                                                                   count);
  CUDA_LAUNCH_CHECK("convert");
  return DRV_OK;
}

static cudaDataType_t cuda_type(be_dtype_t t) {
  return t == BE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static unsigned ptr_align(const void *p) {
  uintptr_t a = (uintptr_t)p;
  unsigned al = 256;
  while (al > 1 && (a % al)) al /= 2;
  return al;
}

static void plan_free(lt_plan_t *p) {
  if (!p->used) return;
  if (p->desc) cublasLtMatmulDescDestroy(p->desc);
  if (p->la) cublasLtMatrixLayoutDestroy(p->la);
  if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
  if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
  memset(p, 0, sizeof *p);
}

/* The cuBLASLt epilogue for ours; DRELU_BGRAD has none usable (cuBLASLt's wants the ReLU
 * bitmask from a RELU_AUX forward), NONE for "use the fallback". */
static int lt_epilogue(be_epilogue_t e, cublasLtEpilogue_t *out) {
  switch (e) {
  case BE_EPI_NONE: *out = CUBLASLT_EPILOGUE_DEFAULT; return 1;
  case BE_EPI_BIAS: *out = CUBLASLT_EPILOGUE_BIAS; return 1;
  case BE_EPI_BIAS_RELU: *out = CUBLASLT_EPILOGUE_RELU_BIAS; return 1;
  case BE_EPI_BIAS_GELU: *out = CUBLASLT_EPILOGUE_GELU_AUX_BIAS; return 1;
  case BE_EPI_DGELU_BGRAD: *out = CUBLASLT_EPILOGUE_DGELU_BGRAD; return 1;
  case BE_EPI_DRELU_BGRAD: return 0;
  }
  return 0;
}

/* The bias (or bias gradient) and aux pointers of this call, on the plan's descriptor. */
static cublasStatus_t set_pointers(lt_plan_t *p, const be_matmul_t *op) {
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  if (op->epilogue != BE_EPI_NONE) {
    const void *bias = op->epilogue == BE_EPI_DGELU_BGRAD ? (const void *)op->bgrad : op->bias;
    st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                        sizeof bias);
  }
  if (st == CUBLAS_STATUS_SUCCESS &&
      (op->epilogue == BE_EPI_BIAS_GELU || op->epilogue == BE_EPI_DGELU_BGRAD))
    st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                        &op->aux, sizeof op->aux);
  return st;
}

/* The cached plan for this call's key (shape, types, epilogue, alignments), or NULL. */
static lt_plan_t *lt_plan_find(cuda_ctx_t *c, const be_matmul_t *op, const unsigned align[4]) {
  for (int i = 0; i < LT_PLANS; i++) {
    lt_plan_t *p = &c->plans[i];
    if (p->used && p->trans_a == op->trans_a && p->trans_b == op->trans_b && p->m == op->m &&
        p->n == op->n && p->k == op->k && p->ab_type == op->ab_type && p->c_type == op->c_type &&
        p->bias_type == op->bias_type && p->epilogue == op->epilogue &&
        !memcmp(p->align, align, sizeof p->align))
      return p;
  }
  return NULL;
}

/* The next plan slot (round robin, the plan there freed), holding this call's key. */
static lt_plan_t *lt_plan_slot(cuda_ctx_t *c, const be_matmul_t *op, const unsigned align[4]) {
  lt_plan_t *p = &c->plans[c->plan_next];
  c->plan_next = (c->plan_next + 1) % LT_PLANS;
  plan_free(p);
  *p = (lt_plan_t){.used = 1,
                   .trans_a = op->trans_a,
                   .trans_b = op->trans_b,
                   .m = op->m,
                   .n = op->n,
                   .k = op->k,
                   .ab_type = op->ab_type,
                   .c_type = op->c_type,
                   .bias_type = op->bias_type,
                   .epilogue = op->epilogue};
  memcpy(p->align, align, sizeof p->align);
  return p;
}

/* Whether cuBLASLt is to be asked at all (its epilogue in *epi), rather than the fallback. */
static bool lt_wanted(const cuda_ctx_t *c, const be_matmul_t *op, cublasLtEpilogue_t *epi) {
  bool gelu = op->epilogue == BE_EPI_BIAS_GELU || op->epilogue == BE_EPI_DGELU_BGRAD;
  /* cuBLASLt's GELU uses the GPU's approximate tanh: in exact F32 (no TF32) our fused
   * kernel keeps the reference's accuracy. Its aux leading dimension must be a multiple
   * of 8. */
  /* The bias gradient comes out in D's type: an F32 one only from an F32 D. */
  return lt_epilogue(op->epilogue, epi) && !(gelu && op->ab_type == BE_F32 && !c->tf32) &&
         !(gelu && op->n % 8 != 0) && !(op->epilogue == BE_EPI_DGELU_BGRAD && op->c_type != BE_F32);
}

/* The plan's matmul descriptor and matrix layouts; false where cuBLASLt refuses one. The
 * swap as cu_gemm: cuBLASLt's A is our B, its B our A, its (m, n) our (n, m). */
static bool lt_describe(const cuda_ctx_t *c, lt_plan_t *p, const be_matmul_t *op,
                        cublasLtEpilogue_t epi) {
  bool gelu = op->epilogue == BE_EPI_BIAS_GELU || op->epilogue == BE_EPI_DGELU_BGRAD;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (op->ab_type == BE_F32 && c->tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  cudaDataType_t ab = cuda_type(op->ab_type), ct = cuda_type(op->c_type);
  cublasOperation_t ta = op->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t tb = op->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  uint64_t M = op->n, N = op->m, K = op->k;
  int ok = cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
           cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) ==
               CUBLAS_STATUS_SUCCESS &&
           cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) ==
               CUBLAS_STATUS_SUCCESS &&
           cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                          sizeof epi) == CUBLAS_STATUS_SUCCESS;
  /* The bias is of D's type by default (cublasLt.h); a bias of another type asks for it,
   * and takes the fallback where cuBLASLt refuses. */
  if (ok && op->epilogue != BE_EPI_NONE && op->epilogue != BE_EPI_DGELU_BGRAD &&
      op->bias_type != op->c_type) {
    cudaDataType_t bias_type = cuda_type(op->bias_type);
    ok = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                        sizeof bias_type) == CUBLAS_STATUS_SUCCESS;
  }
  if (ok && gelu) {
    int64_t aux_ld = (int64_t)M; /* the aux type is D's, by default */
    ok = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld,
                                        sizeof aux_ld) == CUBLAS_STATUS_SUCCESS;
  }
  /* The heuristic reads the epilogue pointers' values for their alignment: set them. */
  if (ok) ok = set_pointers(p, op) == CUBLAS_STATUS_SUCCESS;
  /* Stored shapes (column-major): A' is (M, K) or, transposed, (K, M); B' likewise. */
  return ok &&
         cublasLtMatrixLayoutCreate(
             &p->la, ab, ta == CUBLAS_OP_N ? M : K, ta == CUBLAS_OP_N ? K : M,
             (int64_t)(ta == CUBLAS_OP_N ? M : K)) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutCreate(
             &p->lb, ab, tb == CUBLAS_OP_N ? K : N, tb == CUBLAS_OP_N ? N : K,
             (int64_t)(tb == CUBLAS_OP_N ? K : N)) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutCreate(&p->lc, ct, M, N, (int64_t)M) == CUBLAS_STATUS_SUCCESS;
}

/* The algorithm for a described plan: the heuristic's first choice within our workspace and
 * the operands' alignments; false when it offers none. */
static bool lt_pick_algo(const cuda_ctx_t *c, lt_plan_t *p, const unsigned align[4]) {
  cublasLtMatmulPreference_t pref = NULL;
  uint64_t ws = LT_WORKSPACE_BYTES;
  const uint32_t al[4] = {align[0], align[1], align[2], align[2]};
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  bool ok = cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &ws, sizeof ws) == CUBLAS_STATUS_SUCCESS;
  const cublasLtMatmulPreferenceAttributes_t aligns[] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; ok && i < 4; i++)
    ok = cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &al[i], sizeof al[i]) ==
         CUBLAS_STATUS_SUCCESS;
  ok = ok &&
       cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res,
                                      &found) == CUBLAS_STATUS_SUCCESS &&
       found > 0;
  if (ok) p->algo = res.algo;
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  return ok;
}

/* The plan for this call: cached per key, or built once (descriptors and algorithm); its
 * bias runs along cuBLASLt's rows, which are our columns, and its bias gradient sums over
 * its columns, our rows. A plan cuBLASLt cannot run is marked fallback. */
static lt_plan_t *lt_plan(cuda_ctx_t *c, const be_matmul_t *op, const unsigned align[4]) {
  lt_plan_t *p = lt_plan_find(c, op, align);
  if (p) return p;
  p = lt_plan_slot(c, op, align);
  cublasLtEpilogue_t epi;
  if (!lt_wanted(c, op, &epi)) {
    p->fallback = 1;
    return p;
  }
  if (!lt_describe(c, p, op, epi) || !lt_pick_algo(c, p, align)) {
    if (!c->warned_fallback++)
      log_info(
          "%s: cuBLASLt has no algorithm for a %ux%ux%u matmul (epilogue %d, %s): using "
          "GEMM + a fused epilogue kernel there",
          c->name, op->m, op->n, op->k, (int)op->epilogue,
          op->ab_type == BE_BF16 ? "bf16" : "fp32");
    lt_plan_t keep = *p;
    plan_free(p);
    *p = keep;
    p->desc = NULL;
    p->la = p->lb = p->lc = NULL;
    p->fallback = 1;
  }
  return p;
}

/* The epilogue on a product already in op->c, by the fused kernels. */
static drv_result_t matmul_epilogue(const backend_t *be, const be_matmul_t *op) {
  cuda_ctx_t *c = ctx_of(be);
  size_t count = (size_t)op->m * op->n;
  switch (op->epilogue) {
  case BE_EPI_NONE: return DRV_OK;
  case BE_EPI_BIAS:
  case BE_EPI_BIAS_RELU:
  case BE_EPI_BIAS_GELU:
    k_epi_forward<<<grid_for(count, 256), 256, 0, c->compute>>>(
        op->c, op->c_type, op->bias, op->bias_type, op->aux, op->epilogue, count, op->n);
    CUDA_LAUNCH_CHECK("matmul forward epilogue");
    return DRV_OK;
  case BE_EPI_DRELU_BGRAD:
  case BE_EPI_DGELU_BGRAD:
    k_epi_backward<<<(op->n + 31) / 32, dim3(32, 8), 0, c->compute>>>(
        op->c, op->c_type, op->aux, op->epilogue, op->bgrad, op->m, op->n);
    CUDA_LAUNCH_CHECK("matmul backward epilogue");
    return DRV_OK;
  }
  return drv_error(DRV_ERR_INVALID, "cuda matmul: unknown epilogue %d", (int)op->epilogue);
}

static drv_result_t matmul_fallback(const backend_t *be, const be_matmul_t *op) {
  cuda_ctx_t *c = ctx_of(be);
  const float one = 1.0f, zero = 0.0f;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (op->ab_type == BE_F32 && c->tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  int lda = op->trans_a ? (int)op->m : (int)op->k, ldb = op->trans_b ? (int)op->k : (int)op->n;
  CUBLAS_CHECK(cublasGemmEx(c->blas, op->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            op->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)op->n, (int)op->m,
                            (int)op->k, &one, op->b, cuda_type(op->ab_type), ldb, op->a,
                            cuda_type(op->ab_type), lda, &zero, op->c, cuda_type(op->c_type),
                            (int)op->n, compute, CUBLAS_GEMM_DEFAULT));
  return matmul_epilogue(be, op);
}

static drv_result_t cu_matmul(const backend_t *be, const be_matmul_t *op) {
  if (op->m > INT32_MAX || op->n > INT32_MAX || op->k > INT32_MAX)
    return drv_error(DRV_ERR_INVALID, "cuda matmul: size %ux%ux%u too large", op->m, op->n, op->k);
  if (op->ab_type == BE_F32 && op->c_type == BE_BF16)
    return drv_error(DRV_ERR_INVALID,
                     "cuda matmul: F32 operands into a BF16 output are not "
                     "supported (cuBLAS has no such GEMM)");
  if (op->n == 0) return DRV_OK;
  if (op->m == 0) /* no rows: the bias gradient is an empty sum */
    return op->bgrad ? cu_zero(be, op->bgrad, (size_t)op->n * sizeof(float)) : DRV_OK;
  if (op->k == 0) { /* an empty product is 0, and the epilogue applies to it (as gemm) */
    DRV_CHECK(cu_zero(be, op->c, (size_t)op->m * op->n * be_dtype_size(op->c_type)));
    return matmul_epilogue(be, op);
  }
  cuda_ctx_t *c = ctx_of(be);
  /* The plan depends on every pointer's alignment, each operand's its own (a 4-byte
   * aligned bias gradient must not hold the matrices to 4-byte kernels). */
  unsigned align[4] = {ptr_align(op->b), ptr_align(op->a), ptr_align(op->c), 256};
  const void *epi_ptrs[] = {op->bias, op->aux, op->bgrad};
  for (size_t i = 0; i < sizeof epi_ptrs / sizeof epi_ptrs[0]; i++)
    if (epi_ptrs[i] && ptr_align(epi_ptrs[i]) < align[3]) align[3] = ptr_align(epi_ptrs[i]);
  lt_plan_t *p = lt_plan(c, op, align);
  if (p->fallback) return matmul_fallback(be, op);
  CUBLAS_CHECK(set_pointers(p, op));
  const float one = 1.0f, zero = 0.0f;
  cublasStatus_t st =
      cublasLtMatmul(c->lt, p->desc, &one, op->b, p->la, op->a, p->lb, &zero, op->c, p->lc, op->c,
                     p->lc, &p->algo, c->lt_ws, LT_WORKSPACE_BYTES, c->compute);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) {
    /* An algorithm the heuristic offered and the call refused: this shape takes the
     * fallback from now on. */
    if (!c->warned_fallback++)
      log_info(
          "%s: cublasLtMatmul refused a %ux%ux%u matmul (%s): using GEMM + a fused "
          "epilogue kernel there",
          c->name, op->m, op->n, op->k, cublasGetStatusString(st));
    p->fallback = 1;
    return matmul_fallback(be, op);
  }
  if (st != CUBLAS_STATUS_SUCCESS)
    return drv_error(DRV_ERR_CUDA, "cublasLtMatmul: %s", cublasGetStatusString(st));
  return DRV_OK;
}

static drv_result_t cu_loss_sum(const backend_t *be, const float *d_losses,
                                const int32_t *d_correct, uint32_t n, float *d_out) {
  k_loss_sum<<<1, 256, 0, ctx_of(be)->compute>>>(d_losses, d_correct, n, d_out);
  CUDA_LAUNCH_CHECK("loss_sum");
  return DRV_OK;
}

static drv_result_t cu_optimizer_step(const backend_t *be, const be_optim_t *op) {
  if (!op->count) return DRV_OK;
  k_optimizer<<<grid_for(op->count, 256), 256, 0, ctx_of(be)->compute>>>(*op);
  CUDA_LAUNCH_CHECK("optimizer_step");
  return DRV_OK;
}

// --- input pipeline ----------------------------------------------------------------------

static drv_result_t cu_host_alloc(const backend_t *be, size_t bytes, void **h_ptr) {
  void *p = NULL;
  cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 64);
  if (e != cudaSuccess)
    return drv_error(DRV_ERR_NOMEM, "%s: cudaMallocHost of %zu bytes: %s", be->name, bytes,
                     cudaGetErrorString(e));
  *h_ptr = p;
  return DRV_OK;
}

static void cu_host_free(const backend_t *be, void *h_ptr) {
  if (h_ptr) cudaFreeHost(h_ptr);
}

/* The copy stream first waits for the compute stream to pass the last fence: everything
 * issued before it (the step that read this buffer last time) is done with the memory. */
static void collect_waits(cuda_ctx_t *c, int block);

static drv_result_t cu_upload(const backend_t *be, void *d_dst, const void *h_src, size_t bytes) {
  cuda_ctx_t *c = ctx_of(be);
  /* The pair this upload records into must not hold an uncollected measurement. */
  if (c->waits[c->wait_cur].pending) collect_waits(c, 1);
  if (c->last_fence >= 0)
    CUDA_CHECK(cudaStreamWaitEvent(c->copy, c->waits[c->last_fence].ready, 0));
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, c->copy));
  CUDA_CHECK(cudaEventRecord(c->waits[c->wait_cur].arrived, c->copy));
  c->upload_pending = 1;
  return DRV_OK;
}

static void collect_waits(cuda_ctx_t *c, int block) {
  for (int i = 0; i < WAIT_PAIRS; i++) {
    wait_pair_t *w = &c->waits[i];
    if (!w->pending) continue;
    if (block) {
      cudaEventSynchronize(w->ready);
      cudaEventSynchronize(w->arrived);
    } else if (cudaEventQuery(w->ready) != cudaSuccess ||
               cudaEventQuery(w->arrived) != cudaSuccess) {
      continue;
    }
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, w->ready, w->arrived) == cudaSuccess && ms > 0.0f)
      c->wait_ms += ms;
    w->pending = 0;
  }
}

static drv_result_t cu_upload_fence(const backend_t *be) {
  cuda_ctx_t *c = ctx_of(be);
  wait_pair_t *w = &c->waits[c->wait_cur];
  if (w->pending) collect_waits(c, 1); /* every pair in use: settle them first */
  CUDA_CHECK(cudaEventRecord(w->ready, c->compute));
  if (c->upload_pending) {
    CUDA_CHECK(cudaStreamWaitEvent(c->compute, w->arrived, 0));
    w->pending = 1;
  }
  c->upload_pending = 0;
  c->last_fence = c->wait_cur;
  c->wait_cur = (c->wait_cur + 1) % WAIT_PAIRS;
  return DRV_OK;
}

static double cu_data_wait_ms(const backend_t *be) {
  cuda_ctx_t *c = ctx_of(be);
  collect_waits(c, 0);
  double ms = c->wait_ms;
  c->wait_ms = 0.0;
  return ms;
}

// --- graphs ------------------------------------------------------------------------------

static drv_result_t cu_graph_begin(const backend_t *be) {
  CUDA_CHECK(cudaStreamBeginCapture(ctx_of(be)->compute, cudaStreamCaptureModeThreadLocal));
  return DRV_OK;
}

static drv_result_t cu_graph_end(const backend_t *be, void **graph) {
  cudaGraph_t g = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_CHECK(cudaStreamEndCapture(ctx_of(be)->compute, &g));
  /* Node priorities kept: the all-reduces captured from the high-priority comm stream
   * still overtake the backward kernels when replayed. */
  cudaError_t e = cudaGraphInstantiate(&exec, g, cudaGraphInstantiateFlagUseNodePriority);
  cudaGraphDestroy(g);
  if (e != cudaSuccess)
    return drv_error(DRV_ERR_CUDA, "cudaGraphInstantiate: %s", cudaGetErrorString(e));
  *graph = exec;
  return DRV_OK;
}

static drv_result_t cu_graph_launch(const backend_t *be, void *graph) {
  CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph, ctx_of(be)->compute));
  return DRV_OK;
}

static void cu_graph_free(const backend_t *be, void *graph) {
  if (graph) cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

// --- construction ------------------------------------------------------------------------

static const backend_t cuda_table = {
    .name = "cuda",
    .ctx = NULL,
    .alloc = cu_alloc,
    .free = cu_free,
    .copy_in = cu_copy_in,
    .copy_out = cu_copy_out,
    .copy = cu_copy,
    .zero = cu_zero,
    .synchronize = cu_synchronize,
    .matmul = cu_matmul,
    .bias_grad = cu_bias_grad,
    .softmax_xent = cu_softmax_xent,
    .loss_sum = cu_loss_sum,
    .convert = cu_convert,
    .optimizer_step = cu_optimizer_step,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .upload = cu_upload,
    .upload_fence = cu_upload_fence,
    .data_wait_ms = cu_data_wait_ms,
    .graph_begin = cu_graph_begin,
    .graph_end = cu_graph_end,
    .graph_launch = cu_graph_launch,
    .graph_free = cu_graph_free,
    /* reference ops, for the tests */
    .gemm = cu_gemm,
    .bias_add = cu_bias_add,
    .relu_forward = cu_relu_forward,
    .relu_backward = cu_relu_backward,
    .gelu_forward = cu_gelu_forward,
    .gelu_backward = cu_gelu_backward,
    .sgd_step = cu_sgd_step,
    .adamw_step = cu_adamw_step,
};

extern "C" bool backend_cuda_available(void) {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

extern "C" void backend_cuda_destroy(backend_t **bep) {
  if (!bep || !*bep) return;
  backend_t *be = *bep;
  cuda_ctx_t *c = ctx_of(be);
  if (c) {
    cudaSetDevice(c->device);
    if (c->compute) cudaStreamSynchronize(c->compute);
    if (c->copy) cudaStreamSynchronize(c->copy);
    for (int i = 0; i < LT_PLANS; i++) plan_free(&c->plans[i]);
    for (int i = 0; i < WAIT_PAIRS; i++) {
      if (c->waits[i].ready) cudaEventDestroy(c->waits[i].ready);
      if (c->waits[i].arrived) cudaEventDestroy(c->waits[i].arrived);
    }
    if (c->lt) cublasLtDestroy(c->lt);
    if (c->blas) cublasDestroy(c->blas);
    if (c->lt_ws) cudaFree(c->lt_ws);
    if (c->blas_ws) cudaFree(c->blas_ws);
    if (c->compute) cudaStreamDestroy(c->compute);
    if (c->copy) cudaStreamDestroy(c->copy);
    free(c);
  }
  free(be);
  *bep = NULL;
}

extern "C" drv_result_t backend_cuda_new(int device, bool tf32, backend_t **out) {
  *out = NULL;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    return drv_error(DRV_ERR_CUDA, "no GPU answers: %s",
                     e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  if (device < 0 || device >= count)
    return drv_error(DRV_ERR_INVALID, "GPU %d does not exist (%d found)", device, count);
  backend_t *be = (backend_t *)malloc(sizeof *be);
  cuda_ctx_t *c = (cuda_ctx_t *)calloc(1, sizeof *c);
  if (!be || !c) {
    free(be);
    free(c);
    return drv_error(DRV_ERR_NOMEM, "cuda backend: out of memory");
  }
  *be = cuda_table;
  be->ctx = c;
  c->device = device;
  c->tf32 = tf32;
  c->last_fence = -1;
  snprintf(c->name, sizeof c->name, "cuda:%d", device);
  be->name = c->name;
  drv_result_t rc = DRV_OK;
  CUDA_CHECK_GOTO(cudaSetDevice(device), rc, fail);
  CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&c->compute, cudaStreamNonBlocking), rc, fail);
  CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking), rc, fail);
  for (int i = 0; i < WAIT_PAIRS; i++) {
    CUDA_CHECK_GOTO(cudaEventCreate(&c->waits[i].ready), rc, fail);
    CUDA_CHECK_GOTO(cudaEventCreate(&c->waits[i].arrived), rc, fail);
  }
  CUDA_CHECK_GOTO(cudaMalloc(&c->blas_ws, LT_WORKSPACE_BYTES), rc, fail);
  CUDA_CHECK_GOTO(cudaMalloc(&c->lt_ws, LT_WORKSPACE_BYTES), rc, fail);
  CUBLAS_CHECK_GOTO(cublasCreate(&c->blas), rc, fail);
  CUBLAS_CHECK_GOTO(cublasSetStream(c->blas, c->compute), rc, fail);
  /* A fixed workspace: cuBLAS then allocates nothing during a graph capture. */
  CUBLAS_CHECK_GOTO(cublasSetWorkspace(c->blas, c->blas_ws, LT_WORKSPACE_BYTES), rc, fail);
  CUBLAS_CHECK_GOTO(
      cublasSetMathMode(c->blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH), rc,
      fail);
  CUBLAS_CHECK_GOTO(cublasLtCreate(&c->lt), rc, fail);
  CUDA_CHECK_GOTO(cudaGetSymbolAddress((void **)&c->d_bad_label, g_bad_label), rc, fail);
  *out = be;
  return DRV_OK;
fail:
  backend_cuda_destroy(&be);
  return rc;
}

extern "C" cudaStream_t backend_cuda_stream(const backend_t *be) {
  return ctx_of(be)->compute;
}

extern "C" int backend_cuda_device(const backend_t *be) {
  return ctx_of(be)->device;
}

extern "C" drv_result_t backend_cuda_pci_bus_id(const backend_t *be, char *out, size_t n) {
  CUDA_CHECK(cudaDeviceGetPCIBusId(out, (int)n, ctx_of(be)->device));
  return DRV_OK;
}
