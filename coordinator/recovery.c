/* recovery.c: re-forming a job's world after a failure, or as planned (growth, a leaving
 * agent). Survivors roll back to their commit and report `lost`; the dead and the silent
 * are left out; free agents fill up to max_nodes; a new generation starts with `reform`
 * and `assign`. See docs/user-guide.md#failures. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/settings.h"
#include "common/sock.h"
#include "coordinator/coord_int.h"

int recovery_slot_of_agent(const job_t *j, int ai) {
  for (uint32_t r = 0; j->slots && r < j->nodes; r++)
    if (j->slots[r].agent == ai) return (int)r;
  return -1;
}

static void abort_worker(coord_t *c, const job_t *j, const slot_t *s, const char *why) {
  if (!s->peer.len) return;
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ABORT);
  m.u.abort = (proto_abort_t){.job = j->id, .generation = j->generation, .reason = why};
  sock_send(c->workers, &s->peer, &m);
}

/* Makes sure a left-out rank's process is gone: abort to the worker, kill to its agent. */
static void drop_slot(coord_t *c, job_t *j, slot_t *s, const char *why) {
  abort_worker(c, j, s, why);
  if (s->agent >= 0 && c->agents[s->agent].used && c->agents[s->agent].job == j->id && !s->exited) {
    proto_msg_t m;
    proto_msg_init(&m, PROTO_KILL);
    m.u.kill.job = j->id;
    m.u.kill.generation = s->assign_gen;
    m.u.kill.reason = why;
    coord_send_to_agent(c, &c->agents[s->agent], &m);
  }
}

/* Every rank that is not dead has reported `lost` (or the deadline passed): the survivors,
 * in their old rank order, and free agents of the job's queue up to max_nodes form the new
 * world of the next generation. Survivors get `reform`, newcomers `assign`; everyone then
 * rendezvouses again and training goes on from the new rank 0's commit. */
