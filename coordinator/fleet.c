/* fleet.c: see fleet.h. autoscale_plan decides how many; this file carries it out. */
#include "coordinator/fleet.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/keys.h"
#include "common/log.h"
#include "coordinator/autoscale.h"

#define BACKOFF_FIRST_MS 5000
#define BACKOFF_MAX_MS 300000

// --- Events and records --------------------------------------------------------------------

static uint32_t live_nodes(const fleet_target_t *t) {
  uint32_t n = 0;
  for (uint32_t k = 0; k < TARGETS_MAX_NODES; k++) n += t->nodes[k].state != NODE_FREE;
  return n;
}

/* A line in the log and an ev_target event. */
static void event(fleet_t *f, fleet_target_t *t, const fleet_node_t *n, const char *what,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void event(fleet_t *f, fleet_target_t *t, const fleet_node_t *n, const char *what,
                  const char *fmt, ...) {
  char reason[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  int warn = !strcmp(what, "launch_failed") || !strcmp(what, "node_gone");
  log_msg(warn ? LOG_WARN : LOG_INFO, __FILE__, __LINE__, "target %s: %s %s: %s", t->cfg->name,
          what, n->name, reason);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_EV_TARGET);
  m.u.ev_target = (proto_ev_target_t){.target = t->cfg->name,
                                      .event = what,
                                      .node = n->name,
                                      .reason = reason,
                                      .nodes = live_nodes(t)};
  char topic[64];
  snprintf(topic, sizeof topic, "target/%s", t->cfg->name);
  if (f->events && sock_publish(f->events, topic, &m) != DRV_OK) log_last_error();
}

static void record(fleet_t *f, const fleet_target_t *t, const fleet_node_t *n) {
  store_node_t s = {.launched_at = drv_wall_s()};
  snprintf(s.name, sizeof s.name, "%s", n->name);
  snprintf(s.target, sizeof s.target, "%s", t->cfg->name);
  snprintf(s.host, sizeof s.host, "%s", n->host);
  snprintf(s.handle, sizeof s.handle, "%s", n->handle);
  if (store_node_put(f->store, &s) != DRV_OK) log_error("store: %s", drv_last_error());
}

static void forget(fleet_t *f, fleet_node_t *n) {
  if (store_node_delete(f->store, n->name) != DRV_OK) log_error("store: %s", drv_last_error());
  memset(n, 0, sizeof *n);
}

// --- Stopping ------------------------------------------------------------------------------

static agent_t *node_agent(fleet_t *f, const fleet_target_t *t, const fleet_node_t *n);

/* Stops node n: its agent takes no more work; its own process gets SIGTERM (SIGKILL after
 * FLEET_STOP_GRACE_MS), a start still running is killed, else the launcher's stop runs
 * (again after FLEET_STOP_RETRY_MS while it fails). A node with nothing to stop is
 * forgotten at once. */
static void stop_node(fleet_t *f, fleet_target_t *t, fleet_node_t *n, int64_t now) {
  agent_t *a = node_agent(f, t, n);
  if (a) a->leaving = 1; /* no job is placed on a node going away */
  if (n->state != NODE_STOPPING) n->stop_ms = now;
  n->state = NODE_STOPPING;
  n->stop_retry_ms = 0;
  if (n->op.pid) { /* its own process (an agent drains on SIGTERM), or a command */
    launcher_signal(&n->op, !n->op.is_node);
    return;
  }
  if (n->adopted_pid > 0) {
    kill(-n->adopted_pid, SIGTERM);
    return;
  }
  if (!n->handle[0] || t->cfg->launcher == LAUNCHER_COMMAND) {
    if (t->cfg->launcher != LAUNCHER_COMMAND || !t->cfg->command->stop ||
        !*t->cfg->command->stop || !n->handle[0]) {
      forget(f, n);
      return;
    }
  }
  if (launcher_stop(t->cfg, &f->env, n->name, n->handle, now, &n->op) != DRV_OK) {
    log_error("target %s: stopping %s: %s (trying again in %d s)", t->cfg->name, n->name,
              drv_last_error(), FLEET_STOP_RETRY_MS / 1000);
    n->stop_retry_ms = now + FLEET_STOP_RETRY_MS;
  }
}

/* A launch that failed (why): counted, the back-off set, the node stopped. */
static void launch_failed(fleet_t *f, fleet_target_t *t, fleet_node_t *n, int64_t now,
                          const char *why) {
  t->failed++;
  t->failures++;
  int64_t wait = BACKOFF_FIRST_MS;
  for (uint32_t k = 1; k < t->failures && wait < BACKOFF_MAX_MS; k++) wait *= 2;
  wait = DRV_MIN(wait, (int64_t)BACKOFF_MAX_MS);
  t->retry_at_ms = now + wait;
  snprintf(t->last_error, sizeof t->last_error, "%s: %s", n->name, why);
  event(f, t, n, "launch_failed", "%s (failure %u in a row; next launch in %" PRId64 " s)", why,
        t->failures, wait / 1000);
  stop_node(f, t, n, now);
}

// --- Launching -----------------------------------------------------------------------------

/* The ssh host of t no live node uses, or NULL. */
static const char *free_host(const fleet_target_t *t) {
  const target_ssh_t *s = t->cfg->ssh;
  for (uint32_t h = 0; s && h < s->hosts_count; h++) {
    int used = 0;
    for (uint32_t k = 0; k < TARGETS_MAX_NODES && !used; k++)
      used = t->nodes[k].state != NODE_FREE && !strcmp(t->nodes[k].host, s->hosts[h]);
    if (!used) return s->hosts[h];
  }
  return NULL;
}

static void launch(fleet_t *f, fleet_target_t *t, int64_t now, const char *why) {
  fleet_node_t *n = NULL;
  for (uint32_t k = 0; k < TARGETS_MAX_NODES && !n; k++)
    if (t->nodes[k].state == NODE_FREE) n = &t->nodes[k];
  const char *host = t->cfg->launcher == LAUNCHER_SSH ? free_host(t) : NULL;
  if (!n || (t->cfg->launcher == LAUNCHER_SSH && !host)) return;
  memset(n, 0, sizeof *n);
  snprintf(n->name, sizeof n->name, "%s-%u", t->cfg->name, t->seq++);
  snprintf(n->host, sizeof n->host, "%s", host ? host : "");
  n->state = NODE_STARTING;
  n->launched_ms = now;
  t->launched++;
  if (launcher_start(t->cfg, &f->env, n->name, host, now, &n->op) != DRV_OK) {
    launch_failed(f, t, n, now, drv_last_error());
    return;
  }
  if (n->op.is_node) snprintf(n->handle, sizeof n->handle, "pid %d", (int)n->op.pid);
  record(f, t, n);
  event(f, t, n, "scale_up", "launched%s%s (%s)", host ? " on " : "", host ? host : "", why);
}

// --- Watching ------------------------------------------------------------------------------

/* Node n's handle, from what its start printed (launcher_handle): ssh's remote pid (after
 * the host), sbatch's job id, the command's own. 0 when there is none. */
static int take_handle(const fleet_target_t *t, fleet_node_t *n) {
  char h[96];
  if (!launcher_handle(t->cfg, &n->op, h, sizeof h)) return 0;
  if (t->cfg->launcher == LAUNCHER_SSH)
    snprintf(n->handle, sizeof n->handle, "%s %s", n->host, h);
  else
    snprintf(n->handle, sizeof n->handle, "%s", h);
  return 1;
}

/* A launcher command of n ended with code; last: the last line it printed. */
static void op_ended(fleet_t *f, fleet_target_t *t, fleet_node_t *n, launch_op_kind_t kind,
                     int is_node, int code, const char *last, int64_t now) {
  char why[400];
  if (n->state == NODE_STOPPING) {
    if (kind == LAUNCH_OP_STOP && code) { /* not stopped: never forget a node that may run */
      n->stop_tries++;
      n->stop_retry_ms = now + FLEET_STOP_RETRY_MS;
      log_warn("target %s: stopping %s exited with code %d (try %u; again in %d s): %s",
               t->cfg->name, n->name, code, n->stop_tries, FLEET_STOP_RETRY_MS / 1000, last);
      return;
    }
    if (kind == LAUNCH_OP_CHECK) { /* interrupted by the stop: now the stop itself */
      stop_node(f, t, n, now);
      return;
    }
    if (kind == LAUNCH_OP_START && !is_node && !code && take_handle(t, n)) {
      stop_node(f, t, n, now); /* it started after all: stop that */
      return;
    }
    forget(f, n);
    return;
  }
  if (kind == LAUNCH_OP_CHECK) {
    int alive = code == 0 && (t->cfg->launcher != LAUNCHER_SLURM ||
                              (*last && strstr("PENDING CONFIGURING RUNNING", last) != NULL));
    if (alive) return;
    snprintf(why, sizeof why, "its %s %s is gone%s%s", t->cfg->launcher == LAUNCHER_SLURM ?
             "Slurm job" : "process", n->handle, *last ? ": " : "", last);
    if (n->state == NODE_STARTING) {
      launch_failed(f, t, n, now, why);
    } else {
      event(f, t, n, "node_gone", "%s", why);
      forget(f, n);
    }
    return;
  }
  /* LAUNCH_OP_START */
  if (is_node) { /* the node itself ended */
    snprintf(why, sizeof why, "%s exited with code %d%s%s",
             n->state == NODE_STARTING ? "its process (the start command)" : "its agent", code,
             *last ? ": " : "", last);
    if (n->state == NODE_STARTING) {
      launch_failed(f, t, n, now, why);
      return;
    }
    event(f, t, n, "node_gone", "%s", why);
    forget(f, n);
    return;
  }
  if (code) {
    snprintf(why, sizeof why, "the launch exited with code %d%s%s", code, *last ? ": " : "",
             last);
    launch_failed(f, t, n, now, why);
    return;
  }
  if (!take_handle(t, n)) {
    launch_failed(f, t, n, now, "its start printed no handle (see its log in the state "
                                "directory's targets/)");
    return;
  }
  record(f, t, n);
}

static void poll_node(fleet_t *f, fleet_target_t *t, fleet_node_t *n, int64_t now) {
  if (n->op.pid) {
    launch_op_kind_t kind = n->op.kind;
    int is_node = n->op.is_node, code;
    char last[256];
    if (launcher_poll(&n->op, now, &code, last, sizeof last))
      op_ended(f, t, n, kind, is_node, code, last, now);
  } else if (n->adopted_pid > 0 && !launcher_pid_is_node(n->adopted_pid, n->name)) {
    if (n->state == NODE_STOPPING) {
      forget(f, n);
    } else {
      event(f, t, n, "node_gone", "its agent (pid %d) is gone", (int)n->adopted_pid);
      forget(f, n);
    }
    return;
  }
  if (n->state == NODE_STOPPING && now - n->stop_ms > FLEET_STOP_GRACE_MS) {
    if (n->op.pid && n->op.is_node) launcher_signal(&n->op, 1);
    if (n->adopted_pid > 0) kill(-n->adopted_pid, SIGKILL);
  }
  if (n->state == NODE_STOPPING && !n->op.pid && n->stop_retry_ms && now >= n->stop_retry_ms)
    stop_node(f, t, n, now);
  /* A starting node's Slurm job or ssh process is asked after now and then. */
  if (n->state == NODE_STARTING && !n->op.pid && n->handle[0] &&
      t->cfg->launcher != LAUNCHER_COMMAND && now - n->checked_ms > FLEET_CHECK_MS) {
    n->checked_ms = now;
    if (launcher_check(t->cfg, &f->env, n->name, n->handle, now, &n->op) != DRV_OK)
      log_warn("target %s: checking %s: %s", t->cfg->name, n->name, drv_last_error());
  }
}

/* The registered agent of node n, or NULL. */
static agent_t *node_agent(fleet_t *f, const fleet_target_t *t, const fleet_node_t *n) {
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    agent_t *a = registry_at(f->reg, i);
    if (a && !strcmp(a->node, n->name) && !strcmp(a->target, t->cfg->name)) return a;
  }
  return NULL;
}

