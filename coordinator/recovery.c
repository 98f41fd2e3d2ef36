/* recovery.c: the re-formation planner (see recovery.h). Pure: it reads the job snapshot
 * and writes the plan, nothing else. */
#include "coordinator/recovery.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/drv.h"

void recovery_silent_reason(const recovery_rank_t *rk, uint32_t rank, int64_t quiet_ms, char *buf,
                            size_t n) {
  if (quiet_ms > 0 && (rk->agent_quiet_ms < 0 || rk->agent_quiet_ms > quiet_ms)) {
    char quiet[64] = "gone";
    if (rk->agent_quiet_ms >= 0)
      snprintf(quiet, sizeof quiet, "no heartbeat for %" PRId64 " ms", rk->agent_quiet_ms);
    snprintf(buf, n,
             "agent %s (%s, rank %u, near step %" PRIu64 ") went silent with its worker: %s",
             rk->agent_id ? rk->agent_id : "?", rk->host ? rk->host : "?", rank, rk->step, quiet);
    return;
  }
  snprintf(buf, n,
           "rank %u (agent %s, %s) stopped making progress after step %" PRIu64
           " (collective %" PRIu64 "): its ring broke and it did not report",
           rank, rk->agent_id ? rk->agent_id : "?", rk->host ? rk->host : "?", rk->step,
           rk->coll_seq);
}

recovery_report_t recovery_failed_kind(const char *reason) {
  static const char *const peer[] = {"ring all-reduce: rank ", "ring: rank ", "ring: broken by",
                                     "closed the connection"};
  for (size_t k = 0; reason && k < DRV_ARRAY_LEN(peer); k++)
    if (strstr(reason, peer[k])) return RECOVERY_REPORT_PEER;
  return RECOVERY_REPORT_OWN;
}

/* The world's bounds in workers, and "min_nodes 2" (" x 4 workers") for reasons. */
static uint32_t per_node(const recovery_job_t *job) {
  return job->workers_per_node ? job->workers_per_node : 1;
}
static uint32_t min_workers(const recovery_job_t *job) {
  return job->min_nodes * per_node(job);
}
static const char *min_text(const recovery_job_t *job, char *buf, size_t n) {
  if (per_node(job) == 1)
    snprintf(buf, n, "min_nodes %u", job->min_nodes);
  else
    snprintf(buf, n, "min_nodes %u x %u workers", job->min_nodes, per_node(job));
  return buf;
}

static int phase_collecting(job_phase_t p) {
  return p == JOB_PHASE_PAUSING || p == JOB_PHASE_REFORMING || p == JOB_PHASE_WAITING;
}

static uint32_t count_alive(const recovery_plan_t *out, uint32_t n) {
  uint32_t alive = 0;
  for (uint32_t r = 0; r < n; r++) alive += out->fate[r] < RECOVERY_RANK_DEAD;
  return alive;
}

static void fail(recovery_plan_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(recovery_plan_t *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out->reason, sizeof out->reason, fmt, ap);
  va_end(ap);
  out->action = RECOVERY_FAIL;
  out->phase = JOB_PHASE_FAILED;
}

/* The re-formation under way counts as a restart now: fails at max_restarts (0 returned). */
static int count_restart(const recovery_job_t *job, recovery_plan_t *out) {
  out->pending = 0;
  if (out->restarts >= job->max_restarts) {
    const char *first = out->first_cause[0] ? out->first_cause : out->cause.text;
    if (job->max_restarts)
      fail(out, "%s (max_restarts %u reached)", first, job->max_restarts);
    else
      fail(out, "%s", first);
    return 0;
  }
  out->restarts++;
  return 1;
}

/* Whether any of ranks[0..n) is on a preemptible node. */
static int any_preemptible(const recovery_job_t *job, uint32_t n) {
  for (uint32_t r = 0; r < n; r++)
    if (job->ranks[r].preemptible) return 1;
  return 0;
}

/* A failure arrived: keeps the cause, classifies the ranks of a world that had not started,
 * and begins a re-formation (or fails). A preemption is no restart; a broken ring where
 * preemptible nodes are is counted once its cause is known. Returns 0 when the plan is
 * made (FAIL). */
