/* api.c: the client API (see api.h). */
#include "coordinator/api.h"

#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jobspec.h"
#include "common/log.h"
#include "common/settings.h"
#include "coordinator/fleet.h"

void api_init(api_t *api, sock_t *clients, store_t *store, job_table_t *jobs, registry_t *reg,
              const auth_t *auth, int64_t fault_slow_submit_ms) {
  *api = (api_t){.clients = clients,
                 .store = store,
                 .jobs = jobs,
                 .reg = reg,
                 .auth = auth,
                 .fault_slow_submit_ms = fault_slow_submit_ms};
}

static void reply(api_t *api, const sock_peer_t *to, const proto_msg_t *m) {
  if (sock_send(api->clients, to, m) != DRV_OK) log_warn("reply to client: %s", drv_last_error());
}

void api_reply_error(api_t *api, const sock_peer_t *to, const char *code, const char *message) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ERROR);
  m.u.error.code = code;
  m.u.error.message = message;
  reply(api, to, &m);
}

/* Whether client `from` may act on job `id` of `owner` (`what` it asks: "cancel"); answers
 * `forbidden` when not. */
static int may_act(api_t *api, const sock_peer_t *from, int64_t id, const char *owner,
                   const char *what) {
  if (auth_may_act(api->auth, from, owner)) return 1;
  char msg[256];
  snprintf(msg, sizeof msg,
           "%s job %" PRId64 ": it belongs to %s; only its owner or an admin may (you are %s)",
           what, id, owner[0] ? owner : "nobody", from->user[0] ? from->user : "nobody");
  log_warn("%s", msg);
  api_reply_error(api, from, "forbidden", msg);
  return 0;
}

// --- submit --------------------------------------------------------------------------------

/* Whether job `from` can be resumed: 0 and resume_dir filled, or -1 with why[] saying why
 * not ("resume: job 7 has no durable checkpoint"). */
static int resume_source(api_t *api, const sock_peer_t *peer, int64_t from, char *resume_dir,
                         size_t n, char *lineage, char *why, size_t whyn) {
  store_job_t old;
  if (store_job_get(api->store, from, &old) != DRV_OK) {
    snprintf(why, whyn, "resume: job %" PRId64 ": no such job", from);
    return -1;
  }
  if (!auth_may_act(api->auth, peer, old.owner)) {
    snprintf(why, whyn, "resume: job %" PRId64 " belongs to %s; only its owner or an admin may resume it",
             from, old.owner[0] ? old.owner : "nobody");
    return -1;
  }
  /* The same lineage: its checkpoints are the new job's to load. */
  if (old.lineage[0]) snprintf(lineage, 33, "%s", old.lineage);
  if (job_find(api->jobs, from)) {
    snprintf(why, whyn, "resume: job %" PRId64 " is still %s; cancel it first", from,
             store_state_name(old.state));
    return -1;
  }
  if (!old.ckpt_step) {
    snprintf(why, whyn, "resume: job %" PRId64 " has no durable checkpoint", from);
    return -1;
  }
  int w = snprintf(resume_dir, n, "%s/checkpoints", old.run_dir);
  if (w < 0 || (size_t)w >= n) {
    snprintf(why, whyn, "resume: job %" PRId64 ": its run directory is too long", from);
    return -1;
  }
  return 0;
}

/* Records a submitted job in one transaction: whole (with its run directory, which needs
 * the id) or not at all, at the cost of one fsync. sj carries the pool and resume
 * directory in, and gets the id and run directory. */