static void finish_recovery(coord_t *c, job_t *j) {
  uint32_t nsurv = 0;
  for (uint32_t r = 0; r < j->nodes; r++) {
    slot_t *s = &j->slots[r];
    if (s->leaving) s->dead = 1;
    if (!s->dead && !s->lost) { /* silent: hung, or still stuck in a collective */
      s->dead = 1;
      const agent_t *a = s->agent >= 0 && c->agents[s->agent].used ? &c->agents[s->agent] : NULL;
      char why[512];
      snprintf(why, sizeof why,
               "rank %u (agent %s, %s) stopped making progress after step %" PRIu64
               " (collective %" PRIu64 "): its ring broke and it did not report",
               r, a ? a->agent_id : "?", a ? a->host : "?", s->step, s->coll_seq);
      log_warn("job %" PRId64 ": %s: left out", j->id, why);
      if (j->cur_is_symptom) {
        snprintf(j->cur_reason, sizeof j->cur_reason, "%s", why);
        j->cur_is_symptom = 0;
      }
    }
    if (s->dead)
      drop_slot(c, j, s, "left out of the re-formed world");
    else
      nsurv++;
  }
  int idle[MAX_AGENTS], nidle = 0;
  for (int i = 0; i < MAX_AGENTS; i++)
    if (coord_agent_fits(&c->agents[i], j)) idle[nidle++] = i;
  coord_sort_agents(c, idle, nidle);
  uint32_t nnew = j->max_nodes > nsurv ? DRV_MIN((uint32_t)nidle, j->max_nodes - nsurv) : 0;
  const char *cause = j->planned ? j->plan_reason : j->cur_reason;
  if (nsurv == 0 || nsurv + nnew < j->min_nodes) {
    coord_job_fail(c, j, "%s (%u worker(s) left, min_nodes %u)", cause, nsurv + nnew, j->min_nodes);
    return;
  }
  uint32_t world = nsurv + nnew;
  slot_t *next = calloc(world, sizeof *next);
  if (!next) {
    coord_job_fail(c, j, "%s (out of memory re-forming the world)",
                   j->planned ? j->plan_reason : j->cur_reason);
    return;
  }
  j->generation++;
  uint32_t k = 0;
  for (uint32_t r = 0; r < j->nodes; r++) {
    const slot_t *s = &j->slots[r];
    if (s->dead) continue;
    next[k].agent = s->agent;
    next[k].assign_gen = s->assign_gen;
    next[k].step = s->step; /* where it is, for messages until it reports again */
    next[k].coll_seq = s->coll_seq;
    next[k].peer = s->peer;
    proto_msg_t m;
    proto_msg_init(&m, PROTO_REFORM);
    m.u.reform =
        (proto_reform_t){.job = j->id, .generation = j->generation, .rank = k, .world = world};
    sock_send(c->workers, &s->peer, &m);
    k++;
  }
  for (uint32_t i = 0; i < nnew; i++, k++) {
    agent_t *a = &c->agents[idle[i]];
    next[k].agent = idle[i];
    next[k].assign_gen = j->generation;
    a->job = j->id;
    a->generation = j->generation;
    proto_msg_t m;
    proto_msg_init(&m, PROTO_ASSIGN);
    m.u.assign = (proto_assign_t){.job = j->id,
                                  .generation = j->generation,
                                  .rank = k,
                                  .world = world,
                                  .device = a->gpus ? 0 : -1,
                                  .spec = j->spec_yaml,
                                  .run_dir = j->run_dir,
                                  .coordinator = c->cfg->advertise,
                                  .resume_dir = j->resume_dir};
    coord_send_to_agent(c, a, &m);
  }
  free(j->slots);
  j->slots = next;
  j->nodes = world;
  j->started = 0;
  j->recovering = 0;
  j->waiting_for_agents = 0;
  j->rendezvous_deadline_ms = drv_now_ms() + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
  if (store_job_set_generation(c->store, j->id, j->generation) != DRV_OK)
    log_error("store: %s", drv_last_error());
  char why[700];
  if (j->planned)
    snprintf(why, sizeof why, "re-formed with %u worker(s) (%u new): %s", world, nnew,
             j->plan_reason);
  else
    snprintf(why, sizeof why, "re-formed with %u worker(s) (%u new) after: %s", world, nnew, cause);
  /* The first failure's cause is kept for the record of max_restarts; this one is done. */
  if (!j->planned && !j->first_reason[0])
    snprintf(j->first_reason, sizeof j->first_reason, "%s", j->cur_reason);
  j->cur_reason[0] = '\0';
  j->cur_is_symptom = 0;
  j->planned = 0;
  log_warn("job %" PRId64 " %s; generation %u, restart %u of %u", j->id, why, j->generation,
           j->restarts, j->max_restarts);
  coord_publish_state(c, j, why);
}

/* Asks a healthy running job to re-form at its next commit (to take in free agents, or to
 * let a leaving agent go without losing steps). Every worker gets `pause`; they agree on
 * the commit through the ring and report `lost`. Returns 0 when the job cannot do it now. */
int recovery_plan(coord_t *c, job_t *j, const char *why) {
  if (j->recovering || !j->started || !j->commit_every || !j->slots) return 0;
  j->recovering = 1;
  j->planned = 1;
  j->recover_gen = j->generation;
  snprintf(j->plan_reason, sizeof j->plan_reason, "%s", why);
  j->recover_deadline_ms = drv_now_ms() + 2 * drv_setting(DRV_SET_RING_TIMEOUT_MS) + 3000;
  for (uint32_t r = 0; r < j->nodes; r++) {
    slot_t *s = &j->slots[r];
    if (!s->peer.len) continue;
    proto_msg_t m;
    proto_msg_init(&m, PROTO_PAUSE);
    m.u.pause = (proto_pause_t){.job = j->id, .generation = j->generation, .reason = why};
    sock_send(c->workers, &s->peer, &m);
  }
  log_info("job %" PRId64 ": %s: re-forming at the next commit", j->id, why);
  char ev[300];
  snprintf(ev, sizeof ev, "re-forming: %s", why);
  coord_publish_state(c, j, ev);
  return 1;
}

