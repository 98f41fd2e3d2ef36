/* test_trainer.c: the trainer's learning-rate schedule, its seeded initialisation, that
 * rank slices of a batch add up to the whole batch's gradient, that it learns a small
 * separable problem (SGD and AdamW, ReLU and GELU), argument checks, and that the
 * .safetensors file it writes parses back (header length, JSON, names, shapes, offsets and
 * the bytes of every tensor).
 */
#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "train/trainer.h"
#include "tests/fixtures.h"
#include "common/rng.h"
#include "kernels/backend.h"

// --- helpers ------------------------------------------------------------------------------


// --- learning-rate schedule ---------------------------------------------------------------

static void test_lr_schedule(void **state) {
  jobspec_t spec = make_spec(SPEC_OPT_SGD, SPEC_ACT_RELU, 0.1f);
  /* Constant, no warmup. */
  assert_float_equal(trainer_lr(&spec, 0, 100), 0.1f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 99, 100), 0.1f, 1e-7f);
  /* Linear warmup from 0 over 10 steps, then constant. */
  spec.train.lr_schedule.warmup_steps = 10;
  assert_float_equal(trainer_lr(&spec, 0, 100), 0.0f, 0.0f);
  assert_float_equal(trainer_lr(&spec, 5, 100), 0.05f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 9, 100), 0.09f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 10, 100), 0.1f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 1000, 100), 0.1f, 1e-7f);
  /* Cosine from lr at the end of warmup to lr_min at total_steps. */
  spec.train.lr_schedule.type = SPEC_LR_COSINE;
  spec.train.lr_schedule.lr_min = 0.01f;
  assert_float_equal(trainer_lr(&spec, 5, 110), 0.05f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 10, 110), 0.1f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 60, 110), 0.055f, 1e-6f); /* halfway: the mean */
  /* A quarter of the way: lr_min + (lr - lr_min) (1 + cos(pi/4)) / 2. */
  assert_float_equal(trainer_lr(&spec, 35, 110), 0.01f + 0.09f * 0.5f * (1.0f + 0.70710678f),
                     1e-6f);
  assert_float_equal(trainer_lr(&spec, 110, 110), 0.01f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 500, 110), 0.01f, 1e-7f);
  float last = trainer_lr(&spec, 109, 110);
  assert_true(last > 0.01f && last < 0.0101f);
  /* Monotonically non-increasing after warmup. */
  for (uint64_t s = 11; s <= 110; s++)
    assert_true(trainer_lr(&spec, s, 110) <= trainer_lr(&spec, s - 1, 110));
  /* Cosine without warmup starts at lr. */
  spec.train.lr_schedule.warmup_steps = 0;
  assert_float_equal(trainer_lr(&spec, 0, 50), 0.1f, 1e-7f);
  assert_float_equal(trainer_lr(&spec, 50, 50), 0.01f, 1e-7f);
}

// --- initialisation -----------------------------------------------------------------------

