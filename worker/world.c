/* world.c: see world.h. */
#include "worker/world.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "collective/nccl_reducer.h"
#include "collective/ring.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "train/trainer.h"
#include "worker/report.h"
#include "worker/state.h"
#include "worker/worker_int.h"

// --- The coordinator's messages ------------------------------------------------------------

drv_result_t world_check_abort(worker_t *w) {
  for (;;) {
    proto_msg_t m;
    drv_result_t rc = sock_recv(w->sock, NULL, &m, 0);
    if (rc == DRV_ERR_TIMEOUT) {
      proto_msg_fini(&m);
      return DRV_OK;
    }
    if (rc == DRV_OK && m.type == PROTO_ABORT && m.u.abort.job == w->cfg->job) {
      rc = drv_error(DRV_ERR_CANCELLED, "aborted by the coordinator: %s",
                     m.u.abort.reason ? m.u.abort.reason : "no reason given");
      proto_msg_fini(&m);
      return rc;
    }
    if (rc == DRV_OK && m.type == PROTO_PAUSE && m.u.pause.job == w->cfg->job &&
        m.u.pause.generation == w->generation) {
      log_info("the coordinator asks for a re-formation at the next commit: %s",
               m.u.pause.reason ? m.u.pause.reason : "");
      w->pause_pending = 1;
    }
    if (rc != DRV_OK) log_warn("dropped a frame from the coordinator: %s", drv_last_error());
    proto_msg_fini(&m);
  }
}

/* Waits for the next message from the coordinator that is not chatter. */
drv_result_t world_wait(worker_t *w, int64_t deadline_ms, const char *what, proto_msg_t *m) {
  for (;;) {
    int64_t left = deadline_ms - drv_now_ms();
    if (left <= 0) return drv_error(DRV_ERR_TIMEOUT, "no %s from the coordinator in time", what);
    drv_result_t rc = sock_recv(w->sock, NULL, m, (int)left);
    if (rc == DRV_OK && m->type == PROTO_ABORT) {
      rc = drv_error(DRV_ERR_CANCELLED, "aborted while waiting for %s: %s", what,
                     m->u.abort.reason ? m->u.abort.reason : "no reason given");
      proto_msg_fini(m);
      return rc;
    }
    if (rc == DRV_OK) return DRV_OK;
    if (rc != DRV_ERR_TIMEOUT)
      log_warn("dropped a frame from the coordinator: %s", drv_last_error());
    proto_msg_fini(m);
  }
}

// --- Gradient sums -------------------------------------------------------------------------

/* Remembers when the ring broke. */
drv_result_t world_sum(worker_t *w, float *data, size_t count) {
  drv_result_t rc = ring_allreduce(w->ring, data, count);
  if (rc != DRV_OK) w->ring_broken = 1;
  return rc;
}

/* A CPU world's gradient sums: the whole buffer (gradients and the loss pair) in one ring
 * all-reduce once the backward pass is done (the CPU backend runs synchronously). Time in
 * it is time spent waiting for the slowest rank (and moving bytes). */
static drv_result_t ring_finish(void *ctx) {
  worker_t *w = ctx;
  size_t n;
  float *g = trainer_grads(w->trainer, &n);
  double t0 = drv_now_s();
  drv_result_t rc = world_sum(w, g, n + 2);
  report_wait(&w->report, drv_now_s() - t0);
  return rc;
}

/* A sum of one value over the ranks, on the host ring (the trainer's agree hook). */
static drv_result_t ring_agree(void *ctx, double *value) {
  worker_t *w = ctx;
  float v = (float)*value;
  DRV_CHECK(world_sum(w, &v, 1));
  *value = v;
  return DRV_OK;
}

/* While an NCCL wait spins: a closed ring link (a peer died, or its ring broke) or an abort
 * from the coordinator ends it at once instead of at the deadline. */
static drv_result_t nccl_poll(void *ctx) {
  worker_t *w = ctx;
  drv_result_t rc = ring_check(w->ring);
  if (rc != DRV_OK) return rc;
  return world_check_abort(w);
}

/* After `start`: the gradient sums of this world. A CPU world sums over the ring; a GPU
 * world of two or more joins the NCCL communicator whose id rank 0 sent (ranks on one GPU
 * first take NCCL_HOSTIDs of their own). Every rank must train on the same kind of device. */
