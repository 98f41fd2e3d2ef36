/* report.h: what a rank tells the world. Private to worker/.
 *
 * To the coordinator: `progress` (coalesced to at most one every DROVER_PROGRESS_MS, and
 * the last step), `eval` (rank 0, after each evaluation), `checkpoint` (rank 0, once a
 * checkpoint is durable), and at the end `done` or `failed`. The world's own messages
 * (`rendezvous`, `lost`) go out through report_send too.
 *
 * To the run directory (rank 0 only): spec.yaml, and metrics.jsonl, one JSON object per
 * line, appended. Every record kind is declared once, in REPORT_RECORDS below, with its
 * fields in the order they are written and their number formats; the record's C struct,
 * its writer and the writer's format string are generated from that list. Tests and users
 * parse these lines (docs/user-guide.md): a field's name, place and format are part of the
 * interface. The file is line-buffered and each record is one fprintf ending in its
 * newline, so a worker killed mid-run leaves no half record behind.
 *
 * To tests: with DROVER_AUDIT_DIR set, every rank appends one line per step to
 * <dir>/audit-<pid>.txt: "<generation> <step> <sample id>...".
 *
 * A report_t borrows the coordinator socket and names the sender (job, generation, rank)
 * in every message; the world (world.c) moves it to a new generation and rank with
 * report_as when it re-forms. Everything runs on the worker's one thread.
 */
#ifndef DROVER_WORKER_REPORT_H
#define DROVER_WORKER_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/drv.h"
#include "common/proto.h"
#include "common/sock.h"

/* clang-format off */

/* X(kind): every record of metrics.jsonl, once; its "type" is the kind's name. */
#define REPORT_RECORDS(X) X(step) X(eval) X(resume) X(reform)

/* F(field, KIND), in the order written. KIND is the C type and the number format:
 * U64 uint64_t and U32 uint32_t in decimal; G9 a double as %.9g; F1, F4, F6 a double
 * as %.1f, %.4f, %.6f. */
#define REPORT_FIELDS_step(F)                                                               \
  F(step,          U64) /* global step number, from 1 */                                   \
  F(epoch,         U32)                                                                    \
  F(loss,          G9)  /* mean loss of the whole global batch */                          \
  F(lr,            G9)                                                                     \
  F(batch,         U32) /* this step's global batch */                                     \
  F(step_s,        F6)  /* rank 0's wall time for the step */                              \
  F(samples_per_s, F1)                                                                     \
  F(data_wait_ms,  F4)

#define REPORT_FIELDS_eval(F)                                                               \
  F(epoch,         U32)                                                                    \
  F(step,          U64) /* steps done when it ran */                                       \
  F(test_loss,     G9)                                                                     \
  F(test_accuracy, F6)

#define REPORT_FIELDS_resume(F) /* a worker that starts from a checkpoint */                \
  F(step,          U64) /* steps the checkpoint had done */                                \
  F(world,         U32)

#define REPORT_FIELDS_reform(F) /* the world re-formed after a failure or a pause */        \
  F(step,          U64) /* the commit it goes on from */                                   \
  F(world,         U32)                                                                    \
  F(generation,    U32)

/* clang-format on */

#define REPORT_CTYPE_U64 uint64_t
#define REPORT_CTYPE_U32 uint32_t
#define REPORT_CTYPE_G9 double
#define REPORT_CTYPE_F1 double
#define REPORT_CTYPE_F4 double
#define REPORT_CTYPE_F6 double

/* Generated: report_rec_<kind>_t, one member per field. */
#define REPORT_DECL_(field, K) REPORT_CTYPE_##K field;
#define REPORT_STRUCT_(kind)           \
  typedef struct {                     \
    REPORT_FIELDS_##kind(REPORT_DECL_) \
  } report_rec_##kind##_t;
REPORT_RECORDS(REPORT_STRUCT_)
#undef REPORT_STRUCT_

