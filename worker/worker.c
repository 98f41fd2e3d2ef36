/* worker.c: see worker.h.
 *
 * One rank's life: read the assignment, connect to the coordinator (first, so any later
 * failure is reported), load the data, pick the backend, then form the world and agree on
 * the starting state (world.h), and train: each step is staged, launched, and waited for
 * while the next one is staged; an epoch ends with an evaluation shared by every rank;
 * commits and checkpoints come every train.commit_every and train.checkpoint_every steps.
 * A broken ring sends the rank to world_recover and training goes on from the commit in
 * the new world. At the end rank 0 checkpoints and saves the model, and every rank sends
 * `done` (or `failed`). What it tells the coordinator and writes to the run directory goes
 * through the report (report.h); checkpoints are written and read by state.h.
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
#include "common/fsutil.h"
#include "common/jobspec.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "kernels/backend.h"
#include "worker/report.h"
#include "worker/state.h"
#include "worker/command.h"
#include "worker/world.h"
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
  char ep[256];
  DRV_CHECK(sock_endpoint(c->coordinator, SOCK_AGENTS, ep, sizeof ep));
  if (!(w->ctx = sock_ctx_new())) return DRV_ERR_ZMQ;
  if (c->secret && c->secret[0]) {
    /* Its own key, made for this rank by the coordinator, and the coordinator's, pinned. */
    sock_keys_t keys;
    DRV_CHECK(sock_z85_decode(c->secret, keys.sec));
    sock_public_key(keys.sec, keys.pub);
    DRV_CHECK(sock_z85_decode(c->coordinator_key, keys.server));
    sock_ctx_secure(w->ctx, &keys);
    memset(&keys, 0, sizeof keys);
  } else if (drv_setting(DRV_SET_INSECURE)) {
    sock_ctx_plaintext(w->ctx);
  } else {
    return drv_error(DRV_ERR_INVALID, "the assignment carries no key: refusing to report to %s "
                                      "in plaintext (only with DROVER_INSECURE=1)",
                     c->coordinator);
  }
  /* A long linger lets `done` or `failed` leave before the process does. */
  /* A random routing id of its own: one nobody can guess or claim (agent.c says why). */
  char rid[40] = "w-";
  drv_random_hex(rid + 2, 16);
  w->sock = sock_new(w->ctx, SOCK_DEALER, PROTO_AT_WORKER,
                     &(sock_opts_t){.identity = rid, .linger_ms = 2000});
  if (!w->sock) return DRV_ERR_ZMQ;
  w->report.sock = w->sock; /* what the rank reports goes out on it from now on */
  return sock_connect(w->sock, ep);
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
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    log_info("local rank %u of %u: training on GPU %d (%s, PCI %s, CUDA_VISIBLE_DEVICES %s), "
             "precision %s",
             c->local_rank, c->local_world ? c->local_world : 1, c->device, w->be->name, bus,
             visible ? visible : "unset",
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
  const char *threads = getenv("OPENBLAS_NUM_THREADS");
  log_info("local rank %u of %u: training on the CPU, %s BLAS thread(s)", c->local_rank,
           c->local_world ? c->local_world : 1, threads ? threads : "default");
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
  DRV_CHECK_GOTO(world_sum(w, sums, 2), rc, out);
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

/* Rank 0 writes a checkpoint of `step` steps done, keeps the newest keep_checkpoints, and
 * tells the coordinator it is durable. */
static drv_result_t save_checkpoint(worker_t *w, uint64_t step, uint32_t spe) {
  ckpt_meta_t meta = {.step = step,
                      .epoch = (uint32_t)(step / spe),
                      .world = w->world,
                      .seed = w->spec->train.seed,
                      .job = w->cfg->job};
  DRV_CHECK(fs_path(meta.lineage, sizeof meta.lineage, "%s", w->cfg->lineage));
  char path[1300];
  DRV_CHECK(state_save(w->trainer, w->cfg->run_dir, &meta, w->spec->train.keep_checkpoints, path,
                       sizeof path));
  report_checkpoint(&w->report, step, path);
  return DRV_OK;
}

/* DROVER_FAULT_FAIL_AT_STEP, for tests: the rank's own error, reported after its ring is
 * closed and its peers have had 100 ms to report the break (the race of a real failure,
 * made certain). */
static drv_result_t fault_fail(worker_t *w, uint64_t step) {
  log_warn("fault injection: failing after step %" PRIu64 " (DROVER_FAULT_FAIL_AT_STEP)", step);
  ring_destroy(&w->ring);
  usleep(100 * 1000);
  return drv_error(DRV_ERR_INVALID, "fault injection: failed after step %" PRIu64, step);
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
    if (rc != DRV_OK) return world_step_failed(w, rc);
    uint32_t count = p->nids[done & 1];
    uint32_t batch = p->batch[done & 1];
    if (done + 1 < p->total) DRV_CHECK(stage_step(w, p, done + 1)); /* overlaps the step */
    if (w->fault_slow_ms) usleep((useconds_t)w->fault_slow_ms * 1000);
    double loss_sum = 0, data_ms = 0;
    rc = trainer_step_finish(w->trainer, &loss_sum, &data_ms);
    if (rc != DRV_OK) return world_step_failed(w, rc);
    double dt = drv_now_s() - t0;
    *step = done + 1;
    if (w->fault_fail_at_step && *step == w->fault_fail_at_step) return fault_fail(w, *step);
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
      DRV_CHECK(world_check_abort(w));
    if (commit_every && *step % commit_every == 0) {
      DRV_CHECK(world_commit(w, *step));
      DRV_CHECK(world_pause_if_asked(w, *step));
    }
    if (every && *step % every == 0 && *step < p->total) {
      if (w->rank == 0) DRV_CHECK(save_checkpoint(w, *step, p->spe));
      g->last_ckpt = *step;
    }
  }
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

  DRV_CHECK_GOTO(world_rendezvous(w), rc, out);
  uint64_t step = 0;
  DRV_CHECK_GOTO(world_sync_state(w, 0, &step), rc, out);
  if (step > p.total) {
    rc = drv_error(DRV_ERR_INVALID,
                   "the checkpoint has %" PRIu64 " steps done, more than the %" PRIu64
                   " this spec runs",
                   step, p.total);
    goto out;
  }
  DRV_CHECK_GOTO(world_commit(w, step), rc, out);
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
    while (rc != DRV_OK && w->ring_broken &&
           (s->max_restarts || w->planned || w->cfg->preemptible)) {
      w->planned = 0;
      rc = world_recover(w, &step);
      p.staged_step = UINT64_MAX; /* the staged batch belongs to the old world */
    }
    if (rc != DRV_OK) goto out;
  }
  if (w->rank == 0) {
    /* The end is always checkpointed, so a finished job can be resumed for more. */
    if (g.last_ckpt != step) DRV_CHECK_GOTO(save_checkpoint(w, step, p.spe), rc, out);
    char path[1200];
    DRV_CHECK_GOTO(fs_path(path, sizeof path, "%s/model.safetensors", w->cfg->run_dir), rc, out);
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
  if (as->job <= 0 || as->world == 0 || as->rank >= as->world || as->run_dir[0] != '/' ||
      !as->coordinator[0])
    return drv_error(DRV_ERR_INVALID,
                     "the assignment on stdin: job %" PRId64
                     ", rank %u of %u, run_dir '%s', "
                     "coordinator '%s': not a rank of a job",
                     as->job, as->rank, as->world, as->run_dir, as->coordinator);
  /* Checkpoints are written and loaded for the job's lineage only: without one there is
   * no telling ours from another job's. */
  if (!as->lineage || !as->lineage[0] || strlen(as->lineage) >= sizeof(((ckpt_meta_t *)0)->lineage))
    return drv_error(
        DRV_ERR_INVALID, "the assignment on stdin: job %" PRId64 ": %s", as->job,
        as->lineage && as->lineage[0] ? "lineage longer than 64 digits" : "no lineage");
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
  if (w.spec->command) { /* the user's own program: run and watched, no trainer */
    DRV_CHECK_GOTO(report_open_rank0(&w.report, cfg->run_dir, w.spec_yaml), rc, fail);
    DRV_CHECK_GOTO(command_run(&w, &done), rc, fail);
    report_done(&w.report, &done);
    goto out;
  }
  w.fault_slow_ms = drv_setting(DRV_SET_FAULT_SLOW_MS);
  if (w.fault_slow_ms)
    log_warn("fault injection: every step sleeps %" PRId64 " ms (DROVER_FAULT_SLOW_MS)",
             w.fault_slow_ms);
  w.fault_kill_after_eval = (uint32_t)drv_setting(DRV_SET_FAULT_KILL_AFTER_EVAL);
  w.fault_fail_at_step = (uint64_t)drv_setting(DRV_SET_FAULT_FAIL_AT_STEP);
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
  log_last_error();
  if (rc != DRV_ERR_CANCELLED) report_failed(&w.report, drv_last_error());
out:
  report_close(&w.report);
  if (w.trainer) trainer_set_reducer(w.trainer, NULL);
  nccl_reducer_destroy(&w.nccl);
  trainer_destroy(&w.trainer);
  backend_cuda_destroy(&w.gpu);
  ring_destroy(&w.ring);
  explicit_bzero(w.ring_key, sizeof w.ring_key);
  sock_destroy(&w.sock);
  sock_ctx_destroy(&w.ctx);
  dataset_destroy(&w.train);
  dataset_destroy(&w.test);
  jobspec_destroy(&w.spec);
  free(w.spec_yaml);
  return rc;
}
