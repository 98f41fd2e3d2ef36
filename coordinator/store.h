/* store.h: the coordinator's durable state, one SQLite database per state directory.
 *
 * The database is <state_dir>/drover.db, opened in WAL mode with synchronous=FULL, so a
 * call that returned DRV_OK has reached the disk and survives a crash of the coordinator
 * or of the machine. One table holds the jobs:
 *
 *   jobs(id INTEGER PRIMARY KEY AUTOINCREMENT,   -- 1, 2, ...; never reused
 *        name, target, nodes, state TEXT,         -- state as store_state_name() spells it
 *        reason, submitted_at, started_at, finished_at,   -- wall seconds, 0 = not yet
 *        test_accuracy, test_loss, samples_per_s,          -- NULL = unknown
 *        steps_done, run_dir, spec_yaml, pool, ckpt_step, resume_dir, generation,
 *        token, owner, lineage)
 *
 * so that `sqlite3 drover.db 'select id, name, state from jobs'` reads naturally. The
 * schema's version is PRAGMA user_version; store_open creates or migrates it, and refuses
 * a database written by a newer drover.
 *
 * Job lifecycle as the store sees it: queued -> running -> succeeded | failed |
 * cancelled, with running -> queued allowed (a job put back in the queue). Terminal states
 * are final: moving a finished job again is refused, so a cancel that races with the
 * job's completion cannot overwrite the outcome.
 *
 * A store_t is one SQLite connection: use it from one thread at a time. Several
 * processes may open the same directory; writers wait up to a busy timeout for each other.
 * Only one of them may be its coordinator: the one holding the state directory's lock
 * (store_lock), the only one that moves jobs a previous coordinator left behind.
 */
#ifndef DROVER_COORDINATOR_STORE_H
#define DROVER_COORDINATOR_STORE_H

#include <stdint.h>

#include "common/drv.h"

typedef struct store store_t;

typedef enum { JOB_QUEUED = 0, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED } job_state_t;

/* A job's state as stored and shown: "queued", "running", "succeeded", "failed",
 * "cancelled" ("unknown" for a value outside the enum). Static string, never NULL. */
const char *store_state_name(job_state_t s);

/* One job's row, copied out of the database (no pointers into the store). */
typedef struct {
  int64_t id;
  char name[128];
  char target[40]; /* "local", "attached" or a managed target's name */
  uint32_t nodes;
  job_state_t state;
  char reason[512]; /* failure or cancel reason, "" otherwise (cut at a UTF-8 boundary if longer) */
  double submitted_at, started_at, finished_at;   /* wall seconds since epoch, 0 = not yet */
  double test_accuracy, test_loss, samples_per_s; /* final metrics, NAN when unknown */
  uint64_t steps_done;
  char run_dir[1024];
  char pool[64];         /* "" or the agent pool the job runs on */
  uint64_t ckpt_step;    /* last durable checkpoint, 0 = none */
  char resume_dir[1024]; /* checkpoints to start from when it has none of its own; "" */
  uint32_t generation;   /* of its last placement: a reloaded job goes on from there */
  char owner[64];        /* who submitted it: the name bound to their key ("" before schema 4) */
  char lineage[33];      /* 32 hex digits, new per job, kept by resume; "" before schema 4 */
} store_job_t;

/* Opens (creating) state_dir/drover.db, creating state_dir and its parents as needed
 * (mode 0700; the database 0600), in WAL mode with synchronous=FULL and a busy timeout; creates or
 * migrates the schema via PRAGMA user_version. On success the caller owns *out (store_close). On
 * failure *out stays NULL and the error names the path: DRV_ERR_SYS when the directory
 * cannot be created or SQLite fails (its message included, e.g. "file is not a
 * database"), DRV_ERR_INVALID when the schema is newer than this build understands. */
drv_result_t store_open(const char *state_dir, store_t **out);

/* Closes the database and frees the store, releasing its lock (store_lock) if it holds
 * it; nulls the caller's pointer. NULL-safe. */
void store_close(store_t **s);

/* Makes this store the state directory's coordinator: an exclusive flock on
 * <state_dir>/coordinator.lock, with this process's pid written into the file, held until
 * store_close (or the process's end). One coordinator per state directory: when another
 * open store (in this process or another) holds the lock, DRV_ERR_INVALID "<state_dir>:
 * another coordinator (pid N) uses this state directory"; DRV_ERR_SYS when the file cannot
 * be opened. Calling it again on the store that holds the lock returns DRV_OK. */
drv_result_t store_lock(store_t *s);

/* Groups the writes that follow into one transaction (one fsync, all or nothing):
 * store_begin, then the writes, then store_commit, or store_rollback to drop them. A
 * coordinator that dies before the commit leaves none of them behind. Transactions do
 * not nest. */
drv_result_t store_begin(store_t *s);
drv_result_t store_commit(store_t *s);
void store_rollback(store_t *s);

/* Inserts a queued job with its resolved spec YAML text (copied into the database) and
 * submitted_at = now; *id receives the new id (1, 2, ..., never reused, even after the
 * newest job's row is deleted). DRV_ERR_INVALID when name is empty or does not fit
 * store_job_t.name, target is not local/attached/managed, nodes is 0, or run_dir does not
 * fit store_job_t.run_dir (NULL run_dir is stored as ""). */
