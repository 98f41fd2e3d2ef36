/* job.c: the active jobs and their state machine (see job.h, and phase.h for the phases).
 * The decisions are sched_plan's and recovery_plan's; this file builds their snapshots,
 * carries their plans out and handles the job messages of agents and workers. */
#include "coordinator/job.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#include "common/log.h"
#include "common/settings.h"
#include "coordinator/auth.h"
#include "coordinator/sched.h"

// --- Phases --------------------------------------------------------------------------------

static const char *const job_phase_names[] = {
    [JOB_PHASE_QUEUED] = "queued",       [JOB_PHASE_STARTING] = "starting",
    [JOB_PHASE_RUNNING] = "running",     [JOB_PHASE_PAUSING] = "pausing",
    [JOB_PHASE_REFORMING] = "reforming", [JOB_PHASE_WAITING] = "waiting_for_agents",
    [JOB_PHASE_SUCCEEDED] = "succeeded", [JOB_PHASE_FAILED] = "failed",
    [JOB_PHASE_CANCELLED] = "cancelled",
};

const char *job_phase_name(job_phase_t p) {
  if ((unsigned)p >= DRV_ARRAY_LEN(job_phase_names)) return "unknown";
  return job_phase_names[p];
}

job_state_t job_state(job_phase_t p) {
  switch (p) {
  case JOB_PHASE_QUEUED: return JOB_QUEUED;
  case JOB_PHASE_SUCCEEDED: return JOB_SUCCEEDED;
  case JOB_PHASE_FAILED: return JOB_FAILED;
  case JOB_PHASE_CANCELLED: return JOB_CANCELLED;
  default: return JOB_RUNNING;
  }
}

/* Placed on agents: it has ranks, and their messages count. */
static int phase_placed(job_phase_t p) {
  return p >= JOB_PHASE_STARTING && p <= JOB_PHASE_WAITING;
}

/* A re-formation is under way: survivors are being collected. */
static int phase_collecting(job_phase_t p) {
  return p == JOB_PHASE_PAUSING || p == JOB_PHASE_REFORMING || p == JOB_PHASE_WAITING;
}

/* The one place a job changes phase. Logs the transition once: the caller's line about
 * it (with the caller's file and line), and "[from -> to]" after it. */
static void job_enter_at(int line, job_t *j, job_phase_t to, log_level_t level, const char *fmt,
                         ...) __attribute__((format(printf, 5, 6)));
static void job_enter_at(int line, job_t *j, job_phase_t to, log_level_t level, const char *fmt,
                         ...) {
  char what[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  log_msg(level, __FILE__, line, "%s [%s -> %s]", what, job_phase_name(j->phase),
          job_phase_name(to));
  j->phase = to;
}
#define job_enter(j, to, level, ...) job_enter_at(__LINE__, j, to, level, __VA_ARGS__)

// --- Events --------------------------------------------------------------------------------

/* Publishes an event of job `id` on topic "job/<id>". */
static void publish(job_table_t *t, int64_t id, const proto_msg_t *m) {
  char topic[64];
  snprintf(topic, sizeof topic, "job/%" PRId64, id);
  if (sock_publish(t->events, topic, m) != DRV_OK) log_last_error();
}

void job_publish_state(job_table_t *t, const job_t *j, const char *reason) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_STATE);
  m.u.ev_state.job = j->id;
  m.u.ev_state.state = store_state_name(job_state(j->phase));
  m.u.ev_state.reason = reason ? reason : "";
  m.u.ev_state.run_dir = j->run_dir;
  m.u.ev_state.test_loss = j->test_loss;
  m.u.ev_state.test_accuracy = j->test_accuracy;
  m.u.ev_state.samples_per_s = j->final_samples_per_s;
  publish(t, j->id, &m); /* the strings above are borrowed: do not fini */
}

// --- The table -----------------------------------------------------------------------------

void job_table_secure(job_table_t *t, const char *coord_key) {
  t->secure = 1;
  snprintf(t->coord_key, sizeof t->coord_key, "%s", coord_key);
}

int job_worker_key(const job_table_t *t, const unsigned char pub[SOCK_KEY_BYTES]) {
  char name[SOCK_USER_MAX];
  auth_worker_name(pub, name, sizeof name);
  for (int i = 0; i < JOB_MAX; i++) {
    const job_t *j = &t->jobs[i];
    if (!j->used || !j->ranks) continue;
    for (uint32_t r = 0; r < j->world; r++)
      if (!strcmp(j->ranks[r].key, name)) return 1;
  }
  return 0;
}

void job_table_init(job_table_t *t, sock_t *workers, sock_t *events, store_t *store,
                    registry_t *reg, const char *advertise) {
  memset(t, 0, sizeof *t);
  t->workers = workers;
  t->events = events;
  t->store = store;
  t->reg = reg;
  t->advertise = advertise;
}

job_t *job_find(job_table_t *t, int64_t id) {
  for (int i = 0; i < JOB_MAX; i++)
    if (t->jobs[i].used && t->jobs[i].id == id) return &t->jobs[i];
  return NULL;
}

uint32_t job_active(const job_table_t *t) {
  uint32_t n = 0;
  for (int i = 0; i < JOB_MAX; i++) n += (uint32_t)t->jobs[i].used;
  return n;
}

static job_t *job_free_entry(job_table_t *t) {
  for (int i = 0; i < JOB_MAX; i++)
    if (!t->jobs[i].used) return &t->jobs[i];
  return NULL;
}

int job_has_room(const job_table_t *t) {
  return job_active(t) < JOB_MAX;
}

job_t *job_add(job_table_t *t, const store_job_t *sj, const jobspec_t *spec, char **spec_yaml) {
  job_t *j = job_free_entry(t);
  if (!j) {
    free(*spec_yaml);
    *spec_yaml = NULL;
    return NULL;
  }
  memset(j, 0, sizeof *j);
  j->used = 1;
  j->id = sj->id;
  j->phase = JOB_PHASE_QUEUED;
  snprintf(j->name, sizeof j->name, "%s", sj->name);
  snprintf(j->target, sizeof j->target, "%s", sj->target);
  snprintf(j->pool, sizeof j->pool, "%s", sj->pool);
  snprintf(j->run_dir, sizeof j->run_dir, "%s", sj->run_dir);
  snprintf(j->resume_dir, sizeof j->resume_dir, "%s", sj->resume_dir);
  snprintf(j->owner, sizeof j->owner, "%s", sj->owner);
  snprintf(j->lineage, sizeof j->lineage, "%s", sj->lineage);
  j->ckpt_step = sj->ckpt_step;
  /* Generations go on across coordinators: messages of the old one's workers are stale. */
  j->generation = sj->generation;
  j->nodes_wanted = spec->nodes;
  j->workers_per_node = spec->workers_per_node;
  j->command = spec->command != NULL;
  j->epochs = spec->train.epochs;
  j->global_batch = spec->train.global_batch;
  j->min_nodes = spec->min_nodes;
  j->max_nodes = spec->max_nodes;
  j->max_restarts = spec->max_restarts;
  j->commit_every = spec->train.commit_every;
  j->rejoin_timeout_s = spec->rejoin_timeout_s;
  j->priority = spec->priority;
  j->max_runtime_s = spec->max_runtime_s;
  j->cpus_per_worker = spec->resources.cpus_per_worker;
  j->gpus_per_worker = spec->resources.gpus_per_worker;
  j->memory_mb = spec->resources.memory_mb;
  j->spec_yaml = *spec_yaml;
  *spec_yaml = NULL;
  j->test_loss = j->test_accuracy = j->final_samples_per_s = NAN;
  j->pool_seen_ms = j->queued_ms = drv_now_ms();
  return j;
}

/* At start: a job a previous coordinator left queued (or running, now queued again)
 * becomes active again, to be placed and resumed from its checkpoints. */
static int reload_one(const store_job_t *sj, void *arg) {
  job_table_t *t = arg;
  if (sj->state != JOB_QUEUED) return 0;
  char *yaml = NULL;
  jobspec_t *spec = NULL;
  int room = job_has_room(t);
  if (!room || store_job_spec(t->store, sj->id, &yaml) != DRV_OK ||
      jobspec_parse(yaml, strlen(yaml), "stored spec", NULL, 0, &spec) != DRV_OK) {
    char why[600];
    snprintf(why, sizeof why, "cannot be reloaded: %s", room ? drv_last_error() : "too many jobs");
    log_error("job %" PRId64 ": %s", sj->id, why);
    store_job_set_state(t->store, sj->id, JOB_FAILED, why);
    free(yaml);
    return 0;
  }
  job_t *j = job_add(t, sj, spec, &yaml);
  jobspec_destroy(&spec);
  j->reloaded = 1;
  log_info("job %" PRId64 " (%s) reloaded: queued%s", j->id, j->name,
           j->ckpt_step ? ", will resume from its last checkpoint" : "");
  return 0;
}

