/* store.c: the coordinator's durable state in SQLite (see store.h for the model).
 *
 * Every statement is prepared per call with bound parameters and finalized before the
 * call returns: no cached statement can be left half-stepped by an error, and
 * store_job_list's callback may use the store re-entrantly. The only SQL run without
 * parameters is constant text (pragmas, the schema migrations, BEGIN/COMMIT).
 */
#include "coordinator/store.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/log.h"

/* Writers from other connections (another coordinator, the CLI reading status) are
 * waited for this long before an operation fails with "database is locked". */
#define STORE_BUSY_TIMEOUT_MS 5000

struct store {
  sqlite3 *db;
  char *dir;   /* the state directory, as given */
  char *path;  /* <state_dir>/drover.db, for messages */
  int lock_fd; /* <state_dir>/coordinator.lock once store_lock took it; -1 before */
};

// --- Schema ---------------------------------------------------------------------------

/* store_migrations[v] takes the schema from version v to v + 1 and ends by setting
 * user_version to v + 1; store_open runs the missing ones in one transaction. Append
 * new versions, never edit a shipped one. */
static const char *const store_migrations[] = {
    /* 0 -> 1: the jobs table. */
    "CREATE TABLE jobs ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  target TEXT NOT NULL CHECK (target IN ('local', 'attached', 'managed')),"
    "  nodes INTEGER NOT NULL CHECK (nodes >= 1),"
    "  state TEXT NOT NULL"
    "    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  submitted_at REAL NOT NULL,"
    "  started_at REAL NOT NULL DEFAULT 0,"
    "  finished_at REAL NOT NULL DEFAULT 0,"
    "  test_accuracy REAL," /* NULL = unknown */
    "  test_loss REAL,"
    "  samples_per_s REAL,"
    "  steps_done INTEGER NOT NULL DEFAULT 0,"
    "  run_dir TEXT NOT NULL DEFAULT '',"
    "  spec_yaml TEXT NOT NULL"
    ");"
    "CREATE INDEX jobs_by_state ON jobs(state);"
    "PRAGMA user_version = 1;",
    /* 1 -> 2: what a restarted coordinator needs to resume a job. */
    "ALTER TABLE jobs ADD COLUMN pool TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN ckpt_step INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN resume_dir TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;"
    "PRAGMA user_version = 2;",
    /* 2 -> 3: the client's submission token, so that a retried submit finds its job. */
    "ALTER TABLE jobs ADD COLUMN token TEXT NOT NULL DEFAULT '';"
    "CREATE UNIQUE INDEX jobs_by_token ON jobs(token) WHERE token != '';"
    "PRAGMA user_version = 3;",
    /* 3 -> 4: who owns the job (the name bound to the submitter's key) and its lineage
     * (kept by resume: a checkpoint of another lineage is never loaded). */
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN lineage TEXT NOT NULL DEFAULT '';"
    "PRAGMA user_version = 4;",
    /* 4 -> 5: a job's target is any target's name (managed targets are named), so the
     * jobs table is rebuilt without the old CHECK; the managed nodes the coordinator
     * started, so that a restarted one finds them. */
    "CREATE TABLE jobs_v5 ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  target TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 32),"
    "  nodes INTEGER NOT NULL CHECK (nodes >= 1),"
    "  state TEXT NOT NULL"
    "    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  submitted_at REAL NOT NULL,"
    "  started_at REAL NOT NULL DEFAULT 0,"
    "  finished_at REAL NOT NULL DEFAULT 0,"
    "  test_accuracy REAL,"
    "  test_loss REAL,"
    "  samples_per_s REAL,"
    "  steps_done INTEGER NOT NULL DEFAULT 0,"
    "  run_dir TEXT NOT NULL DEFAULT '',"
    "  spec_yaml TEXT NOT NULL,"
    "  pool TEXT NOT NULL DEFAULT '',"
    "  ckpt_step INTEGER NOT NULL DEFAULT 0,"
    "  resume_dir TEXT NOT NULL DEFAULT '',"
    "  generation INTEGER NOT NULL DEFAULT 0,"
    "  token TEXT NOT NULL DEFAULT '',"
    "  owner TEXT NOT NULL DEFAULT '',"
    "  lineage TEXT NOT NULL DEFAULT ''"
    ");"
    "INSERT INTO jobs_v5 SELECT id, name, target, nodes, state, reason, submitted_at,"
    "  started_at, finished_at, test_accuracy, test_loss, samples_per_s, steps_done, run_dir,"
    "  spec_yaml, pool, ckpt_step, resume_dir, generation, token, owner, lineage FROM jobs;"
    /* the ids go on from the old table's counter, not from its largest id left (pruning
     * may have removed the newest): a job id, and its run directory, are never reused */
    "INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs_v5', seq FROM sqlite_sequence"
    "  WHERE name = 'jobs' AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs_v5');"
    "UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'jobs')"
    "  WHERE name = 'jobs_v5' AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs');"
    "DROP TABLE jobs;"
    "ALTER TABLE jobs_v5 RENAME TO jobs;"
    "CREATE INDEX jobs_by_state ON jobs(state);"
    "CREATE UNIQUE INDEX jobs_by_token ON jobs(token) WHERE token != '';"
    "CREATE TABLE nodes ("
    "  name TEXT PRIMARY KEY,"
    "  target TEXT NOT NULL,"
    "  host TEXT NOT NULL DEFAULT '',"
    "  handle TEXT NOT NULL DEFAULT '',"
    "  launched_at REAL NOT NULL"
    ");"
    "PRAGMA user_version = 5;",
};