static void watch_node(fleet_t *f, fleet_target_t *t, fleet_node_t *n, int64_t now) {
  poll_node(f, t, n, now);
  if (n->state == NODE_FREE || n->state == NODE_STOPPING) return;
  agent_t *a = node_agent(f, t, n); /* preemptible was set at its hello (coord.c) */
  if (n->state == NODE_STARTING && a) {
    n->state = NODE_UP;
    n->idle_since_ms = now;
    t->failures = 0;
    t->retry_at_ms = 0;
    event(f, t, n, "node_up", "registered as agent %s after %.1f s", a->agent_id,
          (double)(now - n->launched_ms) / 1000.0);
  } else if (n->state == NODE_UP && !a) {
    event(f, t, n, "node_gone", "its agent left the registry (stopped, preempted or lost)");
    stop_node(f, t, n, now);
  } else if (n->state == NODE_UP) {
    int idle = !a->job && !a->leaving;
    if (!idle) n->idle_since_ms = 0;
    else if (!n->idle_since_ms) n->idle_since_ms = now;
  } else if (n->state == NODE_STARTING &&
             now - n->launched_ms > (int64_t)t->cfg->launch_timeout_s * 1000) {
    char why[128];
    snprintf(why, sizeof why, "did not register within launch_timeout (%u s)",
             t->cfg->launch_timeout_s);
    launch_failed(f, t, n, now, why);
  }
}