static void test_init_seeded(void **state) {
  const backend_t *be = backend_cpu();
  jobspec_t spec = make_spec(SPEC_OPT_SGD, SPEC_ACT_RELU, 0.1f);
  trainer_t *a = NULL, *b = NULL, *c = NULL;
  assert_int_equal(trainer_new(&spec, be, 10, 3, 8, &a), DRV_OK);
  assert_int_equal(trainer_new(&spec, be, 10, 3, 8, &b), DRV_OK);
  spec.train.seed = 43;
  assert_int_equal(trainer_new(&spec, be, 10, 3, 8, &c), DRV_OK);
  size_t na, nb, nc;
  const float *pa = trainer_params(a, &na), *pb = trainer_params(b, &nb),
              *pc = trainer_params(c, &nc);
  size_t expect = 10 * 16 + 16 + 16 * 12 + 12 + 12 * 3 + 3;
  assert_int_equal(na, expect);
  assert_int_equal(nb, expect);
  assert_int_equal(nc, expect);
  assert_memory_equal(pa, pb, na * sizeof(float));
  size_t differ = 0;
  for (size_t i = 0; i < na; i++) differ += pa[i] != pc[i];
  assert_true(differ > na / 2);

  /* Layout: W0 (16, 10), b0 (16), ... Biases start at zero; He-normal weights of the first
   * ReLU layer have variance 2 / fan_in = 0.2. */
  const float *b0 = pa + 160;
  for (int i = 0; i < 16; i++) assert_float_equal(b0[i], 0.0f, 0.0f);
  double ss = 0.0;
  for (int i = 0; i < 160; i++) ss += (double)pa[i] * pa[i];
  double var = ss / 160;
  assert_true(var > 0.2 * 0.6 && var < 0.2 * 1.4);
  /* The gradient buffer is a separate flat buffer of the same size. */
  size_t ng;
  assert_ptr_not_equal(trainer_grads(a, &ng), trainer_params(a, NULL));
  assert_int_equal(ng, expect);
  /* SGD keeps one momentum per parameter. */
  size_t nopt;
  assert_non_null(trainer_opt_state(a, &nopt));
  assert_int_equal(nopt, expect);
  assert_int_equal(trainer_layers(a), 3);
  assert_int_equal(trainer_size(a, 0), 10);
  assert_int_equal(trainer_size(a, 3), 3);
  trainer_destroy(&a);
  trainer_destroy(&b);
  trainer_destroy(&c);
  assert_null(a);
  trainer_destroy(&a); /* NULL-safe */
}

// --- data parallelism ---------------------------------------------------------------------

/* Two ranks' slices of a global batch, each scaled by the global batch, sum to the full
 * batch's gradient: the all-reduce contract. */
static void test_rank_slices_sum_to_batch(void **state) {
  const backend_t *be = backend_cpu();
  jobspec_t spec = make_spec(SPEC_OPT_SGD, SPEC_ACT_GELU, 0.1f);
  enum { F = 6, C = 3, B = 10 };
  float x[B * F];
  int32_t y[B];
  make_blobs(B, F, C, 1, x, y);
  trainer_t *t = NULL;
  assert_int_equal(trainer_new(&spec, be, F, C, B, &t), DRV_OK);
  size_t count;
  float *grads = trainer_grads(t, &count);
  float *whole = malloc(count * sizeof *whole), *sum = calloc(count, sizeof *sum);
  assert_non_null(whole);
  assert_non_null(sum);
  double loss_all = 0.0, loss_parts = 0.0;
  uint32_t hits_all = 0, hits_parts = 0;
  assert_int_equal(trainer_forward_backward(t, x, y, B, B, &loss_all, &hits_all), DRV_OK);
  memcpy(whole, grads, count * sizeof *whole);
  const uint32_t cut = 4;
  assert_int_equal(trainer_forward_backward(t, x, y, cut, B, &loss_parts, &hits_parts), DRV_OK);
  for (size_t i = 0; i < count; i++) sum[i] += grads[i];
  assert_int_equal(
      trainer_forward_backward(t, x + cut * F, y + cut, B - cut, B, &loss_parts, &hits_parts),
      DRV_OK);
  for (size_t i = 0; i < count; i++) sum[i] += grads[i];
  for (size_t i = 0; i < count; i++) assert_float_equal(sum[i], whole[i], 1e-6f);
  assert_true(fabs(loss_all - loss_parts) < 1e-5);
  assert_int_equal(hits_all, hits_parts);
  /* n = 0: the gradients are zero (a rank with an empty slice). */
  assert_int_equal(trainer_forward_backward(t, NULL, NULL, 0, B, NULL, NULL), DRV_OK);
  for (size_t i = 0; i < count; i++) assert_float_equal(grads[i], 0.0f, 0.0f);
  free(whole);
  free(sum);
  trainer_destroy(&t);
}

// --- learning -----------------------------------------------------------------------------

