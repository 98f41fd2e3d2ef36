/* sched.h: the scheduler, as a pure decision: from a snapshot of the queued jobs and the
 * agents to the placements that can start now. No sockets, no clock: the caller passes
 * `now` and carries the plan out (job.c sends the assignments, handles an agent that
 * cannot be reached, records the state).
 *
 * The rules (docs/architecture.md#scheduler):
 *   - one FIFO queue per target and pool: jobs are taken oldest first (lowest id);
 *   - gang placement: a job is placed only when all its `nodes` workers can be, each on
 *     an agent of its own, or not at all;
 *   - except a job that was running before (queued again by a coordinator restart, with a
 *     checkpoint to go on from): from its `shrink_at_ms` on it takes what there is, down to
 *     its `min_nodes`, rather than wait for all `nodes` (it resumes from the checkpoint;
 *     the data order does not depend on the world size);
 *   - a job that cannot be placed whole blocks the jobs behind it in its queue, not the
 *     jobs of other queues;
 *   - an agent serves the queue of its target and pool (no pool: jobs without one), when
 *     it is not booked, not leaving and not cooling down;
 *   - ranks follow the agents' ids (strcmp): rank 0 is the agent whose id sorts first.
 */
#ifndef DROVER_COORDINATOR_SCHED_H
#define DROVER_COORDINATOR_SCHED_H

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
} sched_agent_t;

/* A queued job as the scheduler sees it. The strings are borrowed for the call. */
typedef struct {
  int64_t id;                /* older jobs have smaller ids */
  const char *target, *pool; /* its queue */
  uint32_t nodes;            /* workers it needs, one agent each */
  uint32_t min_nodes;        /* 0 (or nodes): strict gang; else the fewest it may start with */
  int64_t shrink_at_ms;      /* with min_nodes: from then on it starts with what fits */
} sched_job_t;

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

/* Plans which of queued[0..nq) start now on agents[0..na) (order of either array does not
 * matter): *out receives the placements, oldest job first, each with its agents in rank
 * order; no agent is in two placements. Jobs left out stay queued. */
void sched_plan(const sched_job_t *queued, uint32_t nq, const sched_agent_t *agents, uint32_t na,
                int64_t now, sched_plan_t *out);

#endif
