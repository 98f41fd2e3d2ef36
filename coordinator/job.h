/* job.h: the coordinator's active jobs (queued or placed) and their state machine.
 *
 * A job moves through the phases of phase.h, one transition at a time, each made by one
 * function (job_enter in job.c) that logs it once. The job table owns its jobs and their
 * ranks; it borrows the sockets, the store and the agent registry from the coordinator
 * (coord.c), which feeds it the agents' and workers' messages and the clock's ticks.
 *
 * Decide, then act: which queued jobs start where is sched_plan's decision (sched.h) and
 * how a broken world re-forms is recovery_plan's (recovery.h); the job table builds their
 * snapshots and carries the plans out: `assign`, `reform`, `pause`, `abort` and `kill`
 * messages, the store's records, the `job/<id>` events. It also relays the rendezvous
 * (`start` with every rank's ring address, GPU and rank 0's NCCL id) and records results
 * and checkpoints. What progress reports mean (smoothed times, stragglers, the job's
 * aggregate) is progress.h's; the job table keeps that state and publishes its events.
 *
 * Messages that carry a job are checked against its current generation and world, and,
 * on a secure coordinator, against the key of the rank's worker (each worker gets a key of
 * its own in `assign`: a message of any other sender for that rank is refused); stale
 * ones are dropped (a stale `rendezvous` is answered with `abort`). Everything runs on the
 * coordinator's one thread.
 */
#ifndef DROVER_COORDINATOR_JOB_H
#define DROVER_COORDINATOR_JOB_H

#include <stdint.h>

#include "common/jobspec.h"
#include "common/proto.h"
#include "common/sock.h"
#include "coordinator/phase.h"
#include "coordinator/progress.h"
#include "coordinator/recovery.h"
#include "coordinator/registry.h"
#include "coordinator/store.h"

#define JOB_MAX 1024           /* active jobs: queued or placed */
#define JOB_EXIT_GRACE_MS 3000 /* a worker that exited 0 has this long for its `done` to arrive */

/* One rank of a placed job. */
typedef struct {
  int agent;         /* its agent's registry index; -1: unreachable when placed */
  uint32_t local_rank;  /* among its agent's workers of the job, from its assign */
  uint32_t assign_rank; /* the rank its assign gave it: with assign_gen, what its agent
                           names the worker by (a re-formation renumbers ranks, not this) */
  int device;           /* its agent's GPU `index` it was given; -1: the CPU */
  int preemptible;      /* its agent is a node of a preemptible target */
  int rendezvoused;  /* rendezvous received for this generation */
  char addr[256];    /* ring address */
  char gpu[128];     /* its rendezvous `gpu`: "" for the CPU */
  char nccl_id[260]; /* rank 0's rendezvous `nccl_id` */
  sock_peer_t peer;  /* its worker, once it checked in */
  char key[SOCK_USER_MAX]; /* the name of the key its worker was given (auth_worker_name):
                              only messages over a connection made with it count */
  int done, exited;
  int32_t exit_code;        /* when exited: its code (0: clean, waiting for `done`) */
  int64_t exit_ms;          /* when its agent reported an exit without `done` or `failed` yet */
  uint32_t assign_gen;      /* generation of its agent's assignment (its process's birth) */
  int dead;                 /* lost for good: excluded from the next world */
  int lost;                 /* reported `lost` during a re-formation: alive, rolled back */
  int leaving;              /* its agent is stopping: left out at the next re-formation */
  uint64_t commit;          /* the commit it rolled back to (its `lost`), 0 when not known */
  uint64_t step;            /* where it is: the step of its last progress report */
  uint64_t coll_seq;        /* collectives it had completed at its last report */
  progress_rank_t progress; /* how fast it goes: smoothed times, straggler (progress.h) */
} job_rank_t;