drv_result_t job_table_reload(job_table_t *t) {
  return store_job_list(t->store, 0, reload_one, t);
}

static void job_release(job_t *j) {
  free(j->spec_yaml);
  free(j->ranks);
  memset(j, 0, sizeof *j);
}

/* The agent of rank r, or NULL when it is gone. */
static agent_t *rank_agent(job_table_t *t, const job_rank_t *r) {
  return registry_at(t->reg, r->agent);
}

/* The first rank of j whose agent is at registry index ai, or -1. */
static int rank_of_agent(const job_t *j, int ai) {
  for (uint32_t r = 0; j->ranks && r < j->world; r++)
    if (j->ranks[r].agent == ai) return (int)r;
  return -1;
}

/* Whether rank r is the first of its agent's ranks: one message per agent. */
static int first_of_agent(const job_t *j, uint32_t r) {
  return rank_of_agent(j, j->ranks[r].agent) == (int)r;
}

/* The rank of j whose worker its agent (at registry index ai) knows by its assign
 * (generation, rank), or -1: left out of the world since, or stale. */
static int rank_of_worker(const job_t *j, int ai, uint32_t generation, uint32_t assign_rank) {
  for (uint32_t r = 0; j->ranks && r < j->world; r++) {
    const job_rank_t *s = &j->ranks[r];
    if (s->agent == ai && s->assign_gen == generation && s->assign_rank == assign_rank)
      return (int)r;
  }
  return -1;
}

/* "ranks 2, 3" or "rank 2": j's ranks on the agent at registry index ai, into buf. */
static const char *ranks_text(const job_t *j, int ai, char *buf, size_t n) {
  size_t len = 0;
  uint32_t k = 0;
  buf[0] = '\0';
  for (uint32_t r = 0; j->ranks && r < j->world && len < n; r++)
    if (j->ranks[r].agent == ai)
      len += (size_t)snprintf(buf + len, n - len, "%s%u", k++ ? ", " : "", r);
  char list[128];
  snprintf(list, sizeof list, "%s", buf);
  snprintf(buf, n, "rank%s %s", k == 1 ? "" : "s", list);
  return buf;
}

static void send_abort(job_table_t *t, const sock_peer_t *to, int64_t job, uint32_t generation,
                       const char *reason) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ABORT);
  m.u.abort = (proto_abort_t){.job = job, .generation = generation, .reason = reason};
  sock_send(t->workers, to, &m);
}

/* Tells agent a to kill every worker of job `job`. */
static void send_kill(job_table_t *t, const agent_t *a, int64_t job, uint32_t generation,
                      const char *reason) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_KILL);
  m.u.kill = (proto_kill_t){.job = job, .generation = generation, .reason = reason};
  registry_send(t->reg, a, &m);
}

/* Tells rank s's agent to kill that rank's worker only (its others stay). */
static void send_kill_rank(job_table_t *t, const agent_t *a, int64_t job, const job_rank_t *s,
                           const char *reason) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_KILL);
  m.u.kill = (proto_kill_t){.job = job,
                            .generation = s->assign_gen,
                            .reason = reason,
                            .single = 1,
                            .rank = s->assign_rank};
  registry_send(t->reg, a, &m);
}

/* GPUs each worker of j gets: its gpus_per_worker, at least 1. */
static uint32_t job_gpus_each(const job_t *j) {
  return j->gpus_per_worker ? j->gpus_per_worker : 1;
}

/* How many workers j would run on agent a: its workers_per_node, else one per
 * gpus_per_worker GPUs of a (one on a CPU agent). */
static uint32_t agent_slots(const job_t *j, const agent_t *a) {
  if (j->workers_per_node) return j->workers_per_node;
  uint32_t n = a->gpus / job_gpus_each(j);
  /* Its cores and memory must hold them all too. */
  if (j->cpus_per_worker) n = DRV_MIN(n, a->cpus / j->cpus_per_worker);
  if (j->memory_mb) n = (uint32_t)DRV_MIN((uint64_t)n, (a->mem_bytes >> 20) / j->memory_mb);
  return n ? DRV_MIN(n, (uint32_t)JOBSPEC_MAX_WORKERS_PER_NODE) : 1;
}

/* The device of local rank lr on agent a: its GPUs in its order (PCI bus id), gpus_per_worker
 * of them each; workers beyond its GPUs share them, round; -1 on a CPU agent. */
static int slot_device(const job_t *j, const agent_t *a, uint32_t lr) {
  if (!a->gpus) return -1;
  uint32_t each = DRV_MIN(job_gpus_each(j), a->gpus);
  return (int)a->gpu[(lr % (a->gpus / each)) * each].index;
}

/* Sends agent a its `assign` for slot: rank `rank` of j's current generation, in a world
 * of `world`, with the slot's local rank and device, of local_world workers on a. On a
 * secure coordinator the worker gets a key of its own, whose name goes into slot. Returns
 * registry_send's result. */
static drv_result_t send_assign(job_table_t *t, const job_t *j, job_rank_t *slot, const agent_t *a,
                                uint32_t rank, uint32_t world, uint32_t local_world) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ASSIGN);
  char secret[SOCK_Z85_LEN + 1] = "";
  if (t->secure) {
    unsigned char pub[SOCK_KEY_BYTES], sec[SOCK_KEY_BYTES];
    sock_keypair(pub, sec);
    sock_z85_encode(sec, secret);
    auth_worker_name(pub, slot->key, sizeof slot->key);
    memset(sec, 0, sizeof sec);
  }
  m.u.assign = (proto_assign_t){.job = j->id,
                                .generation = j->generation,
                                .rank = rank,
                                .world = world,
                                .local_rank = slot->local_rank,
                                .device = slot->device,
                                .devices = slot->device >= 0 ? DRV_MIN(job_gpus_each(j), a->gpus) : 0,
                                .local_world = local_world,
                                .cpus = j->cpus_per_worker,
                                .spec = j->spec_yaml,
                                .run_dir = j->run_dir,
                                .coordinator = t->advertise,
                                .resume_dir = j->resume_dir,
                                .owner = j->owner,
                                .lineage = j->lineage,
                                .secret = t->secure ? secret : NULL,
                                .coordinator_key = t->secure ? t->coord_key : NULL,
                                .ring_key = j->ring_key,
                                .preemptible = (uint32_t)a->preemptible,
                                .restarts = j->restarts,
                                .group_rank = j->wpn ? rank / j->wpn : 0};
  drv_result_t rc = registry_send(t->reg, a, &m);
  memset(secret, 0, sizeof secret);
  slot->assign_rank = rank;
  slot->assign_gen = j->generation;
  slot->preemptible = a->preemptible;
  return rc;
}

/* The agent of rank s still runs its worker for j. */
static agent_t *rank_agent_busy(job_table_t *t, const job_t *j, const job_rank_t *s) {
  agent_t *a = rank_agent(t, s);
  return a && a->job == j->id && !s->exited ? a : NULL;
}

/* Tells the job's agents to kill its workers and the workers to abort. */
static void stop_workers(job_table_t *t, job_t *j, const char *reason) {
  for (uint32_t r = 0; j->ranks && r < j->world; r++) {
    const job_rank_t *s = &j->ranks[r];
    if (s->rendezvoused && !s->done) send_abort(t, &s->peer, j->id, j->generation, reason);
    const agent_t *a = first_of_agent(j, r) ? rank_agent(t, s) : NULL;
    if (a && a->job == j->id) send_kill(t, a, j->id, j->generation, reason);
  }
}

/* Moves a job to a terminal phase: durable record, event, workers stopped, entry freed.
 * Agents stay busy until their worker's exit is reported, so nothing is double-booked. */
static void job_finish(job_table_t *t, job_t *j, job_phase_t to, const char *reason) {
  job_state_t state = job_state(to);
  if (to != JOB_PHASE_SUCCEEDED) stop_workers(t, j, reason ? reason : "job ended");
  /* Steps and throughput are worth keeping for failed and cancelled jobs too. */
  double sps = to == JOB_PHASE_SUCCEEDED ? j->final_samples_per_s : j->progress.samples_per_s;
  uint64_t steps = j->progress.step;
  if (store_job_set_metrics(t->store, j->id, j->test_accuracy, j->test_loss, steps ? sps : NAN,
                            steps) != DRV_OK)
    log_error("store: %s", drv_last_error());
  if (store_job_set_state(t->store, j->id, state, reason) != DRV_OK)
    log_error("store: %s", drv_last_error());
  job_enter(j, to, LOG_INFO, "job %" PRId64 " (%s) %s%s%s", j->id, j->name, store_state_name(state),
            reason && *reason ? ": " : "", reason ? reason : "");
  job_publish_state(t, j, reason);
  /* Agents keep `job` set: the exit of their last worker frees them (worker_exit with
   * `workers` 0), or, if that report is lost, their next heartbeat without workers. */
  job_release(j);
}