static drv_result_t record_submission(api_t *api, const jobspec_t *spec, const char *canon,
                                      const char *token, store_job_t *sj) {
  drv_result_t rc;
  store_t *s = api->store;
  DRV_CHECK(store_begin(s));
  DRV_CHECK_GOTO(store_job_insert(s, spec->name, sj->target, spec->nodes, canon, "", &sj->id), rc,
                 fail);
  /* Never cut: a cut path would name another directory (padding picks which). */
  int w = snprintf(sj->run_dir, sizeof sj->run_dir, "%s/%s-%" PRId64, spec->run_dir, spec->name,
                   sj->id);
  if (w < 0 || (size_t)w >= sizeof sj->run_dir) {
    rc = drv_error(DRV_ERR_INVALID,
                   "submitted spec: run_dir: the run directory would be %d bytes, "
                   "at most %zu",
                   w, sizeof sj->run_dir - 1);
    goto fail;
  }
  DRV_CHECK_GOTO(store_job_set_run_dir(s, sj->id, sj->run_dir), rc, fail);
  DRV_CHECK_GOTO(store_job_set_pool(s, sj->id, sj->pool), rc, fail);
  DRV_CHECK_GOTO(store_job_set_resume_dir(s, sj->id, sj->resume_dir), rc, fail);
  DRV_CHECK_GOTO(store_job_set_token(s, sj->id, token), rc, fail);
  DRV_CHECK_GOTO(store_job_set_owner(s, sj->id, sj->owner, sj->lineage), rc, fail);
  return store_commit(s);
fail:
  store_rollback(s);
  return rc;
}

static void reply_submitted(api_t *api, const sock_peer_t *to, int64_t job, const char *run_dir) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_SUBMITTED);
  m.u.submitted.job = job;
  m.u.submitted.run_dir = run_dir;
  reply(api, to, &m);
}

/* A submission the store already has under this token (a client that asked again after
 * its answer was late or lost): answers with that job, whatever its state. Returns 1 when
 * it answered. */
static int resubmitted(api_t *api, const sock_peer_t *from, const char *token) {
  int64_t id = 0;
  store_job_t old;
  if (strlen(token) > STORE_TOKEN_MAX) {
    char msg[96];
    snprintf(msg, sizeof msg, "submit: token longer than %d bytes", STORE_TOKEN_MAX);
    api_reply_error(api, from, "invalid", msg);
    return 1;
  }
  if (store_job_by_token(api->store, token, &id) != DRV_OK ||
      (id && store_job_get(api->store, id, &old) != DRV_OK)) {
    api_reply_error(api, from, "internal", drv_last_error());
    return 1;
  }
  if (!id) return 0;
  if (api->auth->secure && strcmp(old.owner, auth_name(from))) {
    /* Another user's token: it names nothing of theirs, and says nothing of the job. */
    api_reply_error(api, from, "invalid", "submit: that token is another submission's; use a new one");
    return 1;
  }
  log_info("job %" PRId64 " (%s): its submission came again (token %s): answered with it", id,
           old.name, token);
  reply_submitted(api, from, id, old.run_dir);
  return 1;
}

/* The spec text a submission runs: its own, or with `resume` and no spec the old job's
 * (into *stored, the caller's to free). Fills resume_dir. NULL when it answered an error. */
static const char *submitted_spec(api_t *api, const sock_peer_t *from, const proto_submit_t *sub,
                                  char **stored, char *resume_dir, size_t n, char *lineage) {
  if (sub->resume <= 0) return sub->spec;
  char why[256];
  if (resume_source(api, from, sub->resume, resume_dir, n, lineage, why, sizeof why) != 0) {
    api_reply_error(api, from, "invalid", why);
    return NULL;
  }
  if (sub->spec[0]) return sub->spec;
  /* no spec given: the old job's, as it was */
  if (store_job_spec(api->store, sub->resume, stored) != DRV_OK) {
    api_reply_error(api, from, "internal", drv_last_error());
    return NULL;
  }
  return *stored;
}

/* Whether `owner` may queue one more job (DROVER_MAX_QUEUED_PER_USER); answers `quota`
 * when not. */