static int note_failure(const recovery_job_t *job, const recovery_failure_t *f, uint32_t n,
                        int64_t now, recovery_plan_t *out) {
  /* A survivor's broken ring is a symptom; the rank that died or hung is the cause, and
   * the cause is what the record should say. */
  if (out->cause.kind == RECOVERY_CAUSE_NONE ||
      (f->rank >= 0 && out->cause.kind == RECOVERY_CAUSE_SYMPTOM)) {
    out->cause.kind = f->rank >= 0 ? RECOVERY_CAUSE_KNOWN : RECOVERY_CAUSE_SYMPTOM;
    snprintf(out->cause.text, sizeof out->cause.text, "%s", f->reason);
  }
  if (f->rank >= 0 && (uint32_t)f->rank < n) out->fate[f->rank] = RECOVERY_RANK_DEAD;
  if (out->phase == JOB_PHASE_STARTING) {
    /* Nobody trained in this generation: every rank still holds its commit. Those that
     * checked in wait for `start` and take a `reform` instead; the others are dropped. */
    for (uint32_t r = 0; r < n; r++)
      if (out->fate[r] != RECOVERY_RANK_DEAD)
        out->fate[r] = job->ranks[r].rendezvoused ? RECOVERY_RANK_REPORTED : RECOVERY_RANK_DEAD;
  }
  if (out->phase == JOB_PHASE_PAUSING) out->phase = JOB_PHASE_RUNNING; /* a real failure now */
  /* Where preemptible nodes are, whether it was a preemption is known when the world is
   * settled (their agents left or gone by then); a death elsewhere counts at once. */
  int maybe = f->rank < 0 ? any_preemptible(job, n)
                          : (uint32_t)f->rank < n && job->ranks[f->rank].preemptible;
  if (out->pending && !maybe && !count_restart(job, out)) return 0;
  if (!phase_collecting(out->phase)) {
    if (maybe)
      out->pending = 1;
    else if (!count_restart(job, out))
      return 0;
    out->restart = 1;
    out->phase = JOB_PHASE_REFORMING;
    /* Once a ring is broken the break travels round it in moments: survivors report
     * within the grace. Until then (a rank known dead whose links may still be open, say
     * a stopped agent with a stopped worker) only a ring timeout tells them. */
    out->deadline_ms = now + (f->rank < 0 ? 0 : job->ring_timeout_ms) + RECOVERY_GRACE_MS;
  }
  uint32_t alive = count_alive(out, n);
  out->workers = alive + job->free_agents;
  /* Nobody left to go on from: newcomers can still start from the durable checkpoint. */
  int from_ckpt = alive == 0 && job->ckpt_step && job->rejoin_timeout_s;
  char min[64];
  if ((alive == 0 && !from_ckpt) || (out->workers < min_workers(job) && !job->rejoin_timeout_s)) {
    fail(out, "%s (%u worker(s) left, %s)", out->cause.text, out->workers,
         min_text(job, min, sizeof min));
    return 0;
  }
  if (out->workers < min_workers(job) && out->phase != JOB_PHASE_WAITING) {
    /* Below min_nodes: wait up to rejoin_timeout for agents to come (or come back). */
    out->phase = JOB_PHASE_WAITING;
    out->waits_for_agents = 1;
    out->deadline_ms = DRV_MAX(out->deadline_ms, now + (int64_t)job->rejoin_timeout_s * 1000);
  }
  return 1;
}

