/* sched.c: the scheduler's decision (see sched.h). Pure: it reads its arguments and
 * writes the plan, nothing else. */
#include "coordinator/sched.h"

#include <inttypes.h>
#include <stdio.h>
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

int sched_holds(const sched_agent_t *a, const sched_job_t *q) {
  uint64_t w = q->workers_per_node ? q->workers_per_node : 1;
  return a->cpus >= w * q->cpus && a->gpus >= w * q->gpus && a->mem_mb >= w * q->mem_mb;
}

/* " x 8 GPUs, 16 CPUs, 4096 MB": what each node of q needs, the zeros left out. */
static void node_needs(const sched_job_t *q, char *buf, size_t cap) {
  uint64_t w = q->workers_per_node ? q->workers_per_node : 1;
  size_t n = 0;
  buf[0] = '\0';
  const struct {
    uint64_t v;
    const char *unit;
  } need[] = {{w * q->gpus, "GPU"}, {w * q->cpus, "CPU"}, {w * q->mem_mb, "MB"}};
  for (size_t k = 0; k < DRV_ARRAY_LEN(need) && n < cap; k++)
    if (need[k].v)
      n += (size_t)snprintf(buf + n, cap - n, "%s%" PRIu64 " %s%s", n ? ", " : " x ", need[k].v,
                            need[k].unit, need[k].v == 1 || k == 2 ? "" : "s");
}

typedef struct {
  int32_t priority;
  int64_t id;
  uint32_t index;
} by_rank_t;

