/* test_report.c: the records of metrics.jsonl (worker/report.h).
 *
 * Users and the integration tests parse these lines, so each record's keys, their order and
 * the number formats are an interface: every record written by report_rec_<kind> must be
 * byte for byte what the worker's hand-written fprintf calls wrote before the records were
 * declared once (the format strings below are theirs, copied), whatever the values.
 *
 * Rank 0's files in the run directory are never written through a link: spec.yaml
 * replaces a symlink, metrics.jsonl refuses a symlink or a hard link, and both are 0640. */
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/tmpdir.h"
#include "worker/report.h"

/* What report wrote to its metrics file since the last call, as one string (caller frees). */
static char *written(report_t *r) {
  fflush(r->metrics);
  long n = ftell(r->metrics);
  assert_true(n >= 0);
  char *buf = calloc((size_t)n + 1, 1);
  assert_non_null(buf);
  rewind(r->metrics);
  assert_int_equal(fread(buf, 1, (size_t)n, r->metrics), (size_t)n);
  rewind(r->metrics);
  assert_int_equal(ftruncate(fileno(r->metrics), 0), 0);
  return buf;
}

static report_t open_report(void) {
  report_t r = {.job = 7, .generation = 2, .rank = 0};
  r.metrics = tmpfile();
  assert_non_null(r.metrics);
  return r;
}

static const double doubles[] = {0.0,    -0.0, 1.0,      2.29425478, 1e-12, 123456789.123456789,
                                 3.0e30, NAN,  INFINITY, 0.827600};
#define NDOUBLES (sizeof doubles / sizeof doubles[0])
static const uint64_t u64s[] = {0, 1, 469, 4294967295u, 4294967296u, UINT64_MAX};
#define NU64 (sizeof u64s / sizeof u64s[0])
static const uint32_t u32s[] = {0, 1, 128, 4294967295u};
#define NU32 (sizeof u32s / sizeof u32s[0])

static void test_step_record(void **state) {
  report_t r = open_report();
  char want[512];
  for (size_t i = 0; i < NDOUBLES * NU64; i++) {
    double d = doubles[i % NDOUBLES], e = doubles[(i * 7 + 3) % NDOUBLES];
    uint64_t step = u64s[i % NU64];
    uint32_t u = u32s[i % NU32], v = u32s[(i + 1) % NU32];
    float lr = (float)e;
    report_rec_step_t rec = {.step = step,
                             .epoch = u,
                             .loss = d,
                             .lr = lr,
                             .batch = v,
                             .step_s = e,
                             .samples_per_s = d * 3,
                             .data_wait_ms = e / 7};
    report_rec_step(&r, &rec);
    snprintf(want, sizeof want,
             "{\"type\":\"step\",\"step\":%" PRIu64
             ",\"epoch\":%u,\"loss\":%.9g,\"lr\":%.9g,"
             "\"batch\":%u,\"step_s\":%.6f,\"samples_per_s\":%.1f,\"data_wait_ms\":%.4f}\n",
             step, u, d, lr, v, e, d * 3, e / 7);
    char *got = written(&r);
    assert_string_equal(got, want);
    free(got);
  }
  fclose(r.metrics);
}

static void test_eval_resume_reform_records(void **state) {
  report_t r = open_report();
  char want[512];
  for (size_t i = 0; i < NDOUBLES * NU64; i++) {
    double d = doubles[i % NDOUBLES], e = doubles[(i * 3 + 1) % NDOUBLES];
    uint64_t step = u64s[i % NU64];
    uint32_t u = u32s[i % NU32], v = u32s[(i + 2) % NU32];

    report_rec_eval_t ev = {.epoch = u, .step = step, .test_loss = d, .test_accuracy = e};
    report_rec_eval(&r, &ev);
    snprintf(want, sizeof want,
             "{\"type\":\"eval\",\"epoch\":%u,\"step\":%" PRIu64
             ",\"test_loss\":%.9g,\"test_accuracy\":%.6f}\n",
             u, step, d, e);
    char *got = written(&r);
    assert_string_equal(got, want);
    free(got);

    report_rec_resume_t rs = {.step = step, .world = u};
    report_rec_resume(&r, &rs);
    snprintf(want, sizeof want, "{\"type\":\"resume\",\"step\":%" PRIu64 ",\"world\":%u}\n", step,
             u);
    got = written(&r);
    assert_string_equal(got, want);
    free(got);

    report_rec_reform_t rf = {.step = step, .world = u, .generation = v};
    report_rec_reform(&r, &rf);
    snprintf(want, sizeof want,
             "{\"type\":\"reform\",\"step\":%" PRIu64 ",\"world\":%u,\"generation\":%u}\n", step, u,
             v);
    got = written(&r);
    assert_string_equal(got, want);
    free(got);
  }
  fclose(r.metrics);
}

