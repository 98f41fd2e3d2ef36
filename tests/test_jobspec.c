/* test_jobspec.c: the job spec (common/jobspec.h): the examples load, defaults fill only
 * what was left out, every kind of mistake is refused with DRV_ERR_INVALID and a message
 * naming the key, the pre-scan refuses deep nesting in linear time and the limits hold,
 * `--set` overrides of each type work, and a dump parses back equal.
 * min_nodes and max_nodes default to the final nodes (after `--set nodes=`) unless written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/jobspec.h"

#ifndef DROVER_SOURCE_DIR
#define DROVER_SOURCE_DIR "."
#endif

/* The smallest valid spec: everything optional left out. */
static const char *const minimal =
    "name: t\n"
    "model:\n"
    "  type: mlp\n"
    "  hidden: [16]\n"
    "data:\n"
    "  format: synthetic\n"
    "train:\n"
    "  epochs: 1\n"
    "  global_batch: 8\n"
    "  optimizer:\n"
    "    type: sgd\n"
    "    lr: 0.1\n";

// --- Helpers ------------------------------------------------------------------------------

/* `base` with the first occurrence of `from` replaced by `to`. (heap) */
static char *subst(const char *base, const char *from, const char *to) {
  const char *at = strstr(base, from);
  assert_non_null(at);
  size_t pre = (size_t)(at - base), nfrom = strlen(from), nto = strlen(to);
  char *s = malloc(strlen(base) - nfrom + nto + 1);
  assert_non_null(s);
  memcpy(s, base, pre);
  memcpy(s + pre, to, nto);
  strcpy(s + pre + nto, at + nfrom);
  return s;
}

static jobspec_t *parse_ok(const char *yaml, const char *const *sets, int nset) {
  jobspec_t *spec = NULL;
  drv_result_t rc = jobspec_parse(yaml, strlen(yaml), "case.yaml", sets, nset, &spec);
  if (rc != DRV_OK) fail_msg("parse failed: %s\n--- yaml:\n%s", drv_last_error(), yaml);
  assert_non_null(spec);
  return spec;
}

/* Parsing must fail with DRV_ERR_INVALID, leave *out NULL, and say each of `needles`. */
static void expect_invalid(const char *yaml, const char *const *sets, int nset, ...) {
  jobspec_t *spec = (jobspec_t *)&spec; /* not NULL: the parser must clear it */
  drv_result_t rc = jobspec_parse(yaml, strlen(yaml), "case.yaml", sets, nset, &spec);
  if (rc != DRV_ERR_INVALID)
    fail_msg("expected DRV_ERR_INVALID, got %d (%s)\n--- yaml:\n%s", rc, drv_last_error(), yaml);
  assert_null(spec);
  const char *msg = drv_last_error();
  va_list ap;
  va_start(ap, nset);
  for (const char *needle; (needle = va_arg(ap, const char *));)
    if (!strstr(msg, needle)) fail_msg("message \"%s\" lacks \"%s\"", msg, needle);
  va_end(ap);
}

/* The same, for a variant of `minimal` with `from` replaced by `to`. */
#define EXPECT_SUBST(from, to, ...)                               \
  do {                                                            \
    char *y_ = subst(minimal, (from), (to));                      \
    expect_invalid(y_, NULL, 0, __VA_ARGS__, (const char *)NULL); \
    free(y_);                                                     \
  } while (0)

#define EXPECT_SET(set, ...)                                            \
  do {                                                                  \
    const char *sets_[] = {(set)};                                      \
    expect_invalid(minimal, sets_, 1, __VA_ARGS__, (const char *)NULL); \
  } while (0)

static void assert_str_eq_or_null(const char *a, const char *b) {
  if (!a || !b)
    assert_ptr_equal(a, b);
  else
    assert_string_equal(a, b);
}

static void assert_split_eq(const spec_split_t *a, const spec_split_t *b) {
  if (!a || !b) {
    assert_ptr_equal(a, b);
    return;
  }
  assert_str_eq_or_null(a->images, b->images);
  assert_str_eq_or_null(a->labels, b->labels);
}

/* Every field equal, floats bit for bit. */
static void assert_spec_eq(const jobspec_t *a, const jobspec_t *b) {
  assert_str_eq_or_null(a->name, b->name);
  assert_string_equal(a->target, b->target);
  assert_int_equal(a->nodes, b->nodes);
  assert_int_equal(a->min_nodes, b->min_nodes);
  assert_int_equal(a->max_nodes, b->max_nodes);
  assert_int_equal(a->max_restarts, b->max_restarts);
  assert_int_equal(a->rejoin_timeout_s, b->rejoin_timeout_s);
  assert_int_equal(a->priority, b->priority);
  assert_int_equal(a->max_runtime_s, b->max_runtime_s);
  assert_int_equal(a->resources.cpus_per_worker, b->resources.cpus_per_worker);
  assert_int_equal(a->resources.memory_mb, b->resources.memory_mb);
  assert_int_equal(a->resources.gpus_per_worker, b->resources.gpus_per_worker);
  assert_str_eq_or_null(a->model.type, b->model.type);
  assert_int_equal(a->model.hidden_count, b->model.hidden_count);
  for (uint32_t i = 0; i < a->model.hidden_count; i++)
    assert_int_equal(a->model.hidden[i], b->model.hidden[i]);
  assert_int_equal(a->model.activation, b->model.activation);
  assert_int_equal(a->data.format, b->data.format);
  assert_split_eq(a->data.train, b->data.train);
  assert_split_eq(a->data.test, b->data.test);
  assert_non_null(a->data.synthetic);
  assert_non_null(b->data.synthetic);
  assert_memory_equal(a->data.synthetic, b->data.synthetic, sizeof(spec_synthetic_t));
  assert_int_equal(a->train.epochs, b->train.epochs);
  assert_int_equal(a->train.global_batch, b->train.global_batch);
  assert_int_equal(a->train.max_steps, b->train.max_steps);
  assert_true(a->train.seed == b->train.seed);
  assert_int_equal(a->train.commit_every, b->train.commit_every);
  assert_int_equal(a->train.checkpoint_every, b->train.checkpoint_every);
  assert_int_equal(a->train.keep_checkpoints, b->train.keep_checkpoints);
  assert_memory_equal(&a->train.optimizer, &b->train.optimizer, sizeof a->train.optimizer);
  assert_memory_equal(&a->train.lr_schedule, &b->train.lr_schedule, sizeof a->train.lr_schedule);
  assert_str_eq_or_null(a->run_dir, b->run_dir);
}

/* dump → parse → equal; and dumping the copy gives the same text. */
static void assert_round_trip(const jobspec_t *spec) {
  char *text = NULL, *again = NULL;
  size_t len = 0, len2 = 0;
  assert_int_equal(jobspec_dump(spec, &text, &len), DRV_OK);
  assert_non_null(text);
  assert_int_equal(strlen(text), len);
  jobspec_t *copy = NULL;
  if (jobspec_parse(text, len, "dump", NULL, 0, &copy) != DRV_OK)
    fail_msg("dump does not parse: %s\n--- dump:\n%s", drv_last_error(), text);
  assert_spec_eq(spec, copy);
  assert_int_equal(jobspec_dump(copy, &again, &len2), DRV_OK);
  assert_string_equal(text, again);
  free(again);
  free(text);
  jobspec_destroy(&copy);
  assert_null(copy);
}

// --- Examples -----------------------------------------------------------------------------