void job_fail(job_table_t *t, job_t *j, const char *fmt, ...) {
  char reason[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  job_finish(t, j, JOB_PHASE_FAILED, reason);
}

void job_cancel(job_table_t *t, job_t *j) {
  job_finish(t, j, JOB_PHASE_CANCELLED, "cancelled by user");
}

void job_table_fini(job_table_t *t) {
  for (int i = 0; i < JOB_MAX; i++)
    if (t->jobs[i].used)
      job_fail(t, &t->jobs[i], "coordinator stopped while the job was %s",
               store_state_name(job_state(t->jobs[i].phase)));
}

// --- Scheduling: carrying out sched_plan ---------------------------------------------------

/* The registered agents as the planners see them; index[k] is view k's registry index. */
static uint32_t agents_view(job_table_t *t, sched_agent_t *view, int *index) {
  uint32_t n = 0;
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    const agent_t *a = registry_at(t->reg, i);
    if (!a) continue;
    const job_t *j = a->job ? job_find(t, a->job) : NULL;
    view[n] = (sched_agent_t){.id = a->agent_id,
                              .target = a->target,
                              .pool = a->pool,
                              .busy = a->job != 0,
                              .leaving = a->leaving,
                              .cooldown_until_ms = a->cooldown_until_ms,
                              .job = a->job,
                              .cpus = a->cpus,
                              .gpus = a->gpus,
                              .mem_mb = a->mem_bytes >> 20};
    if (j && j->max_runtime_s && j->started_ms) /* when its job is expected to end */
      view[n].free_at_ms = j->started_ms + (int64_t)j->max_runtime_s * 1000;
    index[n++] = i;
  }
  return n;
}

/* The free agents of j's queue with its resources, as registry indices in agent-id order
 * (room for REGISTRY_MAX_AGENTS). Returns how many. */
static uint32_t free_agents(job_table_t *t, const job_t *j, int64_t now, int *out) {
  sched_agent_t view[REGISTRY_MAX_AGENTS];
  int index[REGISTRY_MAX_AGENTS];
  uint32_t fit[REGISTRY_MAX_AGENTS], m = 0;
  uint32_t n = sched_free(view, agents_view(t, view, index), j->target, j->pool, now, fit);
  const sched_job_t need = {.cpus = j->cpus_per_worker,
                            .gpus = j->gpus_per_worker,
                            .mem_mb = j->memory_mb,
                            .workers_per_node = j->workers_per_node};
  for (uint32_t k = 0; k < n; k++)
    if (sched_holds(&view[fit[k]], &need)) out[m++] = index[fit[k]];
  return m;
}

/* A place for a newcomer worker of a re-formed world: a free agent, a local rank on it. */
typedef struct {
  int agent; /* registry index */
  uint32_t local_rank;
} job_slot_t;

#define JOB_MAX_SLOTS RECOVERY_MAX_RANKS

/* The worker slots placed job j could take in now: each free agent of its queue with its
 * resources (agent-id order), with as many local ranks as j's nodes run (j->wpn; with
 * workers_per_node 0, no more than the agent's GPUs give). Returns how many (room for
 * JOB_MAX_SLOTS in out). */
static uint32_t free_slots(job_table_t *t, const job_t *j, int64_t now, job_slot_t *out) {
  int agents[REGISTRY_MAX_AGENTS];
  uint32_t n = free_agents(t, j, now, agents), m = 0;
  for (uint32_t k = 0; k < n; k++) {
    const agent_t *a = registry_at(t->reg, agents[k]);
    uint32_t per = j->workers_per_node ? j->wpn : DRV_MIN(j->wpn, agent_slots(j, a));
    for (uint32_t lr = 0; lr < per && m < JOB_MAX_SLOTS; lr++)
      out[m++] = (job_slot_t){.agent = agents[k], .local_rank = lr};
  }
  return m;
}

/* How many agents slots[0..n) are on. */
static uint32_t slot_agents(const job_slot_t *slots, uint32_t n) {
  uint32_t agents = 0;
  for (uint32_t k = 0; k < n; k++) agents += !k || slots[k].agent != slots[k - 1].agent;
  return agents;
}

/* A placement failed half-way (an agent could not be reached): the reached agents are
 * told to drop their worker, and the job stays queued. */
static void unplace(job_table_t *t, job_t *j, const char *why) {
  for (uint32_t r = 0; r < j->world; r++) {
    if (!first_of_agent(j, r)) continue;
    const agent_t *a = rank_agent(t, &j->ranks[r]);
    if (a && a->job == j->id) send_kill(t, a, j->id, j->generation, why); /* its exit frees it */
  }
  free(j->ranks);
  j->ranks = NULL;
  j->world = j->wpn = 0;
  j->queued_ms = drv_now_ms();
  j->wait_reason[0] = '\0'; /* the next plan says why it waits now */
  if (store_job_set_state(t->store, j->id, JOB_QUEUED, why) != DRV_OK)
    log_error("store: %s", drv_last_error());
  log_warn("job %" PRId64 " queued again: %s", j->id, why);
  job_publish_state(t, j, why);
}

/* The workers each of the `nodes` agents agent[] runs for j: its workers_per_node, else
 * one per GPU (gpus_per_worker each) of the agent with the fewest, so that every node
 * runs as many; never more than train.global_batch allows (a sample per worker a step). */
static uint32_t placement_wpn(job_table_t *t, const job_t *j, const int *agent, uint32_t nodes) {
  if (j->workers_per_node) return j->workers_per_node;
  uint32_t w = JOBSPEC_MAX_WORKERS_PER_NODE;
  for (uint32_t n = 0; n < nodes; n++) {
    const agent_t *a = registry_at(t->reg, agent[n]);
    if (a) w = DRV_MIN(w, agent_slots(j, a));
  }
  /* A command job has no global batch of drover's: only the world's bound. */
  uint32_t batch = j->command ? (uint32_t)JOBSPEC_MAX_WORLD : j->global_batch;
  uint32_t cap = DRV_MAX(1u, DRV_MIN(batch, (uint32_t)JOBSPEC_MAX_WORLD) / nodes);
  if (w > cap) {
    log_info("job %" PRId64 ": %u worker(s) per node would be more than train.global_batch %u "
             "(and %d workers) over %u node(s) allow: %u per node",
             j->id, w, j->global_batch, JOBSPEC_MAX_WORLD, nodes, cap);
    w = cap;
  }
  return w;
}

/* Places queued job j on registry agents agent[0..nodes) (its nodes, or fewer when
 * sched_plan let it shrink), node-major: rank = node x workers per node + local rank, each
 * local rank with its own GPU(s) of its agent (slot_device); `assign` to each. Returns 0
 * when it did not start (an agent could not be reached, or no memory). */
static int place(job_table_t *t, job_t *j, const int *agent, uint32_t nodes, int64_t now) {
  uint32_t wpn = placement_wpn(t, j, agent, nodes);
  j->wpn = wpn;
  j->world = nodes * wpn;
  if (!(j->ranks = calloc(j->world, sizeof *j->ranks))) {
    job_fail(t, j, "out of memory placing the job");
    return 0;
  }
  j->generation++;
  drv_random_hex(j->ring_key, 32); /* a new world of new processes: a new ring key */
  char unreachable[160] = "";
  for (uint32_t r = 0; r < j->world; r++) {
    job_rank_t *s = &j->ranks[r];
    agent_t *a = registry_at(t->reg, agent[r / wpn]);
    s->agent = a ? agent[r / wpn] : -1;
    s->local_rank = r % wpn;
    s->device = a ? slot_device(j, a, s->local_rank) : -1;
    if (!a) continue; /* forgotten below, at an earlier rank */
    if (send_assign(t, j, s, a, r, j->world, wpn) != DRV_OK) {
      /* Not connected any more (ROUTER_MANDATORY): it is gone. */
      snprintf(unreachable, sizeof unreachable, "agent %s could not be reached", a->agent_id);
      log_warn("agent %s (%s) lost: unreachable", a->agent_id, a->host);
      registry_forget(t->reg, a);
      s->agent = -1;
      continue;
    }
    a->job = j->id;
    a->generation = j->generation;
  }
  if (unreachable[0]) {
    unplace(t, j, unreachable);
    return 0;
  }
  j->deadline_ms = now + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
  j->started_ms = now;
  if (store_job_set_state(t->store, j->id, JOB_RUNNING, NULL) != DRV_OK ||
      store_job_set_generation(t->store, j->id, j->generation) != DRV_OK)
    log_error("store: %s", drv_last_error());
  job_enter(j, JOB_PHASE_STARTING, LOG_INFO,
            "job %" PRId64 " (%s) placed on %u agent(s)%s, %u worker(s) each, generation %u",
            j->id, j->name, nodes,
            nodes < j->nodes_wanted ? " (fewer than its nodes: resuming with min_nodes or more)"
                                    : "",
            wpn, j->generation);
  j->wait_reason[0] = '\0';
  job_publish_state(t, j, NULL);
  return 1;
}