#define STORE_SCHEMA_VERSION ((int)DRV_ARRAY_LEN(store_migrations))

/* Column list shared by every query that fills a store_job_t (see job_read). */
#define STORE_JOB_COLUMNS                                                                       \
  "id, name, target, nodes, state, reason, submitted_at, started_at, finished_at, "             \
  "test_accuracy, test_loss, samples_per_s, steps_done, run_dir, pool, ckpt_step, resume_dir, " \
  "generation, owner, lineage"

static const char *const store_state_names[] = {
    [JOB_QUEUED] = "queued", [JOB_RUNNING] = "running",     [JOB_SUCCEEDED] = "succeeded",
    [JOB_FAILED] = "failed", [JOB_CANCELLED] = "cancelled",
};

const char *store_state_name(job_state_t s) {
  if ((unsigned)s >= DRV_ARRAY_LEN(store_state_names)) return "unknown";
  return store_state_names[s];
}

static int state_from_name(const char *name, job_state_t *out) {
  for (size_t i = 0; i < DRV_ARRAY_LEN(store_state_names); i++) {
    if (strcmp(store_state_names[i], name) == 0) {
      *out = (job_state_t)i;
      return 0;
    }
  }
  return -1;
}

static int state_terminal(job_state_t s) {
  return s == JOB_SUCCEEDED || s == JOB_FAILED || s == JOB_CANCELLED;
}

// --- SQLite helpers -------------------------------------------------------------------

/* Turns the connection's current SQLite error into DRV_ERR_SYS naming the file and the
 * operation ("/var/lib/drover/drover.db: insert job: database is locked"). */
static drv_result_t sql_fail(const store_t *s, const char *what) {
  return drv_error(DRV_ERR_SYS, "%s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static drv_result_t sql_prepare(store_t *s, const char *sql, sqlite3_stmt **st, const char *what) {
  if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) {
    *st = NULL;
    return sql_fail(s, what);
  }
  return DRV_OK;
}

/* Runs constant SQL text (no parameters). */
static drv_result_t sql_exec(store_t *s, const char *sql, const char *what) {
  char *msg = NULL;
  if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    drv_result_t rc =
        drv_error(DRV_ERR_SYS, "%s: %s: %s", s->path, what, msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
    return rc;
  }
  return DRV_OK;
}

/* Steps a statement that returns no rows. */
static drv_result_t sql_step_done(store_t *s, sqlite3_stmt *st, const char *what) {
  if (sqlite3_step(st) != SQLITE_DONE) return sql_fail(s, what);
  return DRV_OK;
}

/* Runs an UPDATE of job `id`: DRV_ERR_INVALID "no such job" when it changed no row. */
static drv_result_t update_one_job(store_t *s, sqlite3_stmt *st, int64_t id, const char *what) {
  DRV_CHECK(sql_step_done(s, st, what));
  if (sqlite3_changes(s->db) == 0)
    return drv_error(DRV_ERR_INVALID, "job %lld: no such job", (long long)id);
  return DRV_OK;
}

static int bind_metric(sqlite3_stmt *st, int idx, double v) {
  return isnan(v) ? sqlite3_bind_null(st, idx) : sqlite3_bind_double(st, idx, v);
}