static void test_example_fashion_mnist(void **state) {
  jobspec_t *spec = NULL;
  const char *path = DROVER_SOURCE_DIR "/examples/fashion-mnist.yaml";
  if (jobspec_load(path, NULL, 0, &spec) != DRV_OK) fail_msg("%s", drv_last_error());
  assert_string_equal(spec->name, "fashion-mnist");
  assert_string_equal(spec->target, "local");
  assert_int_equal(spec->nodes, 2);
  assert_int_equal(spec->min_nodes, 2); /* not written: nodes */
  assert_int_equal(spec->max_nodes, 2);
  assert_string_equal(spec->model.type, "mlp");
  assert_int_equal(spec->model.hidden_count, 2);
  assert_int_equal(spec->model.hidden[0], 256);
  assert_int_equal(spec->model.hidden[1], 128);
  assert_int_equal(spec->model.activation, SPEC_ACT_RELU);
  assert_int_equal(spec->data.format, SPEC_DATA_IDX);
  assert_non_null(spec->data.train);
  assert_non_null(spec->data.test);
  assert_string_equal(spec->data.train->images,
                      "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  assert_string_equal(spec->data.train->labels,
                      "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
  assert_string_equal(spec->data.test->images,
                      "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
  assert_string_equal(spec->data.test->labels,
                      "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");
  assert_non_null(spec->data.synthetic); /* always set, even for idx */
  assert_int_equal(spec->train.epochs, 5);
  assert_int_equal(spec->train.global_batch, 128);
  assert_true(spec->train.seed == 42);
  assert_int_equal(spec->train.optimizer.type, SPEC_OPT_SGD);
  assert_true(spec->train.optimizer.lr == 0.1f);
  assert_true(spec->train.optimizer.momentum == 0.9f);
  assert_true(spec->train.optimizer.weight_decay == 0.0005f);
  assert_int_equal(spec->train.lr_schedule.type, SPEC_LR_COSINE);
  assert_int_equal(spec->train.lr_schedule.warmup_steps, 100);
  assert_string_equal(spec->run_dir, "runs");
  assert_round_trip(spec);
  jobspec_destroy(&spec);
  assert_null(spec);
  jobspec_destroy(&spec); /* NULL-safe */
  jobspec_destroy(NULL);
}

static void test_example_synthetic(void **state) {
  jobspec_t *spec = NULL;
  const char *path = DROVER_SOURCE_DIR "/examples/synthetic.yaml";
  if (jobspec_load(path, NULL, 0, &spec) != DRV_OK) fail_msg("%s", drv_last_error());
  assert_int_equal(spec->data.format, SPEC_DATA_SYNTHETIC);
  assert_null(spec->data.train);
  assert_null(spec->data.test);
  assert_int_equal(spec->data.synthetic->train_samples, 60000);
  assert_int_equal(spec->data.synthetic->test_samples, 10000);
  assert_int_equal(spec->data.synthetic->features, 784);
  assert_int_equal(spec->data.synthetic->classes, 10);
  assert_int_equal(spec->model.hidden_count, 2);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
}

static void test_example_gpu(void **state) {
  jobspec_t *spec = NULL;
  const char *path = DROVER_SOURCE_DIR "/examples/fashion-mnist-gpu.yaml";
  if (jobspec_load(path, NULL, 0, &spec) != DRV_OK) fail_msg("%s", drv_last_error());
  assert_int_equal(spec->train.backend, SPEC_BACKEND_CUDA);
  assert_int_equal(spec->train.precision, SPEC_PREC_BF16);
  assert_int_equal(spec->train.allreduce_bucket_mb, 25);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
}

static void test_load_missing_file(void **state) {
  jobspec_t *spec = NULL;
  assert_int_equal(jobspec_load("/nonexistent/spec.yaml", NULL, 0, &spec), DRV_ERR_SYS);
  assert_null(spec);
  assert_non_null(strstr(drv_last_error(), "/nonexistent/spec.yaml"));
}

// --- Defaults -----------------------------------------------------------------------------

static void test_defaults_filled(void **state) {
  jobspec_t *spec = parse_ok(minimal, NULL, 0);
  assert_string_equal(spec->target, "local");
  assert_int_equal(spec->nodes, 1);
  assert_int_equal(spec->min_nodes, 1);
  assert_int_equal(spec->max_nodes, 1);
  assert_int_equal(spec->max_restarts, 3);
  assert_int_equal(spec->rejoin_timeout_s, 60);
  assert_int_equal(spec->priority, 0);
  assert_int_equal(spec->max_runtime_s, 0);
  assert_int_equal(spec->resources.cpus_per_worker, 0);
  assert_int_equal(spec->resources.memory_mb, 0);
  assert_int_equal(spec->resources.gpus_per_worker, 0);
  assert_int_equal(spec->model.activation, SPEC_ACT_RELU);
  assert_non_null(spec->data.synthetic);
  assert_int_equal(spec->data.synthetic->train_samples, 60000);
  assert_int_equal(spec->data.synthetic->test_samples, 10000);
  assert_int_equal(spec->data.synthetic->features, 784);
  assert_int_equal(spec->data.synthetic->classes, 10);
  assert_true(spec->data.synthetic->seed == 1);
  assert_int_equal(spec->train.max_steps, 0);
  assert_true(spec->train.seed == 42);
  assert_int_equal(spec->train.commit_every, 50);
  assert_int_equal(spec->train.checkpoint_every, 0);
  assert_int_equal(spec->train.keep_checkpoints, 3);
  assert_true(spec->train.optimizer.momentum == 0.9f);
  assert_true(spec->train.optimizer.weight_decay == 0.0f);
  assert_true(spec->train.optimizer.beta1 == 0.9f);
  assert_true(spec->train.optimizer.beta2 == 0.999f);
  assert_true(spec->train.optimizer.eps == 1e-8f);
  assert_int_equal(spec->train.lr_schedule.type, SPEC_LR_COSINE);
  assert_int_equal(spec->train.lr_schedule.warmup_steps, 0);
  assert_true(spec->train.lr_schedule.lr_min == 0.0f);
  assert_string_equal(spec->run_dir, "runs");
  assert_int_equal(spec->train.backend, SPEC_BACKEND_AUTO);
  assert_int_equal(spec->train.precision, SPEC_PREC_FP32);
  assert_int_equal(spec->train.allreduce_dtype, SPEC_DTYPE_FP32);
  assert_int_equal(spec->train.allreduce_bucket_mb, 25);
  assert_int_equal(spec->train.cuda_graphs, SPEC_AUTO);
  jobspec_destroy(&spec);

  /* No hidden layers at all is a valid (linear) model. */
  char *y = subst(minimal, "  hidden: [16]\n", "");
  spec = parse_ok(y, NULL, 0);
  assert_int_equal(spec->model.hidden_count, 0);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
  free(y);
}

static void test_explicit_zeros_stay(void **state) {
  const char *yaml =
      "name: zeros\n"
      "target: local\n"
      "model: {type: mlp, hidden: [8], activation: relu}\n"
      "data:\n"
      "  format: synthetic\n"
      "  synthetic: {seed: 0, classes: 3}\n"
      "train:\n"
      "  epochs: 1\n"
      "  global_batch: 4\n"
      "  seed: 0\n"
      "  optimizer: {type: adamw, lr: 0.001, momentum: 0, beta1: 0, beta2: 0}\n"
      "  lr_schedule: {type: constant}\n";
  jobspec_t *spec = parse_ok(yaml, NULL, 0);
  assert_true(spec->train.seed == 0);
  assert_true(spec->train.optimizer.momentum == 0.0f);
  assert_true(spec->train.optimizer.beta1 == 0.0f);
  assert_true(spec->train.optimizer.beta2 == 0.0f);
  assert_true(spec->train.optimizer.eps == 1e-8f); /* left out: defaulted */
  assert_int_equal(spec->train.lr_schedule.type, SPEC_LR_CONSTANT);
  assert_true(spec->data.synthetic->seed == 0);
  assert_int_equal(spec->data.synthetic->classes, 3);
  assert_int_equal(spec->data.synthetic->features, 784); /* left out: defaulted */
  assert_round_trip(spec);
  jobspec_destroy(&spec);

  /* The same through --set: an override counts as written. */
  const char *sets[] = {"train.optimizer.momentum=0", "train.seed=0",
                        "train.lr_schedule.type=constant", "data.synthetic.seed=0"};
  spec = parse_ok(minimal, sets, 4);
  assert_true(spec->train.optimizer.momentum == 0.0f);
  assert_true(spec->train.seed == 0);
  assert_int_equal(spec->train.lr_schedule.type, SPEC_LR_CONSTANT);
  assert_true(spec->data.synthetic->seed == 0);
  assert_int_equal(spec->data.synthetic->train_samples, 60000);
  jobspec_destroy(&spec);
}

/* min_nodes and max_nodes follow nodes (from the text, its default, or `--set nodes=`)
 * unless they were written themselves, in the text or by an override. */
static void test_defaults_follow_nodes(void **state) {
  char *y = subst(minimal, "name: t\n", "name: t\nnodes: 4\n");
  jobspec_t *spec = parse_ok(y, NULL, 0);
  assert_int_equal(spec->nodes, 4);
  assert_int_equal(spec->min_nodes, 4);
  assert_int_equal(spec->max_nodes, 4);
  assert_round_trip(spec);
  jobspec_destroy(&spec);

  /* --set nodes= moves both, whether nodes was written (4 -> 2) or defaulted (1 -> 8). */
  const char *two[] = {"nodes=2"};
  spec = parse_ok(y, two, 1);
  assert_int_equal(spec->nodes, 2);
  assert_int_equal(spec->min_nodes, 2);
  assert_int_equal(spec->max_nodes, 2);
  jobspec_destroy(&spec);
  const char *eight[] = {"nodes=8"};
  spec = parse_ok(minimal, eight, 1);
  assert_int_equal(spec->min_nodes, 8);
  assert_int_equal(spec->max_nodes, 8);
  jobspec_destroy(&spec);
  free(y);

  /* Written bounds stay where they are; the other one still follows nodes. */
  y = subst(minimal, "name: t\n", "name: t\nnodes: 2\nmin_nodes: 1\n");
  const char *four[] = {"nodes=4"};
  spec = parse_ok(y, four, 1);
  assert_int_equal(spec->nodes, 4);
  assert_int_equal(spec->min_nodes, 1);
  assert_int_equal(spec->max_nodes, 4);
  jobspec_destroy(&spec);
  free(y);
  y = subst(minimal, "name: t\n", "name: t\nmax_nodes: 6\n");
  spec = parse_ok(y, four, 1);
  assert_int_equal(spec->min_nodes, 4);
  assert_int_equal(spec->max_nodes, 6);
  jobspec_destroy(&spec);
  /* ... so a written max_nodes below the new nodes is refused, naming it. */
  const char *seven[] = {"nodes=7"};
  expect_invalid(y, seven, 1, "max_nodes", "smaller than nodes (7)", (const char *)NULL);
  free(y);

  /* An override of a bound counts as written, whatever order the overrides come in. */
  const char *sets[] = {"max_nodes=8", "nodes=3", "min_nodes=2"};
  spec = parse_ok(minimal, sets, 3);
  assert_int_equal(spec->nodes, 3);
  assert_int_equal(spec->min_nodes, 2);
  assert_int_equal(spec->max_nodes, 8);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
}

/* Every new key written in the text, with values unlike its default. */
static void test_elastic_keys_explicit(void **state) {
  const char *yaml =
      "name: elastic\n"
      "nodes: 4\n"
      "min_nodes: 2\n"
      "max_nodes: 8\n"
      "max_restarts: 0\n"
      "rejoin_timeout: 0\n"
      "model: {type: mlp, hidden: [8]}\n"
      "data: {format: synthetic}\n"
      "train:\n"
      "  epochs: 1\n"
      "  global_batch: 8\n"
      "  commit_every: 0\n"
      "  checkpoint_every: 200\n"
      "  keep_checkpoints: 1\n"
      "  optimizer: {type: sgd, lr: 0.1}\n";
  jobspec_t *spec = parse_ok(yaml, NULL, 0);
  assert_int_equal(spec->nodes, 4);
  assert_int_equal(spec->min_nodes, 2);
  assert_int_equal(spec->max_nodes, 8); /* = global_batch: allowed */
  assert_int_equal(spec->max_restarts, 0);
  assert_int_equal(spec->rejoin_timeout_s, 0);
  assert_int_equal(spec->train.commit_every, 0); /* explicit zeros stay */
  assert_int_equal(spec->train.checkpoint_every, 200);
  assert_int_equal(spec->train.keep_checkpoints, 1);
  assert_round_trip(spec);
  jobspec_destroy(&spec);

  /* The largest values a uint32 holds. */
  const char *big[] = {"max_restarts=4294967295", "rejoin_timeout=4294967295",
                       "train.commit_every=4294967295", "train.checkpoint_every=4294967295",
                       "train.keep_checkpoints=4294967295"};
  spec = parse_ok(minimal, big, (int)DRV_ARRAY_LEN(big));
  assert_int_equal(spec->max_restarts, UINT32_MAX);
  assert_int_equal(spec->rejoin_timeout_s, UINT32_MAX);
  assert_int_equal(spec->train.commit_every, UINT32_MAX);
  assert_int_equal(spec->train.checkpoint_every, UINT32_MAX);
  assert_int_equal(spec->train.keep_checkpoints, UINT32_MAX);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
}

// --- Errors from the text -----------------------------------------------------------------

static void test_error_unknown_key(void **state) {
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  epochz: 3\n", "case.yaml", "train.epochz",
               "unknown key");
  EXPECT_SUBST("name: t\n", "name: t\ncolour: red\n", "colour", "unknown key");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n    nesterov: 1\n", "train.optimizer.nesterov");
}

static void test_error_wrong_type(void **state) {
  EXPECT_SUBST("epochs: 1", "epochs: many", "case.yaml:8", "train.epochs", "unsigned integer");
  EXPECT_SUBST("epochs: 1", "epochs: 5x", "train.epochs", "5x"); /* libcyaml alone takes 5 */
  EXPECT_SUBST("epochs: 1", "epochs: 010", "train.epochs");      /* not octal 8, not 10 */
  EXPECT_SUBST("epochs: 1", "epochs: -1", "train.epochs");
  EXPECT_SUBST("epochs: 1", "epochs: 1.5", "train.epochs");
  EXPECT_SUBST("global_batch: 8", "global_batch: 4294967296", "train.global_batch");
  EXPECT_SUBST("lr: 0.1", "lr: fast", "train.optimizer.lr", "number");
  EXPECT_SUBST("lr: 0.1", "lr: 0.1.2", "train.optimizer.lr");
  EXPECT_SUBST("lr: 0.1", "lr: nan", "train.optimizer.lr");
  EXPECT_SUBST("lr: 0.1", "lr: inf", "train.optimizer.lr");
  EXPECT_SUBST("hidden: [16]", "hidden: [16, big]", "model.hidden");
  EXPECT_SUBST("hidden: [16]", "hidden: 16", "model.hidden");
  EXPECT_SUBST("  type: mlp\n", "  type: [mlp]\n", "model.type");
  EXPECT_SUBST("  format: synthetic\n", "  format: synthetic\n  train: /data\n", "data.train");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  epochs: 2\n", "train.epochs", "twice");
  /* The new keys are read as strictly as the old ones. */
  EXPECT_SUBST("name: t\n", "name: t\nmin_nodes: -1\n", "case.yaml:2", "min_nodes");
  EXPECT_SUBST("name: t\n", "name: t\nmax_nodes: 2x\n", "max_nodes", "2x");
  EXPECT_SUBST("name: t\n", "name: t\nmax_restarts: 010\n", "max_restarts");
  EXPECT_SUBST("name: t\n", "name: t\nrejoin_timeout: 60s\n", "rejoin_timeout", "60s");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  commit_every: 1.5\n", "train.commit_every");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  checkpoint_every: often\n",
               "train.checkpoint_every", "unsigned integer");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  keep_checkpoints: 4294967296\n",
               "train.keep_checkpoints");
}