/* Trains on Gaussian blobs and returns the mean loss before and after. */
static void train_blobs(spec_optimizer_t opt, spec_activation_t act, float lr, double *before,
                        double *after, double *accuracy) {
  const backend_t *be = backend_cpu();
  enum { F = 8, C = 4, N = 512, B = 32, STEPS = 160 };
  jobspec_t spec = make_spec(opt, act, lr);
  spec.train.lr_schedule.type = SPEC_LR_COSINE;
  spec.train.lr_schedule.warmup_steps = 10;
  float *x = malloc(sizeof(float) * N * F);
  int32_t *y = malloc(sizeof(int32_t) * N);
  assert_non_null(x);
  assert_non_null(y);
  make_blobs(N, F, C, 5, x, y);
  trainer_t *t = NULL;
  assert_int_equal(trainer_new(&spec, be, F, C, B, &t), DRV_OK);
  double loss = 0.0;
  uint32_t hits = 0;
  assert_int_equal(trainer_evaluate(t, x, y, N, &loss, &hits), DRV_OK);
  *before = loss / N;
  for (uint64_t step = 0; step < STEPS; step++) {
    uint32_t start = (uint32_t)(step * B % N);
    float lr_used = -1;
    assert_int_equal(
        trainer_forward_backward(t, x + (size_t)start * F, y + start, B, B, NULL, NULL), DRV_OK);
    assert_int_equal(trainer_apply(t, step, STEPS, &lr_used), DRV_OK);
    assert_float_equal(lr_used, trainer_lr(&spec, step, STEPS), 0.0f);
  }
  loss = 0.0;
  hits = 0;
  assert_int_equal(trainer_evaluate(t, x, y, N, &loss, &hits), DRV_OK);
  *after = loss / N;
  *accuracy = (double)hits / N;
  trainer_destroy(&t);
  free(x);
  free(y);
}

static void test_learns_sgd_relu(void **state) {
  double before, after, acc;
  train_blobs(SPEC_OPT_SGD, SPEC_ACT_RELU, 0.05f, &before, &after, &acc);
  print_message("sgd/relu: loss %.4f -> %.4f, accuracy %.3f\n", before, after, acc);
  assert_true(before > 0.5);
  assert_true(after < 0.1 * before);
  assert_true(acc > 0.95);
}

static void test_learns_adamw_gelu(void **state) {
  double before, after, acc;
  train_blobs(SPEC_OPT_ADAMW, SPEC_ACT_GELU, 0.01f, &before, &after, &acc);
  print_message("adamw/gelu: loss %.4f -> %.4f, accuracy %.3f\n", before, after, acc);
  assert_true(before > 0.5);
  assert_true(after < 0.1 * before);
  assert_true(acc > 0.95);
}

// --- argument checks ----------------------------------------------------------------------

static void test_bad_arguments(void **state) {
  const backend_t *be = backend_cpu();
  jobspec_t spec = make_spec(SPEC_OPT_SGD, SPEC_ACT_RELU, 0.1f);
  trainer_t *t = (trainer_t *)&spec; /* must be nulled on failure */
  assert_int_equal(trainer_new(&spec, be, 0, 3, 8, &t), DRV_ERR_INVALID);
  assert_null(t);
  assert_int_equal(trainer_new(&spec, be, 4, 1, 8, &t), DRV_ERR_INVALID);
  uint32_t zero_width[1] = {0};
  jobspec_t bad = spec;
  bad.model.hidden = zero_width;
  bad.model.hidden_count = 1;
  assert_int_equal(trainer_new(&bad, be, 4, 3, 8, &t), DRV_ERR_INVALID);
  assert_null(t);
  bad = spec;
  bad.model.hidden_count = JOBSPEC_MAX_HIDDEN + 1;
  assert_int_equal(trainer_new(&bad, be, 4, 3, 8, &t), DRV_ERR_INVALID);

  assert_int_equal(trainer_new(&spec, be, 4, 3, 8, &t), DRV_OK);
  float x[9 * 4] = {0};
  int32_t y[9] = {0};
  assert_int_equal(trainer_forward_backward(t, x, y, 9, 9, NULL, NULL), DRV_ERR_INVALID);
  assert_int_equal(trainer_forward_backward(t, x, y, 2, 0, NULL, NULL), DRV_ERR_INVALID);
  y[1] = 3;
  assert_int_equal(trainer_forward_backward(t, x, y, 2, 2, NULL, NULL), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "label 3"));
  y[1] = -1;
  assert_int_equal(trainer_evaluate(t, x, y, 2, NULL, NULL), DRV_ERR_INVALID);
  /* Evaluation batches internally: 9 samples with max_batch 8 is fine. */
  y[1] = 0;
  double loss = 0.0;
  uint32_t hits = 0;
  assert_int_equal(trainer_evaluate(t, x, y, 9, &loss, &hits), DRV_OK);
  /* All-zero inputs give the zero-bias logits 0: uniform, loss log 3 per sample. */
  assert_true(fabs(loss - 9 * log(3.0)) < 1e-4);
  trainer_destroy(&t);
}

