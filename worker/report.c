/* report.c: see report.h. */
#include "worker/report.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/log.h"

#define REPORT_FILE_MODE 0640 /* spec.yaml, metrics.jsonl: the job's owner and group */
#include "common/settings.h"

// --- metrics.jsonl -----------------------------------------------------------------------

/* Each field kind's printf format (report.h). */
#define REPORT_FMT_U64 "%" PRIu64
#define REPORT_FMT_U32 "%u"
#define REPORT_FMT_G9 "%.9g"
#define REPORT_FMT_F1 "%.1f"
#define REPORT_FMT_F4 "%.4f"
#define REPORT_FMT_F6 "%.6f"

/* One writer per record kind: a single fprintf whose format string is put together at
 * compile time from the field list, {"type":"step","step":%PRIu64,"epoch":%u,...}\n, so
 * the compiler checks each field's format against its C type. */
#define REPORT_KEY_(field, K) ",\"" #field "\":" REPORT_FMT_##K
#define REPORT_ARG_(field, K) , rec->field
/* clang-format off */
#define REPORT_WRITER_(kind)                                                              \
  void report_rec_##kind(report_t *r, const report_rec_##kind##_t *rec) {                 \
    if (!r->metrics) return;                                                              \
    fprintf(r->metrics,                                                                   \
            "{\"type\":\"" #kind "\"" REPORT_FIELDS_##kind(REPORT_KEY_) "}\n"             \
            REPORT_FIELDS_##kind(REPORT_ARG_));                                           \
  }
/* clang-format on */
REPORT_RECORDS(REPORT_WRITER_)
#undef REPORT_WRITER_

// --- Files ---------------------------------------------------------------------------------

void report_as(report_t *r, uint32_t generation, uint32_t rank) {
  r->generation = generation;
  r->rank = rank;
}

/* <run_dir>/spec.yaml: written whole to a new file of our own (O_EXCL, no symlink
 * followed), then renamed over whatever had the name, so a planted link is replaced, never
 * written through. */
static drv_result_t write_spec(const char *run_dir, const char *spec_yaml) {
  char path[1200], tmp[1240];
  DRV_CHECK(fs_path(path, sizeof path, "%s/spec.yaml", run_dir));
  DRV_CHECK(fs_path(tmp, sizeof tmp, "%s/.spec.yaml.%d", run_dir, (int)getpid()));
  unlink(tmp); /* ours by name: an earlier attempt of this process */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, REPORT_FILE_MODE);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "create %s: %s", tmp, strerror(errno));
  drv_result_t rc = fs_write_all(fd, spec_yaml, strlen(spec_yaml), tmp);
  if (close(fd) < 0 && rc == DRV_OK)
    rc = drv_error(DRV_ERR_SYS, "close %s: %s", tmp, strerror(errno));
  if (rc == DRV_OK && rename(tmp, path) < 0)
    rc = drv_error(DRV_ERR_SYS, "rename %s to %s: %s", tmp, path, strerror(errno));
  if (rc != DRV_OK) unlink(tmp);
  return rc;
}

/* path opened for appending as fs_open_append says, as a line-buffered stream. */
static drv_result_t open_lines(const char *path, FILE **out) {
  int fd;
  DRV_CHECK(fs_open_append(AT_FDCWD, path, path, REPORT_FILE_MODE, &fd));
  if (!(*out = fdopen(fd, "a"))) {
    close(fd);
    return drv_error(DRV_ERR_SYS, "open %s: %s", path, strerror(errno));
  }
  /* Whole lines only: a worker killed mid-run leaves no half record behind. */
  setvbuf(*out, NULL, _IOLBF, 0);
  return DRV_OK;
}

drv_result_t report_open_rank0(report_t *r, const char *run_dir, const char *spec_yaml) {
  if (r->rank != 0 || r->metrics) return DRV_OK;
  DRV_CHECK(write_spec(run_dir, spec_yaml));
  char path[1200];
  DRV_CHECK(fs_path(path, sizeof path, "%s/metrics.jsonl", run_dir));
  return open_lines(path, &r->metrics);
}

