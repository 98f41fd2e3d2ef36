/* coord.c: the coordinator's event loop: its sockets, the poll, the timers, and the
 * dispatch of each message to the module that handles it (registry.h for agents, job.h
 * for jobs and workers, api.h for clients). See coord.h for the sockets. Everything runs
 * on one thread; no locks. */
#include "coordinator/coord.h"

#include <errno.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "common/keys.h"
#include "coordinator/api.h"
#include "coordinator/auth.h"
#include "coordinator/fleet.h"
#include "coordinator/job.h"
#include "coordinator/registry.h"
#include "coordinator/store.h"

typedef struct coord coord_t;

/* A timer: fn runs every every_ms, from the loop (redis ae style: registered, not
 * inlined in the loop). */
typedef struct {
  const char *name;
  int64_t every_ms, next_ms;
  void (*fn)(coord_t *c, int64_t now);
} coord_timer_t;

#define COORD_MAX_TIMERS 8

struct coord {
  const coord_config_t *cfg;
  sock_ctx_t *ctx;
  sock_t *workers, *clients, *events;
  sock_t *zap; /* the ZAP handler: NULL in plaintext */
  sock_t *limits[3]; /* connection limits of workers, clients, events (sock_limits_new) */
  auth_t auth;
  char key_z85[SOCK_Z85_LEN + 1]; /* its public key; "" in plaintext */
  store_t *store;
  registry_t reg;
  job_table_t jobs;
  api_t api;
  fleet_t fleet;
  coord_timer_t timers[COORD_MAX_TIMERS];
  int ntimers;
  int64_t last_active_ms;   /* last time a job was queued or running; 0 before the first */
  int64_t away_ms, woke_ms; /* the last time the coordinator was not running, and its end */
  int workers_gone;         /* it was away longer than the agents' timeout: to reconcile */
};

// --- Agents' and workers' messages ---------------------------------------------------------

/* Refuses a hello with error `code` and message msg (logged). */
static void refuse_hello(coord_t *c, const sock_peer_t *from, const char *code, const char *msg) {
  log_warn("%s", msg);
  proto_msg_t e;
  proto_msg_init(&e, PROTO_ERROR);
  e.u.error.code = code;
  e.u.error.message = msg;
  sock_send(c->workers, from, &e);
}

/* An agent id must be its key's to use, and not in use by a live agent on another
 * connection (peers get routing ids the ROUTER makes up, so the id is what names an
 * agent). A registered agent silent for two heartbeats gives way: it was the same agent,
 * restarted, whose old connection is gone. Returns 0 when it refused. */
static int hello_allowed(coord_t *c, const sock_peer_t *from, const proto_hello_t *h) {
  char msg[384];
  if (!auth_agent_id_ok(&c->auth, from, h->agent_id)) {
    snprintf(msg, sizeof msg, "hello as agent %s refused: the key of %s (from %s) may not use that id",
             h->agent_id, from->user[0] ? from->user : "an unnamed peer", from->addr);
    refuse_hello(c, from, "forbidden", msg);
    return 0;
  }
  agent_t *same = registry_by_id(&c->reg, h->agent_id);
  if (!same || registry_by_peer(&c->reg, from) == same ||
      registry_reconnecting(&c->reg, from, h) == same)
    return 1;
  int64_t quiet = drv_now_ms() - same->last_seen_ms;
  if (quiet <= 2 * drv_setting(DRV_SET_HEARTBEAT_MS)) {
    snprintf(msg, sizeof msg,
             "hello as agent %s from %s refused: a live agent of that id is registered (heard "
             "%" PRId64 " ms ago); give each agent its own --id",
             h->agent_id, from->addr, quiet);
    refuse_hello(c, from, "in_use", msg);
    return 0;
  }
  job_agent_lost(&c->jobs, same, "registered again on a new connection");
  return 1;
}