static int within_quota(api_t *api, const sock_peer_t *from, const char *owner) {
  int64_t limit = drv_setting(DRV_SET_MAX_QUEUED_PER_USER);
  uint32_t mine = 0;
  for (int i = 0; i < JOB_MAX; i++) {
    const job_t *j = &api->jobs->jobs[i];
    mine += j->used && !strcmp(j->owner, owner);
  }
  if (limit <= 0 || mine < limit) return 1;
  char msg[256];
  snprintf(msg, sizeof msg,
           "submit: %s has %u active jobs, the most one user may have (DROVER_MAX_QUEUED_PER_USER "
           "= %" PRId64 "); wait for some to end or cancel them",
           owner[0] ? owner : "this user", mine, limit);
  api_reply_error(api, from, "quota", msg);
  return 0;
}

/* Whether the submitter may ask for the spec's priority: above DROVER_MAX_USER_PRIORITY
 * only an admin may (else one user could put every job of theirs ahead of everyone's).
 * Refuses it (`forbidden`) and returns 0 otherwise. */
static int priority_allowed(api_t *api, const sock_peer_t *from, const jobspec_t *spec) {
  int64_t cap = drv_setting(DRV_SET_MAX_USER_PRIORITY);
  if (spec->priority <= cap || auth_role(api->auth, from) == AUTH_ADMIN) return 1;
  char msg[200];
  snprintf(msg, sizeof msg,
           "submit: priority %d is above %" PRId64
           " (DROVER_MAX_USER_PRIORITY): only an admin may ask for more",
           (int)spec->priority, cap);
  api_reply_error(api, from, "forbidden", msg);
  return 0;
}

/* Whether the job's target exists and could ever hold it: a managed target's max_nodes,
 * and the resources its nodes have when its file says. Otherwise refuses it, naming the
 * targets there are, and returns 0. */
static int target_fits(api_t *api, const sock_peer_t *from, const jobspec_t *spec) {
  const char *name = spec->target;
  if (!strcmp(name, "local") || !strcmp(name, "attached")) return 1;
  const target_t *t = fleet_config(api->fleet, name);
  char msg[600];
  if (!t) {
    size_t n = (size_t)snprintf(msg, sizeof msg, "target %s: no such target (targets: local, "
                                "attached", name);
    const targets_file_t *f = api->fleet ? api->fleet->file : NULL;
    for (uint32_t i = 0; f && i < f->targets_count && n < sizeof msg; i++)
      n += (size_t)snprintf(msg + n, sizeof msg - n, ", %s", f->targets[i].name);
    if (n < sizeof msg) snprintf(msg + n, sizeof msg - n, ")");
    api_reply_error(api, from, "invalid", msg);
    return 0;
  }
  if (spec->nodes > t->max_nodes) {
    snprintf(msg, sizeof msg, "nodes %u: target %s has at most %u (max_nodes)", spec->nodes, name,
             t->max_nodes);
    api_reply_error(api, from, "invalid", msg);
    return 0;
  }
  uint64_t w = spec->workers_per_node ? spec->workers_per_node : 1;
  const struct {
    uint64_t need, have;
    const char *what;
  } r[] = {{w * spec->resources.gpus_per_worker, t->node.gpus, "GPUs"},
           {w * spec->resources.cpus_per_worker, t->node.cpus, "CPUs"},
           {w * spec->resources.memory_mb, t->node.memory_mb, "MB"}};
  for (size_t k = 0; k < DRV_ARRAY_LEN(r); k++)
    if (r[k].have && r[k].need > r[k].have) {
      snprintf(msg, sizeof msg, "resources: needs %" PRIu64 " %s per node; a node of target %s "
               "has %" PRIu64, r[k].need, r[k].what, name, r[k].have);
      api_reply_error(api, from, "invalid", msg);
      return 0;
    }
  return 1;
}

/* Whether some registered agent of the job's target and pool could hold one of its nodes
 * (the spec's resources per worker, times workers_per_node), or none is registered yet (it
 * may come). Otherwise refuses it with the numbers and returns 0. Node counts are not
 * checked: agents may register later. */
