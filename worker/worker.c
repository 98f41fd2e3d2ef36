/* worker.c: see worker.h.
 *
 * One rank's life: connect to the coordinator, load the data, rendezvous (ring port,
 * `rendezvous`, `start`, ring connect), agree on the starting state (sync_state), then
 * train. Every train.commit_every steps the parameters, optimizer state and cursor are
 * copied aside (the commit). When the ring breaks (a peer died, hung, or closed its links
 * after its own ring broke), the worker closes its ring, which breaks its other neighbour's
 * link in turn so every survivor learns within moments, rolls back to its commit, reports
 * `lost`, and waits for the coordinator: `reform` (a new rank and world, a new generation:
 * rendezvous again and go on from rank 0's commit) or `abort`.
 */
#include "worker/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/checkpoint.h"
#include "train/dataset.h"
#include "collective/nccl_reducer.h"
#include "collective/ring.h"
#include "train/shard.h"
#include "train/trainer.h"
#include "common/jobspec.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "kernels/backend.h"
#include "worker/report.h"
#include "worker/state.h"
#include "worker/worker_int.h"

typedef struct {
  uint32_t n, B, spe, features, classes, cap;
  uint64_t total;
  float *x;
  int32_t *y;
  uint32_t *perm;
  int64_t perm_epoch; /* the epoch perm holds, -1 before the first */
  /* The step staged in the trainer (UINT64_MAX: none) and its sample ids by step parity,
   * for the audit when that step starts (the next one is staged meanwhile). */
  uint64_t staged_step;
  uint32_t *ids[2], nids[2], batch[2];
} plan_t;

// --- Helpers -------------------------------------------------------------------------------

/* A sum over the ring that remembers when the ring broke. */
static drv_result_t ring_sum(worker_t *w, float *data, size_t count) {
  drv_result_t rc = ring_allreduce(w->ring, data, count);
  if (rc != DRV_OK) w->ring_broken = 1;
  return rc;
}

/* Non-blocking look at the coordinator's messages: `abort` ends the worker, `pause` asks
 * for a planned re-formation at the next commit. */