static void on_hello(coord_t *c, const sock_peer_t *from, const proto_hello_t *h) {
  if (!hello_allowed(c, from, h)) return;
  agent_t *a = registry_by_peer(&c->reg, from);
  if (!a) a = registry_reconnecting(&c->reg, from, h); /* on a new connection */
  if (a && a->session == h->session) {
    registry_welcome(&c->reg, a); /* the same connection said hello twice: nothing changed */
    return;
  }
  if (a && a->job) { /* it reconnected: the workers of its old session are gone */
    char why[160] = "reconnected while running a job";
    /* Just after the coordinator's own absence, that absence is why: the agent lost us,
     * stopped its workers and reconnected, as it should. */
    if (c->woke_ms && drv_now_ms() - c->woke_ms < 2 * drv_setting(DRV_SET_PEER_TIMEOUT_MS))
      snprintf(why, sizeof why,
               "reconnected after the coordinator was not running for %" PRId64
               " ms: the workers of its job are gone",
               c->away_ms);
    job_agent_lost(&c->jobs, a, why);
    a = NULL;
  }
  if ((a = registry_add(&c->reg, a, from, h, drv_now_ms()))) {
    const target_t *t = fleet_config(&c->fleet, a->target); /* before any job is placed */
    a->preemptible = t && t->preemptible;
    registry_welcome(&c->reg, a);
  }
}

static void on_bye(coord_t *c, agent_t *a, const proto_bye_t *b) {
  char why[160];
  snprintf(why, sizeof why, "stopped (%s)", b->reason ? b->reason : "bye");
  job_agent_lost(&c->jobs, a, why);
}

static void on_heartbeat(coord_t *c, agent_t *a, const sock_peer_t *from,
                         const proto_heartbeat_t *hb) {
  if (a) {
    registry_heartbeat(a, hb);
    job_agent_heartbeat(&c->jobs, a, hb->workers);
    return;
  }
  /* A coordinator restart forgot this agent: ask it to register again. */
  proto_msg_t e;
  proto_msg_init(&e, PROTO_ERROR);
  e.u.error.code = "not_registered";
  e.u.error.message = "unknown agent: send hello";
  sock_send(c->workers, from, &e);
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
  /* Any message from an agent is a sign of life. Messages of its workers come on
   * connections of their own, and name their job. */
  agent_t *a = registry_by_peer(&c->reg, &from);
  if (a) a->last_seen_ms = drv_now_ms();
  job_table_t *jobs = &c->jobs;
  switch (m.type) {
  case PROTO_HELLO: on_hello(c, &from, &m.u.hello); break;
  case PROTO_LEAVE:
    if (a) job_agent_leaving(jobs, a, m.u.leave.reason);
    break;
  case PROTO_BYE:
    if (a) on_bye(c, a, &m.u.bye);
    break;
  case PROTO_HEARTBEAT: on_heartbeat(c, a, &from, &m.u.heartbeat); break;
  case PROTO_WORKER_EXIT:
    if (a) job_on_worker_exit(jobs, a, &m.u.worker_exit);
    break;
  case PROTO_RENDEZVOUS: job_on_rendezvous(jobs, &from, &m.u.rendezvous); break;
  case PROTO_PROGRESS: job_on_progress(jobs, &from, &m.u.progress); break;
  case PROTO_LOG: job_on_log(jobs, &from, &m.u.log); break;
  case PROTO_EVAL: job_on_eval(jobs, &from, &m.u.eval); break;
  case PROTO_DONE: job_on_done(jobs, &from, &m.u.done); break;
  case PROTO_FAILED: job_on_failed(jobs, &from, &m.u.failed); break;
  case PROTO_CHECKPOINT: job_on_checkpoint(jobs, &from, &m.u.checkpoint); break;
  case PROTO_LOST: job_on_lost(jobs, &from, &m.u.lost); break;
  default:
    log_warn("agent socket: unexpected '%s' message dropped", proto_type_name(m.type));
    break;
  }
  proto_msg_fini(&m);
}

// --- Clients' requests ---------------------------------------------------------------------