static int resources_fit(api_t *api, const sock_peer_t *from, const jobspec_t *spec,
                         const char *pool) {
  const char *target = spec->target;
  uint64_t w = spec->workers_per_node ? spec->workers_per_node : 1;
  uint64_t cpus = w * spec->resources.cpus_per_worker, gpus = w * spec->resources.gpus_per_worker;
  uint64_t mb = w * spec->resources.memory_mb, top_mb = 0;
  uint32_t seen = 0, top_cpus = 0, top_gpus = 0;
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    const agent_t *a = registry_at(api->reg, i);
    if (!a || strcmp(a->target, target) || strcmp(a->pool, pool)) continue;
    uint64_t a_mb = a->mem_bytes >> 20;
    if (a->cpus >= cpus && a->gpus >= gpus && a_mb >= mb) return 1;
    seen++;
    top_cpus = DRV_MAX(top_cpus, a->cpus);
    top_gpus = DRV_MAX(top_gpus, a->gpus);
    top_mb = DRV_MAX(top_mb, a_mb);
  }
  if (!seen) return 1;
  char msg[400], where[128], per[96] = "per worker";
  snprintf(where, sizeof where, "agent of target %s%s%s", target, *pool ? ", pool " : "", pool);
  if (w > 1) snprintf(per, sizeof per, "per node (%" PRIu64 " workers_per_node)", w);
  if (gpus > top_gpus)
    snprintf(msg, sizeof msg, "resources: needs %" PRIu64 " GPUs %s; the largest %s has %u", gpus,
             per, where, top_gpus);
  else if (cpus > top_cpus)
    snprintf(msg, sizeof msg, "resources: needs %" PRIu64 " CPUs %s; the largest %s has %u", cpus,
             per, where, top_cpus);
  else if (mb > top_mb)
    snprintf(msg, sizeof msg,
             "resources: needs %" PRIu64 " MB %s; the largest %s has %" PRIu64 " MB", mb, per,
             where, top_mb);
  else
    snprintf(msg, sizeof msg,
             "resources: needs %" PRIu64 " CPUs, %" PRIu64 " MB and %" PRIu64
             " GPUs %s; no %s has all three (%u registered)",
             cpus, mb, gpus, per, where, seen);
  api_reply_error(api, from, "invalid", msg);
  return 0;
}