static drv_result_t join_sums(worker_t *w, const proto_start_t *st) {
  trainer_set_reducer(w->trainer, NULL); /* frees graphs holding the old communicator */
  nccl_reducer_destroy(&w->nccl);
  if (w->world < 2) return DRV_OK;
  bool shared = false;
  for (uint32_t r = 0; r < st->gpus_count && r < w->world; r++) {
    const char *k = st->gpus[r] ? st->gpus[r] : "";
    if (!!*k != !!w->gpu_key[0])
      return drv_error(DRV_ERR_INVALID,
                       "rank %u trains on %s but rank %u on %s: a job's ranks must all use GPUs "
                       "or all the CPU (set train.backend)",
                       r, *k ? "a GPU" : "the CPU", w->rank, w->gpu_key[0] ? "a GPU" : "the CPU");
    if (r != w->rank && *k && strcmp(k, w->gpu_key) == 0) shared = true;
  }
  if (!w->gpu) {
    w->ring_red = (trainer_reducer_t){.ctx = w, .finish = ring_finish};
    trainer_set_reducer(w->trainer, &w->ring_red);
    return DRV_OK;
  }
  if (!st->nccl_id || !*st->nccl_id)
    return drv_error(DRV_ERR_PROTO, "start carries no NCCL id for a GPU world of %u", w->world);
  if (shared) {
    char tag[160];
    snprintf(tag, sizeof tag, "drover-%s-%d", w->gpu_key, (int)getpid());
    for (char *q = tag; *q; q++)
      if (*q == '/') *q = '-';
    nccl_reducer_share_device(
        tag, strcmp(w->cfg->host, "127.0.0.1") == 0 || strcmp(w->cfg->host, "localhost") == 0);
  }
  size_t np;
  float *grads = trainer_grads(w->trainer, &np);
  nccl_config_t nc = {.id_hex = st->nccl_id,
                      .rank = w->rank,
                      .world = w->world,
                      .be = w->gpu,
                      .grads = grads,
                      .count = np,
                      .bucket_bytes = (size_t)w->spec->train.allreduce_bucket_mb << 20,
                      .dtype = w->spec->train.allreduce_dtype == SPEC_DTYPE_BF16 ? BE_BF16 : BE_F32,
                      .timeout_ms = drv_setting(DRV_SET_RING_TIMEOUT_MS),
                      .poll = nccl_poll,
                      .poll_ctx = w,
                      .agree = ring_agree,
                      .agree_ctx = w};
  DRV_CHECK(nccl_reducer_new(&nc, &w->nccl));
  trainer_set_reducer(w->trainer, nccl_reducer_hooks(w->nccl));
  return DRV_OK;
}

// --- Rendezvous ----------------------------------------------------------------------------

/* Who may be this generation's ring neighbours: ranks that prove the job's ring key, from
 * the assignment. An assignment without one (an older coordinator, a set-up without
 * security) gets a ring that checks its peers by the public tag only, and only when
 * DROVER_INSECURE=1 says so: otherwise the ring is refused and the worker fails. */
static drv_result_t ring_auth(worker_t *w, ring_auth_t *a) {
  const char *hex = w->cfg->ring_key;
  *a = (ring_auth_t){.job = w->cfg->job, .generation = w->generation};
  if (hex && *hex) {
    drv_result_t rc = ring_key_parse(hex, w->ring_key);
    if (rc != DRV_OK) return drv_error_prefix(rc, "the assignment's ring_key");
    a->key = w->ring_key;
    return DRV_OK;
  }
  if (drv_setting(DRV_SET_INSECURE) != 1)
    return drv_error(DRV_ERR_INVALID,
                     "the assignment carries no ring key, so ring peers cannot be "
                     "authenticated: refusing to connect the ring (DROVER_INSECURE=1 would "
                     "connect it by the public tag only)");
  log_warn(
      "INSECURE: no ring key was assigned and DROVER_INSECURE=1: rank %u's ring checks its "
      "peers by the public tag (job << 32 | generation) only, so anyone who can reach its "
      "ring port can send it gradients or take them",
      w->rank);
  return DRV_OK;
}

/* DROVER_FAULT_RING_WAIT_MS, for tests: the ring port stays open this long before the ring
 * connects. */
static void fault_ring_wait(void) {
  int64_t ms = drv_setting(DRV_SET_FAULT_RING_WAIT_MS);
  if (ms <= 0) return;
  log_warn("fault injection: %" PRId64 " ms before the ring connects (DROVER_FAULT_RING_WAIT_MS)",
           ms);
  usleep((useconds_t)ms * 1000);
}