static double column_metric(sqlite3_stmt *st, int col) {
  return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

/* Copies a text column into dst[cap], cutting a longer value at a UTF-8 character
 * boundary so that the copy is still valid text. */
static void column_text_copy(sqlite3_stmt *st, int col, char *dst, size_t cap) {
  const unsigned char *t = sqlite3_column_text(st, col);
  size_t n = (size_t)sqlite3_column_bytes(st, col);
  if (!t) n = 0;
  if (n >= cap) {
    n = cap - 1;
    /* t[n] is the first byte dropped; if it continues a character, drop that whole
     * character. */
    while (n > 0 && (t[n] & 0xC0) == 0x80) n--;
  }
  if (n) memcpy(dst, t, n);
  dst[n] = '\0';
}

/* Fills *out from the current row of a statement selecting STORE_JOB_COLUMNS. */
static drv_result_t job_read(sqlite3_stmt *st, store_job_t *out) {
  memset(out, 0, sizeof *out);
  out->id = sqlite3_column_int64(st, 0);
  column_text_copy(st, 1, out->name, sizeof out->name);
  column_text_copy(st, 2, out->target, sizeof out->target);
  out->nodes = (uint32_t)sqlite3_column_int64(st, 3);
  const char *state = (const char *)sqlite3_column_text(st, 4);
  if (!state || state_from_name(state, &out->state) != 0)
    return drv_error(DRV_ERR_INVALID, "job %lld: unknown state '%s' in the database",
                     (long long)out->id, state ? state : "(null)");
  column_text_copy(st, 5, out->reason, sizeof out->reason);
  out->submitted_at = sqlite3_column_double(st, 6);
  out->started_at = sqlite3_column_double(st, 7);
  out->finished_at = sqlite3_column_double(st, 8);
  out->test_accuracy = column_metric(st, 9);
  out->test_loss = column_metric(st, 10);
  out->samples_per_s = column_metric(st, 11);
  /* Stored as SQLite's signed 64-bit integer; the cast round-trips every uint64_t. */
  out->steps_done = (uint64_t)sqlite3_column_int64(st, 12);
  column_text_copy(st, 13, out->run_dir, sizeof out->run_dir);
  column_text_copy(st, 14, out->pool, sizeof out->pool);
  out->ckpt_step = (uint64_t)sqlite3_column_int64(st, 15);
  column_text_copy(st, 16, out->resume_dir, sizeof out->resume_dir);
  out->generation = (uint32_t)sqlite3_column_int64(st, 17);
  column_text_copy(st, 18, out->owner, sizeof out->owner);
  column_text_copy(st, 19, out->lineage, sizeof out->lineage);
  return DRV_OK;
}

// --- Transactions ---------------------------------------------------------------------

drv_result_t store_begin(store_t *s) {
  if (!s) return drv_error(DRV_ERR_INVALID, "store_begin: NULL store");
  return sql_exec(s, "BEGIN IMMEDIATE", "begin a transaction");
}

drv_result_t store_commit(store_t *s) {
  if (!s) return drv_error(DRV_ERR_INVALID, "store_commit: NULL store");
  drv_result_t rc = sql_exec(s, "COMMIT", "commit a transaction");
  if (rc != DRV_OK) store_rollback(s);
  return rc;
}

void store_rollback(store_t *s) {
  if (s && !sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

// --- Opening --------------------------------------------------------------------------

/* Creates or migrates the schema inside one IMMEDIATE transaction, so that two
 * coordinators opening a new directory at once do not both create it. */
static drv_result_t store_migrate(store_t *s) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  DRV_CHECK(store_begin(s));
  DRV_CHECK_GOTO(sql_prepare(s, "PRAGMA user_version", &st, "read schema version"), rc, fail);
  if (sqlite3_step(st) != SQLITE_ROW) {
    rc = sql_fail(s, "read schema version");
    goto fail;
  }
  int version = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  st = NULL;
  if (version < 0 || version > STORE_SCHEMA_VERSION) {
    rc = drv_error(DRV_ERR_INVALID,
                   "%s: schema version %d is newer than this drover understands (%d)", s->path,
                   version, STORE_SCHEMA_VERSION);
    goto fail;
  }
  for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
    char what[64];
    snprintf(what, sizeof what, "migrate schema %d -> %d", v, v + 1);
    DRV_CHECK_GOTO(sql_exec(s, store_migrations[v], what), rc, fail);
  }
  DRV_CHECK(store_commit(s));
  if (version == 0)
    log_info("%s: created (schema version %d)", s->path, STORE_SCHEMA_VERSION);
  else if (version < STORE_SCHEMA_VERSION)
    log_info("%s: schema migrated from version %d to %d", s->path, version, STORE_SCHEMA_VERSION);
  return DRV_OK;
fail:
  sqlite3_finalize(st);
  store_rollback(s);
  return rc;
}

drv_result_t store_open(const char *state_dir, store_t **out) {
  drv_result_t rc = DRV_OK;
  store_t *s = NULL;
  sqlite3_stmt *st = NULL;
  if (!out) return drv_error(DRV_ERR_INVALID, "store_open: NULL out");
  *out = NULL;
  if (!state_dir || !*state_dir)
    return drv_error(DRV_ERR_INVALID, "store_open: empty state directory");

  rc = fs_mkdir_p(state_dir, 0700); /* the error names the directory that could not be made */
  if (rc != DRV_OK)
    return drv_error_prefix(rc, "store: cannot create state directory %s", state_dir);
  s = calloc(1, sizeof *s);
  if (!s) return drv_error(DRV_ERR_NOMEM, "store_open: out of memory");
  s->lock_fd = -1;
  if (!(s->dir = strdup(state_dir)) || asprintf(&s->path, "%s/drover.db", state_dir) < 0) {
    s->path = NULL;
    rc = drv_error(DRV_ERR_NOMEM, "store_open: out of memory");
    goto fail;
  }

  /* The database is the coordinator's alone (SQLite gives its -wal and -shm files the
   * database's mode). */
  int dbfd = open(s->path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (dbfd < 0 || fchmod(dbfd, 0600) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: open: %s", s->path, strerror(errno));
    if (dbfd >= 0) close(dbfd);
    goto fail;
  }
  close(dbfd);
  /* sqlite3_open_v2 may hand back a handle even when it fails: it is closed below. */
  if (sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
      SQLITE_OK) {
    rc = s->db ? sql_fail(s, "open") : drv_error(DRV_ERR_NOMEM, "%s: open: out of memory", s->path);
    goto fail;
  }
  sqlite3_extended_result_codes(s->db, 1);
  sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);

  /* The first statement reads the file: a file that is not a database fails here. WAL
   * is a property of the file, so the answer says whether it took (it cannot on some
   * network filesystems). */
  DRV_CHECK_GOTO(sql_prepare(s, "PRAGMA journal_mode = WAL", &st, "set WAL journal mode"), rc,
                 fail);
  if (sqlite3_step(st) != SQLITE_ROW) {
    rc = sql_fail(s, "set WAL journal mode");
    goto fail;
  }
  const char *mode = (const char *)sqlite3_column_text(st, 0);
  if (!mode || strcmp(mode, "wal") != 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: set WAL journal mode: the journal mode stayed '%s'", s->path,
                   mode ? mode : "(null)");
    goto fail;
  }
  sqlite3_finalize(st);
  st = NULL;
  /* FULL: in WAL mode this syncs the log at each commit, so a committed job survives a
   * power loss, not only a crash of the coordinator. */
  DRV_CHECK_GOTO(sql_exec(s, "PRAGMA synchronous = FULL", "set synchronous mode"), rc, fail);
  DRV_CHECK_GOTO(store_migrate(s), rc, fail);

  *out = s;
  return DRV_OK;
fail:
  sqlite3_finalize(st);
  store_close(&s);
  return rc;
}