/* A queued job that was running before (a coordinator restart queued it again): it has a
 * checkpoint, or a generation of a previous coordinator. */
static int job_resumable(const job_t *j) {
  return j->ckpt_step > 0 || (j->reloaded && j->generation > 0) || j->restarted;
}

/* Queued job j as sched_plan sees it: a job that was running before may shrink to its
 * min_nodes once it has waited rejoin_timeout for the rest; a fresh one is a strict gang. */
static sched_job_t sched_view(const job_t *j) {
  sched_job_t q = {.id = j->id,
                   .target = j->target,
                   .pool = j->pool,
                   .nodes = j->nodes_wanted,
                   .priority = j->priority,
                   .max_runtime_ms = (int64_t)j->max_runtime_s * 1000,
                   .cpus = j->cpus_per_worker,
                   .gpus = j->gpus_per_worker,
                   .mem_mb = j->memory_mb,
                   .workers_per_node = j->workers_per_node};
  if (job_resumable(j) && j->min_nodes < j->nodes_wanted) {
    q.min_nodes = j->min_nodes;
    q.shrink_at_ms = j->queued_ms + (int64_t)j->rejoin_timeout_s * 1000;
  }
  return q;
}

/* Queued job j (q as the plan saw it, w its wait) was not placed: records why it waits (in
 * the store, for drover status) when that changed, and only then: the store syncs. */
static void note_waiting(job_table_t *t, job_t *j, const sched_job_t *q, const sched_wait_t *w,
                         int64_t now) {
  char why[sizeof j->wait_reason];
  if (q->min_nodes && w->kind != SCHED_WAIT_HELD) { /* it may shrink: the wait is bounded */
    int free_list[REGISTRY_MAX_AGENTS];
    uint32_t n = free_agents(t, j, now, free_list);
    snprintf(why, sizeof why,
             "was running before: waiting up to %u s for its %u agent(s) (%u free now), then "
             "resuming from its checkpoint with at least min_nodes %u",
             j->rejoin_timeout_s, j->nodes_wanted, n, j->min_nodes);
  } else {
    sched_reason(q, w, why, sizeof why);
  }
  if (!why[0] || !strcmp(why, j->wait_reason)) return;
  snprintf(j->wait_reason, sizeof j->wait_reason, "%s", why);
  log_info("job %" PRId64 " %s", j->id, why);
  if (store_job_set_state(t->store, j->id, JOB_QUEUED, why) != DRV_OK)
    log_error("store: %s", drv_last_error());
}

void job_schedule(job_table_t *t, int64_t now) {
  for (;;) {
    sched_job_t queued[JOB_MAX];
    job_t *jobs[JOB_MAX];
    uint32_t nq = 0;
    for (int i = 0; i < JOB_MAX; i++) {
      job_t *j = &t->jobs[i];
      if (!j->used || j->phase != JOB_PHASE_QUEUED) continue;
      queued[nq] = sched_view(j);
      jobs[nq++] = j;
    }
    if (!nq) return;
    sched_agent_t view[REGISTRY_MAX_AGENTS];
    int index[REGISTRY_MAX_AGENTS];
    uint32_t na = agents_view(t, view, index);
    sched_plan_t plan;
    sched_plan(queued, nq, view, na, now, &plan);
    /* In queue order; when one does not start, what comes after it is planned again, as if
     * the placements had been decided one at a time. */
    int replan = 0;
    for (uint32_t p = 0; p < plan.count && !replan; p++) {
      const sched_placement_t *pl = &plan.placements[p];
      int agent[SCHED_MAX_AGENTS];
      for (uint32_t r = 0; r < pl->nodes; r++) agent[r] = index[plan.agents[pl->first + r]];
      replan = !place(t, jobs[pl->job], agent, pl->nodes, now);
    }
    if (replan) continue;
    for (uint32_t q = 0; q < nq; q++)
      if (jobs[q]->used && jobs[q]->phase == JOB_PHASE_QUEUED)
        note_waiting(t, jobs[q], &queued[q], &plan.waits[q], now);
    return;
  }
}

// --- Recovery: carrying out recovery_plan --------------------------------------------------

/* Makes sure a left-out rank's process is gone: abort to the worker, kill to its agent. */
static void drop_rank(job_table_t *t, job_t *j, const job_rank_t *s, const char *why) {
  if (s->peer.len) send_abort(t, &s->peer, j->id, j->generation, why);
  const agent_t *a = rank_agent_busy(t, j, s);
  if (a) send_kill_rank(t, a, j->id, s, why);
}

/* Forms the next world of the plan: survivors get `reform` with their new rank, the first
 * plan->newcomers of the free slots get `assign`; everyone then rendezvouses again and
 * training goes on from the new rank 0's commit. */
static void reform(job_table_t *t, job_t *j, const recovery_plan_t *plan, const job_slot_t *slots,
                   int64_t now) {
  job_rank_t *next = calloc(plan->world, sizeof *next);
  if (!next) {
    job_fail(t, j, "%s (out of memory re-forming the world)",
             plan->cause.kind == RECOVERY_CAUSE_NONE ? j->pause_reason : plan->cause.text);
    return;
  }
  j->generation++;
  for (uint32_t k = 0; k < plan->survivors; k++) {
    const job_rank_t *s = &j->ranks[plan->from[k]];
    next[k].agent = s->agent;
    next[k].local_rank = s->local_rank;
    next[k].device = s->device;
    next[k].assign_rank = s->assign_rank; /* how its agent knows it: by its assign */
    next[k].assign_gen = s->assign_gen;
    next[k].step = s->step; /* where it is, for messages until it reports again */
    next[k].coll_seq = s->coll_seq;
    next[k].commit = s->commit;
    next[k].peer = s->peer;
    memcpy(next[k].key, s->key, sizeof next[k].key);
    proto_msg_t m;
    proto_msg_init(&m, PROTO_REFORM);
    m.u.reform = (proto_reform_t){
        .job = j->id, .generation = j->generation, .rank = k, .world = plan->world};
    sock_send(t->workers, &s->peer, &m);
  }
  for (uint32_t i = 0; i < plan->newcomers; i++) {
    uint32_t k = plan->survivors + i, local_world = 0;
    const job_slot_t *sl = &slots[i];
    for (uint32_t x = 0; x < plan->newcomers; x++) local_world += slots[x].agent == sl->agent;
    agent_t *a = registry_at(t->reg, sl->agent);
    next[k].agent = sl->agent;
    next[k].local_rank = sl->local_rank;
    next[k].device = slot_device(j, a, sl->local_rank);
    a->job = j->id;
    a->generation = j->generation;
    send_assign(t, j, &next[k], a, k, plan->world, local_world);
  }
  free(j->ranks);
  j->ranks = next;
  j->world = plan->world;
  j->deadline_ms = now + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
  if (store_job_set_generation(t->store, j->id, j->generation) != DRV_OK ||
      (j->phase == JOB_PHASE_WAITING && /* the wait's reason is over */
       store_job_set_state(t->store, j->id, JOB_RUNNING, plan->reason) != DRV_OK))
    log_error("store: %s", drv_last_error());
  j->cause = (recovery_cause_t){.kind = RECOVERY_CAUSE_NONE};
  j->wait_reason[0] = '\0';
  job_enter(j, JOB_PHASE_STARTING, LOG_WARN, "job %" PRId64 " %s; generation %u, restart %u of %u",
            j->id, plan->reason, j->generation, j->restarts, j->max_restarts);
  if (plan->step)
    log_info("job %" PRId64 ": generation %u goes on from %s at step %" PRIu64, j->id,
             j->generation, plan->survivors ? "rank 0's commit" : "the checkpoint", plan->step);
  job_publish_state(t, j, plan->reason);
}

/* An agent not heard from for longer than this (two heartbeats and a half) is taken for
 * dead when its rank is silent too. */
static int64_t agent_quiet_limit(void) {
  return drv_setting(DRV_SET_HEARTBEAT_MS) * 5 / 2;
}

/* j waits for agents (the plan began the wait, or goes on with it): the phase on entering,
 * and the reason drover status shows, kept up to date as workers die or agents free up. */
