/* coord.c: the coordinator's event loop, agent registry, scheduler, job state machine
 * and message handlers. See coord.h for the sockets and coord_int.h for the state.
 * Everything runs on one thread; no locks. Re-forming a job's world is in recovery.c. */
#include "coordinator/coord.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jobspec.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "coordinator/coord_int.h"
#include "coordinator/store.h"

// --- Events and replies --------------------------------------------------------------------

/* Publishes an event of job `id` on topic "job/<id>". */
static void publish(coord_t *c, int64_t id, const proto_msg_t *m) {
  char topic[64];
  snprintf(topic, sizeof topic, "job/%" PRId64, id);
  if (sock_publish(c->events, topic, m) != DRV_OK) log_warn("%s", drv_last_error());
}

void coord_publish_state(coord_t *c, const job_t *j, const char *reason) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_STATE);
  m.u.ev_state.job = j->id;
  m.u.ev_state.state = store_state_name(j->state);
  m.u.ev_state.reason = reason ? reason : "";
  m.u.ev_state.run_dir = j->run_dir;
  m.u.ev_state.test_loss = j->test_loss;
  m.u.ev_state.test_accuracy = j->test_accuracy;
  m.u.ev_state.samples_per_s = j->final_samples_per_s;
  publish(c, j->id, &m); /* the strings above are borrowed: do not fini */
}

static void reply(coord_t *c, const sock_peer_t *to, const proto_msg_t *m) {
  if (sock_send(c->clients, to, m) != DRV_OK) log_warn("reply to client: %s", drv_last_error());
}

static void reply_error(coord_t *c, const sock_peer_t *to, const char *code, const char *message) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ERROR);
  m.u.error.code = code;
  m.u.error.message = message;
  reply(c, to, &m);
}

drv_result_t coord_send_to_agent(coord_t *c, const agent_t *a, const proto_msg_t *m) {
  drv_result_t rc = sock_send(c->workers, &a->peer, m);
  if (rc != DRV_OK) log_warn("to agent %s: %s", a->agent_id, drv_last_error());
  return rc;
}

// --- Jobs ----------------------------------------------------------------------------------

static job_t *job_find(coord_t *c, int64_t id) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (c->jobs[i].used && c->jobs[i].id == id) return &c->jobs[i];
  return NULL;
}

static void job_release(job_t *j) {
  free(j->spec_yaml);
  free(j->slots);
  memset(j, 0, sizeof *j);
}

/* Tells the job's agents to kill its workers and the workers to abort. */
static void job_stop_workers(coord_t *c, job_t *j, const char *reason) {
  if (!j->slots) return;
  proto_msg_t m;
  for (uint32_t r = 0; r < j->nodes; r++) {
    slot_t *s = &j->slots[r];
    if (s->rendezvoused && !s->done) {
      proto_msg_init(&m, PROTO_ABORT);
      m.u.abort.job = j->id;
      m.u.abort.generation = j->generation;
      m.u.abort.reason = reason;
      sock_send(c->workers, &s->peer, &m);
    }
    if (s->agent >= 0 && c->agents[s->agent].used && c->agents[s->agent].job == j->id &&
        !s->exited) {
      proto_msg_init(&m, PROTO_KILL);
      m.u.kill.job = j->id;
      m.u.kill.generation = j->generation;
      m.u.kill.reason = reason;
      coord_send_to_agent(c, &c->agents[s->agent], &m);
    }
  }
}

/* Moves a job to a terminal state: durable record, event, workers stopped, slot freed.
 * Agents stay busy until their worker's exit is reported, so nothing is double-booked. */
static void job_finish(coord_t *c, job_t *j, job_state_t state, const char *reason) {
  if (state != JOB_SUCCEEDED) job_stop_workers(c, j, reason ? reason : "job ended");
  /* Steps and throughput are worth keeping for failed and cancelled jobs too. */
  double sps = state == JOB_SUCCEEDED ? j->final_samples_per_s : j->samples_per_s;
  if (store_job_set_metrics(c->store, j->id, j->test_accuracy, j->test_loss, j->step ? sps : NAN,
                            j->step) != DRV_OK)
    log_error("store: %s", drv_last_error());
  if (store_job_set_state(c->store, j->id, state, reason) != DRV_OK)
    log_error("store: %s", drv_last_error());
  j->state = state;
  log_info("job %" PRId64 " (%s) %s%s%s", j->id, j->name, store_state_name(state),
           reason && *reason ? ": " : "", reason ? reason : "");
  coord_publish_state(c, j, reason);
  /* Agents whose worker is still alive keep `job` set; they free themselves on exit. */
  for (uint32_t r = 0; j->slots && r < j->nodes; r++) {
    slot_t *s = &j->slots[r];
    if (s->exited && s->agent >= 0 && c->agents[s->agent].job == j->id) c->agents[s->agent].job = 0;
  }
  job_release(j);
}

