/* test_store.c: coordinator/store against real SQLite files in fresh temporary
 * directories: insert, read, list, state transitions and their timestamps, metrics,
 * a restart (close and reopen) with recovery, id reuse, awkward text, the errors of
 * opening a directory or a file that cannot be used, and the state directory's lock (one
 * coordinator per directory). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/store.h"
#include "tests/tmpdir.h"

// --- Fixture: one temporary directory per test -------------------------------------------

typedef struct {
  char dir[256];   /* mkdtemp'd, removed at teardown */
  char state[300]; /* dir/state: what store_open gets */
  char db[320];    /* state/drover.db */
  store_t *store;
} fx_t;

static int fx_setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(tmpdir_make(f->dir, sizeof f->dir, "store"), 0);
  snprintf(f->state, sizeof f->state, "%s/state", f->dir);
  snprintf(f->db, sizeof f->db, "%s/drover.db", f->state);
  *state = f;
  return 0;
}

static int fx_teardown(void **state) {
  fx_t *f = *state;
  store_close(&f->store);
  tmpdir_remove(f->dir);
  free(f);
  return 0;
}

static void open_store(fx_t *f) {
  drv_result_t rc = store_open(f->state, &f->store);
  if (rc != DRV_OK) fail_msg("store_open: %s", drv_last_error());
  assert_non_null(f->store);
}

static int64_t insert(fx_t *f, const char *name) {
  int64_t id = -1;
  drv_result_t rc = store_job_insert(f->store, name, "local", 2, "name: x\n", "runs/x", &id);
  if (rc != DRV_OK) fail_msg("store_job_insert: %s", drv_last_error());
  return id;
}

static store_job_t get(fx_t *f, int64_t id) {
  store_job_t j;
  drv_result_t rc = store_job_get(f->store, id, &j);
  if (rc != DRV_OK) fail_msg("store_job_get %lld: %s", (long long)id, drv_last_error());
  return j;
}

/* Runs one SQL statement on the database file through a separate connection, as another
 * tool (or a later drover) would. */
