/* test_kernels.c: the CPU backend (kernels/cpu) against naive double-precision references,
 * every backward pass against central finite differences, the optimizers against values
 * computed by hand with PyTorch's update rules, and the whole MLP's gradient through the
 * trainer against finite differences of its loss.
 *
 * Finite differences: the loss is L = sum(R * y) for a fixed random R (so dL/dy = R),
 * accumulated in double from the float outputs of the op under test; each input element is
 * moved by +-eps (1e-3) and (L+ - L-) / 2 eps is compared with the backward op's result at a
 * relative tolerance of 1e-2 (plus a small absolute floor for gradients near zero).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "train/trainer.h"
#include "common/rng.h"
#include "kernels/backend.h"

#define FD_EPS 1e-3f
#define FD_RTOL 1e-2
#define FD_ATOL 1e-3

// --- helpers ------------------------------------------------------------------------------

static void fill(rng_t *rng, float *x, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(rng);
}

/* Values in [-hi, -lo] or [lo, hi], away from an activation's kink at 0. */
static void fill_away_from_zero(rng_t *rng, float *x, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) {
    float m = lo + (hi - lo) * rng_uniform(rng);
    x[i] = rng_uniform(rng) < 0.5f ? -m : m;
  }
}

/* Asserts |got - want| <= rtol * max(|got|, |want|) + atol elementwise, naming the first
 * element that is not. */
static void assert_close(const char *what, const float *got, const double *want, size_t n,
                         double rtol, double atol) {
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    double g = got[i], w = want[i];
    double tol = rtol * fmax(fabs(g), fabs(w)) + atol;
    if (!(fabs(g - w) <= tol)) {
      if (bad < 5) print_error("%s[%zu]: got %.7g, want %.7g\n", what, i, g, w);
      bad++;
    }
  }
  assert_int_equal(bad, 0);
}

static double dot(const float *a, const float *r, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * r[i];
  return s;
}

/* Naive C (m, n) = op(A) @ op(B) in double, row-major. */
static void naive_gemm(bool ta, bool tb, uint32_t m, uint32_t n, uint32_t k, const float *a,
                       const float *b, double *c) {
  for (uint32_t i = 0; i < m; i++)
    for (uint32_t j = 0; j < n; j++) {
      double s = 0.0;
      for (uint32_t p = 0; p < k; p++) {
        double av = ta ? a[(size_t)p * m + i] : a[(size_t)i * k + p];
        double bv = tb ? b[(size_t)j * k + p] : b[(size_t)p * n + j];
        s += av * bv;
      }
      c[(size_t)i * n + j] = s;
    }
}