static void note_wait_for_agents(job_table_t *t, job_t *j, const recovery_plan_t *plan) {
  char why[sizeof j->wait_reason];
  snprintf(why, sizeof why, "%u worker(s) left, min_nodes %u: waiting up to %u s for agents",
           plan->workers, j->min_nodes, j->rejoin_timeout_s);
  if (plan->waits_for_agents)
    job_enter(j, JOB_PHASE_WAITING, LOG_WARN, "job %" PRId64 ": %s", j->id, why);
  if (!strcmp(why, j->wait_reason)) return;
  snprintf(j->wait_reason, sizeof j->wait_reason, "%s", why);
  if (store_job_set_state(t->store, j->id, JOB_RUNNING, why) != DRV_OK)
    log_error("store: %s", drv_last_error());
}

/* Carries out a recovery plan for j, made after `failure` (NULL: a check). j may be freed
 * on return. */
static void carry_out(job_table_t *t, job_t *j, const recovery_plan_t *plan,
                      const recovery_failure_t *failure, const recovery_rank_t *view,
                      const job_slot_t *slots, int64_t now) {
  for (uint32_t r = 0; r < j->world && r < RECOVERY_MAX_RANKS; r++) {
    j->ranks[r].dead = plan->fate[r] >= RECOVERY_RANK_DEAD;
    j->ranks[r].lost = plan->fate[r] == RECOVERY_RANK_REPORTED;
  }
  j->restarts = plan->restarts;
  j->restart_pending = plan->pending;
  j->deadline_ms = plan->deadline_ms;
  j->cause = plan->cause;
  snprintf(j->first_cause, sizeof j->first_cause, "%s", plan->first_cause);
  if (plan->restart) {
    job_enter(j, JOB_PHASE_REFORMING, LOG_WARN, "job %" PRId64 ": %s: re-forming its world", j->id,
              failure->reason);
    char why[600];
    snprintf(why, sizeof why, "re-forming after: %s", failure->reason);
    job_publish_state(t, j, why);
  }
  if (plan->waits_for_agents || (plan->phase == JOB_PHASE_WAITING && plan->action == RECOVERY_WAIT))
    note_wait_for_agents(t, j, plan);
  for (uint32_t r = 0; plan->settled && r < j->world && r < RECOVERY_MAX_RANKS; r++) {
    if (plan->fate[r] == RECOVERY_RANK_SILENT) {
      char why[512];
      recovery_silent_reason(&view[r], r, agent_quiet_limit(), why, sizeof why);
      /* A hung node is as suspect as a crashed one: no new work for it for a while. */
      agent_t *a = rank_agent(t, &j->ranks[r]);
      if (a) a->cooldown_until_ms = now + drv_setting(DRV_SET_COOLDOWN_MS);
      log_warn("job %" PRId64 ": %s: left out%s", j->id, why, a ? ", its agent cooling down" : "");
    }
    if (plan->fate[r] >= RECOVERY_RANK_DEAD)
      drop_rank(t, j, &j->ranks[r], "left out of the re-formed world");
  }
  switch (plan->action) {
  case RECOVERY_WAIT: break;
  case RECOVERY_REFORM: reform(t, j, plan, slots, now); break;
  case RECOVERY_FAIL: job_fail(t, j, "%s", plan->reason); break;
  }
}

/* Plans j's recovery after `failure` (NULL: a check) and carries the plan out. j may be
 * freed on return. */
static void recover(job_table_t *t, job_t *j, const recovery_failure_t *failure, int64_t now) {
  if (j->verdict_ms) return; /* it fails when its hold is over: nothing to re-form */
  recovery_rank_t view[RECOVERY_MAX_RANKS];
  for (uint32_t r = 0; r < j->world && r < RECOVERY_MAX_RANKS; r++) {
    const job_rank_t *s = &j->ranks[r];
    const agent_t *a = rank_agent(t, s);
    view[r] = (recovery_rank_t){.agent_id = a ? a->agent_id : "?",
                                .host = a ? a->host : "?",
                                .rendezvoused = s->rendezvoused,
                                .lost = s->lost,
                                .dead = s->dead,
                                .leaving = s->leaving,
                                .preemptible = s->preemptible,
                                .step = s->step,
                                .coll_seq = s->coll_seq,
                                .commit = s->commit,
                                .agent_quiet_ms = a ? now - a->last_seen_ms : -1};
  }
  job_slot_t slots[JOB_MAX_SLOTS];
  recovery_job_t in = {.phase = j->phase,
                       .nodes = j->world,
                       .ranks = view,
                       .min_nodes = j->min_nodes,
                       .max_nodes = j->max_nodes,
                       .workers_per_node = j->wpn,
                       .max_world = j->global_batch,
                       .max_restarts = j->max_restarts,
                       .restarts = j->restarts,
                       .pending = j->restart_pending,
                       .rejoin_timeout_s = j->rejoin_timeout_s,
                       .ckpt_step = j->ckpt_step,
                       .free_agents = free_slots(t, j, now, slots),
                       .deadline_ms = j->deadline_ms,
                       .ring_timeout_ms = drv_setting(DRV_SET_RING_TIMEOUT_MS),
                       .agent_quiet_ms = agent_quiet_limit(),
                       .cause = j->cause,
                       .first_cause = j->first_cause,
                       .pause_reason = j->pause_reason};
  recovery_plan_t plan;
  recovery_plan(&in, failure, now, &plan);
  carry_out(t, j, &plan, failure, view, slots, now);
}

/* A report of j's trouble while its failure is held: kept when it tells more of the cause
 * than the held one (the first of equals). */
static void hold_note(job_t *j, recovery_report_t kind, const char *reason) {
  if (kind <= j->verdict_kind) return;
  log_info("job %" PRId64 ": %s: a better cause than '%s'", j->id, reason, j->verdict);
  j->verdict_kind = kind;
  snprintf(j->verdict, sizeof j->verdict, "%s", reason);
}

/* A command job's world cannot re-form in place: every rank is stopped and the job is
 * placed again (within min_nodes and max_nodes, from its program's own checkpoints), a
 * restart counted unless `uncounted` (a preemption, a planned stop), or it fails past
 * max_restarts. j may be freed on return. */
static void restart_all(job_table_t *t, job_t *j, const char *reason, int uncounted) {
  if (!uncounted && j->restarts >= j->max_restarts) {
    if (j->max_restarts)
      job_fail(t, j, "%s (max_restarts %u reached)", reason, j->max_restarts);
    else
      job_fail(t, j, "%s", reason);
    return;
  }
  if (!uncounted) j->restarts++;
  stop_workers(t, j, reason); /* abort to its workers, kill to its agents */
  free(j->ranks);
  j->ranks = NULL;
  j->world = j->wpn = 0;
  j->restarted = 1;
  j->verdict_ms = 0;
  memset(&j->progress, 0, sizeof j->progress); /* a new run: its reports say where it is */
  j->queued_ms = drv_now_ms();
  j->wait_reason[0] = '\0';
  char why[RECOVERY_REASON_MAX + 96];
  snprintf(why, sizeof why, "restarting (restart %u of %u%s) after: %s", j->restarts,
           j->max_restarts, uncounted ? ", not counted" : "", reason);
  if (store_job_set_state(t->store, j->id, JOB_QUEUED, why) != DRV_OK)
    log_error("store: %s", drv_last_error());
  job_enter(j, JOB_PHASE_QUEUED, LOG_WARN, "job %" PRId64 " %s", j->id, why);
  job_publish_state(t, j, why);
}

/* Something went wrong in placed job j: rank `rank` (-1: none known) is gone. Its worker
 * is told to stop at once; the rest is recovery_plan's, which decides itself whether it was
 * a preemption, when the world is settled; `preempted` says so for a command job, which
 * restarts whole (restart_all). j may be freed on return. */
static void job_trouble_as(job_table_t *t, job_t *j, int rank, const char *reason,
                           int preempted) {
  if (j->command) { /* planned (a pause) or a preemption: no restart counted */
    restart_all(t, j, reason, preempted || j->phase == JOB_PHASE_PAUSING);
    return;
  }
  if (rank >= 0 && !j->ranks[rank].dead) {
    j->ranks[rank].dead = 1;
    if (j->ranks[rank].peer.len) send_abort(t, &j->ranks[rank].peer, j->id, j->generation, reason);
  }
  if (j->verdict_ms) { /* it fails in moments: no re-formation, but the report may say more */
    hold_note(j, rank < 0 ? RECOVERY_REPORT_SYMPTOM : RECOVERY_REPORT_OWN, reason);
    return;
  }
  recover(t, j, &(recovery_failure_t){.rank = rank, .reason = reason}, drv_now_ms());
}