void coord_job_fail(coord_t *c, job_t *j, const char *fmt, ...) {
  char reason[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  job_finish(c, j, JOB_FAILED, reason);
}

/* Validates the message's job and generation; NULL (and a debug line) for stale ones. */
static job_t *job_for_msg(coord_t *c, int64_t id, uint32_t generation, uint32_t rank,
                          const char *what) {
  job_t *j = job_find(c, id);
  if (!j || j->state != JOB_RUNNING) {
    log_debug("%s for job %" PRId64 " that is not running: dropped", what, id);
    return NULL;
  }
  if (generation != j->generation || rank >= j->nodes) {
    log_warn("%s for job %" PRId64
             " generation %u rank %u refused (current generation %u, "
             "world %u)",
             what, id, generation, rank, j->generation, j->nodes);
    return NULL;
  }
  return j;
}

// --- Scheduler -----------------------------------------------------------------------------

void coord_sort_agents(coord_t *c, int *idx, int n) {
  for (int x = 1; x < n; x++) /* insertion sort: a few hundred agents at most */
    for (int y = x; y > 0 && strcmp(c->agents[idx[y - 1]].agent_id, c->agents[idx[y]].agent_id) > 0;
         y--) {
      int t = idx[y];
      idx[y] = idx[y - 1];
      idx[y - 1] = t;
    }
}

/* The queue a job waits in: its target and, for a pool, the pool ("local/local-812"). */
static void queue_key(const char *target, const char *pool, char *out, size_t n) {
  snprintf(out, n, "%s/%s", target, pool);
}

int coord_agent_fits(const agent_t *a, const job_t *j) {
  return a->used && !a->job && !a->leaving && !strcmp(a->target, j->target) &&
         !strcmp(a->pool, j->pool) && drv_now_ms() >= a->cooldown_until_ms;
}

/* A placement failed half-way (an agent could not be reached): the unreachable agents are
 * forgotten, the reached ones told to drop their worker, and the job queued again. */
static void job_requeue(coord_t *c, job_t *j, const char *why) {
  for (uint32_t r = 0; r < j->nodes; r++) {
    int ai = j->slots[r].agent;
    if (ai < 0 || !c->agents[ai].used || c->agents[ai].job != j->id) continue;
    proto_msg_t m;
    proto_msg_init(&m, PROTO_KILL);
    m.u.kill.job = j->id;
    m.u.kill.generation = j->generation;
    m.u.kill.reason = why;
    coord_send_to_agent(c, &c->agents[ai], &m); /* its worker_exit frees it */
  }
  free(j->slots);
  j->slots = NULL;
  j->state = JOB_QUEUED;
  if (store_job_set_state(c->store, j->id, JOB_QUEUED, why) != DRV_OK)
    log_error("store: %s", drv_last_error());
  log_warn("job %" PRId64 " queued again: %s", j->id, why);
  coord_publish_state(c, j, why);
}

/* Gang-schedules queued jobs, oldest first, one FIFO per target and pool: a job that
 * cannot be placed whole blocks the jobs behind it in the same queue. */
static void schedule(coord_t *c) {
  static char blocked[MAX_JOBS][96];
  int nblocked = 0;
  for (;;) {
    job_t *j = NULL;
    char key[96];
    for (int i = 0; i < MAX_JOBS; i++) {
      job_t *q = &c->jobs[i];
      if (!q->used || q->state != JOB_QUEUED || (j && q->id > j->id)) continue;
      queue_key(q->target, q->pool, key, sizeof key);
      int is_blocked = 0;
      for (int b = 0; b < nblocked && !is_blocked; b++) is_blocked = !strcmp(blocked[b], key);
      if (!is_blocked) j = q;
    }
    if (!j) return;

    int idle[MAX_AGENTS], n = 0;
    for (int i = 0; i < MAX_AGENTS; i++)
      if (coord_agent_fits(&c->agents[i], j)) idle[n++] = i;
    if ((uint32_t)n < j->nodes) {
      queue_key(j->target, j->pool, blocked[nblocked++], sizeof blocked[0]);
      continue;
    }
    /* Deterministic rank order: by agent id. */
    coord_sort_agents(c, idle, n);
    j->slots = calloc(j->nodes, sizeof *j->slots);
    if (!j->slots) {
      coord_job_fail(c, j, "out of memory placing the job");
      continue;
    }
    j->generation++;
    j->state = JOB_RUNNING;
    j->rendezvous_deadline_ms = drv_now_ms() + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
    char advertise[256], unreachable[160] = "";
    snprintf(advertise, sizeof advertise, "%s", c->cfg->advertise);
    for (uint32_t r = 0; r < j->nodes; r++) {
      agent_t *a = &c->agents[idle[r]];
      j->slots[r].agent = idle[r];
      j->slots[r].assign_gen = j->generation;
      proto_msg_t m;
      proto_msg_init(&m, PROTO_ASSIGN);
      m.u.assign.job = j->id;
      m.u.assign.generation = j->generation;
      m.u.assign.rank = r;
      m.u.assign.world = j->nodes;
      m.u.assign.local_rank = 0;
      m.u.assign.device = a->gpus ? 0 : -1;
      m.u.assign.spec = j->spec_yaml;
      m.u.assign.run_dir = j->run_dir;
      m.u.assign.coordinator = advertise;
      m.u.assign.resume_dir = j->resume_dir;
      if (coord_send_to_agent(c, a, &m) != DRV_OK) {
        /* Not connected any more (ROUTER_MANDATORY): it is gone. */
        snprintf(unreachable, sizeof unreachable, "agent %s could not be reached", a->agent_id);
        log_warn("agent %s (%s) lost: unreachable", a->agent_id, a->host);
        memset(a, 0, sizeof *a);
        j->slots[r].agent = -1;
        continue;
      }
      a->job = j->id;
      a->generation = j->generation;
    }
    if (unreachable[0]) {
      job_requeue(c, j, unreachable);
      continue;
    }
    if (store_job_set_state(c->store, j->id, JOB_RUNNING, NULL) != DRV_OK ||
        store_job_set_generation(c->store, j->id, j->generation) != DRV_OK)
      log_error("store: %s", drv_last_error());
    log_info("job %" PRId64 " (%s) placed on %u agent(s), generation %u", j->id, j->name, j->nodes,
             j->generation);
    coord_publish_state(c, j, NULL);
  }
}

// --- Agents --------------------------------------------------------------------------------

static agent_t *agent_by_peer(coord_t *c, const sock_peer_t *p) {
  for (int i = 0; i < MAX_AGENTS; i++)
    if (c->agents[i].used && c->agents[i].peer.len == p->len &&
        !memcmp(c->agents[i].peer.id, p->id, p->len))
      return &c->agents[i];
  return NULL;
}

/* An agent is gone (silent, or replaced by a new registration): fail its job. */
static void agent_lost(coord_t *c, agent_t *a, const char *why) {
  log_warn("agent %s (%s) lost: %s", a->agent_id, a->host, why);
  if (a->job) {
    job_t *j = job_find(c, a->job);
    int r = j && j->state == JOB_RUNNING ? recovery_slot_of_agent(j, (int)(a - c->agents)) : -1;
    if (r >= 0) {
      char reason[512];
      snprintf(reason, sizeof reason, "agent %s (%s, rank %u, near step %" PRIu64 ") lost: %s",
               a->agent_id, a->host, (uint32_t)r, j->slots[r].step, why);
      j->slots[r].exited = 1; /* nobody is left to report its worker's end */
      recovery_trouble(c, j, r, reason);
    }
  }
  memset(a, 0, sizeof *a);
}

/* An agent is stopping (preemption notice, operator): its rank leaves at the job's next
 * commit and the job carries on without it; without commits it is lost at once. */
static void on_leave(coord_t *c, agent_t *a, const char *reason) {
  a->leaving = 1;
  job_t *j = a->job ? job_find(c, a->job) : NULL;
  int r = j && j->state == JOB_RUNNING ? recovery_slot_of_agent(j, (int)(a - c->agents)) : -1;
  log_info("agent %s is leaving (%s)%s", a->agent_id, reason ? reason : "no reason given",
           r >= 0 ? ": its rank leaves its job at the next commit" : "");
  if (r < 0) return;
  j->slots[r].leaving = 1;
  char why[300];
  snprintf(why, sizeof why, "agent %s (rank %d) leaving: %s", a->agent_id, r,
           reason ? reason : "stopping");
  if (!j->recovering && !recovery_plan(c, j, why)) recovery_trouble(c, j, r, why);
}

static void send_welcome(coord_t *c, const agent_t *a) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_WELCOME);
  m.u.welcome.agent_id = a->agent_id;
  m.u.welcome.heartbeat_ms = (uint32_t)drv_setting(DRV_SET_HEARTBEAT_MS);
  m.u.welcome.peer_timeout_ms = (uint32_t)drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  coord_send_to_agent(c, a, &m);
}

