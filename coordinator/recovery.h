/* recovery.h: re-forming a job's world after a failure, or as planned (growth, a leaving
 * agent), as a pure decision. recovery_plan reads a snapshot of the job (its phase, its
 * ranks, its limits, the free agents of its queue, the clock) and returns a plan: wait,
 * re-form now (who stays, in which order, who is new, who is left out and why), or fail
 * (and with which reason). It sends nothing, reads no clock and keeps no state; the job
 * table (job.c) carries the plan out: `reform` to survivors, `assign` to newcomers,
 * `abort` and `kill` to those left out, the store, the events. See
 * docs/user-guide.md#failures.
 *
 * How a re-formation goes. When a rank is lost (its worker killed or exited, its agent
 * silent or gone) or a survivor reports `lost` (its ring broke), the job counts a restart
 * (or fails at max_restarts) and collects survivors: each rolls back to its commit and
 * reports `lost`. The world is re-formed when every rank that is not dead has reported,
 * or at the deadline (ring timeout + RECOVERY_GRACE_MS after a known death, the grace
 * alone after a broken ring): survivors keep their old rank order, so the new rank 0 is
 * the lowest surviving rank and its commit is the one every rank goes on from; free agents
 * fill up to max_nodes; ranks that never reported are left out as silent. Below min_nodes
 * the job fails, or waits up to rejoin_timeout for agents when it has one. When no rank
 * survives (every worker killed at once) a job with a durable checkpoint and restarts left
 * does not fail: it waits up to rejoin_timeout for free agents (those whose workers died
 * are free again after their cool-down) and re-forms from the checkpoint with newcomers
 * only, which load it at their start (rank 0 loads and broadcasts it). A planned
 * re-formation (PAUSING) is the same without a failure: every rank stops at its next
 * commit and reports `lost`; no restart is counted.
 *
 * The reason a job fails with names the cause, not a symptom: a survivor's broken ring
 * ("rank 1 lost its ring ...") is replaced by the rank that died or hung as soon as that
 * is known; at max_restarts it is the first failure's cause.
 */
#ifndef DROVER_COORDINATOR_RECOVERY_H
#define DROVER_COORDINATOR_RECOVERY_H

#include <stddef.h>
#include <stdint.h>

#include "coordinator/phase.h"

#define RECOVERY_MAX_RANKS 256  /* ranks of one world; more are not looked at */
#define RECOVERY_GRACE_MS 3000  /* survivors of a broken ring report `lost` within this */
#define RECOVERY_REASON_MAX 512 /* reasons are cut to this (with the NUL) */

/* What is known of the failure being recovered from. */
typedef enum {
  RECOVERY_CAUSE_NONE = 0, /* nothing: no failure (a planned re-formation, or none) */
  RECOVERY_CAUSE_SYMPTOM,  /* only a survivor's broken ring: who broke it is not known yet */
  RECOVERY_CAUSE_KNOWN,    /* the rank that died, was killed, hung or left */
} recovery_cause_kind_t;

typedef struct {
  recovery_cause_kind_t kind;
  char text[RECOVERY_REASON_MAX]; /* "" when kind is NONE */
} recovery_cause_t;

/* Where a rank of the broken world stands: IN and REPORTED are in the next world (if it
 * is formed now, only REPORTED ones), the others are left out. */
typedef enum {
  RECOVERY_RANK_IN = 0,   /* in the world, no word from it yet (training, or stuck) */
  RECOVERY_RANK_REPORTED, /* reported `lost` (or had checked in when its generation broke
                             before `start`): alive at its commit, waiting for `reform` */
  RECOVERY_RANK_DEAD,     /* out: its worker died or was killed, its agent was lost, or
                             it had not checked in when its generation broke before start */
  RECOVERY_RANK_LEAVING,  /* out: its agent is stopping */
  RECOVERY_RANK_SILENT,   /* out: neither dead nor reported by the deadline: hung */
} recovery_rank_fate_t;

/* One rank of the world that broke, as the job table knows it. */
typedef struct {
  const char *agent_id, *host; /* its agent's, for reasons ("?" when gone) */
  int rendezvoused;            /* checked in for this generation */
  int lost;                    /* reported `lost` */
  int dead;                    /* gone for good */
  int leaving;                 /* its agent said `leave` */
  int preemptible;             /* on a node of a preemptible target: its loss is no restart
                                  when its agent is leaving or gone by the settling */
  uint64_t step;               /* at its last progress report */
  uint64_t coll_seq;           /* collectives it had completed then */
  uint64_t commit;             /* the commit it rolled back to (its `lost`); 0: not known */
  int64_t agent_quiet_ms;      /* how long since its agent was last heard from; -1: gone */
} recovery_rank_t;

