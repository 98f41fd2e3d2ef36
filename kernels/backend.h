/* backend.h: the kernel backend interface (ggml-backend style).
 *
 * A backend is a struct of function pointers, filled with designated initializers, that
 * owns device memory and runs the handful of ops an MLP needs to train: GEMM, bias,
 * activations, fused softmax cross-entropy and the optimizer updates. The trainer calls
 * only through this table, so the same training code runs on the CPU reference
 * (kernels/cpu/, CBLAS + plain C loops) and on a GPU backend.
 *
 * Conventions, for every op:
 *   - Every `d_` pointer is device memory obtained from the same backend's alloc() (for the
 *     CPU backend that is ordinary host memory); `h_` pointers are host memory.
 *   - Matrices are row-major and contiguous; shapes are given as (rows, cols).
 *   - The first argument is the backend itself, so a backend can carry its state (stream,
 *     library handles) in `ctx`.
 *   - Ops may run asynchronously with respect to the host: copy_out() and synchronize()
 *     are the points where results become visible on the host. Ops issued to one backend
 *     run in the order issued.
 *   - Ops return DRV_OK, or a drv_result_t with the last-error message set (a failed
 *     launch, a bad argument). They never exit.
 */
#ifndef DROVER_KERNELS_BACKEND_H
#define DROVER_KERNELS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

typedef struct backend backend_t;

/* Element types of the mixed-precision ops. Parameters, optimizer state, losses and bias
 * vectors are always F32; activations, GEMM inputs and (optionally) gradients may be BF16
 * (bfloat16: the top 16 bits of an IEEE float, rounded to nearest even). */
typedef enum { BE_F32 = 0, BE_BF16 = 1 } be_dtype_t;

static inline size_t be_dtype_size(be_dtype_t t) {
  return t == BE_BF16 ? 2 : 4;
}

/* What matmul() does to the product P = op(A) @ op(B) (m, n) before storing it in C:
 *   NONE         C = P
 *   BIAS         C = P + bias                       (bias (n) added to every row)
 *   BIAS_RELU    C = relu(P + bias)
 *   BIAS_GELU    aux = P + bias;  C = gelu(aux)     (aux (m, n), kept for the backward)
 *   DRELU_BGRAD  C = P * (aux > 0);  bgrad = column sums of C
 *                (aux: the forward's ReLU OUTPUT, whose sign is the derivative's)
 *   DGELU_BGRAD  C = P * gelu'(aux); bgrad = column sums of C
 *                (aux: the forward's pre-activation, as BIAS_GELU left it)
 * These are the fusions an MLP layer needs: forward = one matmul, backward to the previous
 * layer = one matmul (cuBLASLt epilogues where the GPU has them). */
typedef enum {
  BE_EPI_NONE = 0,
  BE_EPI_BIAS,
  BE_EPI_BIAS_RELU,
  BE_EPI_BIAS_GELU,
  BE_EPI_DRELU_BGRAD,
  BE_EPI_DGELU_BGRAD,
} be_epilogue_t;

/* One matmul with its epilogue. Shapes as gemm() (row-major, C (m, n) = op(A) op(B)), with
 * A and B of type ab_type, C and aux of type c_type, accumulation in F32, bias (n) of
 * bias_type (F32, or C's type), bgrad (n) F32. C is overwritten (no beta); k == 0 gives
 * C = 0 and then the epilogue. F32 operands into a BF16 C are refused. */
typedef struct {
  bool trans_a, trans_b;
  uint32_t m, n, k;
  const void *a, *b;
  be_dtype_t ab_type;
  void *c;
  be_dtype_t c_type;
  be_epilogue_t epilogue;
  const void *bias; /* BIAS, BIAS_RELU, BIAS_GELU */
  be_dtype_t bias_type;
  void *aux;    /* BIAS_GELU (written), DRELU_BGRAD and DGELU_BGRAD (read) */
  float *bgrad; /* DRELU_BGRAD, DGELU_BGRAD (written) */
} be_matmul_t;