static void on_hello(coord_t *c, const sock_peer_t *from, const proto_hello_t *h) {
  agent_t *a = agent_by_peer(c, from);
  if (a && a->session == h->session) {
    send_welcome(c, a); /* the same connection said hello twice: nothing changed */
    return;
  }
  if (a && a->job) /* it reconnected: the workers of its old session are gone */
    agent_lost(c, a, "reconnected while running a job");
  for (int i = 0; i < MAX_AGENTS && !a; i++)
    if (!c->agents[i].used) a = &c->agents[i];
  if (!a) {
    log_error("agent registry full (%d): %s refused", MAX_AGENTS, h->agent_id);
    return;
  }
  memset(a, 0, sizeof *a);
  a->used = 1;
  a->peer = *from;
  snprintf(a->agent_id, sizeof a->agent_id, "%s", h->agent_id);
  snprintf(a->host, sizeof a->host, "%s", h->host);
  snprintf(a->target, sizeof a->target, "%s", h->target);
  snprintf(a->pool, sizeof a->pool, "%s", h->pool ? h->pool : "");
  a->cpus = h->cpus;
  a->gpus = h->gpus_count;
  a->mem_bytes = h->mem_bytes;
  a->session = h->session;
  a->last_seen_ms = drv_now_ms();
  log_info("agent %s registered: host %s, target %s, %u cpus, %.1f GiB, %u gpus", a->agent_id,
           a->host, a->target, a->cpus, (double)a->mem_bytes / (1 << 30), a->gpus);
  for (uint32_t g = 0; g < h->gpus_count && g < 16; g++)
    log_info("agent %s gpu %u: %s, %.1f GiB, sm_%u%u", a->agent_id, h->gpus[g].index,
             h->gpus[g].name, (double)h->gpus[g].mem_bytes / (1 << 30), h->gpus[g].cc_major,
             h->gpus[g].cc_minor);
  send_welcome(c, a);
}

static void on_worker_exit(coord_t *c, agent_t *a, const proto_worker_exit_t *e) {
  /* Only the exit of the worker it is booked for frees it: an older generation's worker
   * of the same job (a coordinator restart) says nothing about the current one. */
  if (a->job == e->job && a->generation == e->generation) a->job = 0;
  job_t *j = job_find(c, e->job);
  if (!j || j->state != JOB_RUNNING || !j->slots) return;
  int r = recovery_slot_of_agent(j, (int)(a - c->agents));
  if (r < 0 || j->slots[r].assign_gen != e->generation) return; /* left out, or stale */
  slot_t *s = &j->slots[r];
  s->exited = 1;
  if (s->done) return;
  if (e->signal) {
    char reason[256];
    snprintf(reason, sizeof reason,
             "rank %d (agent %s, %s) was killed by signal %d near step %" PRIu64, r, a->agent_id,
             a->host, e->signal, s->step);
    /* Whatever killed it may strike again: no replacement worker on this agent for now. */
    a->cooldown_until_ms = drv_now_ms() + drv_setting(DRV_SET_COOLDOWN_MS);
    recovery_trouble(c, j, r, reason);
    return;
  }
  if (j->recovering) {
    char reason[256];
    snprintf(reason, sizeof reason, "rank %d on agent %s exited with code %d", r, a->agent_id,
             e->exit_code);
    recovery_trouble(c, j, r, reason);
    return;
  }
  /* Its `done` or `failed` may still be in flight on the worker's own socket. */
  s->exit_code = e->exit_code;
  s->exit_ms = drv_now_ms();
}

// --- Workers -------------------------------------------------------------------------------

static void on_rendezvous(coord_t *c, const sock_peer_t *from, const proto_rendezvous_t *rv) {
  job_t *j = job_for_msg(c, rv->job, rv->generation, rv->rank, "rendezvous");
  if (!j) {
    proto_msg_t m;
    proto_msg_init(&m, PROTO_ABORT);
    m.u.abort.job = rv->job;
    m.u.abort.generation = rv->generation;
    m.u.abort.reason = "stale or unknown job";
    sock_send(c->workers, from, &m);
    return;
  }
  slot_t *s = &j->slots[rv->rank];
  s->rendezvoused = 1;
  snprintf(s->addr, sizeof s->addr, "%s", rv->addr);
  snprintf(s->gpu, sizeof s->gpu, "%s", rv->gpu ? rv->gpu : "");
  snprintf(s->nccl_id, sizeof s->nccl_id, "%s", rv->nccl_id ? rv->nccl_id : "");
  s->peer = *from;
  for (uint32_t r = 0; r < j->nodes; r++)
    if (!j->slots[r].rendezvoused) return;
  /* Everyone is in: relay the ring addresses, each rank's GPU and rank 0's NCCL id. */
  const char **peers = calloc(j->nodes, sizeof *peers), **gpus = calloc(j->nodes, sizeof *gpus);
  if (!peers || !gpus) {
    free(peers);
    free(gpus);
    coord_job_fail(c, j, "out of memory at rendezvous");
    return;
  }
  for (uint32_t r = 0; r < j->nodes; r++) {
    peers[r] = j->slots[r].addr;
    gpus[r] = j->slots[r].gpu;
  }
  proto_msg_t m;
  proto_msg_init(&m, PROTO_START);
  m.u.start.job = j->id;
  m.u.start.generation = j->generation;
  m.u.start.world = j->nodes;
  m.u.start.peers = peers;
  m.u.start.peers_count = j->nodes;
  m.u.start.gpus = gpus;
  m.u.start.gpus_count = j->nodes;
  m.u.start.nccl_id = j->slots[0].nccl_id[0] ? j->slots[0].nccl_id : NULL;
  for (uint32_t r = 0; r < j->nodes; r++)
    if (sock_send(c->workers, &j->slots[r].peer, &m) != DRV_OK)
      log_warn("start to rank %u: %s", r, drv_last_error());
  free(peers);
  free(gpus);
  j->started = 1;
  log_info("job %" PRId64 ": all %u workers checked in, started", j->id, j->nodes);
}

static double compute_ms(const slot_t *s) {
  double v = s->ewma_step_ms - s->ewma_wait_ms;
  return v > 0 ? v : 0;
}

/* A straggler is slow but alive: its own compute time per step is above
 * DROVER_STRAGGLER_PCT % of the median of the other ranks'. Reported, never declared dead. */
static void update_stragglers(coord_t *c, job_t *j) {
  if (j->nodes < 2) return;
  double pct = (double)drv_setting(DRV_SET_STRAGGLER_PCT) / 100.0;
  double others[MAX_AGENTS];
  for (uint32_t r = 0; r < j->nodes; r++) {
    slot_t *s = &j->slots[r];
    uint32_t n = 0;
    for (uint32_t q = 0; q < j->nodes && n < MAX_AGENTS; q++)
      if (q != r && j->slots[q].ewma_step_ms > 0) others[n++] = compute_ms(&j->slots[q]);
    if (!n || s->ewma_step_ms == 0) continue;
    for (uint32_t x = 1; x < n; x++) /* n is small: insertion sort */
      for (uint32_t y = x; y > 0 && others[y - 1] > others[y]; y--) {
        double t = others[y];
        others[y] = others[y - 1];
        others[y - 1] = t;
      }
    double median = n % 2 ? others[n / 2] : 0.5 * (others[n / 2 - 1] + others[n / 2]);
    int slow = compute_ms(s) > pct * median && compute_ms(s) - median > 0.05;
    if (slow != s->straggler) {
      const agent_t *a = s->agent >= 0 && c->agents[s->agent].used ? &c->agents[s->agent] : NULL;
      if (slow)
        log_warn("job %" PRId64
                 ": rank %u (agent %s) is a straggler: %.2f ms of compute per step, "
                 "others' median %.2f ms",
                 j->id, r, a ? a->agent_id : "?", compute_ms(s), median);
      else
        log_info("job %" PRId64 ": rank %u is no longer a straggler", j->id, r);
      s->straggler = slow;
    }
  }
}