/* This rank's place in the world that `reform` names: the report names it from now on. */
static void take_place(worker_t *w, const proto_reform_t *rf) {
  w->generation = rf->generation;
  w->rank = rf->rank;
  w->world = rf->world;
  report_as(&w->report, w->generation, w->rank);
}

drv_result_t world_rendezvous(worker_t *w) {
  const proto_assign_t *c = w->cfg;
  ring_destroy(&w->ring);
  if (w->trainer) trainer_set_reducer(w->trainer, NULL);
  nccl_reducer_destroy(&w->nccl);
  w->ring_broken = 0;
  w->pause_pending = 0; /* a pause of an older world means nothing in this one */
  ring_auth_t auth = {.job = c->job, .generation = w->generation};
  if (w->world > 1) DRV_CHECK(ring_auth(w, &auth));
  DRV_CHECK(ring_listen(c->host, c->host, &w->ring));
  log_info("ring port %s (generation %u, rank %u of %u)", ring_address(w->ring), w->generation,
           w->rank, w->world);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_RENDEZVOUS);
  m.u.rendezvous.job = c->job;
  m.u.rendezvous.generation = w->generation;
  m.u.rendezvous.rank = w->rank;
  m.u.rendezvous.pid = (uint32_t)getpid();
  m.u.rendezvous.addr = ring_address(w->ring);
  m.u.rendezvous.gpu = w->gpu_key;
  w->nccl_id[0] = '\0';
  if (w->gpu && w->rank == 0 && w->world > 1) {
    DRV_CHECK(nccl_reducer_new_id(w->nccl_id));
    m.u.rendezvous.nccl_id = w->nccl_id;
  }
  report_send(&w->report, &m);

  int64_t deadline = drv_now_ms() + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
  for (;;) {
    DRV_CHECK(world_wait(w, deadline, "start", &m));
    if (m.type == PROTO_START && m.u.start.job == c->job && m.u.start.generation == w->generation)
      break;
    if (m.type == PROTO_REFORM && m.u.reform.job == c->job &&
        m.u.reform.generation > w->generation) {
      /* A rank was lost before everyone checked in: check in again, in the new world. */
      take_place(w, &m.u.reform);
      proto_msg_fini(&m);
      log_info("re-formed before start: generation %u, rank %u of %u", w->generation, w->rank,
               w->world);
      DRV_CHECK(report_open_rank0(&w->report, w->cfg->run_dir, w->spec_yaml));
      return world_rendezvous(w);
    }
    proto_msg_fini(&m);
  }
  drv_result_t rc = DRV_OK;
  if (w->world > 1) fault_ring_wait();
  if (m.u.start.world != w->world || m.u.start.peers_count != w->world)
    rc = drv_error(DRV_ERR_PROTO, "start names %u peers for a world of %u", m.u.start.peers_count,
                   w->world);
  else
    rc = ring_connect(w->ring, w->rank, w->world, (const char *const *)m.u.start.peers, &auth,
                      (int)drv_setting(DRV_SET_RING_CONNECT_TIMEOUT_MS));
  if (rc != DRV_OK) {
    w->ring_broken = 1;
  } else if ((rc = join_sums(w, &m.u.start)) != DRV_OK && w->nccl == NULL && w->gpu != NULL &&
             rc != DRV_ERR_INVALID) {
    w->ring_broken = 1; /* NCCL could not join (a peer is missing): re-form like a ring */
  }
  proto_msg_fini(&m);
  return rc;
}

// --- State: agreement, commits -------------------------------------------------------------

/* The ring carries rank 0's state: the other ranks contribute -0.0, the identity of IEEE
 * addition for every value (+0 + -0 = +0, -0 + -0 = -0), so the sum is bitwise rank 0's
 * state. */