/* The job, as recovery sees it. Strings and ranks are borrowed for the call. */
typedef struct {
  job_phase_t phase;            /* STARTING .. WAITING; other phases get a WAIT, no change */
  uint32_t nodes;               /* ranks of the world that broke */
  const recovery_rank_t *ranks; /* [nodes] */
  uint32_t min_nodes, max_nodes;   /* nodes of workers_per_node workers each: the world's
                                      bounds in workers are these times workers_per_node */
  uint32_t workers_per_node;       /* 0 is taken as 1 */
  uint32_t max_world;              /* > 0: no world larger (train.global_batch: a sample per
                                      worker a step), whatever max_nodes says */
  uint32_t max_restarts, restarts; /* restarts: re-formations after failures so far */
  int pending;                     /* the re-formation under way may not be a restart (it
                                      broke where preemptible nodes are): counted, or not,
                                      once its cause is known (at the latest when settled) */
  uint32_t rejoin_timeout_s;       /* below min_nodes: how long to wait for agents; 0: fail */
  uint64_t ckpt_step;              /* its newest durable checkpoint; 0: none. With one, a
                                      world with no survivor left re-forms from it with free
                                      agents only (waiting up to rejoin_timeout for them) */
  uint32_t free_agents;     /* free worker slots of its queue now (each free agent has its
                               workers per node of them); newcomers are the first of them */
  int64_t deadline_ms;      /* of the re-formation under way */
  int64_t ring_timeout_ms;  /* DROVER_RING_TIMEOUT_MS: how long ring peers take to notice */
  int64_t agent_quiet_ms;   /* a silent rank whose agent was not heard from for longer than
                               this (or is gone) died with its agent, rather than hung;
                               0: never said */
  recovery_cause_t cause;   /* of the re-formation under way */
  const char *first_cause;  /* the first failure it re-formed after; "" none yet */
  const char *pause_reason; /* PAUSING: why it was asked to ("taking in 1 free agent(s)") */
} recovery_job_t;

/* A new failure: rank `rank` is lost for good (-1: no rank known, a survivor's broken
 * ring), with a reason naming it. */
typedef struct {
  int rank;
  const char *reason;
} recovery_failure_t;

typedef enum {
  RECOVERY_WAIT,   /* nothing to do yet: plan again at the next report or the deadline */
  RECOVERY_REFORM, /* form the next world now, as the plan says */
  RECOVERY_FAIL,   /* the job fails with the plan's reason */
} recovery_action_t;

typedef struct {
  recovery_action_t action;
  job_phase_t phase;      /* the job's phase after the plan (WAIT: PAUSING, REFORMING or
                             WAITING; REFORM: STARTING; FAIL: FAILED) */
  int restart;            /* the failure began a re-formation: count it, say so */
  int waits_for_agents;   /* the plan began the wait for agents (phase WAITING) */
  int settled;            /* the plan settled who is out (REFORM, or FAIL at the end of the
                             collection): the owner drops those ranks */
  uint32_t restarts;      /* the job's restarts after the plan */
  int pending;            /* after the plan: see recovery_job_t */
  int64_t deadline_ms;    /* of the re-formation under way, after the plan */
  uint32_t workers;       /* alive ranks plus free agents: what a world could have now */
  recovery_cause_t cause; /* after the plan; REFORM: the one the world re-forms after
                             (NONE when planned), which the owner then clears */
  char first_cause[RECOVERY_REASON_MAX];         /* after the plan */
  recovery_rank_fate_t fate[RECOVERY_MAX_RANKS]; /* each old rank's standing after the plan */
  /* REFORM: new ranks 0 .. survivors-1 are old ranks from[], in their old order; new
   * ranks survivors .. world-1 are the first `newcomers` free slots. */
  uint32_t world, survivors, newcomers;
  uint32_t from[RECOVERY_MAX_RANKS];
  uint64_t step; /* the commit the next world goes on from: its rank 0's (0: not known); with
                    no survivor, the checkpoint's (ckpt_step) */
  char reason[RECOVERY_REASON_MAX + 256]; /* FAIL: the job's reason; REFORM: the event's */
} recovery_plan_t;

/* Plans the next move of job `job` at `now`, after `failure` when one just happened
 * (NULL: a check, at a rank's `lost` or the tick). The failed rank should already be
 * marked dead in job->ranks (the owner stops its worker at once). Fills *out; never fails.
 * A job that is neither starting nor in a re-formation gets a WAIT, unless a failure
 * starts one. */
void recovery_plan(const recovery_job_t *job, const recovery_failure_t *failure, int64_t now,
                   recovery_plan_t *out);

/* How much a report that ends or breaks a job says about the root cause, least first:
 * reports that arrive within DROVER_FAIL_HOLD_MS of each other are ranked by it, and the
 * job's reason is the best-ranked one (the first of equals). */
typedef enum {
  RECOVERY_REPORT_NONE = 0,
  RECOVERY_REPORT_PEER,    /* a rank's `failed` that is its ring's error: a peer went away */
  RECOVERY_REPORT_SYMPTOM, /* a survivor's `lost`: its ring broke */
  RECOVERY_REPORT_OWN,     /* a rank's `failed` with an error of its own (data, spec, loss) */
} recovery_report_t;

/* The rank of a `failed` report with this reason: PEER when it reads as a broken ring's
 * error ("ring all-reduce: rank 1: rank 0 (left) closed the connection", "ring: rank 2 ...",
 * "ring: broken by an earlier failure"), OWN otherwise. */
recovery_report_t recovery_failed_kind(const char *reason);

/* The reason a silent rank is left out with: "rank 2 (agent a3, 10.0.0.3) stopped making
 * progress after step 364 (collective 1093): its ring broke and it did not report"; when its
 * agent was quiet for longer than quiet_ms (> 0) too, the agent's death: "agent a3
 * (10.0.0.3, rank 2, near step 364) went silent with its worker: no heartbeat for 3200 ms". */
void recovery_silent_reason(const recovery_rank_t *rk, uint32_t rank, int64_t quiet_ms, char *buf,
                            size_t n);

#endif