static void handle_client_socket(coord_t *c) {
  sock_peer_t from;
  proto_msg_t m;
  drv_result_t rc = sock_recv(c->clients, &from, &m, 0);
  if (rc == DRV_ERR_PROTO && from.len > 0) {
    log_warn("client socket: refused a frame: %s", drv_last_error());
    api_reply_error(&c->api, &from, "proto", drv_last_error());
    proto_msg_fini(&m);
    return;
  }
  if (rc != DRV_OK) {
    if (rc != DRV_ERR_TIMEOUT) log_warn("client socket: %s", drv_last_error());
    proto_msg_fini(&m);
    return;
  }
  switch (m.type) {
  case PROTO_SUBMIT: api_submit(&c->api, &from, &m.u.submit); break;
  case PROTO_GET_SPEC: api_get_spec(&c->api, &from, m.u.get_spec.job); break;
  case PROTO_STATUS: api_status(&c->api, &from, &m.u.status); break;
  case PROTO_CANCEL: api_cancel(&c->api, &from, m.u.cancel.job); break;
  case PROTO_AGENTS: api_agents(&c->api, &from); break;
  case PROTO_TARGETS: api_targets(&c->api, &from); break;
  case PROTO_LOGS: api_logs(&c->api, &from, &m.u.logs); break;
  default: { /* listed as a request but not handled here: refused as sock_recv would */
    char msg[128];
    proto_refusal(m.type, PROTO_AT_API, msg, sizeof msg);
    api_reply_error(&c->api, &from, "proto", msg);
    break;
  }
  }
  proto_msg_fini(&m);
}

// --- Timers --------------------------------------------------------------------------------

static void timer_add(coord_t *c, const char *name, int64_t every_ms,
                      void (*fn)(coord_t *c, int64_t now)) {
  c->timers[c->ntimers++] = (coord_timer_t){
      .name = name, .every_ms = every_ms, .next_ms = drv_now_ms() + every_ms, .fn = fn};
}

/* Runs the timers that are due, in the order they were added. */
static void timers_run(coord_t *c) {
  for (int i = 0; i < c->ntimers; i++) {
    coord_timer_t *t = &c->timers[i];
    int64_t now = drv_now_ms();
    if (now < t->next_ms) continue;
    t->fn(c, now);
    t->next_ms = drv_now_ms() + t->every_ms;
  }
}

/* How long the poll may wait: until the next timer. */
static int timers_wait_ms(const coord_t *c) {
  int64_t next = INT64_MAX;
  for (int i = 0; i < c->ntimers; i++) next = DRV_MIN(next, c->timers[i].next_ms);
  return (int)DRV_MAX(next - drv_now_ms(), 0);
}

/* Heartbeats to every agent; an agent silent for longer than DROVER_PEER_TIMEOUT_MS is
 * lost. */
static void heartbeat_timer(coord_t *c, int64_t now) {
  int64_t timeout = drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  int silent[REGISTRY_MAX_AGENTS];
  uint32_t n = registry_tick(&c->reg, now, timeout, silent);
  for (uint32_t k = 0; k < n; k++) {
    agent_t *a = registry_at(&c->reg, silent[k]);
    if (!a) continue;
    char why[128];
    snprintf(why, sizeof why, "silent for %" PRId64 " ms (timeout %" PRId64 " ms)",
             now - a->last_seen_ms, timeout);
    job_agent_lost(&c->jobs, a, why);
  }
}

static void job_timer(coord_t *c, int64_t now) {
  job_tick(&c->jobs, now);
}

static void fleet_timer(coord_t *c, int64_t now) {
  fleet_tick(&c->fleet, now);
}

static void verdict_timer(coord_t *c, int64_t now) {
  job_verdicts(&c->jobs, now);
}

static void history_timer(coord_t *c, int64_t now) {
  (void)now;
  if (store_prune(c->store, drv_setting(DRV_SET_HISTORY_DAYS), NULL) != DRV_OK)
    log_warn("%s", drv_last_error());
}

// --- The coordinator's own absence --------------------------------------------------------

int64_t coord_away_ms(int64_t last_wake_ms, int64_t wait_ms, int64_t now_ms, int64_t limit_ms) {
  int64_t away = now_ms - last_wake_ms - DRV_MAX(wait_ms, 0);
  return away > limit_ms ? away : 0;
}