typedef struct {
  int used;
  int64_t id;
  job_phase_t phase;
  char name[128];
  char target[40];
  char pool[64]; /* "" or the pool of agents it must run on */
  uint32_t world, epochs; /* world: its ranks now (from placement on) */
  uint32_t global_batch;  /* the spec's: a world may not be larger */
  uint32_t nodes_wanted; /* the spec's nodes: what a placement asks for */
  uint32_t generation;
  int reloaded;          /* loaded from the store at a coordinator's start */
  int64_t queued_ms;     /* when it became queued in this coordinator */
  int64_t started_ms;    /* when it was last placed (0: not yet): with max_runtime_s, when
                            the scheduler expects its agents back */
  int32_t priority;      /* the spec's: higher first in its queue */
  uint32_t max_runtime_s; /* the spec's; 0: not known (it is not stopped past it) */
  uint32_t cpus_per_worker, gpus_per_worker; /* the spec's resources: what an agent needs */
  uint64_t memory_mb;
  char wait_reason[256]; /* why it waits, as the store has it: QUEUED (the scheduler's
                            reason), or WAITING for agents */
  char owner[64];    /* who submitted it (the name bound to their key); "" in plaintext */
  char lineage[33];  /* 32 hex digits: new per job, kept by resume */
  char ring_key[65]; /* 64 hex digits: its ring peers prove they hold it; new per placement */
  char *spec_yaml;
  char run_dir[1024];
  char resume_dir[1024]; /* checkpoints to start from when run_dir has none; "" */
  uint64_t ckpt_step;    /* last durable checkpoint */
  int64_t pool_seen_ms;  /* last time an agent of its pool was registered */
  job_rank_t *ranks;     /* world of them from placement on */
  uint32_t workers_per_node; /* the spec's; 0: one per GPU of each agent (1 on a CPU agent) */
  uint32_t wpn;              /* placed: the workers each agent runs, fixed at placement */
  uint32_t min_nodes, max_nodes, max_restarts, restarts, rejoin_timeout_s;
  int restart_pending;    /* recovery_job_t.pending of the re-formation under way */
  int command;            /* a command job: the user's program per rank; a failure restarts
                             the whole world (restart_all), it never re-forms in place */
  int restarted;          /* a command job placed again after a failure: may start with
                             min_nodes once it waited rejoin_timeout */
  uint32_t commit_every;  /* planned re-formations need commits */
  int64_t deadline_ms;    /* STARTING: every rank checks in by then; PAUSING, REFORMING and
                             WAITING: the re-formation's (ranks not heard from are left out) */
  recovery_cause_t cause; /* the failure being recovered from */
  char first_cause[RECOVERY_REASON_MAX]; /* the first one it re-formed after */
  char pause_reason[256];                /* PAUSING: why it was asked to */
  int64_t verdict_ms; /* a `failed` came: the job fails then, with the best cause by then */
  recovery_report_t verdict_kind;    /* how telling the held cause is */
  char verdict[RECOVERY_REASON_MAX]; /* the held cause */
  progress_job_t progress;           /* rank 0's last report, the world's throughput (progress.h) */
  /* final metrics from rank 0 */
  double test_loss, test_accuracy, final_samples_per_s;
} job_t;

typedef struct {
  sock_t *workers;       /* borrowed: the agents' and workers' ROUTER */
  sock_t *events;        /* borrowed: the PUB */
  store_t *store;        /* borrowed */
  registry_t *reg;       /* borrowed */
  const char *advertise; /* borrowed: the endpoint workers are told to connect to */
  char log_dir[1024];    /* <state_dir>/logs: command jobs' output, <job>.log each */
  int secure;            /* workers get keys of their own, and must use them */
  char coord_key[SOCK_Z85_LEN + 1]; /* the coordinator's public key, for workers to pin */
  job_t jobs[JOB_MAX];
} job_table_t;

// --- The table ------------------------------------------------------------------------------

/* An empty table using the borrowed sockets, store and registry (they outlive it). */
void job_table_init(job_table_t *t, sock_t *workers, sock_t *events, store_t *store,
                    registry_t *reg, const char *advertise);

/* Workers get keys of their own from now on (assign.secret), pin the coordinator's
 * public key coord_key (Z85), and only messages sent with their key count. */
void job_table_secure(job_table_t *t, const char *coord_key);

/* Whether pub is the key of a live worker (the ZAP handler admits it to the agents' port). */
int job_worker_key(const job_table_t *t, const unsigned char pub[SOCK_KEY_BYTES]);

/* At the coordinator's stop: fails every active job ("coordinator stopped while the job
 * was running"), stopping its workers, and frees them. */
void job_table_fini(job_table_t *t);

/* Loads the jobs a previous coordinator left queued (store_recover queued the running
 * ones again) to be placed again and resumed from their checkpoints. A job that cannot be
 * reloaded is failed in the store with the reason. Returns the store's error, if any. */
drv_result_t job_table_reload(job_table_t *t);

/* `log` from a command job's worker: its lines appended to <log_dir>/<job>.log, each as
 * "rank R AGENT | LINE", up to JOB_LOG_MAX_BYTES per job (then a note, and no more). */
void job_on_log(job_table_t *t, const sock_peer_t *from, const proto_log_t *l);

#define JOB_LOG_MAX_BYTES (64ull << 20)

/* The active job `id`, or NULL. */
job_t *job_find(job_table_t *t, int64_t id);

/* How many jobs are active (queued or placed). */
uint32_t job_active(const job_table_t *t);

/* Whether the table can take one more job. */
int job_has_room(const job_table_t *t);

/* Makes the recorded job sj, of spec `spec`, active and queued; takes ownership of
 * *spec_yaml (its canonical text, nulled). Returns it, or NULL when the table is full (the
 * text is then freed all the same). */
job_t *job_add(job_table_t *t, const store_job_t *sj, const jobspec_t *spec, char **spec_yaml);

// --- Phases ---------------------------------------------------------------------------------