void report_open_audit(report_t *r, const char *dir) {
  char path[1200];
  if (!dir || !*dir ||
      fs_path(path, sizeof path, "%s/audit-%d.txt", dir, (int)getpid()) != DRV_OK ||
      open_lines(path, &r->audit) != DRV_OK)
    r->audit = NULL;
}

void report_close(report_t *r) {
  if (r->metrics) fclose(r->metrics);
  if (r->audit) fclose(r->audit);
  r->metrics = r->audit = NULL;
}

void report_audit(report_t *r, uint64_t step, const uint32_t *ids, uint32_t n) {
  if (!r->audit) return;
  fprintf(r->audit, "%u %" PRIu64, r->generation, step);
  for (uint32_t k = 0; k < n; k++) fprintf(r->audit, " %u", ids[k]);
  fputc('\n', r->audit);
}

// --- Messages ------------------------------------------------------------------------------

void report_send(const report_t *r, const proto_msg_t *m) {
  if (sock_send(r->sock, NULL, m) != DRV_OK) log_warn("to coordinator: %s", drv_last_error());
}

void report_progress_begin(report_t *r) {
  r->start_s = drv_now_s();
}

void report_count_step(report_t *r, uint32_t samples, double step_s, double data_ms) {
  r->samples += samples;
  r->steps++;
  r->step_s += step_s;
  r->data_ms += data_ms;
}

void report_wait(report_t *r, double s) {
  r->wait_s += s;
}

bool report_progress(report_t *r, uint64_t coll_seq, uint32_t epoch, uint64_t step, uint64_t total,
                     double loss, double lr) {
  if ((drv_now_s() - r->start_s) * 1000 < (double)drv_setting(DRV_SET_PROGRESS_MS) && step != total)
    return false;
  double now = drv_now_s();
  proto_msg_t m;
  proto_msg_init(&m, PROTO_PROGRESS);
  proto_progress_t *p = &m.u.progress;
  p->job = r->job;
  p->generation = r->generation;
  p->rank = r->rank;
  p->epoch = epoch;
  p->step = step;
  p->steps_total = total;
  p->loss = loss;
  p->lr = lr;
  p->samples = r->samples;
  p->interval_s = now - r->start_s;
  p->step_ms = r->steps ? 1000.0 * r->step_s / (double)r->steps : 0;
  p->wait_ms = r->steps ? 1000.0 * r->wait_s / (double)r->steps : 0;
  p->data_ms = r->steps ? r->data_ms / (double)r->steps : 0;
  p->coll_seq = coll_seq;
  report_send(r, &m);
  r->samples = r->steps = 0;
  r->step_s = r->wait_s = r->data_ms = 0;
  r->start_s = now;
  return true;
}

void report_eval(report_t *r, uint32_t epoch, uint64_t step, double test_loss,
                 double test_accuracy) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EVAL);
  m.u.eval = (proto_eval_t){.job = r->job,
                            .generation = r->generation,
                            .epoch = epoch,
                            .test_loss = test_loss,
                            .test_accuracy = test_accuracy};
  report_send(r, &m);
  report_rec_eval(
      r, &(report_rec_eval_t){
             .epoch = epoch, .step = step, .test_loss = test_loss, .test_accuracy = test_accuracy});
}

void report_checkpoint(report_t *r, uint64_t step, const char *dir) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_CHECKPOINT);
  m.u.checkpoint =
      (proto_checkpoint_t){.job = r->job, .generation = r->generation, .step = step, .dir = dir};
  report_send(r, &m);
}

void report_done(report_t *r, const proto_done_t *d) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_DONE);
  m.u.done = *d;
  m.u.done.job = r->job;
  m.u.done.generation = r->generation;
  m.u.done.rank = r->rank;
  report_send(r, &m);
}

void report_failed(report_t *r, const char *reason) {
  if (!r->sock) return;
  proto_msg_t f;
  proto_msg_init(&f, PROTO_FAILED);
  f.u.failed = (proto_failed_t){
      .job = r->job, .generation = r->generation, .rank = r->rank, .reason = reason};
  report_send(r, &f);
}