static void raw_exec(const char *db, const char *sql) {
  sqlite3 *h = NULL;
  assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
  char *err = NULL;
  if (sqlite3_exec(h, sql, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", sql, err);
  sqlite3_close(h);
}

// --- Tests ---------------------------------------------------------------------------------

static void test_state_names(void **state) {
  assert_string_equal(store_state_name(JOB_QUEUED), "queued");
  assert_string_equal(store_state_name(JOB_RUNNING), "running");
  assert_string_equal(store_state_name(JOB_SUCCEEDED), "succeeded");
  assert_string_equal(store_state_name(JOB_FAILED), "failed");
  assert_string_equal(store_state_name(JOB_CANCELLED), "cancelled");
  assert_string_equal(store_state_name((job_state_t)99), "unknown");
}

static void test_open_creates_nested_dir_in_wal_mode(void **state) {
  fx_t *f = *state;
  /* Three missing levels below the temporary directory. */
  snprintf(f->state, sizeof f->state, "%s/a/b/c", f->dir);
  snprintf(f->db, sizeof f->db, "%s/drover.db", f->state);
  open_store(f);
  struct stat st;
  assert_int_equal(stat(f->db, &st), 0);
  assert_true(S_ISREG(st.st_mode));

  /* WAL is recorded in the file: another connection sees it. */
  sqlite3 *h = NULL;
  sqlite3_stmt *q = NULL;
  assert_int_equal(sqlite3_open(f->db, &h), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(q), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
  sqlite3_finalize(q);
  assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(q), SQLITE_ROW);
  assert_true(sqlite3_column_int(q, 0) >= 1);
  sqlite3_finalize(q);
  sqlite3_close(h);

  /* Opening an existing directory again works too. */
  store_close(&f->store);
  assert_null(f->store);
  open_store(f);
}

static void test_insert_and_get(void **state) {
  fx_t *f = *state;
  open_store(f);
  double t0 = drv_wall_s();
  int64_t a = -1, b = -1;
  assert_int_equal(store_job_insert(f->store, "mnist", "managed", 4, "name: mnist\nnodes: 4\n",
                                    "/runs/mnist-1", &a),
                   DRV_OK);
  assert_int_equal(store_job_insert(f->store, "second", "attached", 1, "", NULL, &b), DRV_OK);
  double t1 = drv_wall_s();
  assert_int_equal(a, 1);
  assert_int_equal(b, 2);

  store_job_t j = get(f, a);
  assert_int_equal(j.id, 1);
  assert_string_equal(j.name, "mnist");
  assert_string_equal(j.target, "managed");
  assert_int_equal(j.nodes, 4);
  assert_int_equal(j.state, JOB_QUEUED);
  assert_string_equal(j.reason, "");
  assert_true(j.submitted_at >= t0 && j.submitted_at <= t1);
  assert_true(j.started_at == 0.0);
  assert_true(j.finished_at == 0.0);
  assert_true(isnan(j.test_accuracy));
  assert_true(isnan(j.test_loss));
  assert_true(isnan(j.samples_per_s));
  assert_int_equal(j.steps_done, 0);
  assert_string_equal(j.run_dir, "/runs/mnist-1");

  j = get(f, b);
  assert_string_equal(j.name, "second");
  assert_string_equal(j.target, "attached");
  assert_string_equal(j.run_dir, "");

  char *yaml = NULL;
  assert_int_equal(store_job_spec(f->store, a, &yaml), DRV_OK);
  assert_string_equal(yaml, "name: mnist\nnodes: 4\n");
  free(yaml);

  /* The run directory is known once the id is. */
  assert_int_equal(store_job_set_run_dir(f->store, b, "runs/second-2"), DRV_OK);
  assert_string_equal(get(f, b).run_dir, "runs/second-2");
  assert_string_equal(get(f, a).run_dir, "/runs/mnist-1");
  char long_dir[1100];
  memset(long_dir, 'd', sizeof long_dir - 1);
  long_dir[sizeof long_dir - 1] = '\0';
  assert_int_equal(store_job_set_run_dir(f->store, b, long_dir), DRV_ERR_INVALID);
  assert_string_equal(get(f, b).run_dir, "runs/second-2");
}

static void test_absent_job(void **state) {
  fx_t *f = *state;
  open_store(f);
  insert(f, "only");
  store_job_t j;
  assert_int_equal(store_job_get(f->store, 7, &j), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "job 7: no such job");
  assert_int_equal(store_job_set_state(f->store, 7, JOB_RUNNING, NULL), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "job 7: no such job");
  assert_int_equal(store_job_set_metrics(f->store, 7, 0.5, 0.5, 1, 1), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "job 7: no such job");
  assert_int_equal(store_job_set_run_dir(f->store, 7, "runs/x"), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "job 7: no such job");
  char *yaml = (char *)"sentinel";
  assert_int_equal(store_job_spec(f->store, 7, &yaml), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "job 7: no such job");
  assert_null(yaml);
}

static void test_insert_rejects_bad_arguments(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t id = -1;
  char long_name[200];
  memset(long_name, 'n', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  assert_int_equal(store_job_insert(f->store, long_name, "local", 1, "", "", &id), DRV_ERR_INVALID);
  assert_int_equal(store_job_insert(f->store, "", "local", 1, "", "", &id), DRV_ERR_INVALID);
  assert_int_equal(store_job_insert(f->store, "x", "", 1, "", "", &id), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "is not a target's name"));
  assert_int_equal(store_job_insert(f->store, "x", "local", 0, "", "", &id), DRV_ERR_INVALID);
  assert_int_equal(store_job_insert(f->store, "x", "local", 1, NULL, "", &id), DRV_ERR_INVALID);
  assert_int_equal(id, -1);
  /* Nothing was stored, so the next id is still 1. */
  assert_int_equal(insert(f, "ok"), 1);
}

static void test_state_transitions_and_timestamps(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t id = insert(f, "train");

  double t0 = drv_wall_s();
  assert_int_equal(store_job_set_state(f->store, id, JOB_RUNNING, NULL), DRV_OK);
  double t1 = drv_wall_s();
  store_job_t j = get(f, id);
  assert_int_equal(j.state, JOB_RUNNING);
  assert_true(j.started_at >= t0 && j.started_at <= t1);
  assert_true(j.started_at >= j.submitted_at);
  assert_true(j.finished_at == 0.0);
  double started = j.started_at;

  /* Staying running (e.g. after a re-formation) keeps the first start time. */
  assert_int_equal(store_job_set_state(f->store, id, JOB_RUNNING, NULL), DRV_OK);
  j = get(f, id);
  assert_true(j.started_at == started);

  double t2 = drv_wall_s();
  assert_int_equal(store_job_set_state(f->store, id, JOB_SUCCEEDED, NULL), DRV_OK);
  double t3 = drv_wall_s();
  j = get(f, id);
  assert_int_equal(j.state, JOB_SUCCEEDED);
  assert_string_equal(j.reason, "");
  assert_true(j.started_at == started);
  assert_true(j.finished_at >= t2 && j.finished_at <= t3);
  assert_true(j.finished_at >= j.started_at);

  /* A finished job stays finished: a late cancel is refused and changes nothing. */
  assert_int_equal(store_job_set_state(f->store, id, JOB_CANCELLED, "too late"), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "job 1: already succeeded, cannot move to cancelled");
  store_job_t k = get(f, id);
  assert_int_equal(k.state, JOB_SUCCEEDED);
  assert_string_equal(k.reason, "");
  assert_true(k.finished_at == j.finished_at);

  /* Failure carries its reason; cancelling a queued job sets finished_at only. */
  int64_t bad = insert(f, "bad");
  assert_int_equal(store_job_set_state(f->store, bad, JOB_RUNNING, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, bad, JOB_FAILED, "worker 3 died: SIGSEGV"),
                   DRV_OK);
  j = get(f, bad);
  assert_int_equal(j.state, JOB_FAILED);
  assert_string_equal(j.reason, "worker 3 died: SIGSEGV");
  assert_true(j.finished_at > 0.0);

  int64_t gone = insert(f, "gone");
  assert_int_equal(store_job_set_state(f->store, gone, JOB_CANCELLED, "cancelled by alice"),
                   DRV_OK);
  j = get(f, gone);
  assert_int_equal(j.state, JOB_CANCELLED);
  assert_string_equal(j.reason, "cancelled by alice");
  assert_true(j.started_at == 0.0);
  assert_true(j.finished_at > 0.0);

  /* running -> queued (put back in the queue) is allowed. */
  int64_t back = insert(f, "back");
  assert_int_equal(store_job_set_state(f->store, back, JOB_RUNNING, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, back, JOB_QUEUED, "waiting for nodes"), DRV_OK);
  j = get(f, back);
  assert_int_equal(j.state, JOB_QUEUED);
  assert_string_equal(j.reason, "waiting for nodes");
  assert_true(j.finished_at == 0.0);

  assert_int_equal(store_job_set_state(f->store, back, (job_state_t)42, NULL), DRV_ERR_INVALID);
}

static void test_metrics(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t id = insert(f, "m");
  assert_int_equal(store_job_set_metrics(f->store, id, 0.8875, 0.3125, 12345.5, 4690), DRV_OK);
  store_job_t j = get(f, id);
  assert_true(j.test_accuracy == 0.8875);
  assert_true(j.test_loss == 0.3125);
  assert_true(j.samples_per_s == 12345.5);
  assert_int_equal(j.steps_done, 4690);

  /* NAN stays unknown; the full uint64_t range round-trips. */
  assert_int_equal(store_job_set_metrics(f->store, id, NAN, 1.5, NAN, UINT64_MAX), DRV_OK);
  j = get(f, id);
  assert_true(isnan(j.test_accuracy));
  assert_true(j.test_loss == 1.5);
  assert_true(isnan(j.samples_per_s));
  assert_true(j.steps_done == UINT64_MAX);
  assert_int_equal(j.state, JOB_QUEUED);
}

typedef struct {
  int64_t ids[16];
  int n;
  int stop_after; /* 0: never stop */
} seen_t;

static int collect(const store_job_t *job, void *arg) {
  seen_t *s = arg;
  s->ids[s->n++] = job->id;
  return s->stop_after && s->n >= s->stop_after;
}

static void test_list(void **state) {
  fx_t *f = *state;
  open_store(f);
  seen_t seen = {0};
  assert_int_equal(store_job_list(f->store, 0, collect, &seen), DRV_OK);
  assert_int_equal(seen.n, 0);

  for (int i = 0; i < 5; i++) insert(f, "j");
  assert_int_equal(store_job_list(f->store, 0, collect, &seen), DRV_OK);
  assert_int_equal(seen.n, 5);
  for (int i = 0; i < 5; i++) assert_int_equal(seen.ids[i], 5 - i); /* newest first */

  seen = (seen_t){0};
  assert_int_equal(store_job_list(f->store, 2, collect, &seen), DRV_OK);
  assert_int_equal(seen.n, 2);
  assert_int_equal(seen.ids[0], 5);
  assert_int_equal(seen.ids[1], 4);

  seen = (seen_t){.stop_after = 3};
  assert_int_equal(store_job_list(f->store, 0, collect, &seen), DRV_OK);
  assert_int_equal(seen.n, 3);
  assert_int_equal(seen.ids[2], 3);
}

/* A list callback that writes through the same store while the walk is open. */
static int cancel_each(const store_job_t *job, void *arg) {
  store_t *s = arg;
  return store_job_set_state(s, job->id, JOB_CANCELLED, "sweep") != DRV_OK;
}

static void test_list_callback_may_use_store(void **state) {
  fx_t *f = *state;
  open_store(f);
  for (int i = 0; i < 3; i++) insert(f, "j");
  assert_int_equal(store_job_list(f->store, 0, cancel_each, f->store), DRV_OK);
  for (int64_t id = 1; id <= 3; id++) assert_int_equal(get(f, id).state, JOB_CANCELLED);
}

static void test_reopen_keeps_jobs_and_recovers(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t queued = insert(f, "queued");
  int64_t running = insert(f, "running");
  int64_t done = insert(f, "done");
  int64_t cancelled = insert(f, "cancelled");
  assert_int_equal(store_job_set_state(f->store, running, JOB_RUNNING, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, done, JOB_RUNNING, NULL), DRV_OK);
  assert_int_equal(store_job_set_metrics(f->store, done, 0.9, 0.25, 1000, 42), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, done, JOB_SUCCEEDED, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, cancelled, JOB_CANCELLED, "by bob"), DRV_OK);
  store_job_t before[5];
  for (int64_t id = 1; id <= 4; id++) before[id] = get(f, id);

  /* The coordinator goes away and a new one opens the same directory. */
  store_close(&f->store);
  open_store(f);
  for (int64_t id = 1; id <= 4; id++) {
    store_job_t j = get(f, id);
    const store_job_t *b = &before[id];
    assert_int_equal(j.id, b->id);
    assert_string_equal(j.name, b->name);
    assert_string_equal(j.target, b->target);
    assert_int_equal(j.nodes, b->nodes);
    assert_int_equal(j.state, b->state);
    assert_string_equal(j.reason, b->reason);
    assert_true(j.submitted_at == b->submitted_at);
    assert_true(j.started_at == b->started_at);
    assert_true(j.finished_at == b->finished_at);
    assert_string_equal(j.run_dir, b->run_dir);
  }
  store_job_t d = get(f, done);
  assert_true(d.test_accuracy == 0.9 && d.test_loss == 0.25 && d.samples_per_s == 1000);
  assert_int_equal(d.steps_done, 42);

  double t0 = drv_wall_s();
  uint32_t changed = 99;
  assert_int_equal(store_recover(f->store, &changed), DRV_OK);
  double t1 = drv_wall_s();

  assert_int_equal(changed, 1); /* only the running job moves */
  (void)t0;
  (void)t1;

  /* A queued job stays queued as it was; a running one is queued again to be resumed. */
  store_job_t q = get(f, queued);
  assert_int_equal(q.state, JOB_QUEUED);
  assert_string_equal(q.reason, "");
  store_job_t r = get(f, running);
  assert_int_equal(r.state, JOB_QUEUED);
  assert_string_equal(r.reason, "coordinator restarted while the job was running");
  assert_true(r.started_at == before[running].started_at);
  assert_true(r.finished_at == 0);

  /* Finished jobs are left exactly as they were. */
  d = get(f, done);
  assert_int_equal(d.state, JOB_SUCCEEDED);
  assert_true(d.finished_at == before[done].finished_at);
  store_job_t c = get(f, cancelled);
  assert_int_equal(c.state, JOB_CANCELLED);
  assert_string_equal(c.reason, "by bob");

  /* Recovery is idempotent, and its result is itself durable. */
  assert_int_equal(store_recover(f->store, &changed), DRV_OK);
  assert_int_equal(changed, 0);
  store_close(&f->store);
  open_store(f);
  assert_int_equal(get(f, running).state, JOB_QUEUED);
  assert_int_equal(store_recover(f->store, NULL), DRV_OK);
}

/* Pool, resume directory and checkpoint step survive a reopen. */
static void test_resume_fields(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t id = insert(f, "resumable");
  store_job_t j = get(f, id);
  assert_string_equal(j.pool, "");
  assert_int_equal(j.ckpt_step, 0);
  assert_string_equal(j.resume_dir, "");
  assert_int_equal(store_job_set_pool(f->store, id, "local-42"), DRV_OK);
  assert_int_equal(store_job_set_resume_dir(f->store, id, "/runs/x-1/checkpoints"), DRV_OK);
  assert_int_equal(store_job_set_checkpoint(f->store, id, 200), DRV_OK);
  assert_int_equal(store_job_set_generation(f->store, id, 3), DRV_OK);
  store_close(&f->store);
  open_store(f);
  j = get(f, id);
  assert_string_equal(j.pool, "local-42");
  assert_string_equal(j.resume_dir, "/runs/x-1/checkpoints");
  assert_int_equal(j.ckpt_step, 200);
  assert_int_equal(j.generation, 3);
  assert_int_equal(store_job_set_checkpoint(f->store, 999, 1), DRV_ERR_INVALID);
  assert_int_equal(store_job_set_generation(f->store, 999, 1), DRV_ERR_INVALID);
  char big[2000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(store_job_set_resume_dir(f->store, id, big), DRV_ERR_INVALID);
}

static int count_jobs(const store_job_t *job, void *arg) {
  (void)job;
  ++*(int *)arg;
  return 0;
}

static int jobs_in(fx_t *f) {
  int n = 0;
  assert_int_equal(store_job_list(f->store, 0, count_jobs, &n), DRV_OK);
  return n;
}

/* A transaction records all its writes or none: rolled back, the job is gone (and so is a
 * write that failed inside it); committed, it survives a reopen whole. */
static void test_transaction_all_or_nothing(void **state) {
  fx_t *f = *state;
  open_store(f);
  assert_int_equal(store_begin(f->store), DRV_OK);
  int64_t id = insert(f, "dropped");
  assert_int_equal(store_job_set_pool(f->store, id, "local-1"), DRV_OK);
  char big[2000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(store_job_set_resume_dir(f->store, id, big), DRV_ERR_INVALID);
  store_rollback(f->store);
  assert_int_equal(jobs_in(f), 0);
  store_rollback(f->store); /* none open: nothing happens */

  assert_int_equal(store_begin(f->store), DRV_OK);
  id = insert(f, "kept");
  assert_int_equal(store_job_set_run_dir(f->store, id, "/runs/kept-1"), DRV_OK);
  assert_int_equal(store_job_set_pool(f->store, id, "local-2"), DRV_OK);
  assert_int_equal(store_commit(f->store), DRV_OK);
  assert_int_equal(store_commit(f->store), DRV_ERR_SYS); /* none open */
  store_close(&f->store);
  open_store(f);
  assert_int_equal(jobs_in(f), 1);
  store_job_t j = get(f, id);
  assert_string_equal(j.name, "kept");
  assert_string_equal(j.run_dir, "/runs/kept-1");
  assert_string_equal(j.pool, "local-2");
}

static void test_ids_not_reused_after_reopen(void **state) {
  fx_t *f = *state;
  open_store(f);
  insert(f, "a");
  insert(f, "b");
  assert_int_equal(insert(f, "c"), 3);
  store_close(&f->store);

  /* The newest row disappears (a future prune, or a hand edit); its id stays spent. */
  raw_exec(f->db, "DELETE FROM jobs WHERE id = 3");
  open_store(f);
  store_job_t j;
  assert_int_equal(store_job_get(f->store, 3, &j), DRV_ERR_INVALID);
  assert_int_equal(insert(f, "d"), 4);
  store_close(&f->store);
  open_store(f);
  assert_int_equal(insert(f, "e"), 5);
  assert_string_equal(get(f, 4).name, "d");
}

static void test_quotes_and_unicode_survive(void **state) {
  fx_t *f = *state;
  open_store(f);
  const char *name = "it's a \"job\"; DROP TABLE jobs; -- ünïcödé 训练 🚀 %s %n";
  const char *spec = "name: 'it''s'\nnote: \"\\u00e9 ✓\"\n";
  const char *run_dir = "/runs/été 'q' \"dq\"";
  const char *reason = "worker said: \"can't\" — %d\n second line";
  int64_t id = -1;
  assert_int_equal(store_job_insert(f->store, name, "local", 1, spec, run_dir, &id), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, id, JOB_FAILED, reason), DRV_OK);
  store_close(&f->store);
  open_store(f);

  store_job_t j = get(f, id);
  assert_string_equal(j.name, name);
  assert_string_equal(j.run_dir, run_dir);
  assert_string_equal(j.reason, reason);
  char *yaml = NULL;
  assert_int_equal(store_job_spec(f->store, id, &yaml), DRV_OK);
  assert_string_equal(yaml, spec);
  free(yaml);
  /* The table is still there and holds exactly that one job. */
  seen_t seen = {0};
  assert_int_equal(store_job_list(f->store, 0, collect, &seen), DRV_OK);
  assert_int_equal(seen.n, 1);
}

static void test_long_reason_cut_at_utf8_boundary(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t id = insert(f, "r");
  /* 510 ASCII bytes then a 3-byte character: only 511 bytes fit, so the character must
   * go entirely rather than leave a broken sequence. */
  char reason[600];
  memset(reason, 'x', 510);
  memcpy(reason + 510, "\xe2\x9c\x93 tail", 9);
  assert_int_equal(store_job_set_state(f->store, id, JOB_FAILED, reason), DRV_OK);
  store_job_t j = get(f, id);
  assert_int_equal(strlen(j.reason), 510);
  assert_int_equal(memcmp(j.reason, reason, 510), 0);
}

static void test_open_uncreatable_dir(void **state) {
  fx_t *f = *state;
  /* A regular file where a parent directory should be: fails for root too. */
  char file[280];
  snprintf(file, sizeof file, "%s/not-a-dir", f->dir);
  FILE *fp = fopen(file, "w");
  assert_non_null(fp);
  fclose(fp);
  snprintf(f->state, sizeof f->state, "%s/state", file);

  store_t *s = (store_t *)0x1;
  assert_int_equal(store_open(f->state, &s), DRV_ERR_SYS);
  assert_null(s);
  const char *msg = drv_last_error();
  assert_non_null(strstr(msg, "cannot create state directory"));
  assert_non_null(strstr(msg, f->state));
  assert_non_null(strstr(msg, "Not a directory"));

  /* The state directory itself being a file is refused the same way. */
  assert_int_equal(store_open(file, &s), DRV_ERR_SYS);
  assert_null(s);
  assert_non_null(strstr(drv_last_error(), file));
  assert_non_null(strstr(drv_last_error(), "Not a directory"));

  assert_int_equal(store_open("", &s), DRV_ERR_INVALID);
}

static void test_open_not_a_database(void **state) {
  fx_t *f = *state;
  assert_int_equal(mkdir(f->state, 0755), 0);
  FILE *fp = fopen(f->db, "w");
  assert_non_null(fp);
  for (int i = 0; i < 64; i++) fputs("this is not an SQLite database. ", fp);
  fclose(fp);
  store_t *s = NULL;
  assert_int_equal(store_open(f->state, &s), DRV_ERR_SYS);
  assert_null(s);
  assert_non_null(strstr(drv_last_error(), f->db));
  assert_non_null(strstr(drv_last_error(), "not a database"));
}

typedef struct {
  store_node_t nodes[4];
  int n;
} nodes_seen_t;

static int node_seen(const store_node_t *x, void *arg) {
  nodes_seen_t *seen = arg;
  seen->nodes[seen->n++] = *x;
  return seen->n >= 4;
}

/* Managed nodes: recorded, replaced, listed by name, forgotten; and a job may name any
 * target (schema 5 dropped the old list of three). */
static void test_nodes_and_named_targets(void **state) {
  fx_t *f = *state;
  open_store(f);
  store_node_t a = {.name = "cpu-pool-1", .target = "cpu-pool", .handle = "4242", .launched_at = 5};
  store_node_t b = {.name = "cpu-pool-0", .target = "cpu-pool", .host = "h1", .launched_at = 6};
  assert_int_equal(store_node_put(f->store, &a), DRV_OK);
  assert_int_equal(store_node_put(f->store, &b), DRV_OK);
  snprintf(b.handle, sizeof b.handle, "h1 77");
  assert_int_equal(store_node_put(f->store, &b), DRV_OK); /* its handle, once known */
  nodes_seen_t seen = {.n = 0};
  assert_int_equal(store_node_list(f->store, node_seen, &seen), DRV_OK);
  assert_int_equal(seen.n, 2);
  assert_string_equal(seen.nodes[0].name, "cpu-pool-0");
  assert_string_equal(seen.nodes[0].handle, "h1 77");
  assert_string_equal(seen.nodes[0].host, "h1");
  assert_string_equal(seen.nodes[1].handle, "4242");
  assert_true(seen.nodes[1].launched_at == 5);
  assert_int_equal(store_node_delete(f->store, "cpu-pool-0"), DRV_OK);
  seen.n = 0;
  assert_int_equal(store_node_list(f->store, node_seen, &seen), DRV_OK);
  assert_int_equal(seen.n, 1);
  int64_t id = 0;
  assert_int_equal(store_job_insert(f->store, "j", "cpu-pool", 2, "name: j\n", "", &id), DRV_OK);
  assert_string_equal(get(f, id).target, "cpu-pool");
}

/* Pruned newest jobs do not give their ids away: a job id (and its run directory) is never
 * reused, across the schema 5 rebuild of the jobs table too. */
static void test_ids_never_reused(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t a = 0, b = 0, c = 0;
  assert_int_equal(store_job_insert(f->store, "a", "local", 1, "x", "", &a), DRV_OK);
  assert_int_equal(store_job_insert(f->store, "b", "local", 1, "x", "", &b), DRV_OK);
  store_close(&f->store);
  raw_exec(f->db, "DELETE FROM jobs WHERE name = 'b'; DROP TABLE nodes; PRAGMA user_version = 4;");
  open_store(f); /* migrates 4 -> 5 again: the table rebuilt */
  assert_int_equal(store_job_insert(f->store, "c", "local", 1, "x", "", &c), DRV_OK);
  assert_true(c > b);
}

static void test_open_newer_schema_refused(void **state) {
  fx_t *f = *state;
  open_store(f);
  insert(f, "kept");
  store_close(&f->store);
  raw_exec(f->db, "PRAGMA user_version = 99");

  store_t *s = NULL;
  assert_int_equal(store_open(f->state, &s), DRV_ERR_INVALID);
  assert_null(s);
  assert_non_null(strstr(drv_last_error(), "schema version 99 is newer"));

  /* The refusal changed nothing: back at the current version, the job is there. */
  raw_exec(f->db, "PRAGMA user_version = 5");
  open_store(f);
  assert_string_equal(get(f, 1).name, "kept");
}

/* A database written by the first schema (version 1) is migrated in place, its jobs kept. */
static void test_migrates_version_1(void **state) {
  fx_t *f = *state;
  assert_int_equal(mkdir(f->state, 0755), 0);
  raw_exec(f->db,
           "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,"
           " target TEXT NOT NULL, nodes INTEGER NOT NULL, state TEXT NOT NULL,"
           " reason TEXT NOT NULL DEFAULT '', submitted_at REAL NOT NULL,"
           " started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,"
           " test_accuracy REAL, test_loss REAL, samples_per_s REAL,"
           " steps_done INTEGER NOT NULL DEFAULT 0, run_dir TEXT NOT NULL DEFAULT '',"
           " spec_yaml TEXT NOT NULL);"
           "CREATE INDEX jobs_by_state ON jobs(state);"
           "INSERT INTO jobs (name, target, nodes, state, submitted_at, run_dir, spec_yaml)"
           " VALUES ('old', 'attached', 2, 'succeeded', 1.0, '/r/old-1', 'name: old');"
           "PRAGMA user_version = 1;");
  open_store(f);
  store_job_t j = get(f, 1);
  assert_string_equal(j.name, "old");
  assert_int_equal(j.state, JOB_SUCCEEDED);
  assert_string_equal(j.run_dir, "/r/old-1");
  assert_string_equal(j.pool, "");
  assert_int_equal(j.ckpt_step, 0);
  assert_int_equal(store_job_set_checkpoint(f->store, 1, 7), DRV_OK);
  int64_t id = -1;
  assert_int_equal(store_job_by_token(f->store, "t", &id), DRV_OK); /* version 3's column */
  assert_int_equal(id, 0);
  assert_string_equal(j.owner, ""); /* version 4's columns */
  assert_int_equal(store_job_set_owner(f->store, 1, "alice", "0123456789abcdef0123456789abcdef"),
                   DRV_OK);
  j = get(f, 1);
  assert_string_equal(j.owner, "alice");
  assert_string_equal(j.lineage, "0123456789abcdef0123456789abcdef");
}

/* A submission token finds its job, after a reopen too; it names one job only, and any
 * number of jobs have none. */
static void test_submission_tokens(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t a = insert(f, "a"), b = insert(f, "b"), c = insert(f, "c"), id = -1;
  assert_int_equal(store_job_set_token(f->store, a, "3f9c"), DRV_OK);
  assert_int_equal(store_job_set_token(f->store, b, ""), DRV_OK);
  assert_int_equal(store_job_set_token(f->store, c, ""), DRV_OK);
  assert_int_equal(store_job_set_token(f->store, b, "3f9c"), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "token already names job 1"));
  assert_int_equal(store_job_set_token(f->store, a, "3f9c"), DRV_OK); /* its own again */
  char big[STORE_TOKEN_MAX + 2];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(store_job_set_token(f->store, c, big), DRV_ERR_INVALID);
  assert_int_equal(store_job_set_token(f->store, 99, "other"), DRV_ERR_INVALID);
  store_close(&f->store);
  open_store(f);
  assert_int_equal(store_job_by_token(f->store, "3f9c", &id), DRV_OK);
  assert_int_equal(id, a);
  assert_int_equal(store_job_by_token(f->store, "nope", &id), DRV_OK);
  assert_int_equal(id, 0);
  assert_int_equal(store_job_by_token(f->store, "", &id), DRV_OK);
  assert_int_equal(id, 0);
}

static void test_two_connections_see_each_other(void **state) {
  fx_t *f = *state;
  open_store(f);
  store_t *other = NULL;
  assert_int_equal(store_open(f->state, &other), DRV_OK);
  int64_t id = insert(f, "shared");
  store_job_t j;
  assert_int_equal(store_job_get(other, id, &j), DRV_OK);
  assert_string_equal(j.name, "shared");
  assert_int_equal(store_job_set_state(other, id, JOB_RUNNING, NULL), DRV_OK);
  assert_int_equal(get(f, id).state, JOB_RUNNING);
  store_close(&other);
  assert_null(other);
  store_close(&other); /* NULL-safe */
}

static void test_second_lock_refused(void **state) {
  fx_t *f = *state;
  open_store(f);
  assert_int_equal(store_lock(f->store), DRV_OK);
  assert_int_equal(store_lock(f->store), DRV_OK); /* the holder may ask again */
  char pidfile[340], text[32] = "";
  snprintf(pidfile, sizeof pidfile, "%s/coordinator.lock", f->state);
  FILE *fp = fopen(pidfile, "r");
  assert_non_null(fp);
  assert_non_null(fgets(text, sizeof text, fp));
  fclose(fp);
  assert_int_equal(atoi(text), (int)getpid());

  /* A second store on the directory may read and write, but not be its coordinator. */
  store_t *other = NULL;
  assert_int_equal(store_open(f->state, &other), DRV_OK);
  assert_int_equal(store_lock(other), DRV_ERR_INVALID);
  char want[400];
  snprintf(want, sizeof want, "%s: another coordinator (pid %d) uses this state directory",
           f->state, (int)getpid());
  assert_string_equal(drv_last_error(), want);
  int64_t id = insert(f, "locked");
  store_job_t j;
  assert_int_equal(store_job_get(other, id, &j), DRV_OK);

  /* Closing the holder releases the lock. */
  store_close(&f->store);
  assert_int_equal(store_lock(other), DRV_OK);
  store_close(&other);
}

/* Finished jobs older than the history go; newer ones, queued and running ones (however
 * old) stay; ids stay spent; days <= 0 deletes nothing. */
static void test_prune_finished_history(void **state) {
  fx_t *f = *state;
  open_store(f);
  int64_t old_ok = insert(f, "old-ok"), old_failed = insert(f, "old-failed");
  int64_t old_cancelled = insert(f, "old-cancelled"), recent = insert(f, "recent");
  int64_t queued = insert(f, "queued"), running = insert(f, "running");
  assert_int_equal(store_job_set_state(f->store, old_ok, JOB_RUNNING, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, old_ok, JOB_SUCCEEDED, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, old_failed, JOB_FAILED, "x"), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, old_cancelled, JOB_CANCELLED, "y"), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, recent, JOB_SUCCEEDED, NULL), DRV_OK);
  assert_int_equal(store_job_set_state(f->store, running, JOB_RUNNING, NULL), DRV_OK);
  /* 40 days ago, as the clock said then */
  raw_exec(f->db,
           "UPDATE jobs SET finished_at = finished_at - 40 * 86400,"
           " submitted_at = submitted_at - 41 * 86400 WHERE name LIKE 'old-%'");
  raw_exec(f->db,
           "UPDATE jobs SET submitted_at = submitted_at - 90 * 86400"
           " WHERE name IN ('queued', 'running')");
  uint32_t n = 99;
  assert_int_equal(store_prune(f->store, 0, &n), DRV_OK);
  assert_int_equal(n, 0);
  assert_int_equal(store_prune(f->store, 60, &n), DRV_OK);
  assert_int_equal(n, 0);
  assert_int_equal(store_prune(f->store, 30, &n), DRV_OK);
  assert_int_equal(n, 3);
  store_job_t j;
  assert_int_equal(store_job_get(f->store, old_ok, &j), DRV_ERR_INVALID);
  assert_int_equal(store_job_get(f->store, old_failed, &j), DRV_ERR_INVALID);
  assert_int_equal(store_job_get(f->store, old_cancelled, &j), DRV_ERR_INVALID);
  assert_int_equal(get(f, recent).state, JOB_SUCCEEDED);
  assert_int_equal(get(f, queued).state, JOB_QUEUED);
  assert_int_equal(get(f, running).state, JOB_RUNNING);
  assert_int_equal(store_prune(f->store, 30, NULL), DRV_OK); /* nothing left to do */
  assert_int_equal(insert(f, "next"), running + 1);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_state_names),
      T(test_open_creates_nested_dir_in_wal_mode),
      T(test_insert_and_get),
      T(test_absent_job),
      T(test_insert_rejects_bad_arguments),
      T(test_state_transitions_and_timestamps),
      T(test_metrics),
      T(test_list),
      T(test_list_callback_may_use_store),
      T(test_reopen_keeps_jobs_and_recovers),
      T(test_resume_fields),
      T(test_migrates_version_1),
      T(test_transaction_all_or_nothing),
      T(test_submission_tokens),
      T(test_ids_not_reused_after_reopen),
      T(test_quotes_and_unicode_survive),
      T(test_long_reason_cut_at_utf8_boundary),
      T(test_open_uncreatable_dir),
      T(test_open_not_a_database),
      T(test_nodes_and_named_targets),
      T(test_ids_never_reused),
      T(test_open_newer_schema_refused),
      T(test_two_connections_see_each_other),
      T(test_second_lock_refused),
      T(test_prune_finished_history),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