static void publish_progress(coord_t *c, job_t *j) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_PROGRESS);
  proto_ev_progress_t *p = &m.u.ev_progress;
  p->job = j->id;
  p->generation = j->generation;
  p->epoch = j->epoch;
  p->epochs = j->epochs;
  p->step = j->step;
  p->steps_total = j->steps_total;
  p->loss = j->loss;
  p->lr = j->lr;
  double total = 0, slowest = -1;
  uint32_t slow_rank = 0;
  double slowest_compute = -1;
  for (uint32_t r = 0; r < j->nodes; r++) {
    total += j->slots[r].samples_per_s;
    slowest = DRV_MAX(slowest, j->slots[r].step_ms);
    if (compute_ms(&j->slots[r]) > slowest_compute) { /* the one the others wait for */
      slowest_compute = compute_ms(&j->slots[r]);
      slow_rank = r;
    }
  }
  j->samples_per_s = total;
  p->samples_per_s = total;
  p->slowest_rank = slow_rank;
  p->slowest_step_ms = slowest < 0 ? 0 : slowest;
  double steps_per_s = slowest > 0 ? 1000.0 / slowest : 0;
  p->eta_s = steps_per_s > 0 && j->step < j->steps_total
                 ? (double)(j->steps_total - j->step) / steps_per_s
                 : 0;
  publish(c, j->id, &m);
}

static void on_progress(coord_t *c, const proto_progress_t *p) {
  job_t *j = job_for_msg(c, p->job, p->generation, p->rank, "progress");
  if (!j) return;
  slot_t *s = &j->slots[p->rank];
  s->step = p->step;
  s->coll_seq = p->coll_seq;
  if (j->recovering && j->planned) {
    /* Still training towards the agreed commit, however slow its steps: wait for it. */
    int reported = 0;
    for (uint32_t r = 0; r < j->nodes; r++) reported |= j->slots[r].lost;
    if (!reported)
      j->recover_deadline_ms =
          drv_now_ms() + drv_setting(DRV_SET_RING_TIMEOUT_MS) + RECOVER_GRACE_MS;
  }
  s->samples_per_s = p->interval_s > 0 ? (double)p->samples / p->interval_s : 0;
  s->step_ms = p->step_ms;
  double wait = isnan(p->wait_ms) ? 0 : p->wait_ms;
  double data = isnan(p->data_ms) ? 0 : p->data_ms;
  if (s->ewma_step_ms == 0) {
    s->ewma_step_ms = p->step_ms;
    s->ewma_wait_ms = wait;
    s->ewma_data_ms = data;
  } else {
    s->ewma_step_ms = 0.7 * s->ewma_step_ms + 0.3 * p->step_ms;
    s->ewma_wait_ms = 0.7 * s->ewma_wait_ms + 0.3 * wait;
    s->ewma_data_ms = 0.7 * s->ewma_data_ms + 0.3 * data;
  }
  update_stragglers(c, j);
  if (p->rank == 0) {
    /* Ranks move in lockstep through the all-reduce; rank 0 speaks for the job. */
    j->epoch = p->epoch;
    j->step = p->step;
    j->steps_total = p->steps_total;
    j->loss = p->loss;
    j->lr = p->lr;
    int64_t now = drv_now_ms();
    if (now - j->last_publish_ms >= (int64_t)drv_setting(DRV_SET_PROGRESS_MS) ||
        p->step == p->steps_total) {
      j->last_publish_ms = now;
      publish_progress(c, j);
    }
  }
}

static void on_eval(coord_t *c, const proto_eval_t *e) {
  job_t *j = job_for_msg(c, e->job, e->generation, 0, "eval");
  if (!j) return;
  log_info("job %" PRId64 " epoch %u: test loss %.4f, accuracy %.4f", j->id, e->epoch + 1,
           e->test_loss, e->test_accuracy);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_EVAL);
  m.u.ev_eval = *e;
  publish(c, j->id, &m);
}

static void on_done(coord_t *c, const proto_done_t *d) {
  job_t *j = job_for_msg(c, d->job, d->generation, d->rank, "done");
  if (!j) return;
  j->slots[d->rank].done = 1;
  if (d->rank == 0) {
    j->test_loss = d->test_loss;
    j->test_accuracy = d->test_accuracy;
    j->final_samples_per_s = d->samples_per_s;
    j->step = d->steps;
  }
  for (uint32_t r = 0; r < j->nodes; r++)
    if (!j->slots[r].done) return;
  job_finish(c, j, JOB_SUCCEEDED, NULL);
}

static void on_checkpoint(coord_t *c, const proto_checkpoint_t *k) {
  job_t *j = job_for_msg(c, k->job, k->generation, 0, "checkpoint");
  if (!j) return;
  if (store_job_set_checkpoint(c->store, j->id, k->step) != DRV_OK) {
    log_error("store: %s", drv_last_error());
    return;
  }
  j->ckpt_step = k->step;
  log_info("job %" PRId64 ": checkpoint of step %" PRIu64 " is durable (%s)", j->id, k->step,
           k->dir);
}

static void on_lost(coord_t *c, const sock_peer_t *from, const proto_lost_t *l) {
  job_t *j = job_find(c, l->job);
  if (!j || j->state != JOB_RUNNING || !j->slots || l->rank >= j->nodes) return;
  uint32_t expected = j->recovering ? j->recover_gen : j->generation;
  if (l->generation != expected) {
    log_debug("lost of job %" PRId64 " generation %u dropped (expected %u)", l->job, l->generation,
              expected);
    return;
  }
  slot_t *s = &j->slots[l->rank];
  if (s->dead) return;
  s->lost = 1;
  s->peer = *from;
  if (j->planned) { /* the ranks stopping at the agreed commit, as asked */
    recovery_check(c, j);
    return;
  }
  /* The ring is broken now: the others report within moments. */
  if (j->recovering)
    j->recover_deadline_ms = DRV_MIN(j->recover_deadline_ms, drv_now_ms() + RECOVER_GRACE_MS);
  int ai = s->agent;
  char reason[700];
  snprintf(reason, sizeof reason, "rank %u (agent %s) lost its ring at step %" PRIu64 ": %s",
           l->rank, ai >= 0 && c->agents[ai].used ? c->agents[ai].agent_id : "?", l->step,
           l->reason);
  recovery_trouble(c, j, -1, reason);
}