void api_submit(api_t *api, const sock_peer_t *from, const proto_submit_t *sub) {
  jobspec_t *spec = NULL;
  char *stored = NULL, *canon = NULL;
  char resume_dir[1100] = "", lineage[33] = "";
  const char *owner = api->auth->secure ? auth_name(from) : "";
  if (sub->token && resubmitted(api, from, sub->token)) return;
  if (!within_quota(api, from, owner)) return;
  const char *yaml =
      submitted_spec(api, from, sub, &stored, resume_dir, sizeof resume_dir, lineage);
  if (!yaml) goto out;
  if (jobspec_parse(yaml, strlen(yaml), "submitted spec", NULL, 0, &spec) != DRV_OK ||
      jobspec_check_limits(spec, "submitted spec") != DRV_OK) {
    api_reply_error(api, from, "invalid", drv_last_error());
    goto out;
  }
  /* Workers run elsewhere, in other directories: paths must not depend on a cwd, and the
   * run directory must be the one its path names. */
  size_t clen;
  if (jobspec_check_submitted(spec, "submitted spec") != DRV_OK) {
    api_reply_error(api, from, "invalid", drv_last_error());
    goto out;
  }
  if (!target_fits(api, from, spec)) goto out;
  if (!resources_fit(api, from, spec, sub->pool ? sub->pool : "")) goto out;
  if (!priority_allowed(api, from, spec)) goto out;
  if (!job_has_room(api->jobs)) {
    api_reply_error(api, from, "busy", "too many active jobs; try again later");
    goto out;
  }
  if (jobspec_dump(spec, &canon, &clen) != DRV_OK) {
    api_reply_error(api, from, "internal", drv_last_error());
    goto out;
  }
  store_job_t sj = {0};
  const char *target = spec->target;
  snprintf(sj.name, sizeof sj.name, "%s", spec->name);
  snprintf(sj.target, sizeof sj.target, "%s", target);
  snprintf(sj.pool, sizeof sj.pool, "%s", sub->pool ? sub->pool : "");
  snprintf(sj.resume_dir, sizeof sj.resume_dir, "%s", resume_dir);
  snprintf(sj.owner, sizeof sj.owner, "%s", owner);
  if (lineage[0])
    snprintf(sj.lineage, sizeof sj.lineage, "%s", lineage);
  else
    drv_random_hex(sj.lineage, 16);
  drv_result_t rec = record_submission(api, spec, canon, sub->token ? sub->token : "", &sj);
  if (rec != DRV_OK) {
    log_error("submission of %s not recorded: %s", spec->name, drv_last_error());
    api_reply_error(api, from, rec == DRV_ERR_INVALID ? "invalid" : "internal", drv_last_error());
    goto out;
  }
  job_t *j = job_add(api->jobs, &sj, spec, &canon); /* room was checked above */
  if (sub->resume > 0)
    log_info("job %" PRId64 " (%s) queued: target %s, %u node(s), resuming job %" PRId64, j->id,
             j->name, target, j->nodes_wanted, sub->resume);
  else
    log_info("job %" PRId64 " (%s) queued: target %s, %u node(s)", j->id, j->name, target,
             j->nodes_wanted);
  if (api->fault_slow_submit_ms) usleep((useconds_t)api->fault_slow_submit_ms * 1000);
  reply_submitted(api, from, j->id, j->run_dir);
  job_publish_state(api->jobs, j, NULL);
out:
  free(canon);
  free(stored);
  jobspec_destroy(&spec);
}

// --- status, cancel, agents, get_spec ------------------------------------------------------

void api_get_spec(api_t *api, const sock_peer_t *from, int64_t id) {
  store_job_t sj;
  char *yaml = NULL;
  if (store_job_get(api->store, id, &sj) != DRV_OK) {
    api_reply_error(api, from, "not_found", drv_last_error());
    return;
  }
  if (!may_act(api, from, id, sj.owner, "get_spec of")) return;
  if (store_job_spec(api->store, id, &yaml) != DRV_OK) {
    api_reply_error(api, from, "not_found", drv_last_error());
    return;
  }
  proto_msg_t m;
  proto_msg_init(&m, PROTO_SPEC);
  m.u.spec = (proto_spec_t){.job = id, .spec = yaml, .run_dir = sj.run_dir};
  reply(api, from, &m);
  free(yaml);
}

typedef struct {
  api_t *api;
  proto_msg_t *m; /* the reply: its arena holds the records' strings */
  proto_job_t *jobs;
  uint32_t n, cap;
} job_list_t;

/* The live ranks of a placed job, into the reply's arena. */
static void fill_ranks(api_t *api, proto_msg_t *m, const job_t *j, proto_job_t *pj) {
  if (!j->ranks || job_state(j->phase) != JOB_RUNNING ||
      !(pj->ranks = proto_msg_alloc(m, j->world * sizeof *pj->ranks)))
    return;
  pj->ranks_count = j->world;
  for (uint32_t r = 0; r < j->world; r++) {
    const job_rank_t *s = &j->ranks[r];
    const agent_t *a = registry_at(api->reg, s->agent);
    pj->ranks[r] = (proto_rank_t){.rank = r,
                                  .agent = proto_msg_strdup(m, a ? a->agent_id : "?"),
                                  .host = proto_msg_strdup(m, a ? a->host : "?"),
                                  .step_ms = s->progress.ewma_step_ms,
                                  .compute_ms = progress_compute_ms(&s->progress),
                                  .wait_ms = s->progress.ewma_wait_ms,
                                  .data_ms = s->progress.ewma_data_ms,
                                  .straggler = (uint32_t)s->progress.straggler,
                                  .local_rank = s->local_rank,
                                  .gpu = proto_msg_strdup(m, registry_gpu_bus_id(a, s->device))};
  }
}

