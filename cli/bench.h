/* bench.h: the one driver of the `drover bench ...` benchmarks (nccl-tests' testColl).
 *
 * A benchmark fills in what it measures and the driver does the rest the same way for
 * each: the operation to time (bench_op_t: warm-up calls, then timed ones, each timed
 * alone on the host), the medians over those runs with min and max beside them
 * (bench_stat), the time of the slowest rank when several ranks time the same iteration,
 * the bandwidths of an all-reduce (algbw, and busbw = algbw * 2(n-1)/n), the check data
 * whose wrong elements a row reports as #wrong, a table of right-aligned columns, and the
 * one JSON line --json prints at the end.
 *
 * Users: bench_ring.c (`drover bench ring`), bench_train.c (`bench train`, `bench
 * overlap`). Their columns and JSON keys are read by scripts and docs/benchmarks.md.
 */
#ifndef DROVER_CLI_BENCH_H
#define DROVER_CLI_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/drv.h"

// --- Timing --------------------------------------------------------------------------------

/* What a benchmark times (nccl-tests' startColl + completeColl). */
typedef struct {
  /* Does the operation once. `warmup` says the call is a warm-up, whose time is not kept
   * (so a benchmark can warm up with one longer call). */
  drv_result_t (*run)(void *arg, bool warmup);
  /* NULL, or runs before each call, untimed (a barrier that starts every rank together). */
  drv_result_t (*prepare)(void *arg);
  void *arg;
  int warmup; /* untimed calls first */
  int iters;  /* timed calls */
} bench_op_t;

/* Calls op->run op->warmup times, then op->iters times, each of those timed on the
 * monotonic clock from just before the call to just after it (prepare is outside).
 * seconds[i], when seconds is not NULL, gets the i-th timed call's time. Returns the
 * first failure of prepare or run. */
drv_result_t bench_time(const bench_op_t *op, double *seconds);

/* Median, min and max of a sample. */
typedef struct {
  double med, min, max;
} bench_stat_t;

/* The median, min and max of v[0..n), n >= 1; sorts v in place (drv_median). */
bench_stat_t bench_stat(double *v, int n);

/* Several ranks timed the same iterations (t[rank * iters + i] seconds): an iteration
 * takes as long as its slowest rank. out[i] = scale * max over ranks of t[r * iters + i]
 * (scale 1e3: milliseconds). */
void bench_slowest(const double *t, int ranks, int iters, double scale, double *out);

// --- All-reduce figures and checks ---------------------------------------------------------

/* GB/s of an all-reduce of `bytes` between `world` ranks that took `ms`: algbw = bytes /
 * time; busbw = algbw * 2(n-1)/n, the traffic each link of a ring carries, comparable
 * across world sizes and with a raw link (nccl-tests' convention). */
typedef struct {
  double algbw, busbw;
} bench_bw_t;

bench_bw_t bench_allreduce_bw(size_t bytes, double ms, int world);

/* Check data for a float32 sum: rank r's data[i] = r*1000 + i%1000, integer-valued so
 * every sum is exact. */
void bench_allreduce_fill(float *data, size_t count, int rank);

/* How many elements of data, all-reduced from bench_allreduce_fill of ranks 0..world-1,
 * differ from the exact sum: what a row reports as #wrong. */
uint64_t bench_allreduce_wrong(const float *data, size_t count, int world);

// --- Table ---------------------------------------------------------------------------------

/* One column: its title and width; every cell is right-aligned to the width. */
typedef struct {
  const char *title;
  int width;
} bench_col_t;

/* A table on `out`: "# " and the titles, then rows indented by two spaces, one space
 * between columns. Set out, cols and ncols; the driver keeps `cell`. */
typedef struct {
  FILE *out;
  const bench_col_t *cols;
  int ncols;
  int cell; /* the column the next cell of the current row goes to */
} bench_table_t;

/* Prints the header line. */
void bench_table_header(bench_table_t *t);

/* Prints the next cell of the current row (printf-style), aligned to its column. */
void bench_table_cell(bench_table_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Ends the current row (it may stop short of the last column: "failed") and flushes. */
void bench_table_end_row(bench_table_t *t);

// --- The JSON line -------------------------------------------------------------------------

#define BENCH_JSON_DEPTH 8

/* One JSON object on one line, keys in the order written, no spaces. Nested objects and
 * arrays: bench_json_open / bench_json_close (key NULL for an element of an array). */
typedef struct {
  FILE *out;
  int depth;
  bool first[BENCH_JSON_DEPTH]; /* nothing written yet at this depth */
} bench_json_t;

/* Starts the object ("{") on out. */
void bench_json_begin(bench_json_t *j, FILE *out);

/* Closes the object, ends the line and flushes. */
void bench_json_end(bench_json_t *j);

/* Opens an object ('{') or array ('[') under key (NULL inside an array). */
void bench_json_open(bench_json_t *j, const char *key, char bracket);

/* Closes what bench_json_open opened: '}' or ']'. */
void bench_json_close(bench_json_t *j, char bracket);

/* "key":value, strings quoted and escaped; fixed with `decimals` digits (%.*f). */
void bench_json_str(bench_json_t *j, const char *key, const char *v);
void bench_json_fixed(bench_json_t *j, const char *key, double v, int decimals);
void bench_json_int(bench_json_t *j, const char *key, long long v);
void bench_json_uint(bench_json_t *j, const char *key, unsigned long long v);
void bench_json_bool(bench_json_t *j, const char *key, bool v);
void bench_json_null(bench_json_t *j, const char *key);

/* "key":{"median":M,"min":m,"max":x}, each with `decimals` digits. */
void bench_json_stat(bench_json_t *j, const char *key, const bench_stat_t *s, int decimals);

#endif