static drv_result_t check_abort(worker_t *w) {
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

// --- Setup ---------------------------------------------------------------------------------

static drv_result_t load_data(worker_t *w) {
  const jobspec_t *s = w->spec;
  if (s->data.format == SPEC_DATA_IDX) {
    DRV_CHECK(dataset_load_idx(s->data.train->images, s->data.train->labels, &w->train));
    DRV_CHECK(dataset_load_idx(s->data.test->images, s->data.test->labels, &w->test));
    if (dataset_features(w->train) != dataset_features(w->test))
      return drv_error(DRV_ERR_INVALID, "%s has %u features per sample but %s has %u",
                       s->data.train->images, dataset_features(w->train), s->data.test->images,
                       dataset_features(w->test));
  } else {
    const spec_synthetic_t *y = s->data.synthetic;
    DRV_CHECK(dataset_synthetic(y->train_samples, y->features, y->classes, y->seed, 0, &w->train));
    DRV_CHECK(dataset_synthetic(y->test_samples, y->features, y->classes, y->seed, 1, &w->test));
  }
  return DRV_OK;
}

/* Opens the link to the coordinator first, so that any later failure is reported. */
static drv_result_t connect_coord(worker_t *w) {
  const proto_assign_t *c = w->cfg;
  char ep[256], id[96];
  DRV_CHECK(sock_endpoint(c->coordinator, SOCK_AGENTS, ep, sizeof ep));
  if (!(w->ctx = sock_ctx_new())) return DRV_ERR_ZMQ;
  snprintf(id, sizeof id, "w-%" PRId64 "-%u-%u-%d", c->job, c->generation, c->rank, (int)getpid());
  /* A long linger lets `done` or `failed` leave before the process does. */
  w->sock = sock_new(w->ctx, SOCK_DEALER, PROTO_AT_WORKER,
                     &(sock_opts_t){.identity = id, .linger_ms = 2000});
  if (!w->sock) return DRV_ERR_ZMQ;
  w->report.sock = w->sock; /* what the rank reports goes out on it from now on */
  return sock_connect(w->sock, ep);
}

/* Waits for the next message from the coordinator that is not chatter. */
static drv_result_t wait_coord(worker_t *w, int64_t deadline_ms, const char *what, proto_msg_t *m) {
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

/* A CPU world's gradient sums: the whole buffer (gradients and the loss pair) in one ring
 * all-reduce once the backward pass is done (the CPU backend runs synchronously). Time in
 * it is time spent waiting for the slowest rank (and moving bytes). */
static drv_result_t ring_finish(void *ctx) {
  worker_t *w = ctx;
  size_t n;
  float *g = trainer_grads(w->trainer, &n);
  double t0 = drv_now_s();
  drv_result_t rc = ring_sum(w, g, n + 2);
  report_wait(&w->report, drv_now_s() - t0);
  return rc;
}

/* A sum of one value over the ranks, on the host ring (the trainer's agree hook). */
static drv_result_t ring_agree(void *ctx, double *value) {
  worker_t *w = ctx;
  float v = (float)*value;
  DRV_CHECK(ring_sum(w, &v, 1));
  *value = v;
  return DRV_OK;
}

/* While an NCCL wait spins: a closed ring link (a peer died, or its ring broke) or an abort
 * from the coordinator ends it at once instead of at the deadline. */
static drv_result_t nccl_poll(void *ctx) {
  worker_t *w = ctx;
  drv_result_t rc = ring_check(w->ring);
  if (rc != DRV_OK) return rc;
  return check_abort(w);
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

/* This rank's place in the world that `reform` names: the report names it from now on. */
static void take_place(worker_t *w, const proto_reform_t *rf) {
  w->generation = rf->generation;
  w->rank = rf->rank;
  w->world = rf->world;
  report_as(&w->report, w->generation, w->rank);
}

/* Checks in with the coordinator (this generation, this rank), connects the ring to every
 * rank's address from `start`, and joins the world's gradient sums. */
static drv_result_t rendezvous(worker_t *w) {
  const proto_assign_t *c = w->cfg;
  ring_destroy(&w->ring);
  if (w->trainer) trainer_set_reducer(w->trainer, NULL);
  nccl_reducer_destroy(&w->nccl);
  w->ring_broken = 0;
  w->pause_pending = 0; /* a pause of an older world means nothing in this one */
  DRV_CHECK(ring_listen(c->host, c->host, &w->ring));
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
    DRV_CHECK(wait_coord(w, deadline, "start", &m));
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
      return rendezvous(w);
    }
    proto_msg_fini(&m);
  }
  drv_result_t rc = DRV_OK;
  if (m.u.start.world != w->world || m.u.start.peers_count != w->world)
    rc = drv_error(DRV_ERR_PROTO, "start names %u peers for a world of %u", m.u.start.peers_count,
                   w->world);
  else
    rc = ring_connect(w->ring, w->rank, w->world, (const char *const *)m.u.start.peers,
                      ((uint64_t)c->job << 32) | w->generation,
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

// --- State: commits, agreement --------------------------------------------------------------

/* Every rank agrees on the state to go on from, which rank 0 provides: after a
 * re-formation its commit (already rolled back into its trainer); at a first start the
 * newest usable checkpoint, or nothing (the seeded init is the same on every rank). The
 * ring carries it: the other ranks contribute -0.0, the identity of IEEE addition for every
 * value (+0 + -0 = +0, -0 + -0 = -0), so the sum is bitwise rank 0's state. *step receives
 * the steps already done. */
static drv_result_t sync_state(worker_t *w, int after_failure, uint64_t *step) {
  /* have state, step low 24 bits, step high bits, evaluated at that step */
  float head[4] = {-0.0f, -0.0f, -0.0f, -0.0f};
  if (w->rank == 0) {
    int found = after_failure;
    uint64_t s = w->commit_step;
    if (!after_failure)
      DRV_CHECK(state_load(w->trainer, w->cfg->run_dir, w->cfg->resume_dir, &found, &s));
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
    DRV_CHECK(ring_sum(w, head, 4));
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
      if (rc == DRV_OK) rc = ring_sum(w, host, np + no);
      if (rc == DRV_OK && w->rank != 0) rc = trainer_set_state(w->trainer, host, host + np);
      free(host);
      DRV_CHECK(rc);
    }
  }
  *step = head[0] == 1.0f ? (uint64_t)head[1] + ((uint64_t)head[2] << 24) : 0;
  w->last_eval = w->eval_reported = head[3] == 1.0f ? *step : 0;
  return DRV_OK;
}

/* Keeps the state after `step` steps aside (device memory), to roll back to. */
static drv_result_t commit(worker_t *w, uint64_t step) {
  DRV_CHECK(trainer_commit(w->trainer));
  w->commit_step = step;
  return DRV_OK;
}

/* The ring broke: close it (its other neighbour learns at once), roll back to the commit,
 * report `lost`, and wait for the coordinator's `reform` (or `abort`). On DRV_OK the
 * worker is a rank of the new world, in step with it at *step. */
static drv_result_t recover(worker_t *w, uint64_t *step) {
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
    DRV_CHECK(wait_coord(w, deadline, "reform", &m));
    if (m.type == PROTO_REFORM && m.u.reform.job == w->cfg->job &&
        m.u.reform.generation > w->generation)
      break;
    proto_msg_fini(&m);
  }
  take_place(w, &m.u.reform);
  proto_msg_fini(&m);
  log_info("re-formed: generation %u, rank %u of %u", w->generation, w->rank, w->world);
  DRV_CHECK(report_open_rank0(&w->report, w->cfg->run_dir, w->spec_yaml));
  DRV_CHECK(rendezvous(w));
  DRV_CHECK(sync_state(w, 1, step));
  DRV_CHECK(commit(w, *step));
  report_rec_reform_t rec = {.step = *step, .world = w->world, .generation = w->generation};
  report_rec_reform(&w->report, &rec);
  return DRV_OK;
}

// --- Training ------------------------------------------------------------------------------

/* Test loss and accuracy over the whole test split, each rank taking a contiguous part. */
static drv_result_t evaluate(worker_t *w, const plan_t *p, double *loss, double *acc) {
  uint32_t n = dataset_count(w->test), W = w->world, r = w->rank;
  uint32_t lo = (uint32_t)((uint64_t)n * r / W), hi = (uint32_t)((uint64_t)n * (r + 1) / W);
  double loss_sum = 0;
  uint32_t correct = 0;
  uint32_t *idx = malloc(sizeof *idx * p->cap);
  if (!idx) return drv_error(DRV_ERR_NOMEM, "evaluation: out of memory");
  drv_result_t rc = DRV_OK;
  for (uint32_t i = lo; i < hi; i += p->cap) {
    uint32_t k = DRV_MIN(p->cap, hi - i);
    for (uint32_t j = 0; j < k; j++) idx[j] = i + j;
    dataset_gather(w->test, idx, k, p->x, p->y);
    DRV_CHECK_GOTO(trainer_evaluate(w->trainer, p->x, p->y, k, &loss_sum, &correct), rc, out);
  }
  float sums[2] = {(float)loss_sum, (float)correct};
  DRV_CHECK_GOTO(ring_sum(w, sums, 2), rc, out);
  *loss = sums[0] / n;
  *acc = sums[1] / n;
out:
  free(idx);
  return rc;
}

typedef struct {
  uint64_t last_ckpt; /* the step of the last checkpoint */
  double test_loss, test_acc, train_s;
  uint64_t global_samples;
} progress_t;

static drv_result_t eval_epoch(worker_t *w, const plan_t *p, progress_t *g, uint64_t step,
                               uint32_t spe) {
  uint32_t epoch = (uint32_t)((step - 1) / spe);
  DRV_CHECK(evaluate(w, p, &g->test_loss, &g->test_acc));
  w->last_eval = step;
  if (w->fault_kill_after_eval == epoch + 1) {
    log_warn(
        "fault injection: killed after the evaluation of epoch %u "
        "(DROVER_FAULT_KILL_AFTER_EVAL)",
        epoch + 1);
    raise(SIGKILL);
  }
  if (w->rank != 0) return DRV_OK;
  w->eval_reported = step;
  report_eval(&w->report, epoch, step, g->test_loss, g->test_acc);
  return DRV_OK;
}

/* Gathers the samples of `step` into the trainer's staging buffers and stages them: on a
 * GPU the copy starts at once on the copy stream. */
static drv_result_t stage_step(worker_t *w, plan_t *p, uint64_t step) {
  uint32_t epoch = (uint32_t)(step / p->spe), si = (uint32_t)(step % p->spe);
  if (p->perm_epoch != epoch) {
    shard_permutation(w->spec->train.seed, epoch, p->n, p->perm);
    p->perm_epoch = epoch;
  }
  uint32_t begin, count, batch;
  shard_slice(p->n, p->B, si, w->rank, w->world, &begin, &count, &batch);
  float *x;
  int32_t *y;
  trainer_next_batch(w->trainer, &x, &y);
  dataset_gather(w->train, p->perm + begin, count, x, y);
  memcpy(p->ids[step & 1], p->perm + begin, sizeof(uint32_t) * count);
  p->nids[step & 1] = count;
  p->batch[step & 1] = batch;
  DRV_CHECK(trainer_stage(w->trainer, count, batch, step, p->total));
  p->staged_step = step;
  return DRV_OK;
}

/* A failed step: an NCCL failure (the communicator is aborted by then) is a lost peer, as
 * a broken ring is. */
static drv_result_t step_failed(worker_t *w, drv_result_t rc) {
  if (w->nccl && (rc == DRV_ERR_NCCL || rc == DRV_ERR_TIMEOUT || rc == DRV_ERR_SYS))
    w->ring_broken = 1;
  return rc;
}

/* Rank 0 writes a checkpoint of `step` steps done, keeps the newest keep_checkpoints, and
 * tells the coordinator it is durable. */
static drv_result_t save_checkpoint(worker_t *w, uint64_t step, uint32_t spe) {
  ckpt_meta_t meta = {.step = step,
                      .epoch = (uint32_t)(step / spe),
                      .world = w->world,
                      .seed = w->spec->train.seed,
                      .job = w->cfg->job};
  char path[1300];
  DRV_CHECK(state_save(w->trainer, w->cfg->run_dir, &meta, w->spec->train.keep_checkpoints, path,
                       sizeof path));
  report_checkpoint(&w->report, step, path);
  return DRV_OK;
}

/* Trains from *step to the end. Returns with *step at the steps done; a ring or NCCL
 * failure leaves w->ring_broken set. Each step is launched, the next one is gathered and
 * staged while it runs, then the step is waited for. */
static drv_result_t run(worker_t *w, plan_t *p, progress_t *g, uint64_t *step) {
  const jobspec_t *s = w->spec;
  uint32_t every = s->train.checkpoint_every, commit_every = s->train.commit_every;
  for (;;) {
    uint64_t done = *step;
    /* An epoch ends with an evaluation (and so does training, wherever it stops). */
    if (done > 0 && (done % p->spe == 0 || done == p->total) && w->last_eval != done)
      DRV_CHECK(eval_epoch(w, p, g, done, p->spe));
    if (done >= p->total) return DRV_OK;
    uint32_t epoch = (uint32_t)(done / p->spe);
    double t0 = drv_now_s();
    if (p->staged_step != done) DRV_CHECK(stage_step(w, p, done));
    /* Audited before the rank contributes its gradients: a step that reached the model
     * (some rank completed its all-reduce) has a line from every rank of its world, even
     * from one killed before its own all-reduce returned. */
    report_audit(&w->report, done + 1, p->ids[done & 1], p->nids[done & 1]);
    float lr;
    drv_result_t rc = trainer_step_launch(w->trainer, &lr);
    if (rc != DRV_OK) return step_failed(w, rc);
    uint32_t count = p->nids[done & 1];
    uint32_t batch = p->batch[done & 1];
    if (done + 1 < p->total) DRV_CHECK(stage_step(w, p, done + 1)); /* overlaps the step */
    if (w->fault_slow_ms) usleep((useconds_t)w->fault_slow_ms * 1000);
    double loss_sum = 0, data_ms = 0;
    rc = trainer_step_finish(w->trainer, &loss_sum, &data_ms);
    if (rc != DRV_OK) return step_failed(w, rc);
    double dt = drv_now_s() - t0;
    *step = done + 1;
    g->train_s += dt;
    g->global_samples += batch;
    report_count_step(&w->report, count, dt, data_ms);
    if (w->nccl) /* (the ring adds its own) */
      report_wait(&w->report, nccl_reducer_wait_ms(w->nccl) / 1e3);
    double loss = loss_sum / batch;
    if (!isfinite(loss))
      return drv_error(DRV_ERR_INVALID,
                       "loss became %f at step %" PRIu64 ": lower the learning rate", loss, *step);
    report_rec_step(&w->report, &(report_rec_step_t){.step = *step,
                                                     .epoch = epoch,
                                                     .loss = loss,
                                                     .lr = lr,
                                                     .batch = batch,
                                                     .step_s = dt,
                                                     .samples_per_s = batch / dt,
                                                     .data_wait_ms = data_ms});
    uint64_t coll_seq = ring_seq(w->ring) + nccl_reducer_seq(w->nccl);
    if (report_progress(&w->report, coll_seq, epoch, *step, p->total, loss, lr))
      DRV_CHECK(check_abort(w));
    if (commit_every && *step % commit_every == 0) {
      DRV_CHECK(commit(w, *step));
      /* A planned re-formation (new agents, one leaving) happens at a commit that every
       * rank agrees on: any rank that was asked raises the flag. */
      float flag = w->pause_pending ? 1.0f : -0.0f;
      DRV_CHECK(ring_sum(w, &flag, 1));
      if (flag > 0) {
        w->pause_pending = 0;
        w->planned = 1;
        w->ring_broken = 1;
        return drv_error(DRV_ERR_CANCELLED, "planned re-formation at step %" PRIu64, *step);
      }
    }
    if (every && *step % every == 0 && *step < p->total) {
      if (w->rank == 0) DRV_CHECK(save_checkpoint(w, *step, p->spe));
      g->last_ckpt = *step;
    }
  }
}

/* The backend this worker trains on: the GPU its agent assigned (train.backend auto or
 * cuda), or the CPU; precision bf16 and tf32 need the GPU. */
static drv_result_t pick_backend(worker_t *w) {
  const proto_assign_t *c = w->cfg;
  const jobspec_t *s = w->spec;
  bool want_gpu = s->train.backend == SPEC_BACKEND_CUDA ||
                  (s->train.backend == SPEC_BACKEND_AUTO && c->device >= 0);
  if (want_gpu && c->device < 0)
    return drv_error(DRV_ERR_INVALID,
                     "train.backend is cuda, but this worker's agent has no GPU to give it");
  if (want_gpu) {
    /* A world on loopback: NCCL's bootstrap (rank 0 makes the id before it knows its
     * peers) and its sockets must use lo. A value the user set is kept. */
    if (strcmp(c->host, "127.0.0.1") == 0 || strcmp(c->host, "localhost") == 0)
      setenv("NCCL_SOCKET_IFNAME", "lo", 0);
    DRV_CHECK(backend_cuda_new(c->device, s->train.precision == SPEC_PREC_TF32, &w->gpu));
    w->be = w->gpu;
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    /* The PCI bus id, not the ordinal: agents may number their GPUs differently. */
    char bus[32];
    DRV_CHECK(backend_cuda_pci_bus_id(w->gpu, bus, sizeof bus));
    snprintf(w->gpu_key, sizeof w->gpu_key, "%s/%s", host, bus);
    log_info("training on GPU %d (%s, precision %s)", c->device, w->be->name,
             s->train.precision == SPEC_PREC_BF16   ? "bf16"
             : s->train.precision == SPEC_PREC_TF32 ? "tf32"
                                                    : "fp32");
    return DRV_OK;
  }
  if (s->train.precision != SPEC_PREC_FP32 || s->train.allreduce_dtype != SPEC_DTYPE_FP32)
    return drv_error(DRV_ERR_INVALID,
                     "train.precision %s / allreduce_dtype needs a GPU, and this worker has "
                     "none (its agent reports no GPU)",
                     s->train.precision == SPEC_PREC_BF16   ? "bf16"
                     : s->train.precision == SPEC_PREC_TF32 ? "tf32"
                                                            : "fp32");
  w->be = backend_cpu();
  return DRV_OK;
}

static drv_result_t train(worker_t *w, proto_done_t *done) {
  const jobspec_t *s = w->spec;
  plan_t p = {.n = dataset_count(w->train), .B = s->train.global_batch};
  p.features = dataset_features(w->train);
  p.classes = DRV_MAX(dataset_classes(w->train), dataset_classes(w->test));
  if (p.B > p.n)
    return drv_error(DRV_ERR_INVALID,
                     "train.global_batch (%u) is larger than the training set (%u samples)", p.B,
                     p.n);
  p.spe = shard_steps_per_epoch(p.n, p.B);
  p.total = (uint64_t)p.spe * s->train.epochs;
  if (s->train.max_steps && s->train.max_steps < p.total) p.total = s->train.max_steps;
  /* The largest slice of a global batch in any world down to one rank (64-bit: B may be
   * near 2^32), and at least an evaluation batch. */
  p.cap = DRV_MAX(p.B, 256u);

  p.perm_epoch = -1;
  p.staged_step = UINT64_MAX;
  DRV_CHECK(pick_backend(w));
  DRV_CHECK(trainer_new(s, w->be, p.features, p.classes, p.cap, &w->trainer));
  size_t np;
  trainer_params(w->trainer, &np);
  p.perm = malloc(sizeof *p.perm * p.n);
  p.x = malloc(sizeof *p.x * (size_t)p.cap * p.features);
  p.y = malloc(sizeof *p.y * p.cap);
  p.ids[0] = malloc(sizeof(uint32_t) * p.cap);
  p.ids[1] = malloc(sizeof(uint32_t) * p.cap);
  drv_result_t rc = DRV_OK;
  if (!p.perm || !p.x || !p.y || !p.ids[0] || !p.ids[1]) {
    rc = drv_error(DRV_ERR_NOMEM, "training buffers: out of memory");
    goto out;
  }
  if (w->rank == 0)
    log_info("training %u samples x %u features, %u classes: %u epochs of %u steps (%" PRIu64
             " steps), global batch %u over %u rank(s), %zu parameters",
             p.n, p.features, p.classes, s->train.epochs, p.spe, p.total, p.B, w->world, np);

  DRV_CHECK_GOTO(rendezvous(w), rc, out);
  uint64_t step = 0;
  DRV_CHECK_GOTO(sync_state(w, 0, &step), rc, out);
  if (step > p.total) {
    rc = drv_error(DRV_ERR_INVALID,
                   "the checkpoint has %" PRIu64 " steps done, more than the %" PRIu64
                   " this spec runs",
                   step, p.total);
    goto out;
  }
  DRV_CHECK_GOTO(commit(w, step), rc, out);
  progress_t g = {.last_ckpt = step, .test_loss = NAN, .test_acc = NAN};
  if (step) {
    report_rec_resume_t rec = {.step = step, .world = w->world};
    report_rec_resume(&w->report, &rec);
  }
  report_progress_begin(&w->report);
  for (;;) {
    rc = run(w, &p, &g, &step);
    if (rc == DRV_OK) break;
    /* A broken ring is a lost peer: roll back and let the coordinator re-form the world
     * (it aborts us when it cannot), again if a peer is lost while re-forming. Anything
     * else ends this worker. */
    while (rc != DRV_OK && w->ring_broken && (s->max_restarts || w->planned)) {
      w->planned = 0;
      rc = recover(w, &step);
      p.staged_step = UINT64_MAX; /* the staged batch belongs to the old world */
    }
    if (rc != DRV_OK) goto out;
  }
  if (w->rank == 0) {
    /* The end is always checkpointed, so a finished job can be resumed for more. */
    if (g.last_ckpt != step) DRV_CHECK_GOTO(save_checkpoint(w, step, p.spe), rc, out);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", w->cfg->run_dir);
    DRV_CHECK_GOTO(trainer_save(w->trainer, path), rc, out);
  }
  *done = (proto_done_t){.steps = step,
                         .test_loss = g.test_loss,
                         .test_accuracy = g.test_acc,
                         .samples_per_s = g.train_s > 0 ? g.global_samples / g.train_s : 0,
                         .train_s = g.train_s};
out:
  free(p.perm);
  free(p.x);
  free(p.y);
  free(p.ids[0]);
  free(p.ids[1]);
  return rc;
}

drv_result_t worker_read_assignment(int fd, proto_msg_t *m) {
  proto_msg_init(m, PROTO_TYPE_COUNT);
  size_t max = (size_t)drv_setting(DRV_SET_MAX_MSG_BYTES), len = 0;
  char *buf = malloc(max + 1);
  if (!buf) return drv_error(DRV_ERR_NOMEM, "reading the assignment: out of memory");
  ssize_t n;
  while (len <= max && (n = read(fd, buf + len, max + 1 - len)) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      free(buf);
      return drv_error(DRV_ERR_SYS, "reading the assignment on stdin: %s", strerror(errno));
    }
    len += (size_t)n;
  }
  drv_result_t rc = proto_unpack(buf, len, max, m);
  free(buf);
  if (rc != DRV_OK) return drv_error_prefix(rc, "the assignment on stdin");
  const proto_assign_t *as = &m->u.assign;
  if (m->type != PROTO_ASSIGN)
    return drv_error(DRV_ERR_PROTO, "the assignment on stdin: expected assign, got %s",
                     proto_type_name(m->type));
  if (as->job <= 0 || as->world == 0 || as->rank >= as->world || !as->run_dir[0] ||
      !as->coordinator[0])
    return drv_error(DRV_ERR_INVALID,
                     "the assignment on stdin: job %" PRId64
                     ", rank %u of %u, run_dir '%s', "
                     "coordinator '%s': not a rank of a job",
                     as->job, as->rank, as->world, as->run_dir, as->coordinator);
  if (!as->host || !as->host[0]) m->u.assign.host = "127.0.0.1";
  return DRV_OK;
}