static void fill_job(api_t *api, proto_msg_t *m, const store_job_t *sj, proto_job_t *pj) {
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
  pj->owner = proto_msg_strdup(m, sj->owner);
  const job_t *j = job_find(api->jobs, sj->id);
  if (!j) return;
  /* live progress of an active job */
  pj->epoch = j->progress.epoch;
  pj->epochs = j->epochs;
  pj->step = j->progress.step;
  pj->steps_total = j->progress.steps_total;
  pj->loss = j->progress.loss;
  pj->samples_per_s = j->progress.samples_per_s;
  fill_ranks(api, m, j, pj);
  /* A queued job whose pool has no agent: how long for, which the stored reason (written
   * only when its words change) cannot say. */
  char why[512];
  fleet_reason(api->fleet, j, drv_now_ms(), why, sizeof why);
  if (j->phase == JOB_PHASE_QUEUED && why[0] && !strstr(sj->reason, "priority:"))
    pj->reason = proto_msg_strdup(m, why);
  int64_t away = drv_now_ms() - j->pool_seen_ms;
  if (j->phase == JOB_PHASE_QUEUED && j->pool[0] && away >= 1000) {
    snprintf(why, sizeof why,
             "pool %s: no agent registered for %" PRId64 " s (the job fails at %" PRId64 " s)",
             j->pool, away / 1000, drv_setting(DRV_SET_POOL_WAIT_MS) / 1000);
    pj->reason = proto_msg_strdup(m, why);
  }
}

static int collect_job(const store_job_t *sj, void *arg) {
  job_list_t *l = arg;
  if (l->n == l->cap) return 1;
  fill_job(l->api, l->m, sj, &l->jobs[l->n++]);
  return 0;
}

void api_status(api_t *api, const sock_peer_t *from, const proto_status_t *st) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_JOBS);
  job_list_t l = {.api = api, .m = &m};
  if (st->job > 0) {
    store_job_t sj;
    if (store_job_get(api->store, st->job, &sj) != DRV_OK) {
      api_reply_error(api, from, "not_found", drv_last_error());
      return;
    }
    l.cap = 1;
    l.jobs = proto_msg_alloc(&m, sizeof *l.jobs);
    if (l.jobs) fill_job(api, &m, &sj, &l.jobs[l.n++]);
  } else {
    l.cap = st->limit ? DRV_MIN(st->limit, 1000u) : 20;
    l.jobs = proto_msg_alloc(&m, l.cap * sizeof *l.jobs);
    if (l.jobs && store_job_list(api->store, l.cap, collect_job, &l) != DRV_OK) {
      proto_msg_fini(&m);
      api_reply_error(api, from, "internal", drv_last_error());
      return;
    }
  }
  m.u.jobs.jobs = l.jobs;
  m.u.jobs.jobs_count = l.n;
  reply(api, from, &m);
  proto_msg_fini(&m);
}

void api_cancel(api_t *api, const sock_peer_t *from, int64_t id) {
  job_t *j = job_find(api->jobs, id);
  if (!j) {
    store_job_t sj;
    char msg[256];
    if (store_job_get(api->store, id, &sj) == DRV_OK)
      snprintf(msg, sizeof msg, "job %" PRId64 " already %s", id, store_state_name(sj.state));
    else
      snprintf(msg, sizeof msg, "job %" PRId64 ": no such job", id);
    api_reply_error(api, from, "not_found", msg);
    return;
  }
  if (!may_act(api, from, id, j->owner, "cancel")) return;
  job_cancel(api->jobs, j);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_OK);
  reply(api, from, &m);
}