typedef enum { BE_OPT_SGD = 0, BE_OPT_ADAMW } be_optimizer_t;

/* One optimizer update over every parameter in one pass (one launch on a GPU). The
 * per-step values come from `sched`, backend memory the caller fills before the step
 * (so that a captured CUDA graph replays with the current learning rate):
 *   sched[0] lr
 *   sched[1] AdamW step size lr / (1 - beta1^t)           (unused by SGD)
 *   sched[2] AdamW sqrt(1 - beta2^t)                       (unused by SGD)
 *   sched[3] AdamW decay factor 1 - lr * weight_decay      (unused by SGD)
 * SGD and AdamW follow sgd_step() and adamw_step() exactly. grad is read as grad_type,
 * multiplied by grad_scale; when param_copy is set the updated parameters are also
 * written there as copy_type (the BF16 weights the next step's GEMMs read). */
typedef struct {
  be_optimizer_t type;
  size_t count;
  float *param;
  const void *grad;
  be_dtype_t grad_type;
  float grad_scale;
  float *m; /* SGD momentum; AdamW first moment */
  float *v; /* AdamW second moment */
  void *param_copy;
  be_dtype_t copy_type;
  const float *sched; /* (4) */
  float momentum, weight_decay, beta1, beta2, eps;
} be_optim_t;

struct backend {
  const char *name; /* "cpu", "cuda:0", ... */
  void *ctx;        /* backend state; NULL for the CPU backend */

  /* Every entry down to the graphs is required: the trainer (train/trainer.c) issues a
   * step through them, the NCCL reducer converts through convert(). The graph entries and
   * the reference ops at the end are optional. */

  // --- memory --------------------------------------------------------------------------

  /* Allocates `bytes` of device memory (at least 64-byte aligned) into *d_ptr. The caller
   * frees it with free(). bytes == 0 gives a valid pointer that must still be freed. */
  drv_result_t (*alloc)(const backend_t *be, size_t bytes, void **d_ptr);
  /* Frees memory from alloc(). NULL-safe. */
  void (*free)(const backend_t *be, void *d_ptr);
  /* Host -> device copy of `bytes`. */
  drv_result_t (*copy_in)(const backend_t *be, void *d_dst, const void *h_src, size_t bytes);
  /* Device -> host copy of `bytes`; waits for the ops issued before it. */
  drv_result_t (*copy_out)(const backend_t *be, void *h_dst, const void *d_src, size_t bytes);
  /* Device -> device copy of `bytes` (ordered with the other ops). */
  drv_result_t (*copy)(const backend_t *be, void *d_dst, const void *d_src, size_t bytes);
  /* Sets `bytes` of device memory to zero. */
  drv_result_t (*zero)(const backend_t *be, void *d_ptr, size_t bytes);
  /* Waits until every op issued so far has finished (uploads included). */
  drv_result_t (*synchronize)(const backend_t *be);

  // --- the training step: fused and mixed-precision ops --------------------------------

  /* The matmul with epilogue described at be_matmul_t. */
  drv_result_t (*matmul)(const backend_t *be, const be_matmul_t *op);
  /* dbias[j] = sum_i dy[i][j] for dy (n, c), dbias (c): the column sums. Overwrites
   * dbias (zeros when n == 0). */
  drv_result_t (*bias_grad)(const backend_t *be, float *d_dbias, const float *d_dy, uint32_t n,
                            uint32_t c);