/* "queued", "starting", "running", "pausing", "reforming", "waiting_for_agents",
 * "succeeded", "failed", "cancelled"; "unknown" outside the enum. Never NULL. */
const char *job_phase_name(job_phase_t p);

/* The state the store and the wire know a phase by: STARTING .. WAITING are running. */
job_state_t job_state(job_phase_t p);

/* Publishes ev_state of j on "job/<id>", with `reason` (may be NULL). */
void job_publish_state(job_table_t *t, const job_t *j, const char *reason);

/* Cancels j ("cancelled by user"): record, event, workers stopped, j freed. */
void job_cancel(job_table_t *t, job_t *j);

/* Fails j with a printf-style reason: record, event, workers stopped, j freed (do not
 * touch j afterwards). */
void job_fail(job_table_t *t, job_t *j, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// --- Time -----------------------------------------------------------------------------------

/* Places what can be placed now: builds the scheduler's snapshot, asks sched_plan, and
 * carries the plan out (assign to every rank; an agent that cannot be reached is
 * forgotten and its job queued again, then the rest is planned anew). Run after every
 * pass of the coordinator's loop. */
void job_schedule(job_table_t *t, int64_t now);

/* The job timers, every heartbeat: queued jobs whose pool is gone fail, re-formations
 * whose time has come are planned, running jobs with room and a free agent grow, jobs
 * whose ranks did not check in fail, and so do those whose worker exited without a word. */
void job_tick(job_table_t *t, int64_t now);

/* The coordinator was not running for away_ms (coord_away_ms): every deadline of every
 * job (rendezvous, re-formation, the failure hold, the exit grace, the pool wait, the wait
 * for all nodes after a reload) moves away_ms later, so none expires because of the
 * coordinator's own absence. */
void job_table_shift(job_table_t *t, int64_t away_ms);

/* The coordinator was not running for longer than the agents' peer timeout: every agent
 * lost it and stopped its workers (they reconnect with a new session). Every placed job
 * has lost the workers that had not finished: `why` (the coordinator's absence, nobody
 * else's) is the cause, and recovery_plan decides once, with all of them gone (with
 * restarts left and a durable checkpoint: wait for agents, re-form from it). */
void job_table_workers_gone(job_table_t *t, const char *why);

// --- Agents ---------------------------------------------------------------------------------

/* Agent a is gone (silent, stopped, or registered anew): logs it, treats its rank (if any)
 * as lost, and forgets a in the registry. */
void job_agent_lost(job_table_t *t, agent_t *a, const char *why);

/* Agent a is stopping (`leave`): it takes no new work; its rank leaves its job at the
 * next commit and the job goes on without it (without commits, it is lost at once). */
void job_agent_leaving(job_table_t *t, agent_t *a, const char *reason);

/* Agent a's heartbeat says it runs `workers` workers: one booked for a job that is over
 * and running none is free again (its exit report was lost, or there was no worker). */
void job_agent_heartbeat(job_table_t *t, agent_t *a, uint32_t workers);

/* Agent a reaped its worker: frees a when it was that worker's booking, and treats a
 * killed worker (or one that exited during a re-formation) as a lost rank. */
void job_on_worker_exit(job_table_t *t, agent_t *a, const proto_worker_exit_t *e);

// --- Workers --------------------------------------------------------------------------------

/* A rank checked in; when all have, every rank gets `start`. */
void job_on_rendezvous(job_table_t *t, const sock_peer_t *from, const proto_rendezvous_t *rv);

/* A rank's progress: where it is, then progress_report's (smoothed times, stragglers, and
 * for rank 0 the job's ev_progress, published when due). */
void job_on_progress(job_table_t *t, const sock_peer_t *from, const proto_progress_t *p);

/* Rank 0's evaluation: logged and published as ev_eval. */
void job_on_eval(job_table_t *t, const sock_peer_t *from, const proto_eval_t *e);

/* A rank is done; when all are, the job succeeded with rank 0's metrics. */
void job_on_done(job_table_t *t, const sock_peer_t *from, const proto_done_t *d);

/* A rank failed: the job fails with its reason, after DROVER_FAIL_HOLD_MS in which a
 * better-ranked report (recovery_report_t) of another rank replaces it; meanwhile no
 * re-formation starts. */
void job_on_failed(job_table_t *t, const sock_peer_t *from, const proto_failed_t *f);

/* Fails the jobs whose held failure (job_on_failed) is due. Run every few tens of ms. */
void job_verdicts(job_table_t *t, int64_t now);

/* Rank 0's checkpoint is durable: recorded in the store. */
void job_on_checkpoint(job_table_t *t, const sock_peer_t *from, const proto_checkpoint_t *k);

/* A rank's ring broke (or it stopped at the agreed commit, as asked): it rolled back and
 * waits, and the job re-forms as recovery_plan says. */
void job_on_lost(job_table_t *t, const sock_peer_t *from, const proto_lost_t *l);

#endif