drv_result_t store_job_insert(store_t *s, const char *name, const char *target, uint32_t nodes,
                              const char *spec_yaml, const char *run_dir, int64_t *id);

/* Moves a job to `state` with a reason (NULL is stored as ""); sets started_at when
 * entering RUNNING from another state and finished_at when entering a terminal state.
 * DRV_ERR_INVALID "job 7: no such job", or "job 7: already succeeded, cannot move to
 * cancelled" when the job has finished (the row is left as it was). */
drv_result_t store_job_set_state(store_t *s, int64_t id, job_state_t state, const char *reason);

/* Records a job's final metrics (NAN stores "unknown"), in any state. DRV_ERR_INVALID
 * "job 7: no such job" if absent. */
drv_result_t store_job_set_metrics(store_t *s, int64_t id, double test_accuracy, double test_loss,
                                   double samples_per_s, uint64_t steps_done);

/* Sets a job's run directory (known once the id is: "<run_dir>/<name>-<id>"), in any
 * state. DRV_ERR_INVALID "job 7: no such job" if absent, or when run_dir is NULL or does
 * not fit store_job_t.run_dir. */
drv_result_t store_job_set_run_dir(store_t *s, int64_t id, const char *run_dir);

/* Copies job `id` into *out. DRV_ERR_INVALID "job 7: no such job" if absent. */
drv_result_t store_job_get(store_t *s, int64_t id, store_job_t *out);

/* The spec YAML stored with job `id`; the caller frees *yaml with free(). *yaml stays
 * NULL on failure (DRV_ERR_INVALID "job 7: no such job" if absent). */
drv_result_t store_job_spec(store_t *s, int64_t id, char **yaml);

/* Calls fn for each job, newest first, at most `limit` of them (0 = all). fn returning
 * non-zero stops the walk (still DRV_OK). `job` is valid only during the call. fn may
 * call other store functions on the same store. */
drv_result_t store_job_list(store_t *s, uint32_t limit,
                            int (*fn)(const store_job_t *job, void *arg), void *arg);

/* At coordinator start: jobs left running by a previous coordinator are queued again
 * with reason "coordinator restarted while the job was running" (queued ones stay
 * queued); the coordinator then places them again, resuming from their last checkpoint.
 * *changed (may be NULL) receives how many were running. */
drv_result_t store_recover(store_t *s, uint32_t *changed);

/* Set the job's pool, resume directory, and last durable checkpoint step.
 * DRV_ERR_INVALID for an unknown job or a value too long for store_job_t. */
drv_result_t store_job_set_pool(store_t *s, int64_t id, const char *pool);
drv_result_t store_job_set_resume_dir(store_t *s, int64_t id, const char *dir);
drv_result_t store_job_set_checkpoint(store_t *s, int64_t id, uint64_t step);
drv_result_t store_job_set_generation(store_t *s, int64_t id, uint32_t generation);

/* Sets the job's owner (the name bound to the submitter's key) and lineage (32 hex
 * digits). DRV_ERR_INVALID for an unknown job or a value too long for store_job_t. */
drv_result_t store_job_set_owner(store_t *s, int64_t id, const char *owner, const char *lineage);

/* A submission token: the client's name for one submission, at most STORE_TOKEN_MAX
 * bytes, unique among jobs ("" = none; any number of jobs have none). set: DRV_ERR_INVALID
 * for an unknown job, a token too long, or one another job has. by_token: *id is the job
 * recorded with `token`, 0 when none is (or token is ""). */
#define STORE_TOKEN_MAX 64
drv_result_t store_job_set_token(store_t *s, int64_t id, const char *token);
drv_result_t store_job_by_token(store_t *s, const char *token, int64_t *id);

/* Deletes the finished jobs (succeeded, failed, cancelled) whose finished_at is more than
 * `days` days ago (days <= 0: none), so that the history does not grow for ever; queued
 * and running jobs are never touched. *deleted (may be NULL) receives how many went. Their
 * ids are not reused, and such a job can no longer be shown or resumed. */
drv_result_t store_prune(store_t *s, int64_t days, uint32_t *deleted);

/* A managed node the coordinator started (fleet.h), as the store keeps it from its launch
 * until it is gone. */
typedef struct {
  char name[64];    /* "<target>-<n>" */
  char target[40];
  char host[256];   /* the ssh launcher's host; "" otherwise */
  char handle[128]; /* the launcher's handle: a pid, "HOST PID", a Slurm job id, ... */
  double launched_at; /* wall seconds */
} store_node_t;

/* Records node n (replacing its record). */
drv_result_t store_node_put(store_t *s, const store_node_t *n);

/* Forgets node `name` (nothing when it is not recorded). */
drv_result_t store_node_delete(store_t *s, const char *name);

/* Calls fn for each recorded node, by name, until it returns non-zero. */
drv_result_t store_node_list(store_t *s, int (*fn)(const store_node_t *node, void *arg),
                             void *arg);

#endif