drv_result_t world_sync_state(worker_t *w, int after_failure, uint64_t *step) {
  /* have state, step low 24 bits, step high bits, evaluated at that step */
  float head[4] = {-0.0f, -0.0f, -0.0f, -0.0f};
  if (w->rank == 0) {
    int found = after_failure;
    uint64_t s = w->commit_step;
    if (!after_failure)
      DRV_CHECK(
          state_load(w->trainer, w->cfg->run_dir, w->cfg->resume_dir, w->cfg->lineage, &found, &s));
    if (found) {
      head[0] = 1.0f;
      head[1] = (float)(s & 0xffffff);
      head[2] = (float)(s >> 24);
      /* Rank 0 reported an evaluation at the step it rolled back to: a newcomer must not
       * evaluate there alone, nor anyone again. (Evaluated but not reported, by a rank
       * that was not rank 0 then: everyone evaluates, so the epoch's record is not lost.) */
      head[3] = after_failure && w->eval_reported == s ? 1.0f : 0.0f;
    }
  }
  if (w->world > 1) {
    DRV_CHECK(world_sum(w, head, 4));
    if (head[0] == 1.0f) {
      size_t np, no;
      trainer_params(w->trainer, &np);
      trainer_opt_state(w->trainer, &no);
      float *host = malloc(sizeof *host * (np + no));
      if (!host) return drv_error(DRV_ERR_NOMEM, "state broadcast: out of memory");
      drv_result_t rc = DRV_OK;
      if (w->rank == 0)
        rc = trainer_get_state(w->trainer, host, host + np);
      else
        for (size_t i = 0; i < np + no; i++) host[i] = -0.0f;
      if (rc == DRV_OK) rc = world_sum(w, host, np + no);
      if (rc == DRV_OK && w->rank != 0) rc = trainer_set_state(w->trainer, host, host + np);
      free(host);
      DRV_CHECK(rc);
    }
  }
  *step = head[0] == 1.0f ? (uint64_t)head[1] + ((uint64_t)head[2] << 24) : 0;
  w->last_eval = w->eval_reported = head[3] == 1.0f ? *step : 0;
  return DRV_OK;
}

drv_result_t world_commit(worker_t *w, uint64_t step) {
  DRV_CHECK(trainer_commit(w->trainer));
  w->commit_step = step;
  return DRV_OK;
}

drv_result_t world_pause_if_asked(worker_t *w, uint64_t step) {
  /* A planned re-formation (new agents, one leaving) happens at a commit that every
   * rank agrees on: any rank that was asked raises the flag. */
  float flag = w->pause_pending ? 1.0f : -0.0f;
  DRV_CHECK(world_sum(w, &flag, 1));
  if (flag > 0) {
    w->pause_pending = 0;
    w->planned = 1;
    w->ring_broken = 1;
    return drv_error(DRV_ERR_CANCELLED, "planned re-formation at step %" PRIu64, step);
  }
  return DRV_OK;
}

// --- Re-formation --------------------------------------------------------------------------

drv_result_t world_step_failed(worker_t *w, drv_result_t rc) {
  if (w->nccl && (rc == DRV_ERR_NCCL || rc == DRV_ERR_TIMEOUT || rc == DRV_ERR_SYS))
    w->ring_broken = 1;
  return rc;
}

drv_result_t world_recover(worker_t *w, uint64_t *step) {
  char reason[512];
  snprintf(reason, sizeof reason, "%s", drv_last_error());
  ring_destroy(&w->ring);
  trainer_set_reducer(w->trainer, NULL);
  nccl_reducer_destroy(&w->nccl); /* aborted already when it failed */
  /* Only a ring broken again in the new world (connect, state) is worth another try: an
   * abort or a coordinator that never answers ends the worker. */
  w->ring_broken = 0;
  DRV_CHECK(trainer_rollback(w->trainer));
  *step = w->commit_step;
  log_warn("ring broke (%s): rolled back to step %" PRIu64 ", waiting for the coordinator", reason,
           *step);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_LOST);
  m.u.lost = (proto_lost_t){.job = w->cfg->job,
                            .generation = w->generation,
                            .rank = w->rank,
                            .step = *step,
                            .reason = reason};
  report_send(&w->report, &m);
  /* The coordinator may wait for hung peers' rings to time out, and for agents. */
  int64_t deadline = drv_now_ms() + 2 * drv_setting(DRV_SET_RING_TIMEOUT_MS) +
                     (int64_t)w->spec->rejoin_timeout_s * 1000;
  for (;;) {
    DRV_CHECK(world_wait(w, deadline, "reform", &m));
    if (m.type == PROTO_REFORM && m.u.reform.job == w->cfg->job &&
        m.u.reform.generation > w->generation)
      break;
    proto_msg_fini(&m);
  }
  take_place(w, &m.u.reform);
  proto_msg_fini(&m);
  log_info("re-formed: generation %u, rank %u of %u", w->generation, w->rank, w->world);
  DRV_CHECK(report_open_rank0(&w->report, w->cfg->run_dir, w->spec_yaml));
  DRV_CHECK(world_rendezvous(w));
  DRV_CHECK(world_sync_state(w, 1, step));
  DRV_CHECK(world_commit(w, *step));
  report_rec_reform_t rec = {.step = *step, .world = w->world, .generation = w->generation};
  report_rec_reform(&w->report, &rec);
  return DRV_OK;
}