static void job_trouble(job_table_t *t, job_t *j, int rank, const char *reason) {
  job_trouble_as(t, j, rank, reason, 0);
}

/* Asks running job j to re-form at its next commit (to take in free agents, or to let a
 * leaving agent go without losing steps): every worker gets `pause`; they agree on the
 * commit through the ring and report `lost`. Returns 0 when j cannot do it now. */
static int job_pause(job_table_t *t, job_t *j, const char *why, int64_t now) {
  /* A command job's programs stop at their own checkpoints (their drover.should_stop()). */
  if (j->phase != JOB_PHASE_RUNNING || (!j->commit_every && !j->command) || !j->ranks) return 0;
  snprintf(j->pause_reason, sizeof j->pause_reason, "%s", why);
  j->deadline_ms = now + 2 * drv_setting(DRV_SET_RING_TIMEOUT_MS) + 3000;
  for (uint32_t r = 0; r < j->world; r++) {
    const job_rank_t *s = &j->ranks[r];
    if (!s->peer.len) continue;
    proto_msg_t m;
    proto_msg_init(&m, PROTO_PAUSE);
    m.u.pause = (proto_pause_t){.job = j->id, .generation = j->generation, .reason = why};
    sock_send(t->workers, &s->peer, &m);
  }
  job_enter(j, JOB_PHASE_PAUSING, LOG_INFO, "job %" PRId64 ": %s: re-forming at the next commit",
            j->id, why);
  char ev[300];
  snprintf(ev, sizeof ev, "re-forming: %s", why);
  job_publish_state(t, j, ev);
  return 1;
}

// --- Time ----------------------------------------------------------------------------------

/* A pool belongs to one drover submit: when it is gone, nobody will serve the job. */
static void check_pool(job_table_t *t, job_t *j, int64_t now) {
  for (int k = 0; k < REGISTRY_MAX_AGENTS; k++) {
    const agent_t *a = registry_at(t->reg, k);
    if (a && !strcmp(a->pool, j->pool)) j->pool_seen_ms = now;
  }
  if (now - j->pool_seen_ms > drv_setting(DRV_SET_POOL_WAIT_MS))
    job_fail(t, j, "no agent of pool %s registered for %" PRId64 " s", j->pool,
             (now - j->pool_seen_ms) / 1000);
}

/* Room to grow and a free agent for it, with nobody queued for that agent: re-form at the
 * next commit with it. Returns 1 when it asked. */
static int maybe_grow(job_table_t *t, job_t *j, int64_t now) {
  uint32_t batch = j->command ? (uint32_t)JOB_MAX_SLOTS : j->global_batch;
  uint32_t max = DRV_MIN(DRV_MIN(j->max_nodes * j->wpn, batch), JOB_MAX_SLOTS);
  if (j->phase != JOB_PHASE_RUNNING || j->world >= max || !j->commit_every) return 0;
  job_slot_t slots[JOB_MAX_SLOTS];
  uint32_t n = free_slots(t, j, now, slots);
  for (int k = 0; k < JOB_MAX; k++) {
    const job_t *q = &t->jobs[k];
    if (q->used && q->phase == JOB_PHASE_QUEUED && !strcmp(q->target, j->target) &&
        !strcmp(q->pool, j->pool))
      return 0;
  }
  if (!n) return 0;
  char why[128];
  snprintf(why, sizeof why, "taking in %u free agent(s)", slot_agents(slots, n));
  return job_pause(t, j, why, now);
}

/* A worker that exited without `done` or `failed` had JOB_EXIT_GRACE_MS for them to come:
 * the job fails. Returns 1 when it did. */
static int check_exits(job_table_t *t, job_t *j, int64_t now) {
  for (uint32_t r = 0; r < j->world; r++) {
    const job_rank_t *s = &j->ranks[r];
    if (!s->exited || s->done || !s->exit_ms || now - s->exit_ms <= JOB_EXIT_GRACE_MS) continue;
    char why[128];
    if (s->exit_code)
      snprintf(why, sizeof why, "rank %u exited with code %d without saying why", r, s->exit_code);
    else
      snprintf(why, sizeof why, "rank %u exited without reporting its result", r);
    if (j->command)
      restart_all(t, j, why, 0);
    else
      job_fail(t, j, "%s", why);
    return 1;
  }
  return 0;
}

void job_tick(job_table_t *t, int64_t now) {
  for (int i = 0; i < JOB_MAX; i++) {
    job_t *j = &t->jobs[i];
    if (j->used && j->phase == JOB_PHASE_QUEUED && j->pool[0]) check_pool(t, j, now);
  }
  for (int i = 0; i < JOB_MAX; i++) {
    job_t *j = &t->jobs[i];
    if (!j->used || !phase_placed(j->phase) || j->verdict_ms) continue; /* held: failing */
    if (j->command && j->phase == JOB_PHASE_PAUSING) { /* its programs stopping when asked */
      if (now > j->deadline_ms) restart_all(t, j, j->pause_reason, 1);
      continue;
    }
    if (phase_collecting(j->phase)) {
      recover(t, j, NULL, now);
      continue;
    }
    if (j->max_runtime_s && j->started_ms && now - j->started_ms > j->max_runtime_s * 1000LL) {
      /* backfill counted on its end: past it, it would delay the jobs that wait */
      job_fail(t, j, "ran past its max_runtime (%u s)", j->max_runtime_s);
      continue;
    }
    if (maybe_grow(t, j, now)) continue;
    if (j->phase == JOB_PHASE_STARTING && now > j->deadline_ms) {
      uint32_t missing = 0;
      for (uint32_t r = 0; r < j->world; r++) missing += !j->ranks[r].rendezvoused;
      job_fail(t, j, "%u of %u workers did not check in within %" PRId64 " ms", missing, j->world,
               drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS));
      continue;
    }
    check_exits(t, j, now);
  }
}

void job_table_shift(job_table_t *t, int64_t away_ms) {
  for (int i = 0; i < JOB_MAX; i++) {
    job_t *j = &t->jobs[i];
    if (!j->used) continue;
    j->queued_ms += away_ms; /* a reloaded job's wait for all its nodes (shrink_at_ms) */
    j->pool_seen_ms += away_ms;
    if (j->started_ms) j->started_ms += away_ms;
    if (j->deadline_ms) j->deadline_ms += away_ms;
    if (j->verdict_ms) j->verdict_ms += away_ms;
    if (j->progress.last_publish_ms) j->progress.last_publish_ms += away_ms;
    for (uint32_t r = 0; j->ranks && r < j->world; r++)
      if (j->ranks[r].exit_ms) j->ranks[r].exit_ms += away_ms;
  }
}

void job_table_workers_gone(job_table_t *t, const char *why) {
  for (int i = 0; i < JOB_MAX; i++) {
    job_t *j = &t->jobs[i];
    if (!j->used || !phase_placed(j->phase) || !j->ranks || j->verdict_ms) continue;
    int gone = -1;
    for (uint32_t r = 0; r < j->world; r++) {
      job_rank_t *s = &j->ranks[r];
      if (s->done || s->dead) continue;
      s->dead = s->exited = 1; /* its agent stopped it; nobody else will say so */
      if (gone < 0) gone = (int)r;
    }
    if (gone < 0) continue;
    log_warn("job %" PRId64 ": %s", j->id, why);
    if (j->command) { /* not the job's doing: no restart counted */
      restart_all(t, j, why, 1);
      continue;
    }
    /* One failure for all of them, named by the first rank: its cause is known. */
    recover(t, j, &(recovery_failure_t){.rank = gone, .reason = why}, drv_now_ms());
  }
}

// --- Agents --------------------------------------------------------------------------------

/* The first rank of placed job `job` on agent a, with the job; -1 (and *jp NULL) when
 * none. */
static int agent_rank(job_table_t *t, const agent_t *a, job_t **jp) {
  job_t *j = a->job ? job_find(t, a->job) : NULL;
  int r = j && phase_placed(j->phase) ? rank_of_agent(j, registry_index(t->reg, a)) : -1;
  *jp = r >= 0 ? j : NULL;
  return r;
}