void store_close(store_t **s) {
  if (!s || !*s) return;
  /* close_v2 never fails for a busy handle: it closes once the last statement goes,
   * and every statement here is finalized before its function returns. */
  sqlite3_close_v2((*s)->db);
  if ((*s)->lock_fd >= 0) close((*s)->lock_fd); /* releases the lock */
  free((*s)->dir);
  free((*s)->path);
  free(*s);
  *s = NULL;
}

drv_result_t store_lock(store_t *s) {
  if (!s) return drv_error(DRV_ERR_INVALID, "store_lock: NULL store");
  if (s->lock_fd >= 0) return DRV_OK;
  char path[4200];
  snprintf(path, sizeof path, "%s/coordinator.lock", s->dir);
  int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "open %s: %s", path, strerror(errno));
  /* flock belongs to the open file: a second open of the file, even in this process,
   * is refused like another coordinator. */
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    char pid[32] = "?";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    if (n > 0) pid[n] = '\0';
    close(fd);
    return drv_error(DRV_ERR_INVALID, "%s: another coordinator (pid %s) uses this state directory",
                     s->dir, strtok(pid, "\n") ? pid : "?");
  }
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
    log_warn("%s: cannot record the pid: %s", path, strerror(errno));
  s->lock_fd = fd;
  return DRV_OK;
}