static void on_failed(coord_t *c, const proto_failed_t *f) {
  job_t *j = job_for_msg(c, f->job, f->generation, f->rank, "failed");
  if (!j) return;
  int ai = j->slots[f->rank].agent;
  coord_job_fail(c, j, "rank %u (agent %s): %s", f->rank,
                 ai >= 0 && c->agents[ai].used ? c->agents[ai].agent_id : "?", f->reason);
}

static void handle_worker_socket(coord_t *c) {
  sock_peer_t from;
  proto_msg_t m;
  drv_result_t rc = sock_recv(c->workers, &from, &m, 0);
  if (rc != DRV_OK) {
    if (rc != DRV_ERR_TIMEOUT) log_warn("agent socket: dropped a frame: %s", drv_last_error());
    proto_msg_fini(&m);
    return;
  }
  agent_t *a = agent_by_peer(c, &from);
  if (a) a->last_seen_ms = drv_now_ms();
  switch (m.type) {
  case PROTO_HELLO: on_hello(c, &from, &m.u.hello); break;
  case PROTO_LEAVE:
    if (a) on_leave(c, a, m.u.leave.reason);
    break;
  case PROTO_BYE:
    if (a) {
      char why[160];
      snprintf(why, sizeof why, "stopped (%s)", m.u.bye.reason ? m.u.bye.reason : "bye");
      agent_lost(c, a, why);
    }
    break;
  case PROTO_HEARTBEAT:
    if (a && a->job && !m.u.heartbeat.workers && !job_find(c, a->job)) {
      /* Its job is over and it runs no worker: whatever exit report there was is lost
       * (or there was no worker to report), so it is free. */
      log_debug("agent %s: job %" PRId64 " over and no worker left: idle", a->agent_id, a->job);
      a->job = 0;
    }
    if (!a) {
      /* A coordinator restart forgot this agent: ask it to register again. */
      proto_msg_t e;
      proto_msg_init(&e, PROTO_ERROR);
      e.u.error.code = "not_registered";
      e.u.error.message = "unknown agent: send hello";
      sock_send(c->workers, &from, &e);
    }
    break;
  case PROTO_WORKER_EXIT:
    if (a) on_worker_exit(c, a, &m.u.worker_exit);
    break;
  case PROTO_RENDEZVOUS: on_rendezvous(c, &from, &m.u.rendezvous); break;
  case PROTO_PROGRESS: on_progress(c, &m.u.progress); break;
  case PROTO_EVAL: on_eval(c, &m.u.eval); break;
  case PROTO_DONE: on_done(c, &m.u.done); break;
  case PROTO_FAILED: on_failed(c, &m.u.failed); break;
  case PROTO_CHECKPOINT: on_checkpoint(c, &m.u.checkpoint); break;
  case PROTO_LOST: on_lost(c, &from, &m.u.lost); break;
  default:
    log_warn("agent socket: unexpected '%s' message dropped", proto_type_name(m.type));
    break;
  }
  proto_msg_fini(&m);
}

// --- Clients -------------------------------------------------------------------------------

static job_t *job_slot(coord_t *c) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (!c->jobs[i].used) return &c->jobs[i];
  return NULL;
}

/* Fills an active job from its record and spec (takes ownership of spec_yaml). */
static void job_fill(job_t *j, const store_job_t *sj, const jobspec_t *spec, char *spec_yaml) {
  memset(j, 0, sizeof *j);
  j->used = 1;
  j->id = sj->id;
  j->state = JOB_QUEUED;
  snprintf(j->name, sizeof j->name, "%s", sj->name);
  snprintf(j->target, sizeof j->target, "%s", sj->target);
  snprintf(j->pool, sizeof j->pool, "%s", sj->pool);
  snprintf(j->run_dir, sizeof j->run_dir, "%s", sj->run_dir);
  snprintf(j->resume_dir, sizeof j->resume_dir, "%s", sj->resume_dir);
  j->ckpt_step = sj->ckpt_step;
  /* Generations go on across coordinators: messages of the old one's workers are stale. */
  j->generation = sj->generation;
  j->nodes = spec->nodes;
  j->epochs = spec->train.epochs;
  j->min_nodes = spec->min_nodes;
  j->max_nodes = spec->max_nodes;
  j->max_restarts = spec->max_restarts;
  j->commit_every = spec->train.commit_every;
  j->rejoin_timeout_s = spec->rejoin_timeout_s;
  j->spec_yaml = spec_yaml;
  j->test_loss = j->test_accuracy = j->final_samples_per_s = NAN;
  j->pool_seen_ms = drv_now_ms();
}

/* Why a job to resume from cannot be used, or NULL. Fills resume_dir. */
static const char *resume_source(coord_t *c, int64_t from, store_job_t *old, char *resume_dir,
                                 size_t n) {
  static char why[256];
  if (store_job_get(c->store, from, old) != DRV_OK) {
    snprintf(why, sizeof why, "resume: job %" PRId64 ": no such job", from);
    return why;
  }
  if (job_find(c, from)) {
    snprintf(why, sizeof why, "resume: job %" PRId64 " is still %s; cancel it first", from,
             store_state_name(old->state));
    return why;
  }
  if (!old->ckpt_step) {
    snprintf(why, sizeof why, "resume: job %" PRId64 " has no durable checkpoint", from);
    return why;
  }
  snprintf(resume_dir, n, "%s/checkpoints", old->run_dir);
  return NULL;
}

/* Records a submitted job in one transaction: whole (with its run directory, which needs
 * the id) or not at all, at the cost of one fsync. sj carries the pool and resume
 * directory in, and gets the id and run directory. */
static drv_result_t record_submission(coord_t *c, const jobspec_t *spec, const char *canon,
                                      const char *token, store_job_t *sj) {
  drv_result_t rc;
  DRV_CHECK(store_begin(c->store));
  DRV_CHECK_GOTO(
      store_job_insert(c->store, spec->name, sj->target, spec->nodes, canon, "", &sj->id), rc,
      fail);
  snprintf(sj->run_dir, sizeof sj->run_dir, "%s/%s-%" PRId64, spec->run_dir, spec->name, sj->id);
  DRV_CHECK_GOTO(store_job_set_run_dir(c->store, sj->id, sj->run_dir), rc, fail);
  DRV_CHECK_GOTO(store_job_set_pool(c->store, sj->id, sj->pool), rc, fail);
  DRV_CHECK_GOTO(store_job_set_resume_dir(c->store, sj->id, sj->resume_dir), rc, fail);
  DRV_CHECK_GOTO(store_job_set_token(c->store, sj->id, token), rc, fail);
  return store_commit(c->store);
fail:
  store_rollback(c->store);
  return rc;
}

static void reply_submitted(coord_t *c, const sock_peer_t *to, int64_t job, const char *run_dir) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_SUBMITTED);
  m.u.submitted.job = job;
  m.u.submitted.run_dir = run_dir;
  reply(c, to, &m);
}

/* A submission the store already has under this token (a client that asked again after
 * its answer was late or lost): answers with that job, whatever its state. Returns 1 when
 * it answered. */