// --- The plan ------------------------------------------------------------------------------

/* The nodes t's jobs need beyond what they have: each queued job's nodes (those that can
 * never fit left out), and the nodes a placed job lost (a preempted node is replaced). */
static uint32_t demand(const fleet_t *f, const fleet_target_t *t, uint32_t *jobs) {
  uint32_t need = 0;
  *jobs = 0;
  for (int i = 0; i < JOB_MAX; i++) {
    const job_t *j = &f->jobs->jobs[i];
    if (!j->used || strcmp(j->target, t->cfg->name) || j->nodes_wanted > t->cfg->max_nodes)
      continue;
    uint32_t has = 0;
    if (j->phase == JOB_PHASE_QUEUED) {
      has = 0;
    } else if (j->phase >= JOB_PHASE_STARTING && j->phase <= JOB_PHASE_WAITING && j->wpn &&
               (j->commit_every || j->phase == JOB_PHASE_WAITING)) { /* one it can take in */
      has = (j->world + j->wpn - 1) / j->wpn;
    } else {
      continue;
    }
    if (has >= j->nodes_wanted) continue;
    need += j->nodes_wanted - has;
    (*jobs)++;
  }
  return need;
}

static void plan_target(fleet_t *f, fleet_target_t *t, int64_t now) {
  autoscale_in_t in;
  memset(&in, 0, sizeof in);
  in.min_nodes = t->cfg->min_nodes;
  in.max_nodes = t->cfg->max_nodes;
  in.idle_timeout_ms = (int64_t)t->cfg->idle_timeout_s * 1000;
  in.retry_at_ms = t->retry_at_ms;
  fleet_node_t *idle[TARGETS_MAX_NODES];
  for (uint32_t k = 0; k < TARGETS_MAX_NODES; k++) {
    fleet_node_t *n = &t->nodes[k];
    if (n->state == NODE_STARTING) in.starting++;
    if (n->state == NODE_STOPPING) in.stopping++;
    if (n->state != NODE_UP) continue;
    if (n->idle_since_ms) {
      idle[in.idle] = n;
      in.idle_since_ms[in.idle++] = n->idle_since_ms;
    } else {
      in.busy++;
    }
  }
  uint32_t jobs;
  in.demand = demand(f, t, &jobs);
  autoscale_plan_t p;
  autoscale_plan(&in, now, &p);
  char why[160];
  if (jobs)
    snprintf(why, sizeof why, "%u queued job(s) need %u node(s)", jobs, in.demand);
  else
    snprintf(why, sizeof why, "min_nodes %u", t->cfg->min_nodes);
  for (uint32_t k = 0; k < p.launch; k++) launch(f, t, now, why);
  for (uint32_t k = 0; k < p.nstop; k++) {
    fleet_node_t *n = idle[p.stop[k]];
    event(f, t, n, "scale_down", "idle for %" PRId64 " s (idle_timeout %u s)",
          (now - n->idle_since_ms) / 1000, t->cfg->idle_timeout_s);
    stop_node(f, t, n, now);
  }
}

