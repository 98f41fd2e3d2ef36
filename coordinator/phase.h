/* phase.h: the phases of a job, the states of the job state machine (job.c), in a header
 * of their own so that the pure planners (recovery.h) can read a job's phase without
 * depending on the job table.
 *
 *   QUEUED    -> STARTING    placed on its agents (sched_plan)
 *   STARTING  -> QUEUED      an agent could not be reached: queued again
 *   STARTING  -> RUNNING     every rank checked in: `start` sent
 *   STARTING  -> REFORMING   a rank lost before `start`
 *   RUNNING   -> PAUSING     asked to re-form at the next commit (growth, a leaving agent)
 *   RUNNING   -> REFORMING   a rank lost: dead, killed, its agent gone, its ring broken
 *   PAUSING   -> REFORMING   a failure while pausing
 *   REFORMING -> WAITING     fewer workers than min_nodes, and rejoin_timeout to wait
 *   PAUSING | REFORMING | WAITING -> STARTING   re-formed (recovery_plan): next generation
 *   STARTING .. WAITING -> SUCCEEDED   every rank sent `done`
 *   any active phase -> FAILED | CANCELLED
 *
 * job_enter (job.c) makes every transition and logs it once. The store and the wire know
 * only queued / running / succeeded / failed / cancelled (job_state, job.h): every phase
 * from STARTING to WAITING is "running" there.
 */
#ifndef DROVER_COORDINATOR_PHASE_H
#define DROVER_COORDINATOR_PHASE_H

typedef enum {
  JOB_PHASE_QUEUED = 0, /* in its queue, waiting for agents */
  JOB_PHASE_STARTING,   /* placed: `assign` sent, waiting for every rank's rendezvous */
  JOB_PHASE_RUNNING,    /* `start` sent: training */
  JOB_PHASE_PAUSING,    /* a planned re-formation: ranks stop at their next commit */
  JOB_PHASE_REFORMING,  /* after a failure: collecting the survivors' `lost` */
  JOB_PHASE_WAITING,    /* below min_nodes: waiting for agents, up to rejoin_timeout */
  JOB_PHASE_SUCCEEDED,  /* terminal */
  JOB_PHASE_FAILED,     /* terminal */
  JOB_PHASE_CANCELLED,  /* terminal */
} job_phase_t;

#endif