// --- Jobs -----------------------------------------------------------------------------

drv_result_t store_job_insert(store_t *s, const char *name, const char *target, uint32_t nodes,
                              const char *spec_yaml, const char *run_dir, int64_t *id) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  store_job_t *shape = NULL; /* for the field sizes only */
  if (!s || !id) return drv_error(DRV_ERR_INVALID, "store_job_insert: NULL argument");
  if (!run_dir) run_dir = "";
  if (!name || !*name || strlen(name) >= sizeof shape->name)
    return drv_error(DRV_ERR_INVALID, "insert job: name must be 1 to %zu bytes",
                     sizeof shape->name - 1);
  if (!target || !*target || strlen(target) > 32)
    return drv_error(DRV_ERR_INVALID, "insert job %s: target '%s' is not a target's name", name,
                     target ? target : "(null)");
  if (nodes == 0) return drv_error(DRV_ERR_INVALID, "insert job %s: nodes must be >= 1", name);
  if (!spec_yaml) return drv_error(DRV_ERR_INVALID, "insert job %s: NULL spec", name);
  if (strlen(run_dir) >= sizeof shape->run_dir)
    return drv_error(DRV_ERR_INVALID, "insert job %s: run_dir longer than %zu bytes", name,
                     sizeof shape->run_dir - 1);

  DRV_CHECK_GOTO(sql_prepare(s,
                             "INSERT INTO jobs (name, target, nodes, state, submitted_at, "
                             "run_dir, spec_yaml) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
                             &st, "insert job"),
                 rc, fail);
  if (sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC) ||
      sqlite3_bind_text(st, 2, target, -1, SQLITE_STATIC) || sqlite3_bind_int64(st, 3, nodes) ||
      sqlite3_bind_double(st, 4, drv_wall_s()) ||
      sqlite3_bind_text(st, 5, run_dir, -1, SQLITE_STATIC) ||
      sqlite3_bind_text(st, 6, spec_yaml, -1, SQLITE_STATIC)) {
    rc = sql_fail(s, "insert job");
    goto fail;
  }
  DRV_CHECK_GOTO(sql_step_done(s, st, "insert job"), rc, fail);
  *id = sqlite3_last_insert_rowid(s->db);
fail:
  sqlite3_finalize(st);
  return rc;
}

/* After an UPDATE of job `id` changed no row: says why, as DRV_ERR_INVALID ("no such
 * job", or the terminal state it is in when `to` is given). */
static drv_result_t job_unchanged(store_t *s, int64_t id, const char *to) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  DRV_CHECK_GOTO(sql_prepare(s, "SELECT state FROM jobs WHERE id = ?1", &st, "read job state"), rc,
                 fail);
  if (sqlite3_bind_int64(st, 1, id)) {
    rc = sql_fail(s, "read job state");
    goto fail;
  }
  int r = sqlite3_step(st);
  if (r == SQLITE_DONE) {
    rc = drv_error(DRV_ERR_INVALID, "job %lld: no such job", (long long)id);
  } else if (r == SQLITE_ROW) {
    const char *state = (const char *)sqlite3_column_text(st, 0);
    rc = drv_error(DRV_ERR_INVALID, "job %lld: already %s, cannot move to %s", (long long)id,
                   state ? state : "(null)", to ? to : "(null)");
  } else {
    rc = sql_fail(s, "read job state");
  }
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_job_set_state(store_t *s, int64_t id, job_state_t state, const char *reason) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  char what[64];
  if (!s) return drv_error(DRV_ERR_INVALID, "store_job_set_state: NULL store");
  if ((unsigned)state >= DRV_ARRAY_LEN(store_state_names))
    return drv_error(DRV_ERR_INVALID, "job %lld: no state %d", (long long)id, (int)state);
  snprintf(what, sizeof what, "job %lld: set state %s", (long long)id, store_state_name(state));

  /* One statement, so the check that the job has not finished and the move are atomic.
   * SET expressions see the row as it was before the update. */
  DRV_CHECK_GOTO(
      sql_prepare(s,
                  "UPDATE jobs SET"
                  " started_at = CASE WHEN ?4 AND state <> 'running' THEN ?3 ELSE started_at END,"
                  " finished_at = CASE WHEN ?5 THEN ?3 ELSE finished_at END,"
                  " state = ?2, reason = ?6"
                  " WHERE id = ?1 AND state NOT IN ('succeeded', 'failed', 'cancelled')",
                  &st, what),
      rc, fail);
  if (sqlite3_bind_int64(st, 1, id) ||
      sqlite3_bind_text(st, 2, store_state_name(state), -1, SQLITE_STATIC) ||
      sqlite3_bind_double(st, 3, drv_wall_s()) || sqlite3_bind_int(st, 4, state == JOB_RUNNING) ||
      sqlite3_bind_int(st, 5, state_terminal(state)) ||
      sqlite3_bind_text(st, 6, reason ? reason : "", -1, SQLITE_STATIC)) {
    rc = sql_fail(s, what);
    goto fail;
  }
  DRV_CHECK_GOTO(sql_step_done(s, st, what), rc, fail);
  if (sqlite3_changes(s->db) == 0) rc = job_unchanged(s, id, store_state_name(state));
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_job_set_metrics(store_t *s, int64_t id, double test_accuracy, double test_loss,
                                   double samples_per_s, uint64_t steps_done) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  char what[64];
  if (!s) return drv_error(DRV_ERR_INVALID, "store_job_set_metrics: NULL store");
  snprintf(what, sizeof what, "job %lld: set metrics", (long long)id);
  DRV_CHECK_GOTO(sql_prepare(s,
                             "UPDATE jobs SET test_accuracy = ?2, test_loss = ?3,"
                             " samples_per_s = ?4, steps_done = ?5 WHERE id = ?1",
                             &st, what),
                 rc, fail);
  if (sqlite3_bind_int64(st, 1, id) || bind_metric(st, 2, test_accuracy) ||
      bind_metric(st, 3, test_loss) || bind_metric(st, 4, samples_per_s) ||
      sqlite3_bind_int64(st, 5, (sqlite3_int64)steps_done)) {
    rc = sql_fail(s, what);
    goto fail;
  }
  rc = update_one_job(s, st, id, what);