/* Re-forms when every rank has either reported `lost` or is known dead. */
void recovery_check(coord_t *c, job_t *j) {
  if (!j->recovering) return;
  int waiting = 0;
  uint32_t alive = 0, idle = 0;
  for (uint32_t r = 0; r < j->nodes; r++) {
    waiting |= !j->slots[r].dead && !j->slots[r].lost;
    alive += !j->slots[r].dead;
  }
  for (int i = 0; i < MAX_AGENTS; i++) idle += coord_agent_fits(&c->agents[i], j);
  /* Below min_nodes the wait goes on until enough agents are free (or the deadline). */
  if (j->waiting_for_agents && alive + idle < j->min_nodes) waiting = 1;
  if (!waiting || drv_now_ms() > j->recover_deadline_ms) finish_recovery(c, j);
}

/* Something went wrong in a running job: rank `dead` (-1: none known) is gone. Starts (or
 * continues) a re-formation when the job may still reach min_nodes and has restarts left;
 * otherwise fails it with the first failure's reason. */
void recovery_trouble(coord_t *c, job_t *j, int dead, const char *reason) {
  /* A survivor's broken ring is a symptom; the rank that died or hung is the cause, and
   * the cause is what the record should say. */
  if (!j->cur_reason[0] || (dead >= 0 && j->cur_is_symptom)) {
    snprintf(j->cur_reason, sizeof j->cur_reason, "%s", reason);
    j->cur_is_symptom = dead < 0;
  }
  if (dead >= 0 && !j->slots[dead].dead) {
    j->slots[dead].dead = 1;
    abort_worker(c, j, &j->slots[dead], reason);
  }
  if (!j->started) {
    /* Nobody trained in this generation: every rank still holds its commit. Those that
     * checked in wait for `start` and take a `reform` instead; the others are dropped. */
    for (uint32_t r = 0; r < j->nodes; r++) {
      slot_t *s = &j->slots[r];
      if (s->dead) continue;
      if (s->rendezvoused)
        s->lost = 1;
      else
        s->dead = 1;
    }
  }
  if (j->recovering && j->planned) { /* a real failure while re-forming as planned */
    j->planned = 0;
    j->recovering = 0;
  }
  if (!j->recovering) {
    if (j->restarts >= j->max_restarts) {
      const char *first = j->first_reason[0] ? j->first_reason : j->cur_reason;
      if (j->max_restarts)
        coord_job_fail(c, j, "%s (max_restarts %u reached)", first, j->max_restarts);
      else
        coord_job_fail(c, j, "%s", first);
      return;
    }
    j->recovering = 1;
    j->recover_gen = j->generation;
    j->restarts++;
    /* Once a ring is broken the break travels round it in moments: survivors report
     * within RECOVER_GRACE_MS. Until then (a rank known dead whose links may still be open,
     * say a stopped agent with a stopped worker) only a ring timeout tells them. */
    j->recover_deadline_ms =
        drv_now_ms() + (dead < 0 ? 0 : drv_setting(DRV_SET_RING_TIMEOUT_MS)) + RECOVER_GRACE_MS;
    log_warn("job %" PRId64 ": %s: re-forming its world", j->id, reason);
    char why[600];
    snprintf(why, sizeof why, "re-forming after: %s", reason);
    coord_publish_state(c, j, why);
  }
  uint32_t alive = 0, idle = 0;
  for (uint32_t r = 0; r < j->nodes; r++) alive += !j->slots[r].dead;
  for (int i = 0; i < MAX_AGENTS; i++) idle += coord_agent_fits(&c->agents[i], j);
  if (alive == 0 || (alive + idle < j->min_nodes && !j->rejoin_timeout_s)) {
    coord_job_fail(c, j, "%s (%u worker(s) left, min_nodes %u)", j->cur_reason, alive + idle,
                   j->min_nodes);
    return;
  }
  if (alive + idle < j->min_nodes && !j->waiting_for_agents) {
    /* Below min_nodes: wait up to rejoin_timeout for agents to come (or come back). */
    j->waiting_for_agents = 1;
    j->recover_deadline_ms =
        DRV_MAX(j->recover_deadline_ms, drv_now_ms() + (int64_t)j->rejoin_timeout_s * 1000);
    log_warn("job %" PRId64 ": %u worker(s) left, min_nodes %u: waiting up to %u s for agents",
             j->id, alive + idle, j->min_nodes, j->rejoin_timeout_s);
  }
  recovery_check(c, j);
}