static int resubmitted(coord_t *c, const sock_peer_t *from, const char *token) {
  int64_t id = 0;
  store_job_t old;
  if (strlen(token) > STORE_TOKEN_MAX) {
    char msg[96];
    snprintf(msg, sizeof msg, "submit: token longer than %d bytes", STORE_TOKEN_MAX);
    reply_error(c, from, "invalid", msg);
    return 1;
  }
  if (store_job_by_token(c->store, token, &id) != DRV_OK ||
      (id && store_job_get(c->store, id, &old) != DRV_OK)) {
    reply_error(c, from, "internal", drv_last_error());
    return 1;
  }
  if (!id) return 0;
  log_info("job %" PRId64 " (%s): its submission came again (token %s): answered with it", id,
           old.name, token);
  reply_submitted(c, from, id, old.run_dir);
  return 1;
}

static void on_submit(coord_t *c, const sock_peer_t *from, const proto_submit_t *sub) {
  jobspec_t *spec = NULL;
  char *stored = NULL, *canon = NULL;
  char resume_dir[1100] = "";
  const char *yaml = sub->spec;
  if (sub->token && resubmitted(c, from, sub->token)) return;
  if (sub->resume > 0) {
    store_job_t old;
    const char *why = resume_source(c, sub->resume, &old, resume_dir, sizeof resume_dir);
    if (why) {
      reply_error(c, from, "invalid", why);
      return;
    }
    if (!yaml[0]) { /* no spec given: the old job's, as it was */
      if (store_job_spec(c->store, sub->resume, &stored) != DRV_OK) {
        reply_error(c, from, "internal", drv_last_error());
        return;
      }
      yaml = stored;
    }
  }
  if (jobspec_parse(yaml, strlen(yaml), "submitted spec", NULL, 0, &spec) != DRV_OK) {
    reply_error(c, from, "invalid", drv_last_error());
    goto out;
  }
  /* Workers run elsewhere, in other directories: paths must not depend on a cwd. */
  const char *rel = jobspec_relative_path(spec);
  job_t *j = job_slot(c);
  size_t clen;
  if (rel) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "submitted spec: %s: must be an absolute path (drover submit "
             "resolves relative ones against the submitting directory)",
             rel);
    reply_error(c, from, "invalid", msg);
    goto out;
  }
  if (!j) {
    reply_error(c, from, "busy", "too many active jobs; try again later");
    goto out;
  }
  if (jobspec_dump(spec, &canon, &clen) != DRV_OK) {
    reply_error(c, from, "internal", drv_last_error());
    goto out;
  }
  store_job_t sj = {0};
  const char *target = jobspec_target_name(spec->target);
  snprintf(sj.name, sizeof sj.name, "%s", spec->name);
  snprintf(sj.target, sizeof sj.target, "%s", target);
  snprintf(sj.pool, sizeof sj.pool, "%s", sub->pool ? sub->pool : "");
  snprintf(sj.resume_dir, sizeof sj.resume_dir, "%s", resume_dir);
  if (record_submission(c, spec, canon, sub->token ? sub->token : "", &sj) != DRV_OK) {
    log_error("submission of %s not recorded: %s", spec->name, drv_last_error());
    reply_error(c, from, "internal", drv_last_error());
    goto out;
  }
  job_fill(j, &sj, spec, canon);
  canon = NULL;
  if (sub->resume > 0)
    log_info("job %" PRId64 " (%s) queued: target %s, %u node(s), resuming job %" PRId64, j->id,
             j->name, target, j->nodes, sub->resume);
  else
    log_info("job %" PRId64 " (%s) queued: target %s, %u node(s)", j->id, j->name, target,
             j->nodes);
  if (c->fault_slow_submit_ms) usleep((useconds_t)c->fault_slow_submit_ms * 1000);
  reply_submitted(c, from, j->id, j->run_dir);
  coord_publish_state(c, j, NULL);
out:
  free(canon);
  free(stored);
  jobspec_destroy(&spec);
}

/* At start: the jobs a previous coordinator left queued (or running, now queued again)
 * become active again, to be placed and resumed from their checkpoints. */
static int load_one(const store_job_t *sj, void *arg) {
  coord_t *c = arg;
  if (sj->state != JOB_QUEUED) return 0;
  char *yaml = NULL;
  jobspec_t *spec = NULL;
  job_t *j = job_slot(c);
  if (!j || store_job_spec(c->store, sj->id, &yaml) != DRV_OK ||
      jobspec_parse(yaml, strlen(yaml), "stored spec", NULL, 0, &spec) != DRV_OK) {
    char why[600];
    snprintf(why, sizeof why, "cannot be reloaded: %s", j ? drv_last_error() : "too many jobs");
    log_error("job %" PRId64 ": %s", sj->id, why);
    store_job_set_state(c->store, sj->id, JOB_FAILED, why);
    free(yaml);
    return 0;
  }
  job_fill(j, sj, spec, yaml);
  jobspec_destroy(&spec);
  log_info("job %" PRId64 " (%s) reloaded: queued%s", j->id, j->name,
           j->ckpt_step ? ", will resume from its last checkpoint" : "");
  return 0;
}

static void on_get_spec(coord_t *c, const sock_peer_t *from, int64_t id) {
  store_job_t sj;
  char *yaml = NULL;
  if (store_job_get(c->store, id, &sj) != DRV_OK || store_job_spec(c->store, id, &yaml) != DRV_OK) {
    reply_error(c, from, "not_found", drv_last_error());
    return;
  }
  proto_msg_t m;
  proto_msg_init(&m, PROTO_SPEC);
  m.u.spec = (proto_spec_t){.job = id, .spec = yaml, .run_dir = sj.run_dir};
  reply(c, from, &m);
  free(yaml);
}

typedef struct {
  coord_t *c;
  proto_msg_t *m; /* the reply: its arena holds the records' strings */
  proto_job_t *jobs;
  uint32_t n, cap;
} job_list_t;