/* An agent that says it is a managed node the fleet does not know (a record lost, a node
 * of another coordinator): it gets no work, and a warning says so once. */
static void orphans(fleet_t *f) {
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    agent_t *a = registry_at(f->reg, i);
    if (!a || !a->node[0] || a->leaving) continue;
    fleet_target_t *t = NULL;
    for (uint32_t k = 0; k < f->ntargets && !t; k++)
      if (!strcmp(f->targets[k].cfg->name, a->target)) t = &f->targets[k];
    int known = 0;
    for (uint32_t k = 0; t && k < TARGETS_MAX_NODES && !known; k++)
      known = t->nodes[k].state != NODE_FREE && !strcmp(t->nodes[k].name, a->node);
    if (known) continue;
    a->leaving = 1;
    log_warn("agent %s says it is node %s of target %s, which this coordinator did not launch: "
             "it gets no work (stop it by hand)",
             a->agent_id, a->node, a->target);
  }
}

void fleet_tick(fleet_t *f, int64_t now) {
  if (f->ntargets) orphans(f);
  for (uint32_t i = 0; i < f->ntargets; i++) {
    fleet_target_t *t = &f->targets[i];
    for (uint32_t k = 0; k < TARGETS_MAX_NODES; k++)
      if (t->nodes[k].state != NODE_FREE) watch_node(f, t, &t->nodes[k], now);
    plan_target(f, t, now);
  }
}