drv_result_t worker_run(const proto_assign_t *cfg) {
  worker_t w = {.cfg = cfg,
                .rank = cfg->rank,
                .world = cfg->world,
                .generation = cfg->generation,
                .report = {.job = cfg->job, .generation = cfg->generation, .rank = cfg->rank}};
  proto_done_t done = {0};
  drv_result_t rc = DRV_OK;
  DRV_CHECK_GOTO(connect_coord(&w), rc, fail);
  if (!(w.spec_yaml = strdup(cfg->spec))) {
    rc = drv_error(DRV_ERR_NOMEM, "worker: out of memory");
    goto fail;
  }
  DRV_CHECK_GOTO(jobspec_parse(w.spec_yaml, strlen(w.spec_yaml), "assigned spec", NULL, 0, &w.spec),
                 rc, fail);
  w.fault_slow_ms = drv_setting(DRV_SET_FAULT_SLOW_MS);
  if (w.fault_slow_ms)
    log_warn("fault injection: every step sleeps %" PRId64 " ms (DROVER_FAULT_SLOW_MS)",
             w.fault_slow_ms);
  w.fault_kill_after_eval = (uint32_t)drv_setting(DRV_SET_FAULT_KILL_AFTER_EVAL);
  report_open_audit(&w.report, drv_setting_text(DRV_TEXT_AUDIT_DIR));
  double t0 = drv_now_s();
  DRV_CHECK_GOTO(load_data(&w), rc, fail);
  log_info("data loaded in %.2f s", drv_now_s() - t0);
  if (drv_setting(DRV_SET_FAULT_KILL_BEFORE_START) ==
      1) { /* fault injection for tests: a rank lost before start */
    log_warn("fault injection: killed before checking in (DROVER_FAULT_KILL_BEFORE_START)");
    raise(SIGKILL);
  }
  DRV_CHECK_GOTO(report_open_rank0(&w.report, cfg->run_dir, w.spec_yaml), rc, fail);
  DRV_CHECK_GOTO(train(&w, &done), rc, fail);
  report_done(&w.report, &done);
  log_info("done: %" PRIu64 " steps, test accuracy %.4f, %.0f samples/s", done.steps,
           done.test_accuracy, done.samples_per_s);
  goto out;
fail:
  log_error("%s", drv_last_error());
  if (rc != DRV_ERR_CANCELLED) report_failed(&w.report, drv_last_error());
out:
  report_close(&w.report);
  if (w.trainer) trainer_set_reducer(w.trainer, NULL);
  nccl_reducer_destroy(&w.nccl);
  trainer_destroy(&w.trainer);
  backend_cuda_destroy(&w.gpu);
  ring_destroy(&w.ring);
  sock_destroy(&w.sock);
  sock_ctx_destroy(&w.ctx);
  dataset_destroy(&w.train);
  dataset_destroy(&w.test);
  jobspec_destroy(&w.spec);
  free(w.spec_yaml);
  return rc;
}