static double gelu_ref(double x) {
  return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// --- GEMM and linear ----------------------------------------------------------------------

static void test_gemm_forward(void **state) {
  const backend_t *be = backend_cpu();
  rng_t rng;
  rng_init(&rng, 1, 0);
  const uint32_t shapes[][3] = {{5, 7, 3}, {1, 4, 6}, {6, 1, 2}, {3, 3, 1}, {17, 9, 33}};
  for (size_t s = 0; s < DRV_ARRAY_LEN(shapes); s++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        uint32_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float a[17 * 33], b[33 * 9], c[17 * 9];
        double want[17 * 9];
        fill(&rng, a, (size_t)m * k, -1, 1);
        fill(&rng, b, (size_t)k * n, -1, 1);
        fill(&rng, c, (size_t)m * n, -1, 1);
        naive_gemm(ta, tb, m, n, k, a, b, want);
        for (size_t i = 0; i < (size_t)m * n; i++) want[i] = 1.5 * want[i] + 0.5 * c[i];
        assert_int_equal(be->gemm(be, ta, tb, m, n, k, 1.5f, a, b, 0.5f, c), DRV_OK);
        assert_close("gemm", c, want, (size_t)m * n, 1e-5, 1e-5);
      }
}

static void test_cpu_threads(void **state) {
  int before = backend_cpu_threads(0); /* a query */
  assert_true(before >= 1);
  assert_int_equal(backend_cpu_threads(1), 1);
  assert_int_equal(backend_cpu_threads(0), 1);
  backend_cpu_threads(before);
}

static void test_gemm_beta_zero_and_empty(void **state) {
  const backend_t *be = backend_cpu();
  float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, c[4];
  for (int i = 0; i < 4; i++) c[i] = NAN;
  /* beta = 0 ignores C's old contents, NaN included: (2,3) @ (3,2). */
  assert_int_equal(be->gemm(be, false, false, 2, 2, 3, 1.0f, a, b, 0.0f, c), DRV_OK);
  const double want[4] = {1 + 3, 2 + 3, 4 + 6, 5 + 6};
  assert_close("gemm beta=0", c, want, 4, 0, 0);
  /* k == 0: C = beta * C. */
  assert_int_equal(be->gemm(be, false, false, 2, 2, 0, 1.0f, a, b, 2.0f, c), DRV_OK);
  const double twice[4] = {8, 10, 20, 22};
  assert_close("gemm k=0", c, twice, 4, 0, 0);
  assert_int_equal(be->gemm(be, false, false, 2, 2, 0, 1.0f, a, b, 0.0f, c), DRV_OK);
  const double zeros[4] = {0};
  assert_close("gemm k=0 beta=0", c, zeros, 4, 0, 0);
}

/* C = A @ B, (m, k) @ (k, n): dA = dC @ B^T and dB = A^T @ dC through the backend's gemm
 * with transposes, against finite differences of sum(R * C). */
static void test_gemm_backward_fd(void **state) {
  const backend_t *be = backend_cpu();
  enum { M = 4, K = 5, N = 3 };
  rng_t rng;
  rng_init(&rng, 2, 0);
  float a[M * K], b[K * N], c[M * N], r[M * N], da[M * K], db[K * N];
  double num_a[M * K], num_b[K * N];
  fill(&rng, a, M * K, -1, 1);
  fill(&rng, b, K * N, -1, 1);
  fill(&rng, r, M * N, -1, 1);
  assert_int_equal(be->gemm(be, false, true, M, K, N, 1.0f, r, b, 0.0f, da), DRV_OK);
  assert_int_equal(be->gemm(be, true, false, K, N, M, 1.0f, a, r, 0.0f, db), DRV_OK);
  float *inputs[2] = {a, b};
  double *nums[2] = {num_a, num_b};
  size_t sizes[2] = {M * K, K * N};
  for (int which = 0; which < 2; which++)
    for (size_t i = 0; i < sizes[which]; i++) {
      float keep = inputs[which][i];
      inputs[which][i] = keep + FD_EPS;
      be->gemm(be, false, false, M, N, K, 1.0f, a, b, 0.0f, c);
      double lp = dot(c, r, M * N);
      inputs[which][i] = keep - FD_EPS;
      be->gemm(be, false, false, M, N, K, 1.0f, a, b, 0.0f, c);
      double lm = dot(c, r, M * N);
      inputs[which][i] = keep;
      nums[which][i] = (lp - lm) / (2.0 * FD_EPS);
    }
  assert_close("gemm dA", da, num_a, M * K, FD_RTOL, FD_ATOL);
  assert_close("gemm dB", db, num_b, K * N, FD_RTOL, FD_ATOL);
}

/* y = x W^T + b as the trainer computes it: x (n, in), W (out, in), b (out). */
static void linear_forward(const backend_t *be, uint32_t n, uint32_t in, uint32_t out,
                           const float *x, const float *w, const float *b, float *y) {
  assert_int_equal(be->gemm(be, false, true, n, out, in, 1.0f, x, w, 0.0f, y), DRV_OK);
  assert_int_equal(be->bias_add(be, y, b, n, out), DRV_OK);
}

static void test_linear_forward(void **state) {
  const backend_t *be = backend_cpu();
  enum { N = 3, IN = 4, OUT = 2 };
  const float x[N * IN] = {1, 2, 3, 4, -1, 0, 1, 0, 0.5f, 0.5f, 0.5f, 0.5f};
  const float w[OUT * IN] = {1, 0, 0, 1, -1, 1, -1, 1};
  const float b[OUT] = {0.5f, -2};
  float y[N * OUT];
  linear_forward(be, N, IN, OUT, x, w, b, y);
  /* Row by row: x . w_j + b_j. */
  const double want[N * OUT] = {1 + 4 + 0.5, -1 + 2 - 3 + 4 - 2, -1 + 0.5,
                                1 - 1 - 2,   0.5 + 0.5 + 0.5,    0 - 2};
  assert_close("linear y", y, want, N * OUT, 1e-6, 1e-6);
}

static void test_linear_backward_fd(void **state) {
  const backend_t *be = backend_cpu();
  enum { N = 4, IN = 5, OUT = 3 };
  rng_t rng;
  rng_init(&rng, 3, 0);
  float x[N * IN], w[OUT * IN], b[OUT], y[N * OUT], r[N * OUT];
  float dx[N * IN], dw[OUT * IN], dbias[OUT];
  double num_x[N * IN], num_w[OUT * IN], num_b[OUT];
  fill(&rng, x, N * IN, -1, 1);
  fill(&rng, w, OUT * IN, -1, 1);
  fill(&rng, b, OUT, -1, 1);
  fill(&rng, r, N * OUT, -1, 1);
  /* dy = R. dx (n, in) = dy @ W; dW (out, in) = dy^T @ x; db = colsum(dy). */
  assert_int_equal(be->gemm(be, false, false, N, IN, OUT, 1.0f, r, w, 0.0f, dx), DRV_OK);
  assert_int_equal(be->gemm(be, true, false, OUT, IN, N, 1.0f, r, x, 0.0f, dw), DRV_OK);
  assert_int_equal(be->bias_grad(be, dbias, r, N, OUT), DRV_OK);
  float *inputs[3] = {x, w, b};
  double *nums[3] = {num_x, num_w, num_b};
  size_t sizes[3] = {N * IN, OUT * IN, OUT};
  for (int which = 0; which < 3; which++)
    for (size_t i = 0; i < sizes[which]; i++) {
      float keep = inputs[which][i];
      inputs[which][i] = keep + FD_EPS;
      linear_forward(be, N, IN, OUT, x, w, b, y);
      double lp = dot(y, r, N * OUT);
      inputs[which][i] = keep - FD_EPS;
      linear_forward(be, N, IN, OUT, x, w, b, y);
      double lm = dot(y, r, N * OUT);
      inputs[which][i] = keep;
      nums[which][i] = (lp - lm) / (2.0 * FD_EPS);
    }
  assert_close("linear dx", dx, num_x, N * IN, FD_RTOL, FD_ATOL);
  assert_close("linear dW", dw, num_w, OUT * IN, FD_RTOL, FD_ATOL);
  assert_close("linear db", dbias, num_b, OUT, FD_RTOL, FD_ATOL);
}

static void test_bias_grad_column_sums(void **state) {
  const backend_t *be = backend_cpu();
  const float dy[3 * 2] = {1, 10, 2, 20, 3, 30};
  float db[2] = {99, 99}; /* overwritten, not accumulated */
  assert_int_equal(be->bias_grad(be, db, dy, 3, 2), DRV_OK);
  const double want[2] = {6, 60};
  assert_close("bias_grad", db, want, 2, 0, 0);
  assert_int_equal(be->bias_grad(be, db, dy, 0, 2), DRV_OK);
  const double zeros[2] = {0, 0};
  assert_close("bias_grad n=0", db, zeros, 2, 0, 0);
}

// --- activations --------------------------------------------------------------------------

typedef drv_result_t (*act_fwd_fn)(const backend_t *, float *, const float *, size_t);
typedef drv_result_t (*act_bwd_fn)(const backend_t *, float *, const float *, const float *,
                                   size_t);

/* Backward of an elementwise activation against finite differences of sum(R * f(x)),
 * with x away from 0 so that ReLU's kink is never crossed. Also checks dx aliasing dy. */
static void check_activation_fd(const char *what, act_fwd_fn fwd, act_bwd_fn bwd) {
  const backend_t *be = backend_cpu();
  enum { COUNT = 64 };
  rng_t rng;
  rng_init(&rng, 4, 0);
  float x[COUNT], y[COUNT], r[COUNT], dx[COUNT], inplace[COUNT];
  double num[COUNT];
  fill_away_from_zero(&rng, x, COUNT, 0.05f, 4.0f);
  fill(&rng, r, COUNT, -1, 1);
  assert_int_equal(bwd(be, dx, x, r, COUNT), DRV_OK);
  memcpy(inplace, r, sizeof r);
  assert_int_equal(bwd(be, inplace, x, inplace, COUNT), DRV_OK);
  for (size_t i = 0; i < COUNT; i++) {
    float keep = x[i];
    /* One element at a time: sum(R * f(x)) only changes in element i. */
    x[i] = keep + FD_EPS;
    fwd(be, y, x, COUNT);
    double lp = (double)y[i] * r[i];
    x[i] = keep - FD_EPS;
    fwd(be, y, x, COUNT);
    double lm = (double)y[i] * r[i];
    x[i] = keep;
    num[i] = (lp - lm) / (2.0 * FD_EPS);
  }
  assert_close(what, dx, num, COUNT, FD_RTOL, FD_ATOL);
  double same[COUNT];
  for (size_t i = 0; i < COUNT; i++) same[i] = dx[i];
  assert_close(what, inplace, same, COUNT, 0, 0);
}

static void test_relu(void **state) {
  const backend_t *be = backend_cpu();
  const float x[6] = {-2, -0.5f, 0, 0.25f, 3, -1e-30f};
  float y[6], dx[6];
  const float dy[6] = {1, 2, 3, 4, 5, 6};
  assert_int_equal(be->relu_forward(be, y, x, 6), DRV_OK);
  const double want[6] = {0, 0, 0, 0.25, 3, 0};
  assert_close("relu", y, want, 6, 0, 0);
  assert_int_equal(be->relu_backward(be, dx, x, dy, 6), DRV_OK);
  const double want_dx[6] = {0, 0, 0, 4, 5, 0};
  assert_close("relu dx", dx, want_dx, 6, 0, 0);
  check_activation_fd("relu dx (fd)", be->relu_forward, be->relu_backward);
}

static void test_gelu(void **state) {
  const backend_t *be = backend_cpu();
  /* PyTorch: torch.nn.functional.gelu(x, approximate='tanh'). */
  const float x[8] = {-3, -1, -0.5f, 0, 0.5f, 1, 2, 3};
  const double torch_values[8] = {-0.00363739208, -0.158808009, -0.15428599, 0,
                                  0.34571401,     0.841191991,  1.95459769,  2.99636261};
  float y[8];
  assert_int_equal(be->gelu_forward(be, y, x, 8), DRV_OK);
  assert_close("gelu", y, torch_values, 8, 1e-6, 1e-7);
  /* And against the formula on a wider range, large |x| included. */
  rng_t rng;
  rng_init(&rng, 5, 0);
  float xs[100], ys[100];
  double want[100];
  fill(&rng, xs, 100, -12, 12);
  for (int i = 0; i < 100; i++) want[i] = gelu_ref(xs[i]);
  assert_int_equal(be->gelu_forward(be, ys, xs, 100), DRV_OK);
  assert_close("gelu wide", ys, want, 100, 1e-5, 1e-6);
  check_activation_fd("gelu dx (fd)", be->gelu_forward, be->gelu_backward);
}

// --- softmax cross-entropy ----------------------------------------------------------------

static void test_softmax_xent_forward(void **state) {
  const backend_t *be = backend_cpu();
  enum { N = 5, C = 4 };
  rng_t rng;
  rng_init(&rng, 6, 0);
  float logits[N * C], losses[N], dlogits[N * C];
  int32_t correct[N];
  const int32_t labels[N] = {0, 3, 1, 2, 3};
  fill(&rng, logits, N * C, -3, 3);
  logits[1 * C + 3] = 5; /* row 1: the label is the argmax */
  assert_int_equal(be->softmax_xent(be, logits, labels, N, C, 0.5f, dlogits, losses, correct),
                   DRV_OK);
  double want_loss[N], want_d[N * C];
  for (int i = 0; i < N; i++) {
    const float *row = logits + i * C;
    double sum = 0.0;
    int argmax = 0;
    for (int j = 0; j < C; j++) {
      sum += exp((double)row[j]);
      if (row[j] > row[argmax]) argmax = j;
    }
    want_loss[i] = log(sum) - row[labels[i]];
    for (int j = 0; j < C; j++)
      want_d[i * C + j] = (exp((double)row[j]) / sum - (j == labels[i])) * 0.5;
    assert_int_equal(correct[i], argmax == labels[i]);
  }
  assert_int_equal(correct[1], 1);
  assert_close("xent loss", losses, want_loss, N, 1e-6, 1e-6);
  assert_close("xent dlogits", dlogits, want_d, N * C, 1e-5, 1e-7);

  /* Without a gradient buffer, and with dlogits aliasing the logits. */
  float losses2[N];
  assert_int_equal(be->softmax_xent(be, logits, labels, N, C, 0.5f, NULL, losses2, correct),
                   DRV_OK);
  assert_memory_equal(losses, losses2, sizeof losses);
  assert_int_equal(be->softmax_xent(be, logits, labels, N, C, 0.5f, logits, losses2, correct),
                   DRV_OK);
  assert_memory_equal(logits, dlogits, sizeof dlogits);

  /* A label outside [0, C) is refused, not read out of bounds. */
  const int32_t bad[1] = {C};
  assert_int_equal(be->softmax_xent(be, logits, bad, 1, C, 1.0f, NULL, losses, correct),
                   DRV_ERR_INVALID);
}

static void test_softmax_xent_backward_fd(void **state) {
  const backend_t *be = backend_cpu();
  enum { N = 3, C = 5 };
  const float scale = 1.0f / 3.0f;
  rng_t rng;
  rng_init(&rng, 7, 0);
  float logits[N * C], losses[N], dlogits[N * C];
  int32_t correct[N];
  const int32_t labels[N] = {4, 0, 2};
  double num[N * C];
  fill(&rng, logits, N * C, -2, 2);
  assert_int_equal(be->softmax_xent(be, logits, labels, N, C, scale, dlogits, losses, correct),
                   DRV_OK);
  /* L = scale * sum_i loss_i, whose gradient the op returns. */
  for (size_t i = 0; i < N * C; i++) {
    float keep = logits[i];
    double l[2];
    for (int s = 0; s < 2; s++) {
      logits[i] = keep + (s ? -FD_EPS : FD_EPS);
      be->softmax_xent(be, logits, labels, N, C, scale, NULL, losses, correct);
      l[s] = scale * ((double)losses[0] + losses[1] + losses[2]);
    }
    logits[i] = keep;
    num[i] = (l[0] - l[1]) / (2.0 * FD_EPS);
  }
  assert_close("xent dlogits (fd)", dlogits, num, N * C, FD_RTOL, 1e-4);
}

static void test_softmax_xent_stable(void **state) {
  const backend_t *be = backend_cpu();
  enum { N = 3, C = 3 };
  const float logits[N * C] = {1000, -1000, 0, -1000, -1000, -1000, 1000, 1000, -1000};
  const int32_t labels[N] = {1, 2, 0};
  float losses[N], dlogits[N * C];
  int32_t correct[N];
  assert_int_equal(be->softmax_xent(be, logits, labels, N, C, 1.0f, dlogits, losses, correct),
                   DRV_OK);
  for (int i = 0; i < N * C; i++) assert_true(isfinite(dlogits[i]));
  /* Row 0: log(e^1000 + e^-1000 + 1) - (-1000) = 2000. Row 1: uniform, log 3.
   * Row 2: two equal maxima, log 2. */
  const double want[N] = {2000.0, log(3.0), log(2.0)};
  assert_close("xent +-1000 loss", losses, want, N, 1e-6, 1e-6);
  const double want_d[N * C] = {1, -1, 0, 1.0 / 3, 1.0 / 3, -2.0 / 3, -0.5, 0.5, 0};
  assert_close("xent +-1000 dlogits", dlogits, want_d, N * C, 1e-6, 1e-7);
  /* Ties go to the first maximum: row 1 -> 0 (label 2: wrong), row 2 -> 0 (label 0). */
  assert_int_equal(correct[0], 0);
  assert_int_equal(correct[1], 0);
  assert_int_equal(correct[2], 1);
}

// --- optimizers ---------------------------------------------------------------------------

/* The gradients of three steps, for three parameters. */
static const float opt_grads[3][3] = {
    {0.1f, -0.2f, 0.3f}, {-0.5f, 0.4f, 0.0f}, {0.2f, 0.2f, -0.1f}};

static void test_sgd_momentum(void **state) {
  const backend_t *be = backend_cpu();
  float p[3] = {1.0f, -2.0f, 0.5f}, mom[3] = {0, 0, 0};
  /* torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), by hand:
   * step 1, p[0]: g = 0.1 + 0.01 * 1 = 0.11, v = 0.11, p = 1 - 0.011 = 0.989. */
  const double want[3][3] = {{0.989, -1.978, 0.4695},
                             {1.028111, -1.996222, 0.4415805},
                             {1.04228279, -2.03062558, 0.42601137}};
  for (int s = 0; s < 3; s++) {
    assert_int_equal(be->sgd_step(be, p, opt_grads[s], mom, 3, 0.1f, 0.9f, 0.01f), DRV_OK);
    assert_close("sgd", p, want[s], 3, 1e-6, 1e-7);
  }
  /* momentum 0, no decay: plain p -= lr * g. */
  float q[2] = {1, 2}, v[2] = {0, 0};
  const float g[2] = {0.5f, -1};
  assert_int_equal(be->sgd_step(be, q, g, v, 2, 0.2f, 0.0f, 0.0f), DRV_OK);
  const double want_q[2] = {0.9, 2.2};
  assert_close("sgd plain", q, want_q, 2, 1e-6, 0);
}

static void test_adamw(void **state) {
  const backend_t *be = backend_cpu();
  float p[3] = {1.0f, -2.0f, 0.5f}, m[3] = {0}, v[3] = {0};
  /* torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), by hand:
   * step 1, p[0]: p *= 1 - 0.001 -> 0.999; m = 0.01, v = 1e-5; m^ = 0.1, sqrt(v^) = 0.1;
   * p -= 0.01 * 0.1 / (0.1 + 1e-8) -> 0.989000001. */
  const double want[3][3] = {{0.989000001, -1.988, 0.4895},
                             {0.993994543, -1.98967304, 0.482309918},
                             {0.994972497, -1.99287577, 0.478936255}};
  for (int s = 0; s < 3; s++) {
    assert_int_equal(
        be->adamw_step(be, p, opt_grads[s], m, v, 3, 0.01f, 0.9f, 0.999f, 1e-8f, 0.1f, s + 1),
        DRV_OK);
    assert_close("adamw", p, want[s], 3, 1e-6, 1e-7);
  }
  assert_int_equal(
      be->adamw_step(be, p, opt_grads[0], m, v, 3, 0.01f, 0.9f, 0.999f, 1e-8f, 0.1f, 0),
      DRV_ERR_INVALID);
}

// --- the whole MLP through the trainer ----------------------------------------------------

/* The naive double forward of the trainer's MLP from its flat parameters (layer after
 * layer, W (out, in) then b (out)). Returns the sum of the per-sample losses, and the
 * smallest |pre-activation| of the hidden layers in *margin. */
static double naive_mlp_loss(const uint32_t *sizes, uint32_t layers, bool gelu, const float *params,
                             const float *x, const int32_t *y, uint32_t n, double *margin) {
  double total = 0.0;
  *margin = INFINITY;
  for (uint32_t s = 0; s < n; s++) {
    double a[64], z[64];
    for (uint32_t i = 0; i < sizes[0]; i++) a[i] = x[(size_t)s * sizes[0] + i];
    const float *p = params;
    for (uint32_t l = 0; l < layers; l++) {
      uint32_t in = sizes[l], out = sizes[l + 1];
      const float *w = p, *b = p + (size_t)out * in;
      for (uint32_t o = 0; o < out; o++) {
        double acc = b[o];
        for (uint32_t i = 0; i < in; i++) acc += (double)w[(size_t)o * in + i] * a[i];
        z[o] = acc;
      }
      p += (size_t)out * in + out;
      if (l + 1 < layers)
        for (uint32_t o = 0; o < out; o++) {
          *margin = fmin(*margin, fabs(z[o]));
          a[o] = gelu ? gelu_ref(z[o]) : fmax(z[o], 0.0);
        }
      else
        for (uint32_t o = 0; o < out; o++) a[o] = z[o];
    }
    uint32_t c = sizes[layers];
    double mx = a[0], sum = 0.0;
    for (uint32_t j = 1; j < c; j++) mx = fmax(mx, a[j]);
    for (uint32_t j = 0; j < c; j++) sum += exp(a[j] - mx);
    total += mx + log(sum) - a[y[s]];
  }
  return total;
}

static void check_mlp_fd(spec_activation_t act) {
  const backend_t *be = backend_cpu();
  enum { F = 5, C = 4, N = 3, GLOBAL = 6 };
  uint32_t hidden[2] = {7, 6};
  const uint32_t sizes[4] = {F, 7, 6, C};
  jobspec_t spec = {0};
  spec.model.hidden = hidden;
  spec.model.hidden_count = 2;
  spec.model.activation = act;
  spec.train.optimizer.type = SPEC_OPT_SGD;
  spec.train.optimizer.lr = 0.1f;
  const int32_t y[N] = {2, 0, 3};
  float x[N * F];

  /* Pick a seed whose pre-activations all sit well away from ReLU's kink, so that no
   * +-eps move of a parameter crosses it. */
  trainer_t *t = NULL;
  double margin = 0.0;
  for (uint64_t seed = 1; seed < 200; seed++) {
    spec.train.seed = seed;
    rng_t rng;
    rng_init(&rng, seed, 99);
    fill(&rng, x, N * F, -1.5f, 1.5f);
    trainer_destroy(&t);
    assert_int_equal(trainer_new(&spec, be, F, C, N, &t), DRV_OK);
    naive_mlp_loss(sizes, 3, act == SPEC_ACT_GELU, trainer_params(t, NULL), x, y, N, &margin);
    if (margin > 0.05) break;
  }
  assert_true(margin > 0.05);

  size_t count = 0;
  float *params = trainer_params(t, &count);
  assert_int_equal(count, (size_t)(F * 7 + 7 + 7 * 6 + 6 + 6 * C + C));
  double loss = 0.0;
  uint32_t correct = 0;
  assert_int_equal(trainer_forward_backward(t, x, y, N, GLOBAL, &loss, &correct), DRV_OK);
  /* The forward loss agrees with the naive double forward. */
  double ref = naive_mlp_loss(sizes, 3, act == SPEC_ACT_GELU, params, x, y, N, &margin);
  assert_true(fabs(loss - ref) <= 1e-5 * fabs(ref));
  assert_true(correct <= N);

  float *grads = trainer_grads(t, NULL);
  double *num = calloc(count, sizeof *num);
  assert_non_null(num);
  for (size_t i = 0; i < count; i++) {
    float keep = params[i];
    double l[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
      params[i] = keep + (s ? -FD_EPS : FD_EPS);
      assert_int_equal(trainer_evaluate(t, x, y, N, &l[s], NULL), DRV_OK);
    }
    params[i] = keep;
    /* The gradient is that of (sum of losses) / global_batch. */
    num[i] = (l[0] - l[1]) / (2.0 * FD_EPS) / GLOBAL;
  }
  double worst_rel = 0.0, worst_abs = 0.0;
  for (size_t i = 0; i < count; i++) {
    double err = fabs(grads[i] - num[i]);
    worst_abs = fmax(worst_abs, err);
    if (fabs(num[i]) > 1e-3) worst_rel = fmax(worst_rel, err / fabs(num[i]));
  }
  print_message(
      "mlp %s: %zu parameters, worst error %.2e relative (where |grad| > 1e-3), "
      "%.2e absolute\n",
      act == SPEC_ACT_GELU ? "gelu" : "relu", count, worst_rel, worst_abs);
  assert_close("mlp grad (fd)", grads, num, count, FD_RTOL, 2e-4);
  free(num);
  trainer_destroy(&t);
  assert_null(t);
}

static void test_mlp_relu_fd(void **state) {
  check_mlp_fd(SPEC_ACT_RELU);
}
static void test_mlp_gelu_fd(void **state) {
  check_mlp_fd(SPEC_ACT_GELU);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gemm_forward),
      cmocka_unit_test(test_gemm_beta_zero_and_empty),
      cmocka_unit_test(test_cpu_threads),
      cmocka_unit_test(test_gemm_backward_fd),
      cmocka_unit_test(test_linear_forward),
      cmocka_unit_test(test_linear_backward_fd),
      cmocka_unit_test(test_bias_grad_column_sums),
      cmocka_unit_test(test_relu),
      cmocka_unit_test(test_gelu),
      cmocka_unit_test(test_softmax_xent_forward),
      cmocka_unit_test(test_softmax_xent_backward_fd),
      cmocka_unit_test(test_softmax_xent_stable),
      cmocka_unit_test(test_sgd_momentum),
      cmocka_unit_test(test_adamw),
      cmocka_unit_test(test_mlp_relu_fd),
      cmocka_unit_test(test_mlp_gelu_fd),
  };
  return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