void job_agent_lost(job_table_t *t, agent_t *a, const char *why) {
  log_warn("agent %s (%s) lost: %s", a->agent_id, a->host, why);
  job_t *j;
  int r = agent_rank(t, a, &j);
  if (r >= 0) {
    int ai = registry_index(t->reg, a);
    char reason[512], ranks[160];
    snprintf(reason, sizeof reason, "agent %s (%s, %s, near step %" PRIu64 ") lost: %s",
             a->agent_id, a->host, ranks_text(j, ai, ranks, sizeof ranks), j->ranks[r].step, why);
    /* Its workers die with it (and nobody is left to report their end): one failure,
     * named by its first rank, the others gone with it. */
    for (uint32_t k = 0; k < j->world; k++) {
      job_rank_t *s = &j->ranks[k];
      if (s->agent != ai) continue;
      s->exited = 1;
      if ((int)k == r || s->dead) continue; /* job_trouble stops the first */
      s->dead = 1;
      if (s->peer.len) send_abort(t, &s->peer, j->id, j->generation, reason);
    }
    /* A node of a preemptible target taken away (spot, Slurm preemption): no restart. */
    job_trouble_as(t, j, r, reason, j->ranks[r].preemptible);
  }
  registry_forget(t->reg, a);
}

void job_agent_leaving(job_table_t *t, agent_t *a, const char *reason) {
  a->leaving = 1;
  job_t *j;
  int r = agent_rank(t, a, &j);
  log_info("agent %s is leaving (%s)%s", a->agent_id, reason ? reason : "no reason given",
           r >= 0 ? ": its ranks leave their job at the next commit" : "");
  if (r < 0) return;
  int ai = registry_index(t->reg, a);
  for (uint32_t k = 0; k < j->world; k++)
    if (j->ranks[k].agent == ai) j->ranks[k].leaving = 1;
  char why[300], ranks[160];
  snprintf(why, sizeof why, "agent %s (%s) leaving: %s", a->agent_id,
           ranks_text(j, ai, ranks, sizeof ranks), reason ? reason : "stopping");
  /* (A command job's rank leaving before it could stop when asked: restarted, uncounted.) */
  if (!phase_collecting(j->phase) && !job_pause(t, j, why, drv_now_ms()))
    job_trouble_as(t, j, r, why, j->command);
}

void job_agent_heartbeat(job_table_t *t, agent_t *a, uint32_t workers) {
  if (a->job && !workers && !job_find(t, a->job)) {
    /* Its job is over and it runs no worker: whatever exit report there was is lost (or
     * there was no worker to report), so it is free. */
    log_debug("agent %s: job %" PRId64 " over and no worker left: idle", a->agent_id, a->job);
    a->job = 0;
  }
}

void job_on_worker_exit(job_table_t *t, agent_t *a, const proto_worker_exit_t *e) {
  /* The agent is free once it runs none of the job's workers and has had every `assign`
   * it was booked for (the newest, a->generation): an assign still on its way would
   * start one. An older generation's exit says nothing of the newer one's workers. */
  if (a->job == e->job && !e->workers && e->assigned == a->generation) a->job = 0;
  job_t *j = job_find(t, e->job);
  /* `none`: the answer to a kill that found no such worker: only the booking counts. */
  if (e->none || !j || !phase_placed(j->phase) || !j->ranks) return;
  int r = rank_of_worker(j, registry_index(t->reg, a), e->generation, e->rank);
  if (r < 0) return; /* left out, or stale */
  job_rank_t *s = &j->ranks[r];
  s->exited = 1;
  if (s->done) return;
  char reason[256];
  if (e->signal) {
    snprintf(reason, sizeof reason,
             "rank %d (agent %s, %s) was killed by signal %d near step %" PRIu64, r, a->agent_id,
             a->host, e->signal, s->step);
    /* Whatever killed it may strike again: no replacement worker on this agent for now. */
    a->cooldown_until_ms = drv_now_ms() + drv_setting(DRV_SET_COOLDOWN_MS);
    /* Killed with its preemptible node going away (SIGTERM or SIGKILL to its processes, as
     * a Slurm preemption or a spot reclaim does, or its agent leaving): a preemption. */
    int taken = e->signal == SIGTERM || e->signal == SIGKILL || a->leaving;
    job_trouble_as(t, j, r, reason, s->preemptible && taken);
    return;
  }
  if (phase_collecting(j->phase)) {
    snprintf(reason, sizeof reason, "rank %d on agent %s exited with code %d", r, a->agent_id,
             e->exit_code);
    job_trouble(t, j, r, reason);
    return;
  }
  /* Its `done` or `failed` may still be in flight on the worker's own socket. */
  s->exit_code = e->exit_code;
  s->exit_ms = drv_now_ms();
}

// --- Workers -------------------------------------------------------------------------------

typedef enum { FROM_NOBODY, FROM_WORKER, FROM_AGENT } job_sender_t;

/* Who sent a message about `rank`: its worker (with that rank's key, or any peer but its
 * agent on a plaintext coordinator), its agent when agent_may (an agent that refused its
 * assignment says why itself), or nobody of it: a warning names the impostor. */
static job_sender_t from_rank(job_table_t *t, const job_t *j, uint32_t rank,
                              const sock_peer_t *from, const char *what, int agent_may) {
  const agent_t *a = registry_by_peer(t->reg, from);
  if (a && a == rank_agent(t, &j->ranks[rank]))
    return agent_may ? FROM_AGENT : FROM_NOBODY;
  if (!t->secure || !strcmp(from->user, j->ranks[rank].key)) return FROM_WORKER;
  log_warn("%s for job %" PRId64 " rank %u refused: sent by %s from %s, not by that rank's worker",
           what, j->id, rank, from->user[0] ? from->user : "an unnamed peer",
           from->addr[0] ? from->addr : "?");
  return FROM_NOBODY;
}

/* Validates the message's job, generation and sender; NULL (and a log line) for stale or
 * forged ones. A worker's message makes its connection the rank's (a worker that
 * reconnected has a new routing id). */
static job_t *job_for_msg(job_table_t *t, const sock_peer_t *from, int64_t id, uint32_t generation,
                          uint32_t rank, const char *what, int agent_may) {
  job_t *j = job_find(t, id);
  if (!j || !phase_placed(j->phase)) {
    log_debug("%s for job %" PRId64 " that is not running: dropped", what, id);
    return NULL;
  }
  if (generation != j->generation || rank >= j->world) {
    log_warn("%s for job %" PRId64
             " generation %u rank %u refused (current generation %u, "
             "world %u)",
             what, id, generation, rank, j->generation, j->world);
    return NULL;
  }
  job_sender_t who = from_rank(t, j, rank, from, what, agent_may);
  if (who == FROM_WORKER) j->ranks[rank].peer = *from;
  return who == FROM_NOBODY ? NULL : j;
}

/* Everyone is in: relays the ring addresses, each rank's GPU and rank 0's NCCL id. */
static void send_start(job_table_t *t, job_t *j) {
  const char **peers = calloc(j->world, sizeof *peers), **gpus = calloc(j->world, sizeof *gpus);
  if (!peers || !gpus) {
    free(peers);
    free(gpus);
    job_fail(t, j, "out of memory at rendezvous");
    return;
  }
  for (uint32_t r = 0; r < j->world; r++) {
    peers[r] = j->ranks[r].addr;
    gpus[r] = j->ranks[r].gpu;
  }
  proto_msg_t m;
  proto_msg_init(&m, PROTO_START);
  m.u.start.job = j->id;
  m.u.start.generation = j->generation;
  m.u.start.world = j->world;
  m.u.start.peers = peers;
  m.u.start.peers_count = j->world;
  m.u.start.gpus = gpus;
  m.u.start.gpus_count = j->world;
  m.u.start.nccl_id = j->ranks[0].nccl_id[0] ? j->ranks[0].nccl_id : NULL;
  for (uint32_t r = 0; r < j->world; r++)
    if (sock_send(t->workers, &j->ranks[r].peer, &m) != DRV_OK)
      log_warn("start to rank %u: %s", r, drv_last_error());
  free(peers);
  free(gpus);
  job_enter(j, JOB_PHASE_RUNNING, LOG_INFO, "job %" PRId64 ": all %u workers checked in, started",
            j->id, j->world);
}

void job_on_rendezvous(job_table_t *t, const sock_peer_t *from, const proto_rendezvous_t *rv) {
  job_t *j = job_for_msg(t, from, rv->job, rv->generation, rv->rank, "rendezvous", 0);
  if (!j) {
    send_abort(t, from, rv->job, rv->generation, "stale or unknown job");
    return;
  }
  job_rank_t *s = &j->ranks[rv->rank];
  s->rendezvoused = 1;
  snprintf(s->addr, sizeof s->addr, "%s", rv->addr);
  snprintf(s->gpu, sizeof s->gpu, "%s", rv->gpu ? rv->gpu : "");
  snprintf(s->nccl_id, sizeof s->nccl_id, "%s", rv->nccl_id ? rv->nccl_id : "");
  /* Only a world being formed starts: a late check-in of a generation that broke before
   * its start is left to the re-formation, which knows its worker now. */
  if (j->phase != JOB_PHASE_STARTING) return;
  for (uint32_t r = 0; r < j->world; r++)
    if (!j->ranks[r].rendezvoused) return;
  send_start(t, j);
}