  /* Fused, numerically stable softmax cross-entropy over logits (n, c) with labels (n),
   * each in [0, c), in one pass per row:
   *   losses[i]  = logsumexp(logits[i]) - logits[i][labels[i]]          (n), unscaled
   *   correct[i] = 1 if argmax_j logits[i][j] == labels[i] (first max wins) else 0  (n)
   *   dlogits[i][j] = (softmax(logits[i])[j] - (j == labels[i])) * scale    (n, c)
   * d_dlogits may be NULL (evaluation: no gradient) and may alias d_logits. Per-sample
   * outputs, rather than a device-side sum, let the caller reduce in a fixed order (in
   * double) so that the loss does not depend on the backend's reduction order. */
  drv_result_t (*softmax_xent)(const backend_t *be, const float *d_logits, const int32_t *d_labels,
                               uint32_t n, uint32_t c, float scale, float *d_dlogits,
                               float *d_losses, int32_t *d_correct);
  /* out[0] = sum of losses[0..n), out[1] = number of nonzero correct[0..n): accumulated in
   * double in index order, so the sum is the same on every backend up to the final
   * rounding to float. */
  drv_result_t (*loss_sum)(const backend_t *be, const float *d_losses, const int32_t *d_correct,
                           uint32_t n, float *d_out);

  /* dst = src converted element by element (F32 -> BF16 rounds to nearest even). */
  drv_result_t (*convert)(const backend_t *be, void *d_dst, be_dtype_t dst_type, const void *d_src,
                          be_dtype_t src_type, size_t count);
  /* The optimizer update described at be_optim_t. */
  drv_result_t (*optimizer_step)(const backend_t *be, const be_optim_t *op);

  // --- input pipeline ------------------------------------------------------------------

  /* Host memory the backend copies from fastest (pinned on a GPU); host_free() NULL-safe. */
  drv_result_t (*host_alloc)(const backend_t *be, size_t bytes, void **h_ptr);
  void (*host_free)(const backend_t *be, void *h_ptr);
  /* Starts copying `bytes` from h_src (from host_alloc) to d_dst on a copy stream apart
   * from the compute stream, so the copy overlaps the ops already issued. h_src must stay
   * untouched until the next synchronize(). */
  drv_result_t (*upload)(const backend_t *be, void *d_dst, const void *h_src, size_t bytes);
  /* Makes the ops issued after it wait for every upload issued before it (an event wait,
   * not a host wait). */
  drv_result_t (*upload_fence)(const backend_t *be);
  /* Milliseconds the compute stream sat idle waiting for uploads at upload_fence() since
   * the last call (measured with events once they have completed; call after
   * synchronize()). 0 on backends that copy synchronously. */
  double (*data_wait_ms)(const backend_t *be);

  // --- graphs (optional: NULL where the backend has none) ------------------------------

  /* Records the ops issued between graph_begin() and graph_end() instead of running them;
   * graph_end() returns a replayable graph in *graph, graph_launch() replays it with the
   * memory contents of the moment (pointers are fixed at capture), graph_free() frees it. */
  drv_result_t (*graph_begin)(const backend_t *be);
  drv_result_t (*graph_end)(const backend_t *be, void **graph);
  drv_result_t (*graph_launch)(const backend_t *be, void *graph);
  void (*graph_free)(const backend_t *be, void *graph);

  // --- reference ops (optional: used by tests only) ------------------------------------

  /* The unfused building blocks of the step, in F32: the parity and finite-difference
   * tests (tests/test_kernels.c, tests/test_cuda.c) check them against naive loops and
   * the fused ops above against them. The trainer never calls them. The CPU and CUDA
   * backends fill them all; another backend may leave them NULL, and then cannot run
   * those tests. */

  /* C = alpha * op(A) @ op(B) + beta * C, where
   *   op(A) is (m, k): A is (m, k) row-major, or (k, m) when trans_a;
   *   op(B) is (k, n): B is (k, n) row-major, or (n, k) when trans_b;
   *   C is (m, n) row-major.
   * With beta == 0 the previous contents of C are ignored (NaN included). k == 0 gives
   * C = beta * C. */
  drv_result_t (*gemm)(const backend_t *be, bool trans_a, bool trans_b, uint32_t m, uint32_t n,
                       uint32_t k, float alpha, const float *d_a, const float *d_b, float beta,
                       float *d_c);

