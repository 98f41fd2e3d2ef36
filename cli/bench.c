/* bench.c: the benchmark driver (bench.h). */
#include "cli/bench.h"

#include <stdarg.h>

#include "cli/cli.h"

// --- Timing --------------------------------------------------------------------------------

drv_result_t bench_time(const bench_op_t *op, double *seconds) {
  for (int it = 0; it < op->warmup + op->iters; it++) {
    bool warmup = it < op->warmup;
    if (op->prepare) DRV_CHECK(op->prepare(op->arg));
    double t0 = drv_now_s();
    drv_result_t rc = op->run(op->arg, warmup);
    double t = drv_now_s() - t0;
    if (rc != DRV_OK) return rc;
    if (!warmup && seconds) seconds[it - op->warmup] = t;
  }
  return DRV_OK;
}

bench_stat_t bench_stat(double *v, int n) {
  double med = drv_median(v, (size_t)n);
  return (bench_stat_t){med, v[0], v[n - 1]};
}

void bench_slowest(const double *t, int ranks, int iters, double scale, double *out) {
  for (int it = 0; it < iters; it++) {
    double slowest = 0;
    for (int q = 0; q < ranks; q++)
      slowest = DRV_MAX(slowest, t[(size_t)q * (size_t)iters + (size_t)it]);
    out[it] = slowest * scale;
  }
}

// --- All-reduce figures and checks ---------------------------------------------------------

bench_bw_t bench_allreduce_bw(size_t bytes, double ms, int world) {
  bench_bw_t bw;
  bw.algbw = (double)bytes / (ms * 1e-3) / 1e9;
  bw.busbw = bw.algbw * 2.0 * (world - 1) / world;
  return bw;
}

void bench_allreduce_fill(float *data, size_t count, int rank) {
  float base = (float)(rank * 1000);
  for (size_t i = 0; i < count; i += 1000) {
    size_t n = DRV_MIN((size_t)1000, count - i);
    for (size_t k = 0; k < n; k++) data[i + k] = base + (float)k;
  }
}

uint64_t bench_allreduce_wrong(const float *data, size_t count, int world) {
  float base = (float)(1000 * world * (world - 1) / 2);
  uint64_t wrong = 0;
  for (size_t i = 0; i < count; i += 1000) {
    size_t n = DRV_MIN((size_t)1000, count - i);
    for (size_t k = 0; k < n; k++) wrong += data[i + k] != base + (float)(world * (int)k);
  }
  return wrong;
}

// --- Table ---------------------------------------------------------------------------------

void bench_table_header(bench_table_t *t) {
  fputs("#", t->out);
  for (int c = 0; c < t->ncols; c++) fprintf(t->out, " %*s", t->cols[c].width, t->cols[c].title);
  fputs("\n", t->out);
  fflush(t->out);
  t->cell = 0;
}

void bench_table_cell(bench_table_t *t, const char *fmt, ...) {
  char text[64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  int width = t->cell < t->ncols ? t->cols[t->cell].width : 0;
  fprintf(t->out, t->cell ? " %*s" : "  %*s", width, text);
  t->cell++;
}

void bench_table_end_row(bench_table_t *t) {
  fputs("\n", t->out);
  fflush(t->out);
  t->cell = 0;
}

// --- The JSON line -------------------------------------------------------------------------

/* The comma before every member but the first, and "key": when there is a key. */
static void json_key(bench_json_t *j, const char *key) {
  if (!j->first[j->depth]) fputc(',', j->out);
  j->first[j->depth] = false;
  if (key) {
    cli_json_str(j->out, key);
    fputc(':', j->out);
  }
}

void bench_json_begin(bench_json_t *j, FILE *out) {
  *j = (bench_json_t){.out = out};
  fputc('{', out);
  j->first[0] = true;
}

void bench_json_end(bench_json_t *j) {
  fputs("}\n", j->out);
  fflush(j->out);
}

void bench_json_open(bench_json_t *j, const char *key, char bracket) {
  json_key(j, key);
  fputc(bracket, j->out);
  if (j->depth + 1 < BENCH_JSON_DEPTH) j->depth++;
  j->first[j->depth] = true;
}

void bench_json_close(bench_json_t *j, char bracket) {
  fputc(bracket, j->out);
  if (j->depth > 0) j->depth--;
}

void bench_json_str(bench_json_t *j, const char *key, const char *v) {
  json_key(j, key);
  cli_json_str(j->out, v);
}

void bench_json_fixed(bench_json_t *j, const char *key, double v, int decimals) {
  json_key(j, key);
  fprintf(j->out, "%.*f", decimals, v);
}

void bench_json_int(bench_json_t *j, const char *key, long long v) {
  json_key(j, key);
  fprintf(j->out, "%lld", v);
}

void bench_json_uint(bench_json_t *j, const char *key, unsigned long long v) {
  json_key(j, key);
  fprintf(j->out, "%llu", v);
}

void bench_json_bool(bench_json_t *j, const char *key, bool v) {
  json_key(j, key);
  fputs(v ? "true" : "false", j->out);
}

void bench_json_null(bench_json_t *j, const char *key) {
  json_key(j, key);
  fputs("null", j->out);
}

void bench_json_stat(bench_json_t *j, const char *key, const bench_stat_t *s, int decimals) {
  bench_json_open(j, key, '{');
  bench_json_fixed(j, "median", s->med, decimals);
  bench_json_fixed(j, "min", s->min, decimals);
  bench_json_fixed(j, "max", s->max, decimals);
  bench_json_close(j, '}');
}