/* Highest priority first, then oldest (lowest id). */
static int cmp_rank(const void *a, const void *b) {
  const by_rank_t *x = a, *y = b;
  if (x->priority != y->priority) return x->priority > y->priority ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

#define NEVER INT64_MAX

/* The head of a queue: the first job of it that could not start, and what it holds. */
typedef struct {
  const char *target, *pool;
  int64_t job;      /* its id */
  int64_t start_ms; /* its estimated earliest start; NEVER when not known */
  uint32_t waiting; /* jobs of the queue left waiting so far, the head included */
} head_t;

/* The state of one plan while it is made. */
typedef struct {
  const sched_job_t *queued;
  const sched_agent_t *agents;
  uint32_t na;
  int64_t now;
  uint8_t taken[SCHED_MAX_AGENTS];     /* placed by this plan */
  int64_t taken_job[SCHED_MAX_AGENTS]; /* ... for this job */
  int64_t taken_end[SCHED_MAX_AGENTS]; /* ... which ends by then (NEVER: not known) */
  uint32_t held[SCHED_MAX_AGENTS];     /* 1 + the heads[] index holding it; 0: none */
  head_t heads[SCHED_MAX_JOBS];
  uint32_t nheads;
} plan_state_t;

static int same_queue(const sched_agent_t *a, const sched_job_t *q) {
  return !strcmp(a->target, q->target) && !strcmp(a->pool, q->pool);
}

static head_t *head_of(plan_state_t *st, const sched_job_t *q) {
  for (uint32_t h = 0; h < st->nheads; h++)
    if (!strcmp(st->heads[h].target, q->target) && !strcmp(st->heads[h].pool, q->pool))
      return &st->heads[h];
  return NULL;
}

/* When agent i can take new work at the earliest (now when it is idle). */
static int64_t agent_free_at(const plan_state_t *st, uint32_t i) {
  const sched_agent_t *a = &st->agents[i];
  int64_t at = st->now;
  if (st->taken[i])
    at = st->taken_end[i];
  else if (a->busy)
    at = a->free_at_ms ? a->free_at_ms : NEVER;
  return at == NEVER ? NEVER : DRV_MAX(at, a->cooldown_until_ms);
}

static void note_job(sched_wait_t *w, int64_t job) {
  if (!job) return;
  for (uint32_t k = 0; k < w->jobs; k++)
    if (w->job[k] == job) return;
  if (w->jobs < SCHED_WAIT_JOBS) w->job[w->jobs++] = job;
}

/* Counts q's queue: registered, idle and busy agents with its resources (into *w), and
 * writes the idle ones, sorted by id, into idle[]. Returns how many are idle. */
static uint32_t survey(plan_state_t *st, const sched_job_t *q, sched_wait_t *w, uint32_t *idle) {
  uint32_t n = collect(st->agents, st->na, st->taken, q->target, q->pool, st->now, idle), k = 0;
  for (uint32_t x = 0; x < n; x++)
    if (sched_holds(&st->agents[idle[x]], q)) idle[k++] = idle[x];
  for (uint32_t i = 0; i < st->na; i++) {
    const sched_agent_t *a = &st->agents[i];
    if (a->leaving || !same_queue(a, q)) continue;
    w->attached++;
    if (!sched_holds(a, q)) continue;
    w->registered++;
    if (st->taken[i] || a->busy || st->now < a->cooldown_until_ms) {
      w->busy++;
      note_job(w, st->taken[i] ? st->taken_job[i] : a->job);
    }
  }
  w->idle = k;
  return k;
}

/* The earliest time `need` agents of q's queue with its resources are free at once. */
static int64_t start_estimate(const plan_state_t *st, const sched_job_t *q, uint32_t need) {
  int64_t at[SCHED_MAX_AGENTS];
  uint32_t n = 0;
  for (uint32_t i = 0; i < st->na; i++) {
    const sched_agent_t *a = &st->agents[i];
    if (!a->leaving && same_queue(a, q) && sched_holds(a, q)) at[n++] = agent_free_at(st, i);
  }
  if (!need || n < need) return NEVER;
  for (uint32_t x = 1; x < n; x++) /* insertion sort: a few hundred agents at most */
    for (uint32_t y = x; y > 0 && at[y - 1] > at[y]; y--) {
      int64_t t = at[y];
      at[y] = at[y - 1];
      at[y - 1] = t;
    }
  return at[need - 1];
}

/* Of idle[0..n), those q may take without delaying its queue's head h: the ones h does not
 * hold, and the held ones too when q's max_runtime ends before h's start. In place. */
static uint32_t not_held(const plan_state_t *st, const sched_job_t *q, const head_t *h,
                         uint32_t *idle, uint32_t n) {
  if (!h) return n;
  uint32_t hi = (uint32_t)(h - st->heads) + 1, k = 0;
  int in_time =
      q->max_runtime_ms > 0 && (h->start_ms == NEVER || st->now + q->max_runtime_ms <= h->start_ms);
  for (uint32_t x = 0; x < n; x++)
    if (in_time || st->held[idle[x]] != hi) idle[k++] = idle[x];
  return k;
}

static void place_job(plan_state_t *st, sched_plan_t *out, uint32_t qi, const uint32_t *fit,
                      uint32_t world, uint32_t *used) {
  const sched_job_t *q = &st->queued[qi];
  out->placements[out->count++] = (sched_placement_t){.job = qi, .first = *used, .nodes = world};
  for (uint32_t r = 0; r < world; r++) {
    st->taken[fit[r]] = 1;
    st->taken_job[fit[r]] = q->id;
    st->taken_end[fit[r]] = q->max_runtime_ms > 0 ? st->now + q->max_runtime_ms : NEVER;
    out->agents[(*used)++] = fit[r];
  }
}

/* q could not start: it becomes its queue's head when there is none, holding the idle
 * agents it fits; else it is one more job waiting behind the head. */
static void wait_job(plan_state_t *st, const sched_job_t *q, sched_wait_t *w, const uint32_t *idle,
                     uint32_t nidle, uint32_t world_unheld) {
  head_t *h = head_of(st, q);
  if (!h && st->nheads < SCHED_MAX_JOBS) {
    h = &st->heads[st->nheads++];
    *h = (head_t){.target = q->target, .pool = q->pool, .job = q->id};
    h->start_ms = start_estimate(st, q, q->nodes);
    for (uint32_t x = 0; x < nidle; x++) st->held[idle[x]] = st->nheads;
  }
  if (!h) return;
  w->ahead = h->waiting++;
  w->kind = world_unheld && h->job != q->id ? SCHED_WAIT_HELD : SCHED_WAIT_RESOURCES;
  w->head = h->job;
}

void sched_plan(const sched_job_t *queued, uint32_t nq, const sched_agent_t *agents, uint32_t na,
                int64_t now, sched_plan_t *out) {
  out->count = 0;
  nq = DRV_MIN(nq, SCHED_MAX_JOBS);
  na = DRV_MIN(na, SCHED_MAX_AGENTS);
  memset(out->waits, 0, nq * sizeof out->waits[0]);
  if (!nq) return;

  by_rank_t order[SCHED_MAX_JOBS];
  for (uint32_t i = 0; i < nq; i++)
    order[i] = (by_rank_t){.priority = queued[i].priority, .id = queued[i].id, .index = i};
  qsort(order, nq, sizeof *order, cmp_rank);

  plan_state_t st = {.queued = queued, .agents = agents, .na = na, .now = now};
  uint32_t used = 0;
  for (uint32_t k = 0; k < nq; k++) {
    uint32_t qi = order[k].index;
    const sched_job_t *q = &queued[qi];
    sched_wait_t *w = &out->waits[qi];
    if (!q->nodes) continue;
    uint32_t idle[SCHED_MAX_AGENTS];
    uint32_t nidle = survey(&st, q, w, idle);
    uint32_t fewest = q->min_nodes && q->min_nodes < q->nodes ? q->min_nodes : q->nodes;
    w->need = q->nodes;
    if (w->registered < fewest) { /* no set of its registered agents could hold it */
      w->kind = SCHED_WAIT_NEVER;
      continue;
    }
    uint32_t world_unheld = sched_world(q, nidle, now);
    uint32_t fit[SCHED_MAX_AGENTS];
    memcpy(fit, idle, nidle * sizeof *fit);
    uint32_t n = not_held(&st, q, head_of(&st, q), fit, nidle);
    uint32_t world = sched_world(q, n, now);
    if (world) {
      place_job(&st, out, qi, fit, world, &used);
      continue;
    }
    wait_job(&st, q, w, idle, nidle, world_unheld);
  }
}

/* "N things" with the plural when N is not 1. */
static const char *plural(uint32_t n) {
  return n == 1 ? "" : "s";
}

void sched_reason(const sched_job_t *q, const sched_wait_t *w, char *buf, size_t cap) {
  char where[160], with[96] = "", jobs[96] = "";
  size_t len = 0;
  buf[0] = '\0';
  if (w->kind == SCHED_WAIT_NONE) return;
  snprintf(where, sizeof where, "target %s%s%s", q->target, *q->pool ? ", pool " : "", q->pool);
  node_needs(q, with, sizeof with);
  if (w->kind == SCHED_WAIT_NEVER) {
    if (!w->attached && *q->pool)
      snprintf(buf, cap, "pool %s: no agent of target %s registered", q->pool, q->target);
    else
      snprintf(buf, cap, "needs %u node%s%s, only %u agent%s of %s registered%s", w->need,
               plural(w->need), with, w->registered, plural(w->registered), where,
               with[0] ? " with that" : "");
    return;
  }
  if (w->ahead)
    len = (size_t)snprintf(buf, cap, "priority: %u job%s ahead; ", w->ahead, plural(w->ahead));
  if (len >= cap) return;
  if (w->kind == SCHED_WAIT_HELD) {
    snprintf(buf + len, cap - len, "backfill: job %" PRId64 " holds the idle nodes it fits; %s",
             w->head,
             q->max_runtime_ms > 0 ? "its max_runtime ends after that job's earliest start"
                                   : "it has no max_runtime to fit before that job's start");
    return;
  }
  if (w->ahead) { /* behind the head: no counts that change with every agent's turn */
    snprintf(buf + len, cap - len, "needs %u node%s%s, %u registered", w->need, plural(w->need),
             with, w->registered);
    return;
  }
  for (uint32_t k = 0; k < w->jobs; k++) {
    size_t j = strlen(jobs);
    snprintf(jobs + j, sizeof jobs - j, "%s%" PRId64, k ? ", " : "", w->job[k]);
  }
  snprintf(buf + len, cap - len,
           "resources: needs %u node%s%s, %u idle, %u busy%s%s%s%s, %u registered", w->need,
           plural(w->need), with, w->idle, w->busy, w->jobs ? " (job" : "",
           w->jobs > 1 ? "s "
           : w->jobs   ? " "
                       : "",
           jobs, w->jobs ? ")" : "", w->registered);
}
