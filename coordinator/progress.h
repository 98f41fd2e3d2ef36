/* progress.h: what the coordinator makes of its workers' `progress` reports: each rank's
 * smoothed step, all-reduce-wait and data times, which ranks are stragglers, and the job's
 * aggregate (rank 0 speaks for the job, the ranks moving in lockstep through the
 * all-reduce), published as ev_progress.
 *
 * The state is the job table's: job.h keeps a progress_rank_t in each rank and a
 * progress_job_t in each job. The job table checks a report against the job's generation
 * and world, then hands it here with a view of the world (progress_view_t); when the event
 * is due, it asks progress_event for it and publishes it. Nothing here sends, reads the
 * clock or knows the job table.
 *
 * A straggler is slow but alive: its own compute time per step (its step time less its
 * all-reduce waits) is above DROVER_STRAGGLER_PCT % of the median of the other ranks', and
 * more than PROGRESS_STRAGGLER_MIN_MS above it. It is logged and shown in `drover status`,
 * never declared dead. progress_stragglers, that decision, is a pure function.
 */
#ifndef DROVER_COORDINATOR_PROGRESS_H
#define DROVER_COORDINATOR_PROGRESS_H

#include <stdint.h>

#include "common/proto.h"

#define PROGRESS_MAX_RANKS 256         /* ranks of one world; more are not looked at */
#define PROGRESS_STRAGGLER_MIN_MS 0.05 /* a straggler is at least this far above the median */

/* One rank's progress, from its reports in the current world (a new world starts at 0). */
typedef struct {
  double samples_per_s, step_ms; /* its last report: throughput, step time */
  /* smoothed (0.7 old + 0.3 new): step time, all-reduce waits, data loading; 0 before its
   * first report */
  double ewma_step_ms, ewma_wait_ms, ewma_data_ms;
  int straggler; /* as progress_stragglers last judged it */
} progress_rank_t;

/* A job's progress, as its rank 0 last reported it (the job table sets `step` to rank 0's
 * final count at its `done`). */
typedef struct {
  uint32_t epoch;
  uint64_t step, steps_total;
  double loss, lr;
  double samples_per_s;    /* the world's, summed over ranks at the last ev_progress */
  int64_t last_publish_ms; /* when the last ev_progress was due */
} progress_job_t;

/* One rank of a world, as progress_report sees it. Borrowed for the call. */
typedef struct {
  progress_rank_t *rank; /* updated in place */
  const char *agent;     /* its agent's id, for log lines ("?" when gone) */
} progress_view_t;

/* A rank's own compute time per step: its smoothed step time less its smoothed all-reduce
 * waits, never below 0. */
double progress_compute_ms(const progress_rank_t *r);

/* The straggler decision, pure: slow[r] (room for n) is 1 when rank r of world[0..n) is a
 * straggler at DROVER_STRAGGLER_PCT `pct` (150: 1.5 times the median), 0 otherwise;
 * median_ms[r] (room for n) is the median it was held against. A rank is judged against
 * the other ranks that have reported (ewma_step_ms > 0); a rank that has not reported, or
 * has no other rank's report to be held against (a world of 1), is no straggler (median 0).
 * Reads only the ranks' smoothed times; at most PROGRESS_MAX_RANKS ranks are looked at. */
void progress_stragglers(const progress_view_t *world, uint32_t n, int64_t pct, int *slow,
                         double *median_ms);

/* Folds rank m->rank's report (m->rank < n) into world[m->rank]: its last throughput and
 * step time, its smoothed times. Judges the stragglers of world[0..n) again
 * (progress_stragglers at DROVER_STRAGGLER_PCT), logging each rank that becomes or stops
 * being one (job m->job). Rank 0's report is the job's: epoch, step, loss and lr go into
 * *job. Returns 1 when the job's ev_progress is due (rank 0's report, DROVER_PROGRESS_MS
 * after the last one was due, or its last step), 0 otherwise. */
int progress_report(progress_job_t *job, const progress_view_t *world, uint32_t n,
                    const proto_progress_t *m, int64_t now);

/* The job's ev_progress from *job and world[0..n): epoch, step, loss, lr, samples_per_s
 * summed over the ranks (also kept in job->samples_per_s), the rank with the most compute
 * per step, the slowest step time, and the time left at that pace. Fills every field of
 * *ev except job, generation and epochs, which are the caller's. */
void progress_event(progress_job_t *job, const progress_view_t *world, uint32_t n,
                    proto_ev_progress_t *ev);

#endif