static void test_error_missing_required(void **state) {
  EXPECT_SUBST("name: t\n", "", "name: required key missing");
  EXPECT_SUBST("    lr: 0.1\n", "", "train.optimizer.lr: required key missing");
  EXPECT_SUBST("  global_batch: 8\n", "", "train.global_batch: required key missing");
  EXPECT_SUBST("  type: mlp\n", "", "model.type: required key missing");
  EXPECT_SUBST("  format: synthetic\n", "  format: idx\n  train: {images: a}\n",
               "data.train.labels: required key missing");
}

static void test_error_bad_enum(void **state) {
  EXPECT_SUBST("name: t\n", "name: t\ntarget: ../up\n", "target", "'../up' is not a target name");
  EXPECT_SUBST("name: t\n", "name: t\ntarget: [a]\n", "target"); /* strict: a name */
  EXPECT_SUBST("name: t\n", "name: t\ntarget: a-name-longer-than-thirty-two-bytes\n",
               "target", "1 to 32");
  EXPECT_SUBST("  hidden: [16]\n", "  hidden: [16]\n  activation: tanh\n", "model.activation");
  EXPECT_SUBST("format: synthetic", "format: csv", "data.format");
  EXPECT_SUBST("type: sgd", "type: lamb", "train.optimizer.type");
}