fail:
  sqlite3_finalize(st);
  return rc;
}

/* Sets one column of a job: the text `text`, or the integer `num` when text is NULL.
 * `column` is one of the constant names below, never input; cap is the size of the
 * matching store_job_t field for text. */
static drv_result_t set_column(store_t *s, int64_t id, const char *column, const char *text,
                               size_t cap, uint64_t num) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  char what[64], sql[96];
  if (!s) return drv_error(DRV_ERR_INVALID, "set %s: NULL store", column);
  if (text && strlen(text) >= cap)
    return drv_error(DRV_ERR_INVALID, "job %lld: %s longer than %zu bytes", (long long)id, column,
                     cap - 1);
  snprintf(what, sizeof what, "job %lld: set %s", (long long)id, column);
  snprintf(sql, sizeof sql, "UPDATE jobs SET %s = ?2 WHERE id = ?1", column);
  DRV_CHECK_GOTO(sql_prepare(s, sql, &st, what), rc, fail);
  int bad = text ? sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC)
                 : sqlite3_bind_int64(st, 2, (sqlite3_int64)num);
  if (bad || sqlite3_bind_int64(st, 1, id)) {
    rc = sql_fail(s, what);
    goto fail;
  }
  rc = update_one_job(s, st, id, what);
fail:
  sqlite3_finalize(st);
  return rc;
}

static drv_result_t set_text(store_t *s, int64_t id, const char *column, const char *value,
                             size_t cap) {
  if (!value) return drv_error(DRV_ERR_INVALID, "set %s: NULL value", column);
  return set_column(s, id, column, value, cap, 0);
}

drv_result_t store_job_set_run_dir(store_t *s, int64_t id, const char *run_dir) {
  return set_text(s, id, "run_dir", run_dir, sizeof((store_job_t *)0)->run_dir);
}

drv_result_t store_job_set_pool(store_t *s, int64_t id, const char *pool) {
  return set_text(s, id, "pool", pool, sizeof((store_job_t *)0)->pool);
}

drv_result_t store_job_set_owner(store_t *s, int64_t id, const char *owner, const char *lineage) {
  DRV_CHECK(set_text(s, id, "owner", owner, sizeof((store_job_t *)0)->owner));
  return set_text(s, id, "lineage", lineage, sizeof((store_job_t *)0)->lineage);
}

drv_result_t store_job_set_resume_dir(store_t *s, int64_t id, const char *dir) {
  return set_text(s, id, "resume_dir", dir, sizeof((store_job_t *)0)->resume_dir);
}