/* The coordinator was not running for away_ms (stopped, stalled, its VM suspended): its
 * peers could not be heard meanwhile, so they get a fresh timeout, and its deadlines move
 * by that much. What the agents did meanwhile (they lost us, stopped their workers and
 * reconnect with a new session) comes in their messages next, and is reconciled there. */
static void coord_was_away(coord_t *c, int64_t away_ms, int64_t now) {
  log_warn("the coordinator was not running for %" PRId64
           " ms (stopped, stalled or its machine suspended): peers get a fresh timeout and "
           "its deadlines move by as much",
           away_ms);
  c->away_ms = away_ms;
  c->woke_ms = now;
  registry_pardon(&c->reg, now, away_ms);
  job_table_shift(&c->jobs, away_ms);
  if (c->last_active_ms) c->last_active_ms += away_ms;
  /* Longer than the timeout the agents were given (welcome): each of them lost us and
   * stopped its workers. Settled after this pass's messages, which may still say that some
   * finished first. */
  c->workers_gone = away_ms > drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  /* The timers are periodic and simply due now: each runs once, not once per period
   * missed, and nothing they check counts the absence (last seen, deadlines moved). */
}

// --- Loop ----------------------------------------------------------------------------------

static drv_result_t bind_socket(coord_t *c, sock_t **s, sock_kind_t kind, proto_at_t at,
                                sock_port_t port) {
  char ep[256];
  DRV_CHECK(sock_endpoint(c->cfg->bind, port, ep, sizeof ep));
  /* No ROUTER_HANDOVER: a peer naming a connected peer's routing id is refused. Agents and
   * workers announce random ids of their own, and a stored id counts only with the key it
   * came with (registry_by_peer, job.c from_rank). */
  *s = sock_new(c->ctx, kind, at, NULL);
  if (!*s) return DRV_ERR_ZMQ;
  return sock_bind(*s, ep);
}

/* The ZAP handler's question: may this key connect to that port? */
static int coord_authorize(void *arg, const char *domain, const char *address,
                           const unsigned char key[SOCK_KEY_BYTES], char *user, size_t n) {
  coord_t *c = arg;
  int worker = !strcmp(domain, "agents") && job_worker_key(&c->jobs, key);
  return auth_decide(&c->auth, domain, address, key, worker, user, n);
}

/* The sockets' security: the state directory's keys (made at the first start) and the
 * ZAP handler, before any socket binds; or plaintext when asked. */
static drv_result_t coord_secure(coord_t *c) {
  const coord_config_t *cfg = c->cfg;
  if (cfg->insecure) {
    sock_ctx_plaintext(c->ctx);
    return auth_init(&c->auth, cfg->state_dir, 0);
  }
  const struct passwd *pw = getpwuid(geteuid());
  keys_file_t k;
  DRV_CHECK(keys_state_ensure(cfg->state_dir, pw ? pw->pw_name : "admin", &k));
  sock_keys_t keys = {0};
  memcpy(keys.pub, k.pub, sizeof keys.pub);
  memcpy(keys.sec, k.sec, sizeof keys.sec);
  memset(&k, 0, sizeof k);
  sock_ctx_secure(c->ctx, &keys);
  sock_z85_encode(keys.pub, c->key_z85);
  memset(&keys, 0, sizeof keys);
  if (!(c->zap = sock_zap_new(c->ctx))) return DRV_ERR_ZMQ;
  DRV_CHECK(auth_init(&c->auth, cfg->state_dir, 1));
  log_info("CurveZMQ on: the coordinator's public key is %s (%s/keys/coordinator.key)",
           c->key_z85, cfg->state_dir);
  return DRV_OK;
}

/* Opens the store (one coordinator per state directory), binds the sockets, and reloads
 * the jobs a previous coordinator left behind. */