static void test_error_syntax(void **state) {
  /* Line 8 opens a flow sequence that never closes. */
  EXPECT_SUBST("  epochs: 1\n", "  epochs: [1\n", "case.yaml:", "invalid YAML");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n bad: indent\n", "case.yaml:9", "invalid YAML");
  expect_invalid("", NULL, 0, "case.yaml", "empty", (const char *)NULL);
  expect_invalid("- 1\n- 2\n", NULL, 0, "case.yaml", "mapping", (const char *)NULL);
  expect_invalid("just a string\n", NULL, 0, "case.yaml", "mapping", (const char *)NULL);
  /* Anchors and aliases are refused (a spec has no use for them; they allow bombs). */
  EXPECT_SUBST("name: t\n", "name: &n t\nrun_dir: *n\n", "alias");
}

/* A job name becomes part of a directory name: [A-Za-z0-9._-], 1..64, no leading dot. A
 * run_dir has no ".." component. Errors name the key. */
static void test_names_and_run_dir(void **state) {
  static const char *bad[] = {
      "../../victim",
      "a/b",
      ".hidden",
      "..",
      "a b",
      "tab\\there",
      "caf\\u00e9",
      "x%s",
      "0123456789012345678901234567890123456789012345678901234567890123X" /* 65 */};
  for (size_t k = 0; k < DRV_ARRAY_LEN(bad); k++) {
    char line[160];
    snprintf(line, sizeof line, "name: \"%s\"\n", bad[k]);
    EXPECT_SUBST("name: t\n", line, "case.yaml: name", "is not a job name");
  }
  const char *sets[] = {"name=a/../../b"};
  expect_invalid(minimal, sets, 1, "name", "not a job name", (const char *)NULL);
  static const char *good[] = {"a", "A.b_c-9", "x..y",
                               "0123456789012345678901234567890123456789012345678901234567890123"};
  for (size_t k = 0; k < DRV_ARRAY_LEN(good); k++) {
    char line[160];
    snprintf(line, sizeof line, "name: \"%s\"\n", good[k]);
    char *y = subst(minimal, "name: t\n", line);
    jobspec_t *spec = parse_ok(y, NULL, 0);
    assert_string_equal(spec->name, good[k]);
    jobspec_destroy(&spec);
    free(y);
  }
  EXPECT_SUBST("name: t\n", "name: t\nrun_dir: /srv/runs/../victim\n", "run_dir", "'..'");
  EXPECT_SUBST("name: t\n", "name: t\nrun_dir: ../runs\n", "run_dir", "'..'");
  EXPECT_SUBST("name: t\n", "name: t\nrun_dir: /srv/..\n", "run_dir", "'..'");
  char *y = subst(minimal, "name: t\n", "name: t\nrun_dir: /srv/..runs/a..\n"); /* no ".." part */
  jobspec_t *spec = parse_ok(y, NULL, 0);
  free(y);
  /* What the coordinator asks on top: absolute and normalised. */
  assert_int_equal(jobspec_check_submitted(spec, "submitted spec"), DRV_OK);
  static const char *unclean[] = {"/srv//runs", "/srv/./runs", "/srv/runs/", "/srv/runs/."};
  for (size_t k = 0; k < DRV_ARRAY_LEN(unclean); k++) {
    free(spec->run_dir);
    spec->run_dir = strdup(unclean[k]);
    assert_int_equal(jobspec_check_submitted(spec, "submitted spec"), DRV_ERR_INVALID);
    assert_non_null(strstr(drv_last_error(), "submitted spec: run_dir"));
    assert_non_null(strstr(drv_last_error(), "not a normalised path"));
  }
  free(spec->run_dir);
  spec->run_dir = strdup("runs");
  assert_int_equal(jobspec_check_submitted(spec, "submitted spec"), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "run_dir: must be an absolute path"));
  /* drover submit tidies what it makes absolute. */
  free(spec->run_dir);
  spec->run_dir = strdup("./a//b/./c/");
  assert_int_equal(jobspec_absolutize(spec, "/home/u/"), DRV_OK);
  assert_string_equal(spec->run_dir, "/home/u/a/b/c");
  assert_int_equal(jobspec_check_submitted(spec, "submitted spec"), DRV_OK);
  jobspec_destroy(&spec);
}

static void test_error_semantic(void **state) {
  EXPECT_SUBST("name: t", "name: \"\"", "name", "empty");
  EXPECT_SUBST("name: t\n", "name: t\nnodes: 0\n", "nodes", "at least 1");
  EXPECT_SUBST("type: mlp", "type: cnn", "model.type", "cnn");
  EXPECT_SUBST("hidden: [16]", "hidden: [1, 2, 3, 4, 5, 6, 7, 8, 9]", "model.hidden");
  EXPECT_SUBST("hidden: [16]", "hidden: [16, 0]", "model.hidden[1]");
  EXPECT_SUBST("epochs: 1", "epochs: 0", "train.epochs");
  EXPECT_SUBST("global_batch: 8", "global_batch: 0", "train.global_batch");
  EXPECT_SUBST("lr: 0.1", "lr: 0", "train.optimizer.lr", "> 0");
  EXPECT_SUBST("lr: 0.1", "lr: -0.5", "train.optimizer.lr");
  EXPECT_SUBST("format: synthetic", "format: idx",
               "data.train.images: required when data.format is idx");
  EXPECT_SUBST("format: synthetic", "format: idx\n  train: {images: a, labels: b}",
               "data.test.images: required when data.format is idx");
  EXPECT_SUBST("format: synthetic", "format: synthetic\n  synthetic: {features: 0}",
               "data.synthetic.features");
  EXPECT_SUBST("format: synthetic", "format: synthetic\n  synthetic: {train_samples: 0}",
               "data.synthetic.train_samples");
  EXPECT_SUBST("format: synthetic", "format: synthetic\n  synthetic: {test_samples: 0}",
               "data.synthetic.test_samples");
  EXPECT_SUBST("format: synthetic", "format: synthetic\n  synthetic: {classes: 1}",
               "data.synthetic.classes");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n    beta1: 1.0\n", "train.optimizer.beta1");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n    beta2: -0.1\n", "train.optimizer.beta2");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n    momentum: 1.5\n", "train.optimizer.momentum");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n    weight_decay: -1\n",
               "train.optimizer.weight_decay");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n    eps: 0\n", "train.optimizer.eps");
  EXPECT_SUBST("    lr: 0.1\n", "    lr: 0.1\n  lr_schedule: {lr_min: 0.5}\n",
               "train.lr_schedule.lr_min");
  EXPECT_SUBST("name: t\n", "name: t\nnodes: 16\n", "train.global_batch", "nodes");
  EXPECT_SUBST("name: t\n", "name: t\nrun_dir: \"\"\n", "run_dir");
  /* 1 <= min_nodes <= nodes <= max_nodes <= train.global_batch; keep_checkpoints >= 1. */
  EXPECT_SUBST("name: t\n", "name: t\nmin_nodes: 0\n", "case.yaml: min_nodes", "at least 1");
  EXPECT_SUBST("name: t\n", "name: t\nnodes: 2\nmin_nodes: 3\n", "case.yaml: min_nodes",
               "larger than nodes (2)");
  EXPECT_SUBST("name: t\n", "name: t\nnodes: 3\nmax_nodes: 2\n", "case.yaml: max_nodes",
               "smaller than nodes (3)");
  EXPECT_SUBST("name: t\n", "name: t\nmax_nodes: 9\n", "case.yaml: max_nodes",
               "train.global_batch (8)");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  keep_checkpoints: 0\n",
               "case.yaml: train.keep_checkpoints", "at least 1");
  /* workers_per_node: at most 64, and a world (max_nodes x it) of a sample per worker and
   * at most 256 workers. */
  EXPECT_SUBST("name: t\n", "name: t\nworkers_per_node: 65\n", "case.yaml: workers_per_node",
               "65 is more than 64");
  EXPECT_SUBST("name: t\n", "name: t\nnodes: 3\nworkers_per_node: 3\n",
               "case.yaml: train.global_batch", "nodes x workers_per_node (9)");
  EXPECT_SUBST("name: t\n", "name: t\nnodes: 2\nmax_nodes: 3\nworkers_per_node: 4\n",
               "case.yaml: max_nodes", "3 x workers_per_node 4", "train.global_batch (8)");
  {
    char *big = subst(minimal, "  global_batch: 8\n", "  global_batch: 4096\n");
    char *y = subst(big, "name: t\n", "name: t\nnodes: 100\nworkers_per_node: 3\n");
    expect_invalid(y, NULL, 0, "case.yaml: nodes", "100 x workers_per_node 3 is more than 256",
                   (const char *)NULL);
    free(y);
    free(big);
  }
  /* The GPU keys: precision and sum type need a GPU, buckets 1..4096 MB. */
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  backend: cpu\n  precision: bf16\n",
               "case.yaml: train.precision", "bf16 needs a GPU");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  backend: cpu\n  precision: tf32\n",
               "case.yaml: train.precision", "tf32 needs a GPU");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  backend: cpu\n  allreduce_dtype: bf16\n",
               "case.yaml: train.allreduce_dtype", "needs a GPU");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  allreduce_bucket_mb: 0\n",
               "case.yaml: train.allreduce_bucket_mb", "[1, 4096]");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  precision: fp16\n", "train.precision", "fp16");
  EXPECT_SUBST("  epochs: 1\n", "  epochs: 1\n  cuda_graphs: yes\n", "train.cuda_graphs");
}