// --- Start, stop ---------------------------------------------------------------------------

static fleet_target_t *find_target(fleet_t *f, const char *name) {
  for (uint32_t i = 0; i < f->ntargets; i++)
    if (!strcmp(f->targets[i].cfg->name, name)) return &f->targets[i];
  return NULL;
}

/* A node a previous coordinator launched: watched as starting until its agent registers
 * again (launch_timeout from now), or found gone. */
static int adopt(const store_node_t *s, void *arg) {
  fleet_t *f = arg;
  fleet_target_t *t = find_target(f, s->target);
  if (!t) {
    log_warn("node %s of target %s (no longer in the targets file): forgotten, not stopped",
             s->name, s->target);
    store_node_delete(f->store, s->name);
    return 0;
  }
  fleet_node_t *n = NULL;
  for (uint32_t k = 0; k < TARGETS_MAX_NODES && !n; k++)
    if (t->nodes[k].state == NODE_FREE) n = &t->nodes[k];
  if (!n) return 0;
  int64_t now = drv_now_ms();
  *n = (fleet_node_t){.state = NODE_STARTING, .launched_ms = now};
  snprintf(n->name, sizeof n->name, "%s", s->name);
  snprintf(n->host, sizeof n->host, "%s", s->host);
  snprintf(n->handle, sizeof n->handle, "%s", s->handle);
  unsigned seq = 0;
  size_t len = strlen(t->cfg->name);
  if (!strncmp(s->name, t->cfg->name, len) && s->name[len] == '-')
    seq = (unsigned)strtoul(s->name + len + 1, NULL, 10) + 1;
  t->seq = DRV_MAX(t->seq, seq);
  int pid = 0;
  if (sscanf(s->handle, "pid %d", &pid) == 1 && pid > 0) {
    if (!launcher_pid_is_node(pid, s->name)) {
      log_info("target %s: node %s (pid %d) is gone", t->cfg->name, s->name, pid);
      forget(f, n);
      return 0;
    }
    n->adopted_pid = pid;
  }
  log_info("target %s: node %s (%s) found from before the restart: waiting for its agent",
           t->cfg->name, s->name, s->handle);
  return 0;
}

/* The join file managed agents get (unless their target names one): the state directory's
 * agent key (`agent *`) with the coordinator's public key, written once as
 * <state_dir>/keys/managed.join. "" in plaintext (no keys). */