// --- safetensors --------------------------------------------------------------------------

/* A minimal JSON reader, enough for a safetensors header: objects, arrays, strings without
 * escapes beyond \" and \\, and non-negative integers. */
typedef enum { J_OBJ, J_ARR, J_STR, J_NUM } jtype_t;
typedef struct jval {
  jtype_t type;
  char *str; /* J_STR; the key for members */
  unsigned long long num;
  struct jval *kids; /* J_OBJ members / J_ARR items */
  char **keys;       /* J_OBJ */
  size_t count;
} jval_t;

static const char *jskip(const char *p) {
  while (*p && isspace((unsigned char)*p)) p++;
  return p;
}

static const char *jparse(const char *p, jval_t *v);

static const char *jstring(const char *p, char **out) {
  if (*p != '"') return NULL;
  p++;
  size_t cap = 64, len = 0;
  char *s = malloc(cap);
  while (*p && *p != '"') {
    char ch = *p++;
    if (ch == '\\') ch = *p++;
    if (len + 2 > cap) s = realloc(s, cap *= 2);
    s[len++] = ch;
  }
  if (*p != '"') {
    free(s);
    return NULL;
  }
  s[len] = '\0';
  *out = s;
  return p + 1;
}

static const char *jparse(const char *p, jval_t *v) {
  memset(v, 0, sizeof *v);
  p = jskip(p);
  if (*p == '{' || *p == '[') {
    int obj = *p == '{';
    v->type = obj ? J_OBJ : J_ARR;
    p = jskip(p + 1);
    if (*p == (obj ? '}' : ']')) return p + 1;
    for (;;) {
      v->kids = realloc(v->kids, (v->count + 1) * sizeof *v->kids);
      v->keys = realloc(v->keys, (v->count + 1) * sizeof *v->keys);
      v->keys[v->count] = NULL;
      if (obj) {
        p = jstring(jskip(p), &v->keys[v->count]);
        if (!p) return NULL;
        p = jskip(p);
        if (*p++ != ':') return NULL;
      }
      p = jparse(p, &v->kids[v->count]);
      if (!p) return NULL;
      v->count++;
      p = jskip(p);
      if (*p == ',') {
        p++;
        continue;
      }
      if (*p == (obj ? '}' : ']')) return p + 1;
      return NULL;
    }
  }
  if (*p == '"') {
    v->type = J_STR;
    return jstring(p, &v->str);
  }
  if (isdigit((unsigned char)*p)) {
    v->type = J_NUM;
    char *end;
    v->num = strtoull(p, &end, 10);
    return end;
  }
  return NULL;
}

static void jfree(jval_t *v) {
  for (size_t i = 0; i < v->count; i++) {
    jfree(&v->kids[i]);
    free(v->keys[i]);
  }
  free(v->kids);
  free(v->keys);
  free(v->str);
}