static drv_result_t coord_start(coord_t *c) {
  const coord_config_t *cfg = c->cfg;
  DRV_CHECK(store_open(cfg->state_dir, &c->store));
  /* One coordinator per state directory, and only one that could bind touches the jobs
   * a previous one left behind. */
  DRV_CHECK(store_lock(c->store));
  if (!(c->ctx = sock_ctx_new())) return DRV_ERR_ZMQ;
  DRV_CHECK(coord_secure(c));
  DRV_CHECK(bind_socket(c, &c->workers, SOCK_ROUTER, PROTO_AT_COORD, SOCK_AGENTS));
  DRV_CHECK(bind_socket(c, &c->clients, SOCK_ROUTER, PROTO_AT_API, SOCK_CLIENTS));
  DRV_CHECK(bind_socket(c, &c->events, SOCK_PUB, PROTO_AT_EVENTS, SOCK_EVENTS));
  sock_t *bound[3] = {c->workers, c->clients, c->events};
  for (int i = 0; i < 3; i++)
    if (!(c->limits[i] = sock_limits_new(bound[i], (int)drv_setting(DRV_SET_MAX_CONN_PER_ADDR),
                                         (int)drv_setting(DRV_SET_MAX_CONN))))
      return DRV_ERR_ZMQ;
  registry_init(&c->reg, c->workers);
  job_table_init(&c->jobs, c->workers, c->events, c->store, &c->reg, cfg->advertise);
  if (c->zap) job_table_secure(&c->jobs, c->key_z85);
  snprintf(c->jobs.log_dir, sizeof c->jobs.log_dir, "%s/logs", cfg->state_dir);
  if (mkdir(c->jobs.log_dir, 0700) < 0 && errno != EEXIST) {
    log_warn("%s: %s: drover logs will show nothing", c->jobs.log_dir, strerror(errno));
    c->jobs.log_dir[0] = '\0';
  }
  int64_t slow_submit_ms = drv_setting(DRV_SET_FAULT_SLOW_SUBMIT_MS);
  api_init(&c->api, c->clients, c->store, &c->jobs, &c->reg, &c->auth, slow_submit_ms);
  targets_file_t *targets = NULL;
  if (cfg->targets) DRV_CHECK(targets_load(cfg->targets, &targets));
  DRV_CHECK(fleet_init(&c->fleet, targets, cfg->state_dir, cfg->advertise, cfg->exe, &c->reg,
                       &c->jobs, c->store, c->events));
  c->api.fleet = &c->fleet;
  uint32_t recovered = 0;
  DRV_CHECK(store_recover(c->store, &recovered));
  if (recovered)
    log_warn("%u job(s) left running by a previous coordinator queued again", recovered);
  DRV_CHECK(job_table_reload(&c->jobs));
  log_info("coordinator listening on %s (+1 clients, +2 events), state in %s", cfg->bind,
           cfg->state_dir);
  if (slow_submit_ms)
    log_warn("fault injection: new submissions are answered %" PRId64
             " ms late (DROVER_FAULT_SLOW_SUBMIT_MS)",
             slow_submit_ms);
  int lo, hi;
  if (sock_ports_ephemeral(cfg->bind, &lo, &hi))
    log_warn(
        "the ports of %s lie in this machine's ephemeral range (%d-%d): while this "
        "coordinator is down, other programs' connections may take them, so a restart "
        "could fail to bind; a base port below %d avoids that",
        cfg->bind, lo, hi, lo - 2);
  return DRV_OK;
}

/* Whether a coordinator started for the local target has been idle long enough to go. */
static int idle_long_enough(coord_t *c) {
  const coord_config_t *cfg = c->cfg;
  if (cfg->exit_when_idle_s <= 0 || c->last_active_ms == 0 || job_active(&c->jobs)) return 0;
  return drv_now_ms() - c->last_active_ms > (int64_t)cfg->exit_when_idle_s * 1000;
}