static void managed_join(fleet_t *f, const char *state_dir, const char *advertise) {
  char agent[PATH_MAX], coord[PATH_MAX];
  keys_file_t a, c;
  f->join[0] = '\0';
  if (keys_path(state_dir, "managed.join", f->join, sizeof f->join) != DRV_OK) return;
  struct stat st;
  if (stat(f->join, &st) == 0) return;
  if (keys_path(state_dir, "agent.secret", agent, sizeof agent) != DRV_OK ||
      keys_path(state_dir, "coordinator.key", coord, sizeof coord) != DRV_OK ||
      keys_read(agent, &a) != DRV_OK || keys_read(coord, &c) != DRV_OK) {
    f->join[0] = '\0'; /* plaintext: nothing to give them */
    return;
  }
  memcpy(a.server, c.pub, sizeof a.server);
  a.has_server = 1;
  snprintf(a.coordinator, sizeof a.coordinator, "%s", advertise);
  if (keys_write(f->join, &a, 1) != DRV_OK) {
    log_error("managed agents' join file: %s", drv_last_error());
    f->join[0] = '\0';
  }
  memset(&a, 0, sizeof a);
}

drv_result_t fleet_init(fleet_t *f, targets_file_t *file, const char *state_dir,
                        const char *advertise, const char *exe, registry_t *reg,
                        job_table_t *jobs, store_t *store, sock_t *events) {
  memset(f, 0, sizeof *f);
  f->file = file;
  f->reg = reg;
  f->jobs = jobs;
  f->store = store;
  f->events = events;
  if (file && file->targets_count &&
      !(f->targets = calloc(file->targets_count, sizeof *f->targets)))
    return drv_error(DRV_ERR_NOMEM, "targets: out of memory");
  for (uint32_t i = 0; file && i < file->targets_count; i++)
    f->targets[f->ntargets++].cfg = &file->targets[i];
  DRV_CHECK(fs_path(f->log_dir, sizeof f->log_dir, "%s/targets", state_dir));
  if (f->ntargets && mkdir(f->log_dir, 0750) < 0 && errno != EEXIST)
    return drv_error(DRV_ERR_SYS, "%s: %s", f->log_dir, strerror(errno));
  if (f->ntargets) managed_join(f, state_dir, advertise);
  f->env = (launch_env_t){
      .coordinator = advertise, .drover = exe, .join = f->join, .log_dir = f->log_dir};
  return store_node_list(store, adopt, f);
}

void fleet_shutdown(fleet_t *f) {
  uint32_t left = 0;
  int64_t now = drv_now_ms();
  for (uint32_t i = 0; i < f->ntargets; i++)
    for (uint32_t k = 0; k < TARGETS_MAX_NODES; k++) {
      fleet_node_t *n = &f->targets[i].nodes[k];
      if (n->state == NODE_FREE) continue;
      if (n->state != NODE_STOPPING) {
        log_info("target %s: stopping %s: the coordinator is stopping", f->targets[i].cfg->name,
                 n->name);
        stop_node(f, &f->targets[i], n, now);
      }
      left++;
    }
  /* Their stops (agents draining, launcher commands) get a while to finish. */
  for (int64_t end = now + FLEET_STOP_GRACE_MS; left && drv_now_ms() < end;) {
    usleep(50000);
    now = drv_now_ms();
    left = 0;
    for (uint32_t i = 0; i < f->ntargets; i++)
      for (uint32_t k = 0; k < TARGETS_MAX_NODES; k++) {
        fleet_node_t *n = &f->targets[i].nodes[k];
        if (n->state == NODE_FREE) continue;
        poll_node(f, &f->targets[i], n, now);
        left += n->state != NODE_FREE;
      }
  }
  if (left) log_warn("%u managed node(s) still stopping when the coordinator stopped", left);
}

void fleet_fini(fleet_t *f) {
  free(f->targets);
  f->targets = NULL;
  f->ntargets = 0;
  targets_free(&f->file);
}

const target_t *fleet_config(const fleet_t *f, const char *name) {
  return f ? targets_find(f->file, name) : NULL;
}

// --- What the API shows --------------------------------------------------------------------

typedef struct {
  uint32_t idle, busy, starting, stopping;
  int64_t oldest_start_ms; /* of the starting nodes; 0: none */
} counts_t;