typedef struct {
  sock_t *sock; /* borrowed: the DEALER to the coordinator (NULL before it exists) */
  int64_t job;
  uint32_t generation, rank; /* the sender, as of the last report_as */
  FILE *metrics;             /* rank 0's metrics.jsonl (line-buffered), else NULL */
  FILE *audit;               /* $DROVER_AUDIT_DIR/audit-<pid>.txt, or NULL */
  /* progress since the last report */
  uint64_t samples, steps;
  double step_s, wait_s, data_ms, start_s;
} report_t;

/* Appends one record of `kind` to metrics.jsonl: {"type":"<kind>", then each field of
 * REPORT_FIELDS_<kind> in order}. Nothing when this rank keeps no metrics (not rank 0). */
#define REPORT_WRITER_DECL_(kind) \
  void report_rec_##kind(report_t *r, const report_rec_##kind##_t *rec);
REPORT_RECORDS(REPORT_WRITER_DECL_)
#undef REPORT_WRITER_DECL_

/* Names the sender of every later message: generation `generation`, rank `rank` (of job
 * r->job). The world calls it whenever it re-forms. */
void report_as(report_t *r, uint32_t generation, uint32_t rank);

/* Rank 0 keeps the run directory's records: writes <run_dir>/spec.yaml from spec_yaml (a
 * new file of its own renamed into place) and opens <run_dir>/metrics.jsonl for appending
 * (a job placed again keeps the history of its earlier runs), line-buffered; neither is
 * ever opened through a symlink, and metrics.jsonl must be a regular file of one link
 * (fs_open_append). Files are made 0640. Nothing on another rank, or when metrics is open
 * already. DRV_ERR_SYS (DRV_ERR_INVALID for a refused file) naming the file. */
drv_result_t report_open_rank0(report_t *r, const char *run_dir, const char *spec_yaml);

/* With `dir` set (DROVER_AUDIT_DIR; NULL or "": no audit): opens <dir>/audit-<pid>.txt for
 * appending, line-buffered. A file that cannot be opened means no audit (it is for tests). */
void report_open_audit(report_t *r, const char *dir);

/* Closes metrics.jsonl and the audit file. */
void report_close(report_t *r);

/* Sends m to the coordinator without blocking. A failure is logged, not returned: the
 * coordinator finds a rank that stops talking by itself. The message stays the caller's. */
void report_send(const report_t *r, const proto_msg_t *m);

/* The audit line of global step `step` (1-based), which takes the n sample ids ids[]:
 * written before the rank contributes its gradients. Nothing without an audit file. */
void report_audit(report_t *r, uint64_t step, const uint32_t *ids, uint32_t n);

/* Starts the progress interval now (before the first step of a run). */
void report_progress_begin(report_t *r);

/* Adds a step done to the interval: `samples` of this rank, `step_s` seconds of wall
 * time, data_ms ms the device waited for its input. */
void report_count_step(report_t *r, uint32_t samples, double step_s, double data_ms);

/* Adds `s` seconds spent waiting in the gradient sums (for the slowest rank). */
void report_wait(report_t *r, double s);

/* Sends `progress` for `step` of `total` (epoch, the step's loss and lr, the interval's
 * means, coll_seq the collectives completed) when DROVER_PROGRESS_MS have passed since the
 * last one or step is the last, and starts a new interval. Returns whether it sent. */
bool report_progress(report_t *r, uint64_t coll_seq, uint32_t epoch, uint64_t step, uint64_t total,
                     double loss, double lr);

/* Rank 0, after the evaluation of `epoch` at `step` steps done: sends `eval` and appends
 * its metrics record. */
void report_eval(report_t *r, uint32_t epoch, uint64_t step, double test_loss,
                 double test_accuracy);

/* Rank 0: the checkpoint of `step` steps done is durable in directory `dir` (borrowed). */
void report_checkpoint(report_t *r, uint64_t step, const char *dir);

/* Sends `done` with d's metrics (the sender fields are filled here). */
void report_done(report_t *r, const proto_done_t *d);

/* Sends `failed` with `reason` (borrowed), when the coordinator socket exists. */
void report_failed(report_t *r, const char *reason);

#endif