static const jval_t *jget(const jval_t *obj, const char *key) {
  if (obj->type != J_OBJ) return NULL;
  for (size_t i = 0; i < obj->count; i++)
    if (strcmp(obj->keys[i], key) == 0) return &obj->kids[i];
  return NULL;
}

static void test_save_safetensors(void **state) {
  const backend_t *be = backend_cpu();
  jobspec_t spec = make_spec(SPEC_OPT_ADAMW, SPEC_ACT_GELU, 0.01f);
  enum { F = 10, C = 3 };
  trainer_t *t = NULL;
  assert_int_equal(trainer_new(&spec, be, F, C, 4, &t), DRV_OK);
  size_t nparams;
  const float *params = trainer_params(t, &nparams);

  char dir[] = "/tmp/test_trainer.XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[128];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  assert_int_equal(trainer_save(t, path), DRV_OK);

  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *file = malloc((size_t)size + 1);
  assert_non_null(file);
  assert_int_equal(fread(file, 1, (size_t)size, f), (size_t)size);
  fclose(f);

  /* 8-byte little-endian header length; data starts 8-byte aligned. */
  uint64_t hlen = 0;
  for (int b = 0; b < 8; b++) hlen |= (uint64_t)file[b] << (8 * b);
  assert_true(hlen > 2 && 8 + hlen <= (uint64_t)size);
  assert_int_equal((8 + hlen) % 8, 0);
  char *header = malloc(hlen + 1);
  memcpy(header, file + 8, hlen);
  header[hlen] = '\0';
  assert_int_equal(header[0], '{');
  jval_t root;
  const char *end = jparse(header, &root);
  assert_non_null(end);
  while (*end == ' ') end++; /* the padding is spaces */
  assert_int_equal(*end, '\0');
  assert_int_equal(root.type, J_OBJ);
  assert_int_equal(root.count, 3 * 2 + 1); /* 3 layers x (weight, bias) + __metadata__ */

  const jval_t *meta = jget(&root, "__metadata__");
  assert_non_null(meta);
  assert_string_equal(jget(meta, "activation")->str, "gelu");
  assert_string_equal(jget(meta, "sizes")->str, "10,16,12,3");
  assert_string_equal(jget(meta, "format")->str, "pt");

  /* Every tensor: F32, the torch.nn.Linear shape, contiguous offsets in layer order, and
   * the bytes equal to the parameter buffer at the same place. */
  const unsigned char *data = file + 8 + hlen;
  uint64_t data_len = (uint64_t)size - 8 - hlen;
  const uint32_t sizes[4] = {F, 16, 12, C};
  uint64_t expect_off = 0;
  for (uint32_t l = 0; l < 3; l++)
    for (int kind = 0; kind < 2; kind++) {
      char name[32];
      snprintf(name, sizeof name, "layers.%u.%s", l, kind ? "bias" : "weight");
      const jval_t *tv = jget(&root, name);
      assert_non_null(tv);
      assert_string_equal(jget(tv, "dtype")->str, "F32");
      const jval_t *shape = jget(tv, "shape");
      const jval_t *offs = jget(tv, "data_offsets");
      assert_non_null(shape);
      assert_non_null(offs);
      uint64_t elems;
      if (kind == 0) {
        assert_int_equal(shape->count, 2);
        assert_int_equal(shape->kids[0].num, sizes[l + 1]);
        assert_int_equal(shape->kids[1].num, sizes[l]);
        elems = (uint64_t)sizes[l + 1] * sizes[l];
      } else {
        assert_int_equal(shape->count, 1);
        assert_int_equal(shape->kids[0].num, sizes[l + 1]);
        elems = sizes[l + 1];
      }
      assert_int_equal(offs->count, 2);
      assert_int_equal(offs->kids[0].num, expect_off);
      assert_int_equal(offs->kids[1].num, expect_off + 4 * elems);
      /* The file is little-endian; so is every host this runs on (checked here). */
      for (uint64_t i = 0; i < elems; i++) {
        const unsigned char *q = data + expect_off + 4 * i;
        uint32_t bits =
            (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
        float v;
        memcpy(&v, &bits, 4);
        assert_memory_equal(&v, &params[expect_off / 4 + i], 4);
      }
      expect_off += 4 * elems;
    }
  assert_int_equal(expect_off, data_len); /* no holes, nothing after */
  assert_int_equal(expect_off, 4 * nparams);
  jfree(&root);
  free(header);
  free(file);

  /* A second, independent reader where a Python is around: its strict json module and
   * struct, and the safetensors package itself when it is installed. */
  if (access("/usr/bin/python3", X_OK) == 0) {
    char script[160], cmd[512];
    snprintf(script, sizeof script, "%s/check.py", dir);
    FILE *py = fopen(script, "w");
    assert_non_null(py);
    fputs(
        "import json, struct, sys\n"
        "raw = open(sys.argv[1], 'rb').read()\n"
        "(n,) = struct.unpack('<Q', raw[:8])\n"
        "h = json.loads(raw[8:8 + n])\n"
        "meta = h.pop('__metadata__')\n"
        "assert meta['model'] == 'mlp', meta\n"
        "ends = sorted(tuple(v['data_offsets']) for v in h.values())\n"
        "assert ends[0][0] == 0 and ends[-1][1] == len(raw) - 8 - n, ends\n"
        "assert all(a[1] == b[0] for a, b in zip(ends, ends[1:])), ends\n"
        "w = h['layers.2.weight']\n"
        "assert w['shape'] == [3, 12] and w['dtype'] == 'F32', w\n"
        "try:\n"
        "    import safetensors.numpy as st\n"
        "except ImportError:\n"
        "    sys.exit(0)\n"
        "d = st.load_file(sys.argv[1])\n"
        "assert d['layers.0.weight'].shape == (16, 10) and len(d) == 6\n",
        py);
    fclose(py);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s", script, path);
    assert_int_equal(system(cmd), 0);
    unlink(script);
  } else {
    print_message("no /usr/bin/python3: skipped the independent reader\n");
  }

  /* Saving again replaces the file atomically and leaves no temporary behind. */
  assert_int_equal(trainer_save(t, path), DRV_OK);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
  assert_int_equal(system(cmd), 0);
  /* A path in a missing directory fails cleanly. */
  snprintf(path, sizeof path, "%s/missing/model.safetensors", dir);
  assert_int_equal(trainer_save(t, path), DRV_ERR_SYS);
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  unlink(path);
  rmdir(dir);
  trainer_destroy(&t);
}

// --- the pipelined step -----------------------------------------------------------------

/* The worker's pipelined step (stage, launch, finish; the next batch staged while a step
 * runs) does exactly what the single calls do, step for step and bit for bit; commit and
 * rollback restore the committed state; get/set_state round-trip. */
static void test_pipeline_matches_single_calls(void **state) {
  enum { N = 32, F = 8, C = 3, STEPS = 20 };
  jobspec_t spec = make_spec(SPEC_OPT_ADAMW, SPEC_ACT_GELU, 0.01f);
  spec.train.lr_schedule.type = SPEC_LR_COSINE;
  spec.train.lr_schedule.warmup_steps = 3;
  const backend_t *be = backend_cpu();
  trainer_t *a = NULL, *b = NULL;
  assert_int_equal(trainer_new(&spec, be, F, C, N, &a), DRV_OK);
  assert_int_equal(trainer_new(&spec, be, F, C, N, &b), DRV_OK);
  float x[STEPS][N * F];
  int32_t y[STEPS][N];
  for (int s = 0; s < STEPS; s++) make_blobs(N, F, C, 100 + (uint64_t)s, x[s], y[s]);
  size_t np, no;
  trainer_params(a, &np);
  trainer_opt_state(a, &no);
  float *pa = malloc(sizeof(float) * np), *pb = malloc(sizeof(float) * np);
  float *oa = malloc(sizeof(float) * no), *ob = malloc(sizeof(float) * no);
  float *pc = malloc(sizeof(float) * np), *oc = malloc(sizeof(float) * no);
  assert_non_null(pa);
  assert_non_null(pb);
  assert_non_null(oa);
  assert_non_null(ob);
  assert_non_null(pc);
  assert_non_null(oc);

  float *hx;
  int32_t *hy;
  trainer_next_batch(a, &hx, &hy);
  memcpy(hx, x[0], sizeof x[0]);
  memcpy(hy, y[0], sizeof y[0]);
  assert_int_equal(trainer_stage(a, N, N, 0, STEPS), DRV_OK);
  for (int s = 0; s < STEPS; s++) {
    float lr_a, lr_b;
    assert_int_equal(trainer_step_launch(a, &lr_a), DRV_OK);
    assert_int_equal(trainer_step_launch(a, NULL), DRV_ERR_INVALID); /* nothing staged */
    if (s + 1 < STEPS) {
      trainer_next_batch(a, &hx, &hy);
      memcpy(hx, x[s + 1], sizeof x[0]);
      memcpy(hy, y[s + 1], sizeof y[0]);
      assert_int_equal(trainer_stage(a, N, N, (uint64_t)s + 1, STEPS), DRV_OK);
    }
    double loss_a = 0, loss_b = 0, wait = -1;
    assert_int_equal(trainer_step_finish(a, &loss_a, &wait), DRV_OK);
    assert_true(wait == 0.0); /* the CPU copies synchronously */
    assert_int_equal(trainer_forward_backward(b, x[s], y[s], N, N, &loss_b, NULL), DRV_OK);
    assert_int_equal(trainer_apply(b, (uint64_t)s, STEPS, &lr_b), DRV_OK);
    assert_true(lr_a == lr_b);
    assert_true((float)loss_a == (float)loss_b);
    if (s == 9) {
      assert_int_equal(trainer_commit(a), DRV_OK);
      assert_int_equal(trainer_get_state(a, pc, oc), DRV_OK);
    }
  }
  assert_int_equal(trainer_get_state(a, pa, oa), DRV_OK);
  assert_int_equal(trainer_get_state(b, pb, ob), DRV_OK);
  assert_memory_equal(pa, pb, sizeof(float) * np);
  assert_memory_equal(oa, ob, sizeof(float) * no);
  assert_memory_not_equal(pa, pc, sizeof(float) * np);

  /* Roll back to the commit after step 10; set_state writes what get_state read. */
  assert_int_equal(trainer_rollback(a), DRV_OK);
  assert_int_equal(trainer_get_state(a, pa, oa), DRV_OK);
  assert_memory_equal(pa, pc, sizeof(float) * np);
  assert_memory_equal(oa, oc, sizeof(float) * no);
  assert_int_equal(trainer_set_state(b, pc, oc), DRV_OK);
  assert_int_equal(trainer_get_state(b, pb, ob), DRV_OK);
  assert_memory_equal(pb, pc, sizeof(float) * np);
  assert_memory_equal(ob, oc, sizeof(float) * no);
  assert_int_equal(trainer_step_finish(a, NULL, NULL), DRV_ERR_INVALID); /* none running */

  free(pa);
  free(pb);
  free(oa);
  free(ob);
  free(pc);
  free(oc);
  trainer_destroy(&a);
  trainer_destroy(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lr_schedule),
      cmocka_unit_test(test_init_seeded),
      cmocka_unit_test(test_rank_slices_sum_to_batch),
      cmocka_unit_test(test_learns_sgd_relu),
      cmocka_unit_test(test_learns_adamw_gelu),
      cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_save_safetensors),
      cmocka_unit_test(test_pipeline_matches_single_calls),
  };
  return cmocka_run_group_tests_name("trainer", tests, NULL, NULL);
}