static counts_t count(const fleet_t *f, const char *target, const fleet_target_t *t) {
  counts_t c = {0};
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    const agent_t *a = registry_at(f->reg, i);
    if (!a || strcmp(a->target, target)) continue;
    if (a->job) c.busy++;
    else c.idle++;
  }
  for (uint32_t k = 0; t && k < TARGETS_MAX_NODES; k++) {
    const fleet_node_t *n = &t->nodes[k];
    if (n->state == NODE_STOPPING) c.stopping++;
    if (n->state != NODE_STARTING) continue;
    c.starting++;
    if (!c.oldest_start_ms || n->launched_ms < c.oldest_start_ms) c.oldest_start_ms = n->launched_ms;
  }
  return c;
}

void fleet_list(const fleet_t *f, proto_msg_t *reply, int64_t now) {
  uint32_t n = 2 + f->ntargets;
  proto_target_info_t *list = proto_msg_alloc(reply, n * sizeof *list);
  if (!list) return;
  const char *builtin[] = {"local", "attached"};
  for (uint32_t i = 0; i < 2; i++) {
    counts_t c = count(f, builtin[i], NULL);
    list[i] = (proto_target_info_t){.name = builtin[i], .kind = builtin[i], .launcher = "",
                                    .idle = c.idle, .busy = c.busy};
  }
  for (uint32_t i = 0; i < f->ntargets; i++) {
    const fleet_target_t *t = &f->targets[i];
    counts_t c = count(f, t->cfg->name, t);
    list[2 + i] = (proto_target_info_t){
        .name = t->cfg->name,
        .kind = "managed",
        .launcher = targets_launcher_name(t->cfg->launcher),
        .min_nodes = t->cfg->min_nodes,
        .max_nodes = t->cfg->max_nodes,
        .idle = c.idle,
        .busy = c.busy,
        .starting = c.starting,
        .stopping = c.stopping,
        .failed = t->failed,
        .launched = t->launched,
        .preemptible = t->cfg->preemptible,
        .idle_timeout_s = t->cfg->idle_timeout_s,
        .launch_timeout_s = t->cfg->launch_timeout_s,
        .retry_in_s = t->retry_at_ms > now ? (double)(t->retry_at_ms - now) / 1000.0 : 0,
        .last_error = proto_msg_strdup(reply, t->last_error)};
  }
  reply->u.target_list.targets = list;
  reply->u.target_list.targets_count = n;
}

void fleet_reason(const fleet_t *f, const job_t *j, int64_t now, char *buf, size_t cap) {
  buf[0] = '\0';
  const fleet_target_t *t = NULL;
  for (uint32_t i = 0; i < f->ntargets && !t; i++)
    if (!strcmp(f->targets[i].cfg->name, j->target)) t = &f->targets[i];
  if (!t) return;
  counts_t c = count(f, j->target, t);
  uint32_t have = c.idle + c.busy + c.starting;
  uint32_t want = j->nodes_wanted > c.idle + c.starting ? j->nodes_wanted - c.idle - c.starting : 0;
  uint32_t room = t->cfg->max_nodes > have + c.stopping ? t->cfg->max_nodes - have - c.stopping : 0;
  size_t n = (size_t)snprintf(buf, cap, "needs %u node%s on %s: %u idle, %u starting", j->nodes_wanted,
                              j->nodes_wanted == 1 ? "" : "s", j->target, c.idle, c.starting);
  if (c.starting && n < cap)
    n += (size_t)snprintf(buf + n, cap - n, " (launched %" PRId64 " s ago)",
                          (now - c.oldest_start_ms) / 1000);
  if (n >= cap) return;
  if (want > room)
    n += (size_t)snprintf(buf + n, cap - n, ", %u busy: at max_nodes %u, waits for one to free",
                          c.busy, t->cfg->max_nodes);
  else
    n += (size_t)snprintf(buf + n, cap - n, ", %u more to launch", want);
  if (t->retry_at_ms > now && n < cap)
    snprintf(buf + n, cap - n, "; %u launch failure(s), next try in %" PRId64 " s (last: %s)",
             t->failures, (t->retry_at_ms - now + 999) / 1000, t->last_error);
}