/* j's world as progress_report sees it: each rank's progress and agent. Returns how many
 * ranks (at most PROGRESS_MAX_RANKS). */
static uint32_t progress_world(job_table_t *t, job_t *j, progress_view_t *world) {
  uint32_t n = DRV_MIN(j->world, PROGRESS_MAX_RANKS);
  for (uint32_t r = 0; r < n; r++) {
    const agent_t *a = rank_agent(t, &j->ranks[r]);
    world[r] = (progress_view_t){.rank = &j->ranks[r].progress, .agent = a ? a->agent_id : "?"};
  }
  return n;
}

void job_on_progress(job_table_t *t, const sock_peer_t *from, const proto_progress_t *p) {
  job_t *j = job_for_msg(t, from, p->job, p->generation, p->rank, "progress", 0);
  if (!j) return;
  job_rank_t *s = &j->ranks[p->rank];
  s->step = p->step;
  s->coll_seq = p->coll_seq;
  if (j->phase == JOB_PHASE_PAUSING) {
    /* Still training towards the agreed commit, however slow its steps: wait for it. */
    int reported = 0;
    for (uint32_t r = 0; r < j->world; r++) reported |= j->ranks[r].lost;
    if (!reported)
      j->deadline_ms = drv_now_ms() + drv_setting(DRV_SET_RING_TIMEOUT_MS) + RECOVERY_GRACE_MS;
  }
  progress_view_t world[PROGRESS_MAX_RANKS];
  uint32_t n = progress_world(t, j, world);
  if (!progress_report(&j->progress, world, n, p, drv_now_ms())) return;
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_PROGRESS);
  m.u.ev_progress.job = j->id;
  m.u.ev_progress.generation = j->generation;
  m.u.ev_progress.epochs = j->epochs;
  progress_event(&j->progress, world, n, &m.u.ev_progress);
  publish(t, j->id, &m);
}

void job_on_eval(job_table_t *t, const sock_peer_t *from, const proto_eval_t *e) {
  job_t *j = job_for_msg(t, from, e->job, e->generation, 0, "eval", 0);
  if (!j) return;
  log_info("job %" PRId64 " epoch %u: test loss %.4f, accuracy %.4f", j->id, e->epoch + 1,
           e->test_loss, e->test_accuracy);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_EVAL);
  m.u.ev_eval = *e;
  publish(t, j->id, &m);
}

void job_on_done(job_table_t *t, const sock_peer_t *from, const proto_done_t *d) {
  job_t *j = job_for_msg(t, from, d->job, d->generation, d->rank, "done", 0);
  if (!j) return;
  j->ranks[d->rank].done = 1;
  if (d->rank == 0) {
    j->test_loss = d->test_loss;
    j->test_accuracy = d->test_accuracy;
    j->final_samples_per_s = d->samples_per_s;
    j->progress.step = d->steps;
  }
  for (uint32_t r = 0; r < j->world; r++)
    if (!j->ranks[r].done) return;
  job_finish(t, j, JOB_PHASE_SUCCEEDED, NULL);
}

void job_on_failed(job_table_t *t, const sock_peer_t *from, const proto_failed_t *f) {
  job_t *j = job_for_msg(t, from, f->job, f->generation, f->rank, "failed", 1);
  if (!j) return;
  const agent_t *a = rank_agent(t, &j->ranks[f->rank]);
  char reason[RECOVERY_REASON_MAX];
  snprintf(reason, sizeof reason, "rank %u (agent %s): %s", f->rank, a ? a->agent_id : "?",
           f->reason);
  if (j->command) { /* its program failed: the whole world starts again */
    job_trouble_as(t, j, (int)f->rank, reason, 0);
    return;
  }
  int64_t hold = drv_setting(DRV_SET_FAIL_HOLD_MS);
  if (hold <= 0) {
    job_fail(t, j, "%s", reason);
    return;
  }
  if (!j->verdict_ms) {
    /* The others' reports of the same instant may name the cause better: wait for them. */
    j->verdict_ms = drv_now_ms() + hold;
    log_info("job %" PRId64 ": %s: failing in %" PRId64 " ms, with the best cause by then", j->id,
             reason, hold);
  }
  hold_note(j, recovery_failed_kind(f->reason), reason);
}

void job_verdicts(job_table_t *t, int64_t now) {
  for (int i = 0; i < JOB_MAX; i++) {
    job_t *j = &t->jobs[i];
    if (j->used && j->verdict_ms && now >= j->verdict_ms) job_fail(t, j, "%s", j->verdict);
  }
}

void job_on_checkpoint(job_table_t *t, const sock_peer_t *from, const proto_checkpoint_t *k) {
  job_t *j = job_for_msg(t, from, k->job, k->generation, 0, "checkpoint", 0);
  if (!j) return;
  if (store_job_set_checkpoint(t->store, j->id, k->step) != DRV_OK) {
    log_error("store: %s", drv_last_error());
    return;
  }
  j->ckpt_step = k->step;
  log_info("job %" PRId64 ": checkpoint of step %" PRIu64 " is durable (%s)", j->id, k->step,
           k->dir);
}

void job_on_lost(job_table_t *t, const sock_peer_t *from, const proto_lost_t *l) {
  job_t *j = job_find(t, l->job);
  if (!j || !phase_placed(j->phase) || !j->ranks || l->rank >= j->world) return;
  if (l->generation != j->generation) {
    log_debug("lost of job %" PRId64 " generation %u dropped (expected %u)", l->job, l->generation,
              j->generation);
    return;
  }
  job_rank_t *s = &j->ranks[l->rank];
  if (s->dead || from_rank(t, j, l->rank, from, "lost", 0) != FROM_WORKER) return;
  if (j->command) { /* a command job's rank stopped when asked: start it again, uncounted */
    char why[400];
    snprintf(why, sizeof why, "rank %u stopped at step %" PRIu64 ": %s", l->rank, l->step,
             l->reason);
    restart_all(t, j, why, 1);
    return;
  }
  s->lost = 1;
  s->peer = *from;
  s->commit = l->step;
  int64_t now = drv_now_ms();
  if (j->phase == JOB_PHASE_PAUSING) { /* the ranks stopping at the agreed commit, as asked */
    recover(t, j, NULL, now);
    return;
  }
  /* The ring is broken now: the others report within moments. */
  if (phase_collecting(j->phase)) j->deadline_ms = DRV_MIN(j->deadline_ms, now + RECOVERY_GRACE_MS);
  const agent_t *a = rank_agent(t, s);
  char reason[700];
  snprintf(reason, sizeof reason, "rank %u (agent %s) lost its ring at step %" PRIu64 ": %s",
           l->rank, a ? a->agent_id : "?", l->step, l->reason);
  job_trouble(t, j, -1, reason);
}

// --- Command jobs' output ------------------------------------------------------------------

void job_on_log(job_table_t *t, const sock_peer_t *from, const proto_log_t *l) {
  job_t *j = job_for_msg(t, from, l->job, l->generation, l->rank, "log", 0);
  if (!j || !t->log_dir[0]) return;
  char path[1100];
  snprintf(path, sizeof path, "%s/%" PRId64 ".log", t->log_dir, j->id);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (fd < 0) {
    log_warn("job %" PRId64 ": %s: %s", j->id, path, strerror(errno));
    return;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && (uint64_t)st.st_size < JOB_LOG_MAX_BYTES) {
    const agent_t *a = rank_agent(t, &j->ranks[l->rank]);
    char prefix[200];
    int np = snprintf(prefix, sizeof prefix, "rank %u %s | ", l->rank, a ? a->agent_id : "?");
    np = DRV_MIN(np, (int)sizeof prefix - 1);
    size_t lines = 1, len = strlen(l->text);
    for (const char *p = l->text; *p; p++) lines += *p == '\n';
    char *out = malloc(len + lines * ((size_t)np + 1) + 1);
    size_t n = 0;
    for (const char *p = l->text; out && *p;) { /* one write: prefixed whole lines */
      size_t k = strcspn(p, "\n");
      memcpy(out + n, prefix, (size_t)np);
      memcpy(out + n + (size_t)np, p, k);
      n += (size_t)np + k;
      out[n++] = '\n';
      p += k + (p[k] == '\n');
    }
    if (out && n && write(fd, out, n) < 0) log_warn("%s: %s", path, strerror(errno));
    free(out);
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= JOB_LOG_MAX_BYTES) {
      static const char note[] = "drover | the job's output reached 64 MiB: no more is kept "
                                 "here (each rank's log in the run directory has it all)\n";
      if (write(fd, note, sizeof note - 1) < 0) log_warn("%s: %s", path, strerror(errno));
    }
  }
  close(fd);
}
