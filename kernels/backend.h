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

struct backend {
  const char *name; /* "cpu", "cuda:0", ... */
  void *ctx;        /* backend state; NULL for the CPU backend */

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
  /* Sets `bytes` of device memory to zero. */
  drv_result_t (*zero)(const backend_t *be, void *d_ptr, size_t bytes);
  /* Waits until every op issued so far has finished. */
  drv_result_t (*synchronize)(const backend_t *be);

  // --- linear algebra ------------------------------------------------------------------

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
  /* dbias[j] = sum_i dy[i][j] for dy (n, c), dbias (c): the column sums. Overwrites
   * dbias (zeros when n == 0). */
  drv_result_t (*bias_grad)(const backend_t *be, float *d_dbias, const float *d_dy, uint32_t n,
                            uint32_t c);

  // --- activations (elementwise over `count` floats) -----------------------------------

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

  // --- loss ----------------------------------------------------------------------------

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

  // --- optimizers (elementwise over `count` parameters) --------------------------------

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

#endif