drv_result_t coord_run(const coord_config_t *cfg, volatile sig_atomic_t *stop) {
  coord_t *c = calloc(1, sizeof *c);
  if (!c) return drv_error(DRV_ERR_NOMEM, "coordinator: out of memory");
  c->cfg = cfg;
  drv_result_t rc = DRV_OK;
  DRV_CHECK_GOTO(coord_start(c), rc, out);
  int64_t hb_ms = drv_setting(DRV_SET_HEARTBEAT_MS);
  timer_add(c, "heartbeats", hb_ms, heartbeat_timer); /* first: lost agents, then their jobs */
  timer_add(c, "jobs", hb_ms, job_timer);
  timer_add(c, "fleet", 200, fleet_timer); /* managed targets: launches, matches, the plan */
  /* Held failures are due within DROVER_FAIL_HOLD_MS: checked a few times within it. */
  timer_add(c, "verdicts", DRV_MAX(drv_setting(DRV_SET_FAIL_HOLD_MS) / 4, 10), verdict_timer);
  history_timer(c, drv_now_ms()); /* finished jobs past DROVER_HISTORY_DAYS, then daily */
  timer_add(c, "history", 24 * 3600 * 1000, history_timer);

  /* More than half the peer timeout unaccounted for: peers would have been declared lost
   * for the coordinator's own absence. */
  int64_t away_limit = drv_setting(DRV_SET_PEER_TIMEOUT_MS) / 2;
  int64_t last_wake = drv_now_ms();
  while (!*stop) {
    if (idle_long_enough(c)) {
      log_info("no job for %d s: exiting (--exit-when-idle)", cfg->exit_when_idle_s);
      break;
    }
    if (job_active(&c->jobs)) c->last_active_ms = drv_now_ms();
    /* The ZAP handler last: a plaintext coordinator has none. */
    sock_t *socks[6] = {c->workers, c->clients, c->limits[0], c->limits[1], c->limits[2], c->zap};
    int ready[6] = {0};
    int wait_ms = timers_wait_ms(c);
    rc = sock_poll(socks, c->zap ? 6 : 5, wait_ms, ready);
    if (rc != DRV_OK && rc != DRV_ERR_TIMEOUT) break;
    rc = DRV_OK;
    int64_t now = drv_now_ms(), away = coord_away_ms(last_wake, wait_ms, now, away_limit);
    if (away) coord_was_away(c, away, now); /* before any message or timer sees the clock */
    last_wake = now;
    /* Both sockets in turn for at most DROVER_LOOP_BUDGET_MS, then the timers: however
     * many frames a peer sends and whatever each costs, heartbeats go out and silent
     * agents are noticed on time, and neither socket starves the other. */
    int64_t until = now + drv_setting(DRV_SET_LOOP_BUDGET_MS);
    while (ready[0] || ready[1]) {
      if (ready[0]) {
        handle_worker_socket(c);
        ready[0] = sock_readable(c->workers);
      }
      if (ready[1]) {
        handle_client_socket(c);
        ready[1] = sock_readable(c->clients);
      }
      if (drv_now_ms() >= until) break;
    }
    for (int i = 0; i < 3; i++)
      if (ready[2 + i]) sock_limits_service(c->limits[i]);
    for (int k = 0; k < 64 && ready[5]; k++)
      if (sock_zap_answer(c->zap, coord_authorize, c) == DRV_ERR_TIMEOUT) break;
    if (c->workers_gone) {
      char why[256];
      snprintf(why, sizeof why,
               "the coordinator was not running for %" PRId64
               " ms, longer than the agents' timeout (%" PRId64 " ms): they stopped its workers",
               c->away_ms, drv_setting(DRV_SET_PEER_TIMEOUT_MS));
      job_table_workers_gone(&c->jobs, why);
      c->workers_gone = 0;
    }
    timers_run(c);
    job_schedule(&c->jobs, drv_now_ms());
  }
  log_info("coordinator stopping");
  job_table_fini(&c->jobs);
  fleet_shutdown(&c->fleet);
out:
  for (int i = 0; i < 3; i++) sock_destroy(&c->limits[i]);
  sock_destroy(&c->workers);
  sock_destroy(&c->clients);
  sock_destroy(&c->events);
  sock_destroy(&c->zap);
  auth_fini(&c->auth);
  sock_ctx_destroy(&c->ctx);
  fleet_fini(&c->fleet); /* its nodes run on: a restarted coordinator finds them */
  store_close(&c->store); /* releases the state directory's lock */
  free(c);
  return rc;
}