static void fill_job(coord_t *c, proto_msg_t *m, const store_job_t *sj, proto_job_t *pj) {
  memset(pj, 0, sizeof *pj);
  pj->id = sj->id;
  pj->name = proto_msg_strdup(m, sj->name);
  pj->state = store_state_name(sj->state);
  pj->reason = proto_msg_strdup(m, sj->reason);
  pj->target = proto_msg_strdup(m, sj->target);
  pj->run_dir = proto_msg_strdup(m, sj->run_dir);
  pj->nodes = sj->nodes;
  pj->step = sj->steps_done;
  pj->loss = NAN;
  pj->samples_per_s = sj->samples_per_s;
  pj->test_loss = sj->test_loss;
  pj->test_accuracy = sj->test_accuracy;
  pj->submitted_at = sj->submitted_at;
  pj->started_at = sj->started_at;
  pj->finished_at = sj->finished_at;
  pj->ckpt_step = sj->ckpt_step;
  const job_t *j = job_find(c, sj->id);
  if (j) { /* live progress of an active job */
    pj->epoch = j->epoch;
    pj->epochs = j->epochs;
    pj->step = j->step;
    pj->steps_total = j->steps_total;
    pj->loss = j->loss;
    pj->samples_per_s = j->samples_per_s;
    if (j->slots && j->state == JOB_RUNNING &&
        (pj->ranks = proto_msg_alloc(m, j->nodes * sizeof *pj->ranks))) {
      pj->ranks_count = j->nodes;
      for (uint32_t r = 0; r < j->nodes; r++) {
        const slot_t *s = &j->slots[r];
        const agent_t *a = s->agent >= 0 && c->agents[s->agent].used ? &c->agents[s->agent] : NULL;
        pj->ranks[r] = (proto_rank_t){.rank = r,
                                      .agent = proto_msg_strdup(m, a ? a->agent_id : "?"),
                                      .host = proto_msg_strdup(m, a ? a->host : "?"),
                                      .step_ms = s->ewma_step_ms,
                                      .compute_ms = compute_ms(s),
                                      .wait_ms = s->ewma_wait_ms,
                                      .data_ms = s->ewma_data_ms,
                                      .straggler = (uint32_t)s->straggler};
      }
    }
  }
}

static int collect_job(const store_job_t *sj, void *arg) {
  job_list_t *l = arg;
  if (l->n == l->cap) return 1;
  fill_job(l->c, l->m, sj, &l->jobs[l->n++]);
  return 0;
}

static void on_status(coord_t *c, const sock_peer_t *from, const proto_status_t *st) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_JOBS);
  job_list_t l = {.c = c, .m = &m};
  if (st->job > 0) {
    store_job_t sj;
    if (store_job_get(c->store, st->job, &sj) != DRV_OK) {
      reply_error(c, from, "not_found", drv_last_error());
      return;
    }
    l.cap = 1;
    l.jobs = proto_msg_alloc(&m, sizeof *l.jobs);
    if (l.jobs) fill_job(c, &m, &sj, &l.jobs[l.n++]);
  } else {
    l.cap = st->limit ? DRV_MIN(st->limit, 1000u) : 20;
    l.jobs = proto_msg_alloc(&m, l.cap * sizeof *l.jobs);
    if (l.jobs && store_job_list(c->store, l.cap, collect_job, &l) != DRV_OK) {
      proto_msg_fini(&m);
      reply_error(c, from, "internal", drv_last_error());
      return;
    }
  }
  m.u.jobs.jobs = l.jobs;
  m.u.jobs.jobs_count = l.n;
  reply(c, from, &m);
  proto_msg_fini(&m);
}

static void on_cancel(coord_t *c, const sock_peer_t *from, int64_t id) {
  job_t *j = job_find(c, id);
  if (!j) {
    store_job_t sj;
    char msg[256];
    if (store_job_get(c->store, id, &sj) == DRV_OK)
      snprintf(msg, sizeof msg, "job %" PRId64 " already %s", id, store_state_name(sj.state));
    else
      snprintf(msg, sizeof msg, "job %" PRId64 ": no such job", id);
    reply_error(c, from, "not_found", msg);
    return;
  }
  job_finish(c, j, JOB_CANCELLED, "cancelled by user");
  proto_msg_t m;
  proto_msg_init(&m, PROTO_OK);
  reply(c, from, &m);
}

static void on_agents(coord_t *c, const sock_peer_t *from) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_AGENT_LIST);
  proto_agent_t *list = proto_msg_alloc(&m, MAX_AGENTS * sizeof *list);
  uint32_t n = 0;
  int64_t now = drv_now_ms();
  for (int i = 0; list && i < MAX_AGENTS; i++) {
    agent_t *a = &c->agents[i];
    if (!a->used) continue;
    proto_agent_t *p = &list[n++];
    p->agent_id = a->agent_id;
    p->host = a->host;
    p->target = a->target;
    p->state = a->job ? "busy" : "idle";
    p->cpus = a->cpus;
    p->gpus = a->gpus;
    p->mem_bytes = a->mem_bytes;
    p->job = a->job;
    p->last_seen_s = (double)(now - a->last_seen_ms) / 1000.0;
  }
  m.u.agent_list.agents = list;
  m.u.agent_list.agents_count = n;
  reply(c, from, &m);
  proto_msg_fini(&m);
}

static void handle_client_socket(coord_t *c) {
  sock_peer_t from;
  proto_msg_t m;
  drv_result_t rc = sock_recv(c->clients, &from, &m, 0);
  if (rc == DRV_ERR_PROTO && from.len > 0) {
    log_warn("client socket: refused a frame: %s", drv_last_error());
    reply_error(c, &from, "proto", drv_last_error());
    proto_msg_fini(&m);
    return;
  }
  if (rc != DRV_OK) {
    if (rc != DRV_ERR_TIMEOUT) log_warn("client socket: %s", drv_last_error());
    proto_msg_fini(&m);
    return;
  }
  switch (m.type) {
  case PROTO_SUBMIT: on_submit(c, &from, &m.u.submit); break;
  case PROTO_GET_SPEC: on_get_spec(c, &from, m.u.get_spec.job); break;
  case PROTO_STATUS: on_status(c, &from, &m.u.status); break;
  case PROTO_CANCEL: on_cancel(c, &from, m.u.cancel.job); break;
  case PROTO_AGENTS: on_agents(c, &from); break;
  default: {
    char msg[128];
    snprintf(msg, sizeof msg, "'%s' is not a request clients may send", proto_type_name(m.type));
    reply_error(c, &from, "proto", msg);
    break;
  }
  }
  proto_msg_fini(&m);
}

// --- Timers --------------------------------------------------------------------------------

