/* sched.h: the scheduler, as a pure decision: from a snapshot of the queued jobs and the
 * agents to the placements that can start now. No sockets, no clock: the caller passes
 * `now` and carries the plan out (job.c sends the assignments, handles an agent that
 * cannot be reached, records the state).
 *
 * The rules (docs/architecture.md#scheduler):
 *   - one queue per target and pool: jobs are taken highest priority first, oldest first
 *     (lowest id) within a priority;
 *   - gang placement: a job is placed only when all its `nodes` workers can be, each on
 *     an agent of its own, or not at all;
 *   - except a job that was running before (queued again by a coordinator restart, with a
 *     checkpoint to go on from): from its `shrink_at_ms` on it takes what there is, down to
 *     its `min_nodes`, rather than wait for all `nodes` (it resumes from the checkpoint;
 *     the data order does not depend on the world size);
 *   - a job is placed only on agents with its resources (cpus, memory, GPUs per worker);
 *   - the first job of a queue that cannot start (its head) holds the idle agents it fits,
 *     and its start is estimated from when the agents it waits for end their jobs (their
 *     jobs' max_runtime; not known: never). A later job starts on the idle agents the head
 *     does not fit, or on held ones when its own max_runtime ends before the head's
 *     estimated start (backfill): it cannot delay the head. Other queues are not held up;
 *   - a job that no set of the queue's registered agents could hold (fewer of them with
 *     its resources than its nodes) holds nothing and blocks no one: it waits;
 *   - every job left waiting gets the reason why, in numbers (sched_wait_t, sched_reason);
 *   - an agent serves the queue of its target and pool (no pool: jobs without one), when
 *     it is not booked, not leaving and not cooling down;
 *   - ranks follow the agents' ids (strcmp): rank 0 is the agent whose id sorts first.
 */
#ifndef DROVER_COORDINATOR_SCHED_H
#define DROVER_COORDINATOR_SCHED_H

#include <stddef.h>
#include <stdint.h>

#define SCHED_MAX_AGENTS 256 /* agents one plan considers; more are ignored */
#define SCHED_MAX_JOBS 1024  /* queued jobs one plan considers; more are ignored */

/* An agent as the scheduler sees it. The strings are borrowed for the call. */
typedef struct {
  const char *id;            /* agent id: ranks follow its order */
  const char *target, *pool; /* the queue it serves; pool "" for none */
  int busy;                  /* booked for a job until its worker exits */
  int leaving;               /* said `leave`: takes no new work */
  int64_t cooldown_until_ms; /* its worker was killed: no new work before then */
  int64_t job;               /* busy: the job it runs (for the reasons), 0 when not known */
  int64_t free_at_ms;        /* busy: when its job's max_runtime ends; 0: not known (never) */
  uint32_t cpus, gpus;       /* what it registered */
  uint64_t mem_mb;
} sched_agent_t;

/* A queued job as the scheduler sees it. The strings are borrowed for the call. */
typedef struct {
  int64_t id;                /* older jobs have smaller ids */
  const char *target, *pool; /* its queue */
  uint32_t nodes;            /* workers it needs, one agent each */
  uint32_t min_nodes;        /* 0 (or nodes): strict gang; else the fewest it may start with */
  int64_t shrink_at_ms;      /* with min_nodes: from then on it starts with what fits */
  int32_t priority;          /* higher first */
  int64_t max_runtime_ms;    /* how long it runs at most; 0: not known */
  uint32_t cpus, gpus;       /* per worker (0: anything): an agent needs these times */
  uint64_t mem_mb;
  uint32_t workers_per_node; /* the workers it runs on each agent; 0: one per GPU (gpus of
                                them each), so an agent needs one worker's worth */
} sched_job_t;

/* Why a job of the plan was not placed (see sched_reason for the words). */
typedef enum {
  SCHED_WAIT_NONE = 0,  /* placed, or not considered (no nodes, beyond SCHED_MAX_JOBS) */
  SCHED_WAIT_NEVER,     /* fewer registered agents of its queue with its resources than it
                           needs: holds nothing, blocks no one */
  SCHED_WAIT_RESOURCES, /* not enough idle agents with its resources */
  SCHED_WAIT_HELD,      /* enough idle agents, but the queue's head holds them */
} sched_wait_kind_t;