// --- The pre-scan and the limits ---------------------------------------------------------

/* text repeated n times, then `tail`. (heap) */
static char *repeat(const char *head, const char *text, size_t n, const char *tail) {
  size_t h = strlen(head), t = strlen(text), e = strlen(tail);
  char *s = malloc(h + t * n + e + 1), *p = s;
  assert_non_null(s);
  memcpy(p, head, h), p += h;
  for (size_t i = 0; i < n; i++) memcpy(p, text, t), p += t;
  memcpy(p, tail, e + 1);
  return s;
}

static double ms_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (t1.tv_sec - t0->tv_sec) * 1e3 + (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Deep flow nesting, the text libyaml's scanner is quadratic in, is refused by the linear
 * pre-scan, naming the limit and the line; the time it takes is printed for a few sizes
 * (it grows with the text, not with its square), never asserted. */
static void test_prescan_flow_nesting(void **state) {
  (void)state;
  char *deep = repeat("name: t\nmodel: ", "[", 17, "]");
  expect_invalid(deep, NULL, 0, "case.yaml:2: nesting deeper than 16 levels", (const char *)NULL);
  free(deep);
  deep = repeat("--- ", "[", 17, "]"); /* after a document marker */
  expect_invalid(deep, NULL, 0, "case.yaml:1: nesting deeper than 16", (const char *)NULL);
  free(deep);
  deep = repeat("name: t\nmodel: ", "{a: ", 17, "1}");
  expect_invalid(deep, NULL, 0, "case.yaml:2: nesting deeper than 16", (const char *)NULL);
  free(deep);
  for (size_t kb = 15; kb <= 60; kb *= 2) {
    size_t n = kb * 512; /* n '[' and n ']': kb KB */
    char *open = repeat("name: ", "[", n, ""), *text = repeat(open, "]", n, "\n");
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_invalid(text, NULL, 0, "case.yaml:1: nesting deeper than 16", (const char *)NULL);
    print_message("%zu KB of nested '[': refused in %.3f ms\n", kb, ms_since(&t0));
    free(open);
    free(text);
  }
  /* The costliest text the pre-scan lets through to libyaml: 15 levels holding as many
   * tokens as 64 KB can; its cost is libyaml's tokens times its nesting, now at most 16. */
  char *head = repeat("name: t\nx: ", "[", 15, ""), *body = repeat(head, "a,", 32000, "");
  char *worst = repeat(body, "]", 15, "\n");
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  expect_invalid(worst, NULL, 0, "case.yaml", (const char *)NULL);
  print_message(
      "%zu KB at 15 levels, 32000 tokens: through the pre-scan, parsed and refused in "
      "%.1f ms\n",
      strlen(worst) / 1024, ms_since(&t1));
  free(head);
  free(body);
  free(worst);
  /* The 200 KB one of the report: refused by its size before anything reads it. */
  char *open = repeat("name: ", "[", 100000, ""), *big = repeat(open, "]", 100000, "\n");
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  expect_invalid(big, NULL, 0, "200007 bytes; a job spec is at most 65536 (DROVER_MAX_SPEC_BYTES)",
                 (const char *)NULL);
  print_message("200 KB of nested '[': refused in %.3f ms\n", ms_since(&t0));
  free(open);
  free(big);
}

/* Block nesting counts too: by indentation, and by the compact "- - - x" form. */
static void test_prescan_block_nesting(void **state) {
  (void)state;
  char *compact = repeat("name: t\nmodel:\n", "- ", 16, "x\n");
  expect_invalid(compact, NULL, 0, "case.yaml:3: nesting deeper than 16", (const char *)NULL);
  free(compact);
  char *text = strdup("name: t\n"), key[64];
  for (int i = 0; i < 17; i++) {
    snprintf(key, sizeof key, "%*sk%d:\n", 2 * i, "", i);
    char *more = repeat(text, key, 1, "");
    free(text);
    text = more;
  }
  expect_invalid(text, NULL, 0, "case.yaml:18: nesting deeper than 16", (const char *)NULL);
  free(text);
  /* block and flow together: 9 indented levels, then 9 brackets */
  char *mixed = strdup("");
  for (int i = 0; i < 8; i++) {
    snprintf(key, sizeof key, "%*sk%d:\n", 2 * i, "", i);
    char *more = repeat(mixed, key, 1, "");
    free(mixed);
    mixed = more;
  }
  char *both = repeat(mixed, "[", 9, "\n"), *nine = repeat(mixed, "                k8: ", 1, "");
  free(both);
  both = repeat(nine, "[", 9, "\n"); /* 9 block levels, then the 8th bracket is the 17th */
  free(nine);
  expect_invalid(both, NULL, 0, "case.yaml:9: nesting deeper than 16", (const char *)NULL);
  free(mixed);
  free(both);
  /* Nesting that closes again is no deeper: 200 flow lists one after the other are fine
   * for the pre-scan (the schema then refuses the key). */
  char *many = repeat("name: t\nx: ", "[[1]], ", 100, "\n");
  expect_invalid(many, NULL, 0, "case.yaml:2", (const char *)NULL);
  assert_null(strstr(drv_last_error(), "nesting"));
  free(many);
}

/* Brackets in quoted scalars, comments and the middle of plain scalars open nothing; but
 * every '[' and '{' counts towards SPEC_MAX_FLOW wherever it is, so text the walk takes
 * for a quoted scalar when libyaml does not (a continuation line starting with a quote)
 * cannot hide a deep flow nesting from it. */
static void test_prescan_quotes_and_comments(void **state) {
  (void)state;
  char *ok = subst(minimal, "name: t\n",
                   "name: t  # [[[[[[[[[[[[[[[[[[\n"
                   "run_dir: \"/a[[[[[[[[[[[[[[[[[[b {{{{{{{{{{{{{{{{{{ \\\" [[\"\n"
                   "# {{{{{{{{{{{{{{{{{{{{{{{{{\n");
  jobspec_t *spec = parse_ok(ok, NULL, 0);
  assert_string_equal(spec->run_dir, "/a[[[[[[[[[[[[[[[[[[b {{{{{{{{{{{{{{{{{{ \" [[");
  jobspec_destroy(&spec);
  free(ok);
  ok = subst(minimal, "name: t\n", "name: t\nrun_dir: '/runs/[[[[[[[[[[[[[[[[[[[ it''s [[[['\n");
  spec = parse_ok(ok, NULL, 0);
  assert_string_equal(spec->run_dir, "/runs/[[[[[[[[[[[[[[[[[[[ it's [[[[");
  jobspec_destroy(&spec);
  free(ok);
  ok = repeat("--- # a document\n", minimal, 1, "...\n");
  spec = parse_ok(ok, NULL, 0);
  jobspec_destroy(&spec);
  free(ok);
  ok = subst(minimal, "name: t\n",
             "name: t\nrun_dir: /a[b[c[d[e[f[g[h[i[j[k[l[m[n[o[p[q[r[s[t 'u\n");
  spec = parse_ok(ok, NULL, 0);
  assert_string_equal(spec->run_dir, "/a[b[c[d[e[f[g[h[i[j[k[l[m[n[o[p[q[r[s[t 'u");
  jobspec_destroy(&spec);
  free(ok);
  /* A plain scalar continued on a line that starts with a quote: the walk takes the quote
   * for one, libyaml does not; the count of brackets still stops the nesting after it. */
  char *open = repeat("name: a\n  'b\nx: ", "[", 300, ""), *text = repeat(open, "]", 300, "\n");
  expect_invalid(text, NULL, 0, "case.yaml:3: more than 256 '[' and '{' (quoted or not)",
                 (const char *)NULL);
  free(open);
  free(text);
  char *quoted = repeat("name: \"", "[", 257, "\"\n");
  expect_invalid(quoted, NULL, 0, "more than 256 '[' and '{'", (const char *)NULL);
  free(quoted);
}

static void test_prescan_utf8(void **state) {
  (void)state;
  EXPECT_SUBST("  format: synthetic\n", "  format: synthetic\n# caf\xc3\n",
               "case.yaml:7: not valid UTF-8 (byte");
  EXPECT_SUBST("name: t", "name: t\xed\xa0\x80", "case.yaml:1: not valid UTF-8");
  char *ok = subst(minimal, "name: t\n", "name: t\nrun_dir: /caf\xc3\xa9-\xe2\x82\xac\n");
  jobspec_t *spec = parse_ok(ok, NULL, 0);
  assert_string_equal(spec->run_dir, "/caf\xc3\xa9-\xe2\x82\xac");
  jobspec_destroy(&spec);
  free(ok);
}

/* A spec that parses, but asks for more than the limits allow: jobspec_check_limits
 * refuses it saying `needle`. */
static void expect_limit(const char *yaml, const char *needle) {
  jobspec_t *spec = parse_ok(yaml, NULL, 0);
  drv_result_t rc = jobspec_check_limits(spec, "case.yaml");
  jobspec_destroy(&spec);
  if (rc != DRV_ERR_INVALID || !strstr(drv_last_error(), needle))
    fail_msg("expected a refusal saying \"%s\", got %d: \"%s\"\n--- yaml:\n%.300s", needle, rc,
             drv_last_error(), yaml);
}

#define EXPECT_LIMIT(from, to, needle)       \
  do {                                       \
    char *y_ = subst(minimal, (from), (to)); \
    expect_limit(y_, (needle));              \
    free(y_);                                \
  } while (0)

/* What one job may ask of the cluster (jobspec_check_limits): each limit names the key,
 * the value and the setting (defaults: DROVER_MAX_NODES 256, _EPOCHS 10000, _BATCH 65536,
 * _MODEL_BYTES and _DATA_BYTES 4 GiB, _PATH_BYTES 1024). */
static void test_limits(void **state) {
  (void)state;
  char *wide = subst(minimal, "global_batch: 8", "global_batch: 1024");
  char *nodes = subst(wide, "name: t\n", "name: t\nnodes: 257\n");
  expect_limit(nodes, "case.yaml: nodes: 257, more than DROVER_MAX_NODES (256)");
  free(nodes);
  nodes = subst(wide, "name: t\n", "name: t\nmax_nodes: 300\n");
  expect_limit(nodes, "case.yaml: max_nodes: 300, more than DROVER_MAX_NODES (256)");
  free(nodes);
  free(wide);
  EXPECT_LIMIT("epochs: 1", "epochs: 4294967295",
               "train.epochs: 4294967295, more than DROVER_MAX_EPOCHS (10000)");
  EXPECT_LIMIT("global_batch: 8", "global_batch: 65537",
               "train.global_batch: 65537, more than DROVER_MAX_BATCH (65536)");
  /* 784 -> 65536 -> 65536 -> 65536 -> 10: 35 GB of parameters */
  EXPECT_LIMIT("hidden: [16]", "hidden: [65536, 65536, 65536]",
               "model.hidden: 34568667176 bytes of parameters (4 per parameter), more than "
               "DROVER_MAX_MODEL_BYTES (4294967296)");
  EXPECT_LIMIT("format: synthetic", "format: synthetic\n  synthetic: {train_samples: 4000000}",
               "data.synthetic: 12575360000 bytes of samples (4 per feature), more than "
               "DROVER_MAX_DATA_BYTES (4294967296)");
  char *run = repeat("run_dir: /", "r", 1100, "\n"), *spec_text = subst(minimal, "name: t\n", "");
  char *with = repeat(spec_text, run, 1, "name: t\n");
  expect_limit(with, "run_dir: 1101 bytes, more than DROVER_MAX_PATH_BYTES (1024)");
  free(run);
  free(with);
  char *img = repeat("format: idx\n  train: {images: /", "i", 1500,
                     ", labels: /l}\n  test: {images: /a, labels: /b}");
  char *idx = subst(minimal, "format: synthetic", img);
  expect_limit(idx, "data.train.images: 1501 bytes, more than DROVER_MAX_PATH_BYTES");
  free(img);
  free(idx);
  free(spec_text);
  /* at the limits, accepted */
  char *at = subst(minimal, "global_batch: 8", "global_batch: 65536");
  char *at2 = subst(at, "epochs: 1", "epochs: 10000");
  char *at3 = subst(at2, "name: t\n", "name: t\nnodes: 256\n");
  jobspec_t *spec = parse_ok(at3, NULL, 0);
  assert_int_equal(spec->nodes, 256);
  assert_int_equal(jobspec_check_limits(spec, "case.yaml"), DRV_OK);
  jobspec_destroy(&spec);
  free(at);
  free(at2);
  free(at3);
  /* A spec already admitted is not held to them again: jobspec_parse alone (a worker's
   * assignment, a reloaded job) takes what the limits refuse. */
  char *many = subst(minimal, "epochs: 1", "epochs: 4294967295");
  spec = parse_ok(many, NULL, 0);
  assert_int_equal(spec->train.epochs, 4294967295u);
  jobspec_destroy(&spec);
  free(many);
}

// --- --set --------------------------------------------------------------------------------

static void test_set_each_kind(void **state) {
  const char *sets[] = {
      "train.epochs=7",                  /* uint32 */
      "train.seed=18446744073709551615", /* uint64, largest */
      "train.optimizer.lr=0.05",         /* float */
      "name=renamed",                    /* string */
      "run_dir= /tmp/runs ",             /* string, trimmed */
      "target=managed",                  /* enums by name */
      "train.optimizer.type=adamw",
      "model.activation=gelu",
      "model.hidden=[512,256]", /* int list */
      "nodes=2",
      "train.epochs=9", /* the last one wins */
  };
  jobspec_t *spec = parse_ok(minimal, sets, (int)DRV_ARRAY_LEN(sets));
  assert_int_equal(spec->train.epochs, 9);
  assert_true(spec->train.seed == UINT64_MAX);
  assert_true(spec->train.optimizer.lr == 0.05f);
  assert_string_equal(spec->name, "renamed");
  assert_string_equal(spec->run_dir, "/tmp/runs");
  assert_string_equal(spec->target, "managed");
  assert_int_equal(spec->train.optimizer.type, SPEC_OPT_ADAMW);
  assert_int_equal(spec->model.activation, SPEC_ACT_GELU);
  assert_int_equal(spec->model.hidden_count, 2);
  assert_int_equal(spec->model.hidden[0], 512);
  assert_int_equal(spec->model.hidden[1], 256);
  assert_int_equal(spec->nodes, 2);
  assert_round_trip(spec);
  jobspec_destroy(&spec);

  const char *lists[] = {"model.hidden=512, 256, 64"};
  spec = parse_ok(minimal, lists, 1);
  assert_int_equal(spec->model.hidden_count, 3);
  assert_int_equal(spec->model.hidden[2], 64);
  jobspec_destroy(&spec);

  const char *empty[] = {"model.hidden=[]"};
  spec = parse_ok(minimal, empty, 1);
  assert_int_equal(spec->model.hidden_count, 0);
  jobspec_destroy(&spec);
}

static void test_set_elastic_keys(void **state) {
  const char *sets[] = {"nodes=2",
                        "min_nodes=1",
                        "max_nodes=4",
                        "max_restarts=5",
                        "rejoin_timeout=90",
                        "train.commit_every=10",
                        "train.checkpoint_every=100",
                        "train.keep_checkpoints=2"};
  jobspec_t *spec = parse_ok(minimal, sets, (int)DRV_ARRAY_LEN(sets));
  assert_int_equal(spec->nodes, 2);
  assert_int_equal(spec->min_nodes, 1);
  assert_int_equal(spec->max_nodes, 4);
  assert_int_equal(spec->max_restarts, 5);
  assert_int_equal(spec->rejoin_timeout_s, 90);
  assert_int_equal(spec->train.commit_every, 10);
  assert_int_equal(spec->train.checkpoint_every, 100);
  assert_int_equal(spec->train.keep_checkpoints, 2);
  assert_round_trip(spec);
  jobspec_destroy(&spec);

  /* An override replaces what the text wrote. */
  char *y = subst(minimal, "  epochs: 1\n", "  epochs: 1\n  commit_every: 7\n");
  const char *zero[] = {"train.commit_every=0"};
  spec = parse_ok(y, zero, 1);
  assert_int_equal(spec->train.commit_every, 0);
  jobspec_destroy(&spec);
  free(y);

  /* Bad values, named with the --set that gave them. */
  EXPECT_SET("min_nodes=0", "min_nodes", "at least 1");
  EXPECT_SET("min_nodes=2", "min_nodes", "larger than nodes (1)");
  EXPECT_SET("max_nodes=9", "max_nodes", "train.global_batch (8)");
  EXPECT_SET("max_restarts=-1", "--set max_restarts=-1");
  EXPECT_SET("rejoin_timeout=1m", "--set rejoin_timeout=1m", "unsigned integer");
  EXPECT_SET("train.commit_every=x", "--set train.commit_every=x", "unsigned integer");
  EXPECT_SET("train.checkpoint_every=4294967296", "--set train.checkpoint_every", "range");
  EXPECT_SET("train.keep_checkpoints=0", "train.keep_checkpoints", "at least 1");
  EXPECT_SET("rejoin_timeout_s=5", "unknown key 'rejoin_timeout_s'"); /* the YAML name only */
}

static void test_set_creates_mappings(void **state) {
  /* A synthetic spec turned into an idx one: data.train and data.test are created. */
  const char *sets[] = {"data.format=idx",
                        "data.train.images=/d/tr-img.gz",
                        "data.train.labels=/d/tr-lbl.gz",
                        "data.test.images=/d/te-img.gz",
                        "data.test.labels=/d/te-lbl.gz",
                        "data.synthetic.classes=3"};
  jobspec_t *spec = parse_ok(minimal, sets, (int)DRV_ARRAY_LEN(sets));
  assert_int_equal(spec->data.format, SPEC_DATA_IDX);
  assert_non_null(spec->data.train);
  assert_string_equal(spec->data.train->images, "/d/tr-img.gz");
  assert_string_equal(spec->data.test->labels, "/d/te-lbl.gz");
  assert_int_equal(spec->data.synthetic->classes, 3);
  assert_int_equal(spec->data.synthetic->features, 784); /* the rest defaulted */
  assert_round_trip(spec);
  jobspec_destroy(&spec);

  /* Half a split: created, then refused by validation, naming the missing key. */
  const char *half[] = {"data.train.images=/d/x"};
  expect_invalid(minimal, half, 1, "data.train.labels", (const char *)NULL);
}

static void test_set_errors(void **state) {
  EXPECT_SET("train.epochz=3", "--set train.epochz=3: unknown key 'epochz' in 'train'");
  EXPECT_SET("foo=1", "--set foo=1", "unknown key 'foo'");
  EXPECT_SET("train.optimizer.lrr=1", "unknown key 'lrr' in 'train.optimizer'");
  EXPECT_SET("train.epochs=many", "--set train.epochs=many", "unsigned integer");
  EXPECT_SET("train.epochs=-1", "--set train.epochs=-1");
  EXPECT_SET("train.epochs=4294967296", "--set train.epochs=4294967296", "range");
  EXPECT_SET("train.optimizer.lr=abc", "--set train.optimizer.lr=abc", "number");
  EXPECT_SET("target=a b", "target", "'a b' is not a target name");
  EXPECT_SET("train.epochs", "--set train.epochs", "key.path=value");
  EXPECT_SET("=3", "key.path=value");
  EXPECT_SET("train=3", "--set train=3", "'train' is a mapping");
  EXPECT_SET("name.first=a", "--set name.first=a", "'name' is not a mapping");
  EXPECT_SET("model.hidden=[1,x]", "--set model.hidden=[1,x]", "unsigned integer");
  EXPECT_SET("model.hidden=[1,2", "--set model.hidden=[1,2");
  EXPECT_SET("model.hidden=1,2,3,4,5,6,7,8,9", "--set model.hidden=", "too many");
  EXPECT_SET("name=", "--set name=", "empty");
  /* Values that parse but fail validation are named like any other. */
  EXPECT_SET("train.optimizer.lr=-1", "train.optimizer.lr");
  EXPECT_SET("model.hidden=[4,0]", "model.hidden[1]");
}

// --- Dump ---------------------------------------------------------------------------------

static void test_dump_every_field(void **state) {
  jobspec_t *spec = parse_ok(minimal, NULL, 0);
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(jobspec_dump(spec, &text, &len), DRV_OK);
  const char *keys[] = {"name:",
                        "target: local",
                        "nodes: 1",
                        "min_nodes: 1",
                        "max_nodes: 1",
                        "max_restarts: 3",
                        "rejoin_timeout: 60",
                        "priority: 0",
                        "max_runtime: 0",
                        "resources:",
                        "cpus_per_worker: 0",
                        "memory_mb: 0",
                        "gpus_per_worker: 0",
                        "model:",
                        "type: mlp",
                        "hidden: [16]",
                        "activation: relu",
                        "data:",
                        "format: synthetic",
                        "synthetic:",
                        "train_samples: 60000",
                        "test_samples: 10000",
                        "features: 784",
                        "classes: 10",
                        "epochs: 1",
                        "global_batch: 8",
                        "max_steps: 0",
                        "seed: 42",
                        "commit_every: 50",
                        "checkpoint_every: 0",
                        "keep_checkpoints: 3",
                        "optimizer:",
                        "type: sgd",
                        "lr: 0.1",
                        "momentum: 0.9",
                        "weight_decay: 0",
                        "beta1: 0.9",
                        "beta2: 0.999",
                        "eps: 1e-08",
                        "lr_schedule:",
                        "type: cosine",
                        "warmup_steps: 0",
                        "lr_min: 0",
                        "run_dir: runs"};
  for (size_t i = 0; i < DRV_ARRAY_LEN(keys); i++)
    if (!strstr(text, keys[i])) fail_msg("dump lacks \"%s\":\n%s", keys[i], text);
  free(text);
  jobspec_destroy(&spec);
}

static void test_dump_round_trip(void **state) {
  /* Awkward values: more digits than a float keeps, a string YAML would misread unquoted,
   * the largest seed. */
  const char *sets[] = {"train.optimizer.lr=0.0123456789",
                        "train.optimizer.type=adamw",
                        "train.optimizer.eps=3.14159265e-7",
                        "name=yes",
                        "run_dir=has: a colon # and hash",
                        "train.seed=18446744073709551615",
                        "train.lr_schedule.lr_min=0.000123456789",
                        "train.max_steps=1000",
                        "max_nodes=16",
                        "min_nodes=1",
                        "max_restarts=0",
                        "rejoin_timeout=5",
                        "train.commit_every=25",
                        "train.checkpoint_every=100",
                        "train.keep_checkpoints=1"};
  jobspec_t *spec = NULL;
  const char *path = DROVER_SOURCE_DIR "/examples/fashion-mnist.yaml";
  if (jobspec_load(path, sets, (int)DRV_ARRAY_LEN(sets), &spec) != DRV_OK)
    fail_msg("%s", drv_last_error());
  assert_string_equal(spec->name, "yes");
  assert_string_equal(spec->run_dir, "has: a colon # and hash");
  /* Floats keep the six significant digits the YAML writer keeps. */
  assert_true(spec->train.optimizer.lr == 0.0123457f);
  assert_int_equal(spec->max_nodes, 16);
  assert_int_equal(spec->train.checkpoint_every, 100);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
}

/* The queue keys: priority (signed), max_runtime and resources, from the text and --set. */
static void test_queue_keys(void **state) {
  const char *text =
      "name: t\npriority: -3\nmax_runtime: 600\n"
      "resources: {cpus_per_worker: 4, memory_mb: 8192, gpus_per_worker: 2}\n"
      "model: {type: mlp, hidden: [16]}\ndata: {format: synthetic}\n"
      "train: {epochs: 1, global_batch: 8, optimizer: {type: sgd, lr: 0.1}}\n";
  jobspec_t *spec = parse_ok(text, NULL, 0);
  assert_int_equal(spec->priority, -3);
  assert_int_equal(spec->max_runtime_s, 600);
  assert_int_equal(spec->resources.cpus_per_worker, 4);
  assert_int_equal(spec->resources.memory_mb, 8192);
  assert_int_equal(spec->resources.gpus_per_worker, 2);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
  const char *sets[] = {"priority=7", "resources.gpus_per_worker=1"};
  spec = parse_ok(minimal, sets, 2);
  assert_int_equal(spec->priority, 7);
  assert_int_equal(spec->resources.gpus_per_worker, 1);
  assert_int_equal(spec->resources.cpus_per_worker, 0);
  assert_round_trip(spec);
  jobspec_destroy(&spec);
}

/* The path keys: relative ones are found (in key order) and made absolute against a
 * directory, "./" dropped; absolute ones and absent parts are left alone. */
static void test_paths(void **state) {
  (void)state;
  char *yaml = subst(minimal, "  format: synthetic\n",
                     "  format: idx\n"
                     "  train: {images: ./a/train.idx, labels: /abs/train-labels.idx}\n"
                     "  test: {images: t10k.idx, labels: t10k-labels.idx}\n");
  jobspec_t *spec = parse_ok(yaml, NULL, 0);
  assert_string_equal(jobspec_relative_path(spec), "run_dir"); /* "runs" by default */
  assert_int_equal(jobspec_absolutize(spec, "/home/u/exp"), DRV_OK);
  assert_null(jobspec_relative_path(spec));
  assert_string_equal(spec->run_dir, "/home/u/exp/runs");
  assert_string_equal(spec->data.train->images, "/home/u/exp/a/train.idx");
  assert_string_equal(spec->data.train->labels, "/abs/train-labels.idx");
  assert_string_equal(spec->data.test->images, "/home/u/exp/t10k.idx");
  assert_string_equal(spec->data.test->labels, "/home/u/exp/t10k-labels.idx");
  free(spec->data.test->labels);
  spec->data.test->labels = strdup("rel/labels");
  assert_string_equal(jobspec_relative_path(spec), "data.test.labels");
  jobspec_destroy(&spec);
  free(yaml);
  spec = parse_ok(minimal, NULL, 0); /* synthetic: no data paths at all */
  assert_int_equal(jobspec_absolutize(spec, "/d"), DRV_OK);
  assert_string_equal(spec->run_dir, "/d/runs");
  assert_null(jobspec_relative_path(spec));
  jobspec_destroy(&spec);
}

/* A command job: its own program instead of model, data and train; its keys load, dump
 * and load again the same; the two kinds do not mix. */
static void test_command_job(void **state) {
  (void)state;
  const char *y = "name: ddp\n"
                  "target: local\n"
                  "nodes: 2\n"
                  "command: [python3, train.py, --epochs, \"3\"]\n"
                  "workdir: /work/ddp\n"
                  "env: [OMP_NUM_THREADS=1, \"PYTHONPATH=/x y\"]\n"
                  "hang_timeout: 60\n"
                  "max_restarts: 2\n";
  jobspec_t *spec = parse_ok(y, NULL, 0);
  assert_int_equal(spec->command_count, 4);
  assert_string_equal(spec->command[1], "train.py");
  assert_string_equal(spec->command[3], "3");
  assert_string_equal(spec->workdir, "/work/ddp");
  assert_int_equal(spec->env_count, 2);
  assert_string_equal(spec->env[1], "PYTHONPATH=/x y");
  assert_int_equal(spec->hang_timeout_s, 60);
  assert_int_equal(spec->max_restarts, 2);
  assert_int_equal(spec->min_nodes, 2);
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(jobspec_dump(spec, &text, &len), DRV_OK);
  assert_null(strstr(text, "model"));
  assert_null(strstr(text, "train:"));
  jobspec_t *again = NULL;
  if (jobspec_parse(text, len, "dumped", NULL, 0, &again) != DRV_OK)
    fail_msg("%s\n--- dump:\n%s", drv_last_error(), text);
  assert_int_equal(again->command_count, 4);
  assert_string_equal(again->env[0], "OMP_NUM_THREADS=1");
  free(text);
  jobspec_destroy(&again);
  jobspec_destroy(&spec);
  expect_invalid("name: a\ncommand: [x]\nmodel: {type: mlp}\n", NULL, 0, "model",
                 "built-in trainer", (const char *)NULL);
  expect_invalid("name: a\ncommand: [x]\nenv: [\"1X=2\"]\n", NULL, 0, "env[0]", "KEY=VALUE",
                 (const char *)NULL);
  expect_invalid("name: a\ncommand: [\"\"]\n", NULL, 0, "command", "word 0 is empty",
                 (const char *)NULL);
  expect_invalid("name: a\nmodel: {type: mlp}\ntrain: {epochs: 1, global_batch: 8, optimizer: "
                 "{type: sgd, lr: 0.1}}\n",
                 NULL, 0, "data", "required key missing", (const char *)NULL);
  expect_invalid("name: a\nworkdir: /x\nmodel: {type: mlp}\ndata: {format: synthetic}\n"
                 "train: {epochs: 1, global_batch: 8, optimizer: {type: sgd, lr: 0.1}}\n",
                 NULL, 0, "workdir", "command jobs", (const char *)NULL);
}

static void test_target_names(void **state) {
  assert_true(jobspec_name_ok("cpu-pool", JOBSPEC_TARGET_MAX));
  assert_true(jobspec_name_ok("a.b_c-9", JOBSPEC_TARGET_MAX));
  assert_false(jobspec_name_ok("", JOBSPEC_TARGET_MAX));
  assert_false(jobspec_name_ok(".hidden", JOBSPEC_TARGET_MAX));
  assert_false(jobspec_name_ok("a/b", JOBSPEC_TARGET_MAX));
  assert_false(jobspec_name_ok("x23456789012345678901234567890123", JOBSPEC_TARGET_MAX));
  assert_true(jobspec_name_ok("x2345678901234567890123456789012", JOBSPEC_TARGET_MAX));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_example_fashion_mnist),
      cmocka_unit_test(test_example_synthetic),
      cmocka_unit_test(test_example_gpu),
      cmocka_unit_test(test_load_missing_file),
      cmocka_unit_test(test_defaults_filled),
      cmocka_unit_test(test_explicit_zeros_stay),
      cmocka_unit_test(test_defaults_follow_nodes),
      cmocka_unit_test(test_elastic_keys_explicit),
      cmocka_unit_test(test_error_unknown_key),
      cmocka_unit_test(test_error_wrong_type),
      cmocka_unit_test(test_names_and_run_dir),
      cmocka_unit_test(test_error_missing_required),
      cmocka_unit_test(test_error_bad_enum),
      cmocka_unit_test(test_error_syntax),
      cmocka_unit_test(test_error_semantic),
      cmocka_unit_test(test_prescan_flow_nesting),
      cmocka_unit_test(test_prescan_block_nesting),
      cmocka_unit_test(test_prescan_quotes_and_comments),
      cmocka_unit_test(test_prescan_utf8),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_set_each_kind),
      cmocka_unit_test(test_set_elastic_keys),
      cmocka_unit_test(test_queue_keys),
      cmocka_unit_test(test_set_creates_mappings),
      cmocka_unit_test(test_set_errors),
      cmocka_unit_test(test_dump_every_field),
      cmocka_unit_test(test_dump_round_trip),
      cmocka_unit_test(test_paths),
      cmocka_unit_test(test_target_names),
      cmocka_unit_test(test_command_job),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