/* The examples of docs/user-guide.md, as a reader sees them. */
static void test_records_as_documented(void **state) {
  report_t r = open_report();
  report_rec_step_t st = {.step = 1,
                          .epoch = 0,
                          .loss = 2.29425478,
                          .lr = 0,
                          .batch = 128,
                          .step_s = 0.010745,
                          .samples_per_s = 11912.1,
                          .data_wait_ms = 0};
  report_rec_step(&r, &st);
  report_rec_eval_t ev = {
      .epoch = 0, .step = 469, .test_loss = 0.486069083, .test_accuracy = 0.8276};
  report_rec_eval(&r, &ev);
  report_rec_resume_t rs = {.step = 200, .world = 2};
  report_rec_resume(&r, &rs);
  report_rec_reform_t rf = {.step = 400, .world = 2, .generation = 3};
  report_rec_reform(&r, &rf);
  char *got = written(&r);
  assert_string_equal(
      got,
      "{\"type\":\"step\",\"step\":1,\"epoch\":0,\"loss\":2.29425478,\"lr\":0,\"batch\":128,"
      "\"step_s\":0.010745,\"samples_per_s\":11912.1,\"data_wait_ms\":0.0000}\n"
      "{\"type\":\"eval\",\"epoch\":0,\"step\":469,\"test_loss\":0.486069083,"
      "\"test_accuracy\":0.827600}\n"
      "{\"type\":\"resume\",\"step\":200,\"world\":2}\n"
      "{\"type\":\"reform\",\"step\":400,\"world\":2,\"generation\":3}\n");
  free(got);
  fclose(r.metrics);
}

/* docs/user-guide.md shows every record: {"type":"<kind>" and each field as "<field>":, so
 * a field added to REPORT_RECORDS must be documented too. */
static void test_records_documented(void **state) {
  FILE *f = fopen(DROVER_SOURCE_DIR "/docs/user-guide.md", "r");
  assert_non_null(f);
  static char doc[1 << 20];
  size_t n = fread(doc, 1, sizeof doc - 1, f);
  fclose(f);
  doc[n] = '\0';
  char want[128];
#define CHECK_FIELD_(field, K)                    \
  snprintf(want, sizeof want, "\"%s\":", #field); \
  if (!strstr(doc, want)) fail_msg("user-guide.md: no %s", want);
#define CHECK_RECORD_(kind)                                       \
  snprintf(want, sizeof want, "{\"type\":\"%s\"", #kind);         \
  if (!strstr(doc, want)) fail_msg("user-guide.md: no %s", want); \
  REPORT_FIELDS_##kind(CHECK_FIELD_)
  REPORT_RECORDS(CHECK_RECORD_)
#undef CHECK_RECORD_
#undef CHECK_FIELD_
}

/* A rank without metrics.jsonl (not rank 0) writes nothing, and does not crash. */
static void test_run_dir_files(void **state) {
  char dir[256], target[320], path[320];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "report"), 0);
  snprintf(target, sizeof target, "%s/target", dir);
  FILE *f = fopen(target, "w");
  assert_non_null(f);
  fputs("keep\n", f);
  fclose(f);
  mode_t old = umask(0);
  // spec.yaml a symlink: replaced by a file of its own; metrics.jsonl a symlink: refused.
  snprintf(path, sizeof path, "%s/spec.yaml", dir);
  assert_int_equal(symlink(target, path), 0);
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  assert_int_equal(symlink(target, path), 0);
  report_t r = {.rank = 0};
  assert_int_equal(report_open_rank0(&r, dir, "name: t\n"), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "metrics.jsonl: is a symbolic link"));
  struct stat st;
  snprintf(path, sizeof path, "%s/spec.yaml", dir);
  assert_int_equal(lstat(path, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0640);
  // A hard link to another file is refused too.
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(link(target, path), 0);
  assert_int_equal(report_open_rank0(&r, dir, "name: t\n"), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "links"));
  // Nothing was written through either.
  f = fopen(target, "r");
  char buf[16] = "";
  assert_non_null(fgets(buf, sizeof buf, f));
  fclose(f);
  assert_string_equal(buf, "keep\n");
  // A fresh metrics.jsonl: made 0640 whatever the umask.
  assert_int_equal(unlink(path), 0);
  assert_int_equal(report_open_rank0(&r, dir, "name: t\n"), DRV_OK);
  assert_int_equal(lstat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0640);
  report_close(&r);
  umask(old);
  tmpdir_remove(dir);
}

static void test_no_metrics_file(void **state) {
  report_t r = {.job = 7, .generation = 2, .rank = 1};
  report_rec_step_t st = {.step = 1};
  report_rec_step(&r, &st);
  report_rec_resume_t rs = {.step = 1, .world = 2};
  report_rec_resume(&r, &rs);
  assert_null(r.metrics);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_step_record),
      cmocka_unit_test(test_eval_resume_reform_records),
      cmocka_unit_test(test_records_as_documented),
      cmocka_unit_test(test_records_documented),
      cmocka_unit_test(test_no_metrics_file),
      cmocka_unit_test(test_run_dir_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
