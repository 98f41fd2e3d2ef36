/* sched.c: the scheduler's decision (see sched.h). Pure: it reads its arguments and
 * writes the plan, nothing else. */
#include "coordinator/sched.h"

#include <stdlib.h>
#include <string.h>

#include "common/drv.h"

int sched_fits(const sched_agent_t *a, const char *target, const char *pool, int64_t now) {
  return !a->busy && !a->leaving && !strcmp(a->target, target) && !strcmp(a->pool, pool) &&
         now >= a->cooldown_until_ms;
}

/* The agents that fit the queue and are not taken[] yet (NULL: none is), sorted by id. */
static uint32_t collect(const sched_agent_t *agents, uint32_t n, const uint8_t *taken,
                        const char *target, const char *pool, int64_t now, uint32_t *out) {
  uint32_t k = 0;
  for (uint32_t i = 0; i < n && i < SCHED_MAX_AGENTS; i++)
    if ((!taken || !taken[i]) && sched_fits(&agents[i], target, pool, now)) out[k++] = i;
  for (uint32_t x = 1; x < k; x++) /* insertion sort: a few hundred agents at most */
    for (uint32_t y = x; y > 0 && strcmp(agents[out[y - 1]].id, agents[out[y]].id) > 0; y--) {
      uint32_t t = out[y];
      out[y] = out[y - 1];
      out[y - 1] = t;
    }
  return k;
}

uint32_t sched_free(const sched_agent_t *agents, uint32_t n, const char *target, const char *pool,
                    int64_t now, uint32_t *out) {
  return collect(agents, n, NULL, target, pool, now, out);
}

uint32_t sched_world(const sched_job_t *q, uint32_t n, int64_t now) {
  if (n >= q->nodes) return q->nodes;
  if (q->min_nodes && n >= q->min_nodes && now >= q->shrink_at_ms) return n;
  return 0;
}

typedef struct {
  int64_t id;
  uint32_t index;
} by_age_t;

static int cmp_age(const void *a, const void *b) {
  int64_t x = ((const by_age_t *)a)->id, y = ((const by_age_t *)b)->id;
  return (x > y) - (x < y);
}

/* Whether an older job of q's queue is already blocked (its index in blocked[0..n)). */
static int queue_blocked(const sched_job_t *queued, const uint32_t *blocked, uint32_t n,
                         const sched_job_t *q) {
  for (uint32_t b = 0; b < n; b++) {
    const sched_job_t *o = &queued[blocked[b]];
    if (!strcmp(o->target, q->target) && !strcmp(o->pool, q->pool)) return 1;
  }
  return 0;
}

void sched_plan(const sched_job_t *queued, uint32_t nq, const sched_agent_t *agents, uint32_t na,
                int64_t now, sched_plan_t *out) {
  out->count = 0;
  nq = DRV_MIN(nq, SCHED_MAX_JOBS);
  na = DRV_MIN(na, SCHED_MAX_AGENTS);
  if (!nq || !na) return;

  by_age_t order[SCHED_MAX_JOBS];
  for (uint32_t i = 0; i < nq; i++) order[i] = (by_age_t){.id = queued[i].id, .index = i};
  qsort(order, nq, sizeof *order, cmp_age);

  uint8_t taken[SCHED_MAX_AGENTS] = {0};
  uint32_t blocked[SCHED_MAX_JOBS], nblocked = 0, used = 0;
  for (uint32_t k = 0; k < nq; k++) {
    const sched_job_t *q = &queued[order[k].index];
    if (!q->nodes || queue_blocked(queued, blocked, nblocked, q)) continue;
    uint32_t fit[SCHED_MAX_AGENTS];
    uint32_t n = collect(agents, na, taken, q->target, q->pool, now, fit);
    uint32_t world = sched_world(q, n, now);
    if (!world) { /* not whole (nor allowed to shrink yet): it holds up its queue */
      blocked[nblocked++] = order[k].index;
      continue;
    }
    out->placements[out->count++] =
        (sched_placement_t){.job = order[k].index, .first = used, .nodes = world};
    for (uint32_t r = 0; r < world; r++) {
      taken[fit[r]] = 1;
      out->agents[used++] = fit[r];
    }
  }
}