drv_result_t store_job_by_token(store_t *s, const char *token, int64_t *id) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  if (!s || !token || !id) return drv_error(DRV_ERR_INVALID, "find job by token: NULL argument");
  *id = 0;
  if (!*token) return DRV_OK;
  DRV_CHECK_GOTO(sql_prepare(s, "SELECT id FROM jobs WHERE token = ?1 AND token != ''", &st,
                             "find job by token"),
                 rc, fail);
  if (sqlite3_bind_text(st, 1, token, -1, SQLITE_STATIC)) {
    rc = sql_fail(s, "find job by token");
    goto fail;
  }
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    *id = sqlite3_column_int64(st, 0);
  else if (r != SQLITE_DONE)
    rc = sql_fail(s, "find job by token");
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_job_set_token(store_t *s, int64_t id, const char *token) {
  int64_t other = 0;
  if (token && strlen(token) <= STORE_TOKEN_MAX) DRV_CHECK(store_job_by_token(s, token, &other));
  if (other && other != id)
    return drv_error(DRV_ERR_INVALID, "job %lld: token already names job %lld", (long long)id,
                     (long long)other);
  return set_text(s, id, "token", token, STORE_TOKEN_MAX + 1);
}

drv_result_t store_job_set_checkpoint(store_t *s, int64_t id, uint64_t step) {
  return set_column(s, id, "ckpt_step", NULL, 0, step);
}

drv_result_t store_job_set_generation(store_t *s, int64_t id, uint32_t generation) {
  return set_column(s, id, "generation", NULL, 0, generation);
}

/* Runs `sql` (one row of jobs, selected by ?1 = id) and leaves *st on that row.
 * DRV_ERR_INVALID "job 7: no such job" when there is none. *st is the caller's to finalize
 * in every case. */
static drv_result_t job_row(store_t *s, const char *sql, int64_t id, const char *what,
                            sqlite3_stmt **st) {
  DRV_CHECK(sql_prepare(s, sql, st, what));
  if (sqlite3_bind_int64(*st, 1, id)) return sql_fail(s, what);
  int r = sqlite3_step(*st);
  if (r == SQLITE_DONE) return drv_error(DRV_ERR_INVALID, "job %lld: no such job", (long long)id);
  return r == SQLITE_ROW ? DRV_OK : sql_fail(s, what);
}

drv_result_t store_job_get(store_t *s, int64_t id, store_job_t *out) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  char what[64];
  if (!s || !out) return drv_error(DRV_ERR_INVALID, "store_job_get: NULL argument");
  snprintf(what, sizeof what, "job %lld: read", (long long)id);
  DRV_CHECK_GOTO(job_row(s, "SELECT " STORE_JOB_COLUMNS " FROM jobs WHERE id = ?1", id, what, &st),
                 rc, fail);
  rc = job_read(st, out);
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_job_spec(store_t *s, int64_t id, char **yaml) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  char what[64];
  if (!s || !yaml) return drv_error(DRV_ERR_INVALID, "store_job_spec: NULL argument");
  *yaml = NULL;
  snprintf(what, sizeof what, "job %lld: read spec", (long long)id);
  DRV_CHECK_GOTO(job_row(s, "SELECT spec_yaml FROM jobs WHERE id = ?1", id, what, &st), rc, fail);
  const char *text = (const char *)sqlite3_column_text(st, 0);
  *yaml = strdup(text ? text : "");
  if (!*yaml) rc = drv_error(DRV_ERR_NOMEM, "%s: out of memory", what);
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_job_list(store_t *s, uint32_t limit,
                            int (*fn)(const store_job_t *job, void *arg), void *arg) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  store_job_t job;
  if (!s || !fn) return drv_error(DRV_ERR_INVALID, "store_job_list: NULL argument");
  DRV_CHECK_GOTO(sql_prepare(s, "SELECT " STORE_JOB_COLUMNS " FROM jobs ORDER BY id DESC LIMIT ?1",
                             &st, "list jobs"),
                 rc, fail);
  /* LIMIT -1: no limit. */
  if (sqlite3_bind_int64(st, 1, limit ? (sqlite3_int64)limit : -1)) {
    rc = sql_fail(s, "list jobs");
    goto fail;
  }
  for (;;) {
    int r = sqlite3_step(st);
    if (r == SQLITE_DONE) break;
    if (r != SQLITE_ROW) {
      rc = sql_fail(s, "list jobs");
      goto fail;
    }
    DRV_CHECK_GOTO(job_read(st, &job), rc, fail);
    if (fn(&job, arg) != 0) break;
  }
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_recover(store_t *s, uint32_t *changed) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  if (changed) *changed = 0;
  if (!s) return drv_error(DRV_ERR_INVALID, "store_recover: NULL store");
  DRV_CHECK_GOTO(sql_prepare(s,
                             "UPDATE jobs SET state = 'queued',"
                             " reason = 'coordinator restarted while the job was running'"
                             " WHERE state = 'running'",
                             &st, "recover running jobs"),
                 rc, fail);
  DRV_CHECK_GOTO(sql_step_done(s, st, "recover running jobs"), rc, fail);
  int n = sqlite3_changes(s->db);
  if (n > 0)
    log_warn("%s: %d job(s) left running by a previous coordinator queued again", s->path, n);
  if (changed) *changed = (uint32_t)n;