/* Agent a's GPUs, with their use at its last heartbeat, into the reply's arena. */
static void fill_devices(proto_msg_t *m, const agent_t *a, proto_agent_t *pa) {
  if (!a->gpus || !(pa->devices = proto_msg_alloc(m, a->gpus * sizeof *pa->devices))) return;
  pa->devices_count = a->gpus;
  for (uint32_t g = 0; g < a->gpus; g++) {
    const registry_gpu_t *rg = &a->gpu[g];
    pa->devices[g] = (proto_agent_gpu_t){.index = rg->index,
                                         .name = rg->name,
                                         .pci_bus_id = rg->pci_bus_id,
                                         .mem_bytes = rg->mem_bytes,
                                         .mem_used_bytes = rg->mem_used_bytes,
                                         .util_pct = rg->util_pct,
                                         .measured = (uint32_t)rg->measured};
  }
}

void api_agents(api_t *api, const sock_peer_t *from) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_AGENT_LIST);
  proto_agent_t *list = proto_msg_alloc(&m, REGISTRY_MAX_AGENTS * sizeof *list);
  uint32_t n = 0;
  int64_t now = drv_now_ms();
  for (int i = 0; list && i < REGISTRY_MAX_AGENTS; i++) {
    const agent_t *a = registry_at(api->reg, i);
    if (!a) continue;
    list[n++] = (proto_agent_t){.agent_id = a->agent_id,
                                .host = a->host,
                                .target = a->target,
                                .state = a->job ? "busy" : "idle",
                                .cpus = a->cpus,
                                .gpus = a->gpus,
                                .mem_bytes = a->mem_bytes,
                                .job = a->job,
                                .last_seen_s = (double)(now - a->last_seen_ms) / 1000.0,
                                .workers = a->workers};
    fill_devices(&m, a, &list[n - 1]);
  }
  m.u.agent_list.agents = list;
  m.u.agent_list.agents_count = n;
  reply(api, from, &m);
  proto_msg_fini(&m);
}

void api_targets(api_t *api, const sock_peer_t *from) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_TARGET_LIST);
  fleet_list(api->fleet, &m, drv_now_ms());
  reply(api, from, &m);
  proto_msg_fini(&m);
}

#define LOG_CHUNK_MAX (256u << 10)

void api_logs(api_t *api, const sock_peer_t *from, const proto_logs_t *l) {
  store_job_t sj;
  if (store_job_get(api->store, l->job, &sj) != DRV_OK) {
    api_reply_error(api, from, "not_found", drv_last_error());
    return;
  }
  if (!may_act(api, from, l->job, sj.owner, "logs of")) return;
  char path[1100];
  snprintf(path, sizeof path, "%s/%" PRId64 ".log", api->jobs->log_dir, l->job);
  char *buf = malloc(LOG_CHUNK_MAX + 1);
  if (!buf) {
    api_reply_error(api, from, "busy", "out of memory");
    return;
  }
  ssize_t n = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd >= 0) n = pread(fd, buf, LOG_CHUNK_MAX, (off_t)l->offset);
  if (fd >= 0) close(fd);
  if (n < 0) n = 0;
  /* Whole lines only (unless one line is longer than a chunk). */
  ssize_t keep = n;
  while (keep > 0 && buf[keep - 1] != '\n') keep--;
  if (keep == 0) keep = n == LOG_CHUNK_MAX ? n : 0;
  buf[keep] = '\0';
  proto_msg_t m;
  proto_msg_init(&m, PROTO_LOG_CHUNK);
  m.u.log_chunk = (proto_log_chunk_t){.job = l->job,
                                      .offset = l->offset + (uint64_t)keep,
                                      .text = buf,
                                      .ended = job_find(api->jobs, l->job) == NULL};
  reply(api, from, &m);
  free(buf);
}