  /* y[i][j] += bias[j] for y (n, c), bias (c). In place. */
  drv_result_t (*bias_add)(const backend_t *be, float *d_y, const float *d_bias, uint32_t n,
                           uint32_t c);

  // activations, elementwise over `count` floats
  /* y = max(x, 0). y may alias x. */
  drv_result_t (*relu_forward)(const backend_t *be, float *d_y, const float *d_x, size_t count);
  /* dx = dy * (x > 0), x the forward input. dx may alias dy. */
  drv_result_t (*relu_backward)(const backend_t *be, float *d_dx, const float *d_x,
                                const float *d_dy, size_t count);
  /* y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), PyTorch's
   * gelu(approximate='tanh'). y may alias x. */
  drv_result_t (*gelu_forward)(const backend_t *be, float *d_y, const float *d_x, size_t count);
  /* dx = dy * gelu'(x), x the forward input. dx may alias dy. */
  drv_result_t (*gelu_backward)(const backend_t *be, float *d_dx, const float *d_x,
                                const float *d_dy, size_t count);

  // optimizers, elementwise over `count` parameters (optimizer_step fuses both)
  /* SGD with momentum, PyTorch semantics (dampening 0, no Nesterov):
   *   g = grad + weight_decay * param;  mom = momentum * mom + g;  param -= lr * mom.
   * mom (count) starts at zero, which matches PyTorch's first step (buf = g). */
  drv_result_t (*sgd_step)(const backend_t *be, float *d_param, const float *d_grad, float *d_mom,
                           size_t count, float lr, float momentum, float weight_decay);
  /* AdamW, PyTorch semantics (decoupled weight decay, bias-corrected), step t >= 1:
   *   param *= 1 - lr * weight_decay;
   *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
   *   param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
   * m and v (count each) start at zero. */
  drv_result_t (*adamw_step)(const backend_t *be, float *d_param, const float *d_grad, float *d_m,
                             float *d_v, size_t count, float lr, float beta1, float beta2,
                             float eps, float weight_decay, uint64_t t);
};

/* The CPU backend: the readable reference (GEMM through CBLAS, plain C loops for the rest),
 * always built. A static table; never freed. */
const backend_t *backend_cpu(void);

/* Caps the threads the CPU backend's GEMM uses (OpenBLAS's pool, process-wide), so that
 * several CPU workers on one machine do not oversubscribe its cores; threads <= 0 leaves
 * the current setting. Returns the number now in use. */
int backend_cpu_threads(int threads);

/* Fills be_optim_t's sched[4] for learning rate lr at AdamW step t >= 1 (bias corrections
 * in double, as torch.optim.AdamW); SGD reads only sched[0]. */
void be_optim_sched(float lr, float beta1, float beta2, float weight_decay, uint64_t t,
                    float sched[4]);

/* Host-side bfloat16 conversions, the same rounding as every backend's convert(). */
uint16_t be_f32_to_bf16(float x);
float be_bf16_to_f32(uint16_t x);

/* The CUDA backend (kernels/cuda/), built when the CUDA parts are: device `device`, its own
 * compute and copy streams, cuBLAS and cuBLASLt handles. tf32 lets F32 GEMMs use TF32
 * tensor cores (off: exact F32, as the CPU). backend_cuda_available() is false (and
 * backend_cuda_new fails, saying why) when drover was built without CUDA or no GPU answers.
 * The caller frees the backend with backend_cuda_destroy (NULL-safe, nulls the pointer). */
bool backend_cuda_available(void);
drv_result_t backend_cuda_new(int device, bool tf32, backend_t **out);
void backend_cuda_destroy(backend_t **be);

/* The PCI bus id of a CUDA backend's GPU ("0000:3b:00.0"), what tells GPUs apart across
 * processes whatever CUDA_VISIBLE_DEVICES numbers them (and what NCCL compares). */
drv_result_t backend_cuda_pci_bus_id(const backend_t *be, char *out, size_t n);

#endif