static void tick(coord_t *c) {
  int64_t now = drv_now_ms();
  int64_t timeout = drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  proto_msg_t hb;
  proto_msg_init(&hb, PROTO_HEARTBEAT);
  hb.u.heartbeat.seq = ++c->hb_seq;
  for (int i = 0; i < MAX_AGENTS; i++) {
    agent_t *a = &c->agents[i];
    if (!a->used) continue;
    if (now - a->last_seen_ms > timeout) {
      char why[128];
      snprintf(why, sizeof why, "silent for %" PRId64 " ms (timeout %" PRId64 " ms)",
               now - a->last_seen_ms, timeout);
      agent_lost(c, a, why);
      continue;
    }
    sock_send(c->workers, &a->peer, &hb);
  }
  for (int i = 0; i < MAX_JOBS; i++) {
    job_t *j = &c->jobs[i];
    if (!j->used || j->state != JOB_QUEUED || !j->pool[0]) continue;
    /* A pool belongs to one drover submit: when it is gone, nobody will serve the job. */
    for (int k = 0; k < MAX_AGENTS; k++)
      if (c->agents[k].used && !strcmp(c->agents[k].pool, j->pool)) j->pool_seen_ms = now;
    if (now - j->pool_seen_ms > drv_setting(DRV_SET_POOL_WAIT_MS))
      coord_job_fail(c, j, "no agent of pool %s registered for %" PRId64 " s", j->pool,
                     (now - j->pool_seen_ms) / 1000);
  }
  for (int i = 0; i < MAX_JOBS; i++) {
    job_t *j = &c->jobs[i];
    if (!j->used || j->state != JOB_RUNNING) continue;
    if (j->recovering) {
      recovery_check(c, j);
      continue;
    }
    /* Room to grow and a free agent for it, with nobody queued for that agent. */
    if (j->started && j->nodes < j->max_nodes && j->commit_every) {
      int free_agents = 0, queued = 0;
      for (int k = 0; k < MAX_AGENTS; k++) free_agents += coord_agent_fits(&c->agents[k], j);
      for (int k = 0; k < MAX_JOBS; k++)
        queued |= c->jobs[k].used && c->jobs[k].state == JOB_QUEUED &&
                  !strcmp(c->jobs[k].target, j->target) && !strcmp(c->jobs[k].pool, j->pool);
      if (free_agents && !queued) {
        char why[128];
        snprintf(why, sizeof why, "taking in %d free agent(s)", free_agents);
        recovery_plan(c, j, why);
        continue;
      }
    }
    if (!j->started && now > j->rendezvous_deadline_ms) {
      uint32_t missing = 0;
      for (uint32_t r = 0; r < j->nodes; r++) missing += !j->slots[r].rendezvoused;
      coord_job_fail(c, j, "%u of %u workers did not check in within %" PRId64 " ms", missing,
                     j->nodes, drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS));
      continue;
    }
    for (uint32_t r = 0; r < j->nodes; r++) {
      slot_t *s = &j->slots[r];
      if (s->exited && !s->done && s->exit_ms && now - s->exit_ms > EXIT_GRACE_MS) {
        if (s->exit_code)
          coord_job_fail(c, j, "rank %u exited with code %d without saying why", r, s->exit_code);
        else
          coord_job_fail(c, j, "rank %u exited without reporting its result", r);
        break;
      }
    }
  }
}

static int active_jobs(const coord_t *c) {
  int n = 0;
  for (int i = 0; i < MAX_JOBS; i++) n += c->jobs[i].used;
  return n;
}

// --- Loop ----------------------------------------------------------------------------------

static drv_result_t bind_socket(coord_t *c, sock_t **s, sock_kind_t kind, proto_at_t at,
                                sock_port_t port) {
  char ep[256];
  DRV_CHECK(sock_endpoint(c->cfg->bind, port, ep, sizeof ep));
  /* An agent that reconnects under its own identity takes its old connection over. */
  *s = sock_new(c->ctx, kind, at, &(sock_opts_t){.handover = kind == SOCK_ROUTER});
  if (!*s) return DRV_ERR_ZMQ;
  return sock_bind(*s, ep);
}

drv_result_t coord_run(const coord_config_t *cfg, volatile sig_atomic_t *stop) {
  coord_t *c = calloc(1, sizeof *c);
  if (!c) return drv_error(DRV_ERR_NOMEM, "coordinator: out of memory");
  c->cfg = cfg;
  drv_result_t rc = DRV_OK;
  DRV_CHECK_GOTO(store_open(cfg->state_dir, &c->store), rc, out);
  /* One coordinator per state directory, and only one that could bind touches the jobs
   * a previous one left behind. */
  DRV_CHECK_GOTO(store_lock(c->store), rc, out);
  if (!(c->ctx = sock_ctx_new())) {
    rc = DRV_ERR_ZMQ;
    goto out;
  }
  DRV_CHECK_GOTO(bind_socket(c, &c->workers, SOCK_ROUTER, PROTO_AT_COORD, SOCK_AGENTS), rc, out);
  DRV_CHECK_GOTO(bind_socket(c, &c->clients, SOCK_ROUTER, PROTO_AT_API, SOCK_CLIENTS), rc, out);
  DRV_CHECK_GOTO(bind_socket(c, &c->events, SOCK_PUB, PROTO_AT_EVENTS, SOCK_EVENTS), rc, out);
  uint32_t recovered = 0;
  DRV_CHECK_GOTO(store_recover(c->store, &recovered), rc, out);
  if (recovered)
    log_warn("%u job(s) left running by a previous coordinator queued again", recovered);
  DRV_CHECK_GOTO(store_job_list(c->store, 0, load_one, c), rc, out);
  log_info("coordinator listening on %s (+1 clients, +2 events), state in %s", cfg->bind,
           cfg->state_dir);
  c->fault_slow_submit_ms = drv_setting(DRV_SET_FAULT_SLOW_SUBMIT_MS);
  if (c->fault_slow_submit_ms) {
    log_warn("fault injection: new submissions are answered %" PRId64
             " ms late (DROVER_FAULT_SLOW_SUBMIT_MS)",
             c->fault_slow_submit_ms);
  }
  int lo, hi;
  if (sock_ports_ephemeral(cfg->bind, &lo, &hi))
    log_warn(
        "the ports of %s lie in this machine's ephemeral range (%d-%d): while this "
        "coordinator is down, other programs' connections may take them, so a restart "
        "could fail to bind; a base port below %d avoids that",
        cfg->bind, lo, hi, lo - 2);

  int64_t hb_ms = drv_setting(DRV_SET_HEARTBEAT_MS);
  int64_t next_tick = drv_now_ms() + hb_ms;
  while (!*stop) {
    if (cfg->exit_when_idle_s > 0 && c->last_active_ms > 0 && !active_jobs(c) &&
        drv_now_ms() - c->last_active_ms > (int64_t)cfg->exit_when_idle_s * 1000) {
      log_info("no job for %d s: exiting (--exit-when-idle)", cfg->exit_when_idle_s);
      break;
    }
    if (active_jobs(c)) c->last_active_ms = drv_now_ms();
    sock_t *socks[2] = {c->workers, c->clients};
    int ready[2];
    int64_t wait = next_tick - drv_now_ms();
    rc = sock_poll(socks, 2, (int)DRV_MAX(wait, 0), ready);
    if (rc != DRV_OK && rc != DRV_ERR_TIMEOUT) break;
    rc = DRV_OK;
    /* Bounded batches so one busy socket cannot starve the other or the timers. */
    for (int k = 0; k < 256 && ready[0]; k++) {
      handle_worker_socket(c);
      if (!sock_readable(c->workers)) break;
    }
    for (int k = 0; k < 64 && ready[1]; k++) {
      handle_client_socket(c);
      if (!sock_readable(c->clients)) break;
    }
    if (drv_now_ms() >= next_tick) {
      tick(c);
      next_tick = drv_now_ms() + hb_ms;
    }
    schedule(c);
  }
  log_info("coordinator stopping");
  for (int i = 0; i < MAX_JOBS; i++)
    if (c->jobs[i].used)
      coord_job_fail(c, &c->jobs[i], "coordinator stopped while the job was %s",
                     store_state_name(c->jobs[i].state));
out:
  sock_destroy(&c->workers);
  sock_destroy(&c->clients);
  sock_destroy(&c->events);
  sock_ctx_destroy(&c->ctx);
  store_close(&c->store);
  free(c);
  return rc;
}