fail:
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_prune(store_t *s, int64_t days, uint32_t *deleted) {
  drv_result_t rc = DRV_OK;
  sqlite3_stmt *st = NULL;
  if (deleted) *deleted = 0;
  if (!s) return drv_error(DRV_ERR_INVALID, "store_prune: NULL store");
  if (days <= 0) return DRV_OK;
  DRV_CHECK_GOTO(sql_prepare(s,
                             "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')"
                             " AND finished_at > 0 AND finished_at < ?1",
                             &st, "prune finished jobs"),
                 rc, fail);
  if (sqlite3_bind_double(st, 1, drv_wall_s() - (double)days * 86400.0)) {
    rc = sql_fail(s, "prune finished jobs");
    goto fail;
  }
  DRV_CHECK_GOTO(sql_step_done(s, st, "prune finished jobs"), rc, fail);
  int n = sqlite3_changes(s->db);
  if (n > 0)
    log_info("%s: %d job(s) finished more than %lld day(s) ago forgotten (DROVER_HISTORY_DAYS)",
             s->path, n, (long long)days);
  if (deleted) *deleted = (uint32_t)n;
fail:
  sqlite3_finalize(st);
  return rc;
}

// --- Managed nodes -------------------------------------------------------------------------

drv_result_t store_node_put(store_t *s, const store_node_t *n) {
  sqlite3_stmt *st = NULL;
  char what[128];
  snprintf(what, sizeof what, "node %s: record", n->name);
  drv_result_t rc = sql_prepare(s,
                                "INSERT OR REPLACE INTO nodes (name, target, host, handle, "
                                "launched_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                                &st, what);
  if (rc != DRV_OK) return rc;
  if (sqlite3_bind_text(st, 1, n->name, -1, SQLITE_STATIC) ||
      sqlite3_bind_text(st, 2, n->target, -1, SQLITE_STATIC) ||
      sqlite3_bind_text(st, 3, n->host, -1, SQLITE_STATIC) ||
      sqlite3_bind_text(st, 4, n->handle, -1, SQLITE_STATIC) ||
      sqlite3_bind_double(st, 5, n->launched_at))
    rc = sql_fail(s, what);
  else
    rc = sql_step_done(s, st, what);
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_node_delete(store_t *s, const char *name) {
  sqlite3_stmt *st = NULL;
  char what[128];
  snprintf(what, sizeof what, "node %s: forget", name);
  drv_result_t rc = sql_prepare(s, "DELETE FROM nodes WHERE name = ?1", &st, what);
  if (rc != DRV_OK) return rc;
  if (sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC))
    rc = sql_fail(s, what);
  else
    rc = sql_step_done(s, st, what);
  sqlite3_finalize(st);
  return rc;
}

drv_result_t store_node_list(store_t *s, int (*fn)(const store_node_t *node, void *arg),
                             void *arg) {
  sqlite3_stmt *st = NULL;
  drv_result_t rc = sql_prepare(
      s, "SELECT name, target, host, handle, launched_at FROM nodes ORDER BY name", &st,
      "list nodes");
  if (rc != DRV_OK) return rc;
  for (;;) {
    int r = sqlite3_step(st);
    if (r == SQLITE_DONE) break;
    if (r != SQLITE_ROW) {
      rc = sql_fail(s, "list nodes");
      break;
    }
    store_node_t n = {.launched_at = sqlite3_column_double(st, 4)};
    const struct {
      char *to;
      size_t cap;
    } cols[] = {{n.name, sizeof n.name}, {n.target, sizeof n.target},
                {n.host, sizeof n.host}, {n.handle, sizeof n.handle}};
    for (int c = 0; c < 4; c++) {
      const unsigned char *v = sqlite3_column_text(st, c);
      snprintf(cols[c].to, cols[c].cap, "%s", v ? (const char *)v : "");
    }
    if (fn(&n, arg) != 0) break;
  }
  sqlite3_finalize(st);
  return rc;
}
