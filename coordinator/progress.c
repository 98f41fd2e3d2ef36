/* progress.c: progress reports folded into smoothed times, stragglers judged, the job's
 * ev_progress (see progress.h). */
#include "coordinator/progress.h"

#include <inttypes.h>
#include <math.h>

#include "common/drv.h"
#include "common/log.h"
#include "common/settings.h"

double progress_compute_ms(const progress_rank_t *r) {
  double v = r->ewma_step_ms - r->ewma_wait_ms;
  return v > 0 ? v : 0;
}

// --- Stragglers ----------------------------------------------------------------------------

void progress_stragglers(const progress_view_t *world, uint32_t n, int64_t pct, int *slow,
                         double *median_ms) {
  n = DRV_MIN(n, PROGRESS_MAX_RANKS);
  double f = (double)pct / 100.0;
  double others[PROGRESS_MAX_RANKS];
  for (uint32_t r = 0; r < n; r++) {
    const progress_rank_t *s = world[r].rank;
    slow[r] = 0;
    median_ms[r] = 0;
    uint32_t k = 0;
    for (uint32_t q = 0; q < n; q++)
      if (q != r && world[q].rank->ewma_step_ms > 0)
        others[k++] = progress_compute_ms(world[q].rank);
    if (!k || s->ewma_step_ms == 0) continue;
    double median = drv_median(others, k);
    double mine = progress_compute_ms(s);
    slow[r] = mine > f * median && mine - median > PROGRESS_STRAGGLER_MIN_MS;
    median_ms[r] = median;
  }
}

/* Judges world[0..n) again and logs each rank whose verdict changed. */
static void update_stragglers(int64_t job, const progress_view_t *world, uint32_t n) {
  n = DRV_MIN(n, PROGRESS_MAX_RANKS);
  int slow[PROGRESS_MAX_RANKS];
  double median[PROGRESS_MAX_RANKS];
  progress_stragglers(world, n, drv_setting(DRV_SET_STRAGGLER_PCT), slow, median);
  for (uint32_t r = 0; r < n; r++) {
    if (slow[r] == world[r].rank->straggler) continue;
    if (slow[r])
      log_warn("job %" PRId64
               ": rank %u (agent %s) is a straggler: %.2f ms of compute per step, "
               "others' median %.2f ms",
               job, r, world[r].agent, progress_compute_ms(world[r].rank), median[r]);
    else
      log_info("job %" PRId64 ": rank %u is no longer a straggler", job, r);
    world[r].rank->straggler = slow[r];
  }
}

// --- Reports -------------------------------------------------------------------------------

/* Its last throughput and step time, and its smoothed times (a missing wait or data time
 * counts as 0). */
static void fold(progress_rank_t *s, const proto_progress_t *m) {
  s->samples_per_s = m->interval_s > 0 ? (double)m->samples / m->interval_s : 0;
  s->step_ms = m->step_ms;
  double wait = isnan(m->wait_ms) ? 0 : m->wait_ms;
  double data = isnan(m->data_ms) ? 0 : m->data_ms;
  if (s->ewma_step_ms == 0) {
    s->ewma_step_ms = m->step_ms;
    s->ewma_wait_ms = wait;
    s->ewma_data_ms = data;
  } else {
    s->ewma_step_ms = 0.7 * s->ewma_step_ms + 0.3 * m->step_ms;
    s->ewma_wait_ms = 0.7 * s->ewma_wait_ms + 0.3 * wait;
    s->ewma_data_ms = 0.7 * s->ewma_data_ms + 0.3 * data;
  }
}

int progress_report(progress_job_t *job, const progress_view_t *world, uint32_t n,
                    const proto_progress_t *m, int64_t now) {
  if (m->rank >= n || m->rank >= PROGRESS_MAX_RANKS) return 0;
  fold(world[m->rank].rank, m);
  update_stragglers(m->job, world, n);
  if (m->rank != 0) return 0;
  job->epoch = m->epoch;
  job->step = m->step;
  job->steps_total = m->steps_total;
  job->loss = m->loss;
  job->lr = m->lr;
  if (now - job->last_publish_ms < drv_setting(DRV_SET_PROGRESS_MS) && m->step != m->steps_total)
    return 0;
  job->last_publish_ms = now;
  return 1;
}

void progress_event(progress_job_t *job, const progress_view_t *world, uint32_t n,
                    proto_ev_progress_t *ev) {
  ev->epoch = job->epoch;
  ev->step = job->step;
  ev->steps_total = job->steps_total;
  ev->loss = job->loss;
  ev->lr = job->lr;
  double total = 0, slowest = -1, slowest_compute = -1;
  uint32_t slow_rank = 0;
  for (uint32_t r = 0; r < n; r++) {
    const progress_rank_t *s = world[r].rank;
    total += s->samples_per_s;
    slowest = DRV_MAX(slowest, s->step_ms);
    if (progress_compute_ms(s) > slowest_compute) { /* the one the others wait for */
      slowest_compute = progress_compute_ms(s);
      slow_rank = r;
    }
  }
  job->samples_per_s = total;
  ev->samples_per_s = total;
  ev->slowest_rank = slow_rank;
  ev->slowest_step_ms = slowest < 0 ? 0 : slowest;
  double steps_per_s = slowest > 0 ? 1000.0 / slowest : 0;
  ev->eta_s = steps_per_s > 0 && job->step < job->steps_total
                  ? (double)(job->steps_total - job->step) / steps_per_s
                  : 0;
}