#define SCHED_WAIT_JOBS 4 /* busy agents' jobs a wait names */

typedef struct {
  sched_wait_kind_t kind;
  uint32_t ahead;      /* waiting jobs of its queue taken before it (0: it is the head) */
  uint32_t need;       /* nodes it needs now */
  uint32_t idle;       /* idle agents of its queue with its resources */
  uint32_t busy;       /* busy or cooling-down agents of its queue with its resources */
  uint32_t registered; /* agents of its queue with its resources (not leaving) */
  uint32_t attached;   /* agents of its queue, with its resources or not (not leaving) */
  int64_t head;        /* HELD: the job holding the idle agents */
  uint32_t jobs;       /* jobs[0..jobs): distinct jobs the busy agents run */
  int64_t job[SCHED_WAIT_JOBS];
} sched_wait_t;

/* One job to start: its ranks are the plan's agents[first .. first + nodes); nodes is the
 * job's, or fewer (not below its min_nodes) when it was allowed to shrink. */
typedef struct {
  uint32_t job;   /* index into the queued[] the plan was made from */
  uint32_t first; /* its rank 0 in the plan's agents[] */
  uint32_t nodes;
} sched_placement_t;

typedef struct {
  uint32_t count;                                 /* placements, oldest job first */
  sched_placement_t placements[SCHED_MAX_AGENTS]; /* a job takes at least one agent */
  uint32_t agents[SCHED_MAX_AGENTS];              /* indices into agents[], by rank */
  sched_wait_t waits[SCHED_MAX_JOBS];             /* by index into queued[] */
} sched_plan_t;

/* Whether agent a may take a rank of a job of queue (target, pool) at `now`: not busy,
 * not leaving, not cooling down, same target and pool. */
int sched_fits(const sched_agent_t *a, const char *target, const char *pool, int64_t now);

/* The agents of agents[0..n) that fit queue (target, pool) at `now`, as indices into
 * agents[] sorted by agent id (the order ranks are given in), written into out (room for
 * n, at most SCHED_MAX_AGENTS). Returns how many. */
uint32_t sched_free(const sched_agent_t *agents, uint32_t n, const char *target, const char *pool,
                    int64_t now, uint32_t *out);

/* How many workers job q may start with now when n agents fit its queue: its nodes when
 * n reaches them, else n when it may shrink (min_nodes <= n, now >= shrink_at_ms), else 0
 * (it waits). */
uint32_t sched_world(const sched_job_t *q, uint32_t n, int64_t now);

/* Whether agent a has the resources job q asks of each of its nodes: what one worker
 * needs, times its workers_per_node (1 when that is 0). */
int sched_holds(const sched_agent_t *a, const sched_job_t *q);

/* Plans which of queued[0..nq) start now on agents[0..na) (order of either array does not
 * matter): *out receives the placements, highest priority and oldest first, each with its
 * agents in rank order; no agent is in two placements. Jobs left out stay queued, each
 * with its wait in out->waits[]. */
void sched_plan(const sched_job_t *queued, uint32_t nq, const sched_agent_t *agents, uint32_t na,
                int64_t now, sched_plan_t *out);

/* Writes why job q waits (w: its out->waits[] entry) into buf (cap bytes), e.g.
 * "resources: needs 4 nodes, 2 idle, 1 busy (job 12), 3 registered" for a queue's head
 * ("needs 4 nodes x 8 GPUs, 64 CPUs, ..." when it needs resources: per node),
 * "priority: 2 jobs ahead; needs 4 nodes, 3 registered" behind it. The words change only
 * when the numbers do (no clock in them), and those of the jobs behind a head not with
 * every agent that frees or is booked: each change is a store write. "" for
 * SCHED_WAIT_NONE. */
void sched_reason(const sched_job_t *q, const sched_wait_t *w, char *buf, size_t cap);

#endif