/* The collection is over: who stays, who is new, who is left out; re-form or fail. */
static void settle(const recovery_job_t *job, uint32_t n, recovery_plan_t *out) {
  int planned = out->phase == JOB_PHASE_PAUSING;
  out->settled = 1;
  if (out->pending) { /* a restart unless every rank lost was a preempted node's */
    int preempted = 1;
    for (uint32_t r = 0; r < n; r++) { /* the ones not reported (IN) are left out below */
      const recovery_rank_t *rk = &job->ranks[r];
      if (out->fate[r] == RECOVERY_RANK_DEAD || out->fate[r] == RECOVERY_RANK_SILENT ||
          out->fate[r] == RECOVERY_RANK_IN)
        preempted &= rk->preemptible && (rk->leaving || rk->agent_quiet_ms < 0);
    }
    if (!preempted && !count_restart(job, out)) return;
    out->pending = 0;
  }
  for (uint32_t r = 0; r < n; r++) {
    recovery_rank_fate_t *fate = &out->fate[r];
    if (job->ranks[r].leaving && *fate != RECOVERY_RANK_DEAD) *fate = RECOVERY_RANK_LEAVING;
    if (*fate == RECOVERY_RANK_IN) { /* silent: hung, or still stuck in a collective */
      *fate = RECOVERY_RANK_SILENT;
      if (out->cause.kind == RECOVERY_CAUSE_SYMPTOM) {
        recovery_silent_reason(&job->ranks[r], r, job->agent_quiet_ms, out->cause.text,
                               sizeof out->cause.text);
        out->cause.kind = RECOVERY_CAUSE_KNOWN;
      }
    }
    if (*fate == RECOVERY_RANK_REPORTED) out->from[out->survivors++] = r;
  }
  uint32_t nsurv = out->survivors;
  uint32_t max = DRV_MIN(job->max_nodes * per_node(job), (uint32_t)RECOVERY_MAX_RANKS);
  if (job->max_world) max = DRV_MIN(max, job->max_world);
  out->newcomers = max > nsurv ? DRV_MIN(job->free_agents, max - nsurv) : 0;
  out->world = nsurv + out->newcomers;
  const char *cause = planned ? job->pause_reason : out->cause.text;
  if ((nsurv == 0 && !job->ckpt_step) || out->world < min_workers(job)) {
    char min[64];
    fail(out, "%s (%u worker(s) left, %s)", cause, out->world, min_text(job, min, sizeof min));
    return;
  }
  out->action = RECOVERY_REFORM;
  out->phase = JOB_PHASE_STARTING;
  out->step = nsurv ? job->ranks[out->from[0]].commit : job->ckpt_step;
  if (!nsurv)
    snprintf(out->reason, sizeof out->reason,
             "re-formed with %u new worker(s) from the checkpoint of step %" PRIu64
             " (no worker survived) after: %s",
             out->world, job->ckpt_step, cause);
  else if (planned)
    snprintf(out->reason, sizeof out->reason, "re-formed with %u worker(s) (%u new): %s",
             out->world, out->newcomers, cause);
  else
    snprintf(out->reason, sizeof out->reason, "re-formed with %u worker(s) (%u new) after: %s",
             out->world, out->newcomers, cause);
  /* The first failure's cause is kept for the record of max_restarts; this one is done. */
  if (!planned && !out->first_cause[0])
    snprintf(out->first_cause, sizeof out->first_cause, "%s", out->cause.text);
}

void recovery_plan(const recovery_job_t *job, const recovery_failure_t *failure, int64_t now,
                   recovery_plan_t *out) {
  memset(out, 0, sizeof *out);
  uint32_t n = DRV_MIN(job->nodes, RECOVERY_MAX_RANKS);
  out->action = RECOVERY_WAIT;
  out->phase = job->phase;
  out->restarts = job->restarts;
  out->pending = job->pending;
  out->deadline_ms = job->deadline_ms;
  out->cause = job->cause;
  snprintf(out->first_cause, sizeof out->first_cause, "%s",
           job->first_cause ? job->first_cause : "");
  for (uint32_t r = 0; r < n; r++) {
    const recovery_rank_t *rk = &job->ranks[r];
    out->fate[r] = rk->dead   ? RECOVERY_RANK_DEAD
                   : rk->lost ? RECOVERY_RANK_REPORTED
                              : RECOVERY_RANK_IN;
  }
  if (failure && !note_failure(job, failure, n, now, out)) return;
  if (!phase_collecting(out->phase)) return;

  /* Wait while a rank that is not dead has not reported, and, below min_nodes, while too
   * few agents are free; never past the deadline. */
  uint32_t alive = count_alive(out, n);
  int waiting = 0;
  for (uint32_t r = 0; r < n; r++) waiting |= out->fate[r] == RECOVERY_RANK_IN;
  out->workers = alive + job->free_agents;
  if (out->phase == JOB_PHASE_WAITING && out->workers < min_workers(job)) waiting = 1;
  if (waiting && now <= out->deadline_ms) return;
  settle(job, n, out);
}
