/* worker.c: see worker.h. */
#include "agent/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "agent/checkpoint.h"
#include "agent/dataset.h"
#include "agent/ring.h"
#include "agent/shard.h"
#include "agent/trainer.h"
#include "common/jobspec.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "kernels/backend.h"

typedef struct {
  const worker_config_t *cfg;
  jobspec_t *spec;
  char *spec_yaml;
  dataset_t *train, *test;
  void *ctx, *sock;
  ring_t *ring;
  trainer_t *trainer;
  FILE *metrics; /* rank 0 only */
  /* progress since the last report */
  uint64_t rep_samples, rep_steps;
  double rep_step_s, rep_start_s;
} worker_t;

// --- Helpers -------------------------------------------------------------------------------

static drv_result_t read_all(FILE *f, char **out) {
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  if (!buf) return drv_error(DRV_ERR_NOMEM, "reading the spec: out of memory");
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (len + 1 == cap) {
      if (cap > (16u << 20)) {
        free(buf);
        return drv_error(DRV_ERR_INVALID, "spec on stdin is over 16 MiB");
      }
      char *nb = realloc(buf, cap *= 2);
      if (!nb) {
        free(buf);
        return drv_error(DRV_ERR_NOMEM, "reading the spec: out of memory");
      }
      buf = nb;
    }
  }
  buf[len] = '\0';
  *out = buf;
  return DRV_OK;
}

static void send_coord(worker_t *w, const proto_msg_t *m) {
  if (sock_send(w->sock, NULL, 0, m, 1) != DRV_OK) log_warn("to coordinator: %s", drv_last_error());
}

/* Non-blocking check for an `abort` from the coordinator. */
static drv_result_t check_abort(worker_t *w) {
  for (;;) {
    proto_msg_t m;
    drv_result_t rc = sock_recv(w->sock, 0, NULL, NULL, &m, 0);
    if (rc == DRV_ERR_TIMEOUT) {
      proto_msg_fini(&m);
      return DRV_OK;
    }
    if (rc == DRV_OK && m.type == PROTO_ABORT && m.u.kill.job == w->cfg->job) {
      rc = drv_error(DRV_ERR_CANCELLED, "aborted by the coordinator: %s",
                     m.u.kill.reason ? m.u.kill.reason : "no reason given");
      proto_msg_fini(&m);
      return rc;
    }
    if (rc != DRV_OK) log_warn("dropped a frame from the coordinator: %s", drv_last_error());
    proto_msg_fini(&m);
  }
}

static void report_progress(worker_t *w, uint32_t epoch, uint64_t step, uint64_t total, double loss,
                            double lr) {
  double now = drv_now_s();
  proto_msg_t m;
  proto_msg_init(&m, PROTO_PROGRESS);
  proto_progress_t *p = &m.u.progress;
  p->job = w->cfg->job;
  p->generation = w->cfg->generation;
  p->rank = w->cfg->rank;
  p->epoch = epoch;
  p->step = step;
  p->steps_total = total;
  p->loss = loss;
  p->lr = lr;
  p->samples = w->rep_samples;
  p->interval_s = now - w->rep_start_s;
  p->step_ms = w->rep_steps ? 1000.0 * w->rep_step_s / (double)w->rep_steps : 0;
  send_coord(w, &m);
  w->rep_samples = w->rep_steps = 0;
  w->rep_step_s = 0;
  w->rep_start_s = now;
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
  const worker_config_t *c = w->cfg;
  char ep[256], id[96];
  DRV_CHECK(sock_endpoint(c->coordinator, SOCK_AGENTS, ep, sizeof ep));
  w->ctx = zmq_ctx_new();
  w->sock = sock_new(w->ctx, ZMQ_DEALER);
  if (!w->sock) return DRV_ERR_ZMQ;
  snprintf(id, sizeof id, "w-%" PRId64 "-%u-%u-%d", c->job, c->generation, c->rank, (int)getpid());
  zmq_setsockopt(w->sock, ZMQ_ROUTING_ID, id, strlen(id));
  int linger = 2000; /* let `done` or `failed` leave before the process does */
  zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
  if (zmq_connect(w->sock, ep) < 0)
    return drv_error(DRV_ERR_ZMQ, "connect %s: %s", ep, zmq_strerror(errno));
  return DRV_OK;
}

/* Checks in with the coordinator and waits for every rank's ring address. */
static drv_result_t rendezvous(worker_t *w) {
  const worker_config_t *c = w->cfg;
  DRV_CHECK(ring_listen(c->host, c->host, &w->ring));
  proto_msg_t m;
  proto_msg_init(&m, PROTO_RENDEZVOUS);
  m.u.rendezvous.job = c->job;
  m.u.rendezvous.generation = c->generation;
  m.u.rendezvous.rank = c->rank;
  m.u.rendezvous.pid = (uint32_t)getpid();
  m.u.rendezvous.addr = (char *)ring_address(w->ring);
  send_coord(w, &m);

  int64_t deadline = drv_now_ms() + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
  for (;;) {
    int64_t left = deadline - drv_now_ms();
    if (left <= 0)
      return drv_error(DRV_ERR_TIMEOUT, "no start from the coordinator within %" PRId64 " ms",
                       drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS));
    drv_result_t rc = sock_recv(w->sock, 0, NULL, NULL, &m, (int)left);
    if (rc == DRV_ERR_TIMEOUT) {
      proto_msg_fini(&m);
      continue;
    }
    if (rc != DRV_OK) {
      log_warn("dropped a frame from the coordinator: %s", drv_last_error());
      proto_msg_fini(&m);
      continue;
    }
    if (m.type == PROTO_ABORT) {
      rc = drv_error(DRV_ERR_CANCELLED, "aborted before start: %s",
                     m.u.kill.reason ? m.u.kill.reason : "no reason given");
      proto_msg_fini(&m);
      return rc;
    }
    if (m.type == PROTO_START && m.u.start.job == c->job && m.u.start.generation == c->generation)
      break;
    proto_msg_fini(&m);
  }
  drv_result_t rc = DRV_OK;
  if (m.u.start.world != c->world || m.u.start.peers_count != c->world)
    rc = drv_error(DRV_ERR_PROTO, "start names %u peers for a world of %u", m.u.start.peers_count,
                   c->world);
  else
    rc = ring_connect(w->ring, c->rank, c->world, (const char *const *)m.u.start.peers,
                      ((uint64_t)c->job << 32) | c->generation,
                      (int)drv_setting(DRV_SET_RING_CONNECT_TIMEOUT_MS));
  proto_msg_fini(&m);
  return rc;
}

// --- Checkpoints ---------------------------------------------------------------------------

/* The trainer's state as checkpoint tensors over the buffers p (the flat parameter layout)
 * and o (the optimizer state): each layer's weight (out, in) and bias (out), named as in
 * the saved model, then the optimizer state. t must hold 2 * layers + 1 entries; names
 * is storage for their names. */
static size_t state_tensors(trainer_t *tr, float *p, float *o, ckpt_tensor_t *t,
                            char (*names)[32]) {
  size_t no, n = 0;
  trainer_opt_state(tr, &no);
  for (uint32_t l = 0; l < trainer_layers(tr); l++) {
    uint64_t in = trainer_size(tr, l), out = trainer_size(tr, l + 1);
    snprintf(names[n], 32, "layers.%u.weight", l);
    t[n] = (ckpt_tensor_t){
        .name = names[n], .data = p, .count = out * in, .ndim = 2, .shape = {out, in}};
    p += out * in;
    n++;
    snprintf(names[n], 32, "layers.%u.bias", l);
    t[n] = (ckpt_tensor_t){.name = names[n], .data = p, .count = out, .ndim = 1, .shape = {out}};
    p += out;
    n++;
  }
  t[n++] =
      (ckpt_tensor_t){.name = "optimizer.state", .data = o, .count = no, .ndim = 1, .shape = {no}};
  return n;
}

/* Rank 0 writes a checkpoint of `step` steps done, keeps the newest keep_checkpoints, and
 * tells the coordinator it is durable. */
static drv_result_t save_checkpoint(worker_t *w, uint64_t step, uint32_t spe) {
  ckpt_tensor_t t[2 * JOBSPEC_MAX_HIDDEN + 3];
  char names[2 * JOBSPEC_MAX_HIDDEN + 3][32];
  size_t np, no;
  size_t n = state_tensors(w->trainer, trainer_params(w->trainer, &np),
                           trainer_opt_state(w->trainer, &no), t, names);
  ckpt_meta_t meta = {.step = step,
                      .epoch = (uint32_t)(step / spe),
                      .world = w->cfg->world,
                      .seed = w->spec->train.seed,
                      .job = w->cfg->job};
  char dir[1200];
  snprintf(dir, sizeof dir, "%s/checkpoints", w->cfg->run_dir);
  double t0 = drv_now_s();
  DRV_CHECK(ckpt_write(dir, &meta, t, n));
  uint32_t removed = 0;
  if (ckpt_prune(dir, w->spec->train.keep_checkpoints, &removed) != DRV_OK)
    log_warn("%s", drv_last_error()); /* old checkpoints left behind: not fatal */
  log_info("checkpoint of step %" PRIu64 " written in %.3f s (%u old removed)", step,
           drv_now_s() - t0, removed);
  char path[1300];
  snprintf(path, sizeof path, "%s/step-%010" PRIu64, dir, step);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_CHECKPOINT);
  m.u.checkpoint = (proto_checkpoint_t){
      .job = w->cfg->job, .generation = w->cfg->generation, .step = step, .dir = path};
  send_coord(w, &m);
  return DRV_OK;
}

/* Starts from the newest usable checkpoint: rank 0 loads it (its own run directory first,
 * then resume_dir) and the ring carries it to every rank. Non-root ranks contribute -0.0,
 * the identity of IEEE addition for every value (+0 + -0 = +0, -0 + -0 = -0), so the sum is
 * bitwise rank 0's state. *step receives the steps already done (0: a fresh start). */
static drv_result_t restore_checkpoint(worker_t *w, uint64_t *step) {
  const worker_config_t *c = w->cfg;
  size_t np, no;
  float *params = trainer_params(w->trainer, &np), *opt = trainer_opt_state(w->trainer, &no);
  float head[3] = {-0.0f, -0.0f, -0.0f}; /* found, step low 24 bits, step high bits */
  float *scratch = NULL;
  drv_result_t rc = DRV_OK;
  *step = 0;
  if (c->rank == 0) {
    /* Load into scratch first: a checkpoint refused half-way must not touch the trainer. */
    scratch = malloc(sizeof *scratch * (np + no));
    if (!scratch) return drv_error(DRV_ERR_NOMEM, "restoring a checkpoint: out of memory");
    ckpt_tensor_t t[2 * JOBSPEC_MAX_HIDDEN + 3];
    char names[2 * JOBSPEC_MAX_HIDDEN + 3][32];
    size_t n = state_tensors(w->trainer, scratch, scratch + np, t, names);
    char own[1200], found[1400];
    snprintf(own, sizeof own, "%s/checkpoints", c->run_dir);
    const char *dirs[2] = {own, c->resume_dir};
    for (int d = 0; d < 2 && head[0] != 1.0f; d++) {
      if (!dirs[d] || !dirs[d][0]) continue;
      ckpt_meta_t meta;
      if (access(dirs[d], F_OK) != 0) {
        if (d == 1)
          DRV_CHECK_GOTO(drv_error(DRV_ERR_INVALID, "resume: %s does not exist", dirs[d]), rc, out);
        continue;
      }
      if (ckpt_load_latest(dirs[d], &meta, t, n, found, sizeof found) != DRV_OK) {
        if (d == 1) DRV_CHECK_GOTO(drv_error_prefix(DRV_ERR_INVALID, "resume"), rc, out);
        log_warn("no usable checkpoint in %s: %s", dirs[d], drv_last_error());
        continue;
      }
      log_info("resuming from %s: %" PRIu64 " steps done", found, meta.step);
      memcpy(params, scratch, sizeof *params * np);
      memcpy(opt, scratch + np, sizeof *opt * no);
      head[0] = 1.0f;
      head[1] = (float)(meta.step & 0xffffff);
      head[2] = (float)(meta.step >> 24);
    }
  }
  if (c->world > 1) {
    DRV_CHECK_GOTO(ring_allreduce(w->ring, head, 3), rc, out);
    if (head[0] != 1.0f) goto out; /* rank 0 found none: everyone keeps the fresh init */
    if (c->rank != 0) {
      for (size_t i = 0; i < np; i++) params[i] = -0.0f;
      for (size_t i = 0; i < no; i++) opt[i] = -0.0f;
    }
    DRV_CHECK_GOTO(ring_allreduce(w->ring, params, np), rc, out);
    DRV_CHECK_GOTO(ring_allreduce(w->ring, opt, no), rc, out);
  }
  if (head[0] == 1.0f) *step = (uint64_t)head[1] + ((uint64_t)head[2] << 24);
out:
  free(scratch);
  return rc;
}

// --- Training ------------------------------------------------------------------------------

/* Test loss and accuracy over the whole test split, each rank taking a contiguous part. */
static drv_result_t evaluate(worker_t *w, float *x, int32_t *y, uint32_t cap, double *loss,
                             double *acc) {
  uint32_t n = dataset_count(w->test), W = w->cfg->world, r = w->cfg->rank;
  uint32_t lo = (uint32_t)((uint64_t)n * r / W), hi = (uint32_t)((uint64_t)n * (r + 1) / W);
  double loss_sum = 0;
  uint32_t correct = 0;
  uint32_t *idx = malloc(sizeof *idx * cap);
  if (!idx) return drv_error(DRV_ERR_NOMEM, "evaluation: out of memory");
  drv_result_t rc = DRV_OK;
  for (uint32_t i = lo; i < hi; i += cap) {
    uint32_t k = DRV_MIN(cap, hi - i);
    for (uint32_t j = 0; j < k; j++) idx[j] = i + j;
    dataset_gather(w->test, idx, k, x, y);
    DRV_CHECK_GOTO(trainer_evaluate(w->trainer, x, y, k, &loss_sum, &correct), rc, out);
  }
  float sums[2] = {(float)loss_sum, (float)correct};
  DRV_CHECK_GOTO(ring_allreduce(w->ring, sums, 2), rc, out);
  *loss = sums[0] / n;
  *acc = sums[1] / n;
out:
  free(idx);
  return rc;
}

static drv_result_t train(worker_t *w, proto_done_t *done) {
  const jobspec_t *s = w->spec;
  const worker_config_t *c = w->cfg;
  uint32_t n = dataset_count(w->train), B = s->train.global_batch;
  uint32_t features = dataset_features(w->train);
  uint32_t classes = DRV_MAX(dataset_classes(w->train), dataset_classes(w->test));
  uint32_t spe = shard_steps_per_epoch(n, B);
  uint64_t total = (uint64_t)spe * s->train.epochs;
  if (s->train.max_steps && s->train.max_steps < total) total = s->train.max_steps;
  if (B > n)
    return drv_error(DRV_ERR_INVALID,
                     "train.global_batch (%u) is larger than the training set "
                     "(%u samples)",
                     B, n);
  /* The largest slice of a global batch (64-bit: B may be near 2^32), and at least an
   * evaluation batch. */
  uint32_t cap = (uint32_t)(((uint64_t)B + c->world - 1) / c->world);
  if (cap < 256) cap = 256;

  DRV_CHECK(trainer_new(s, backend_cpu(), features, classes, cap, &w->trainer));
  size_t ngrad;
  float *grads = trainer_grads(w->trainer, &ngrad);
  uint32_t *perm = malloc(sizeof *perm * n);
  float *x = malloc(sizeof *x * (size_t)cap * features);
  int32_t *y = malloc(sizeof *y * cap);
  drv_result_t rc = DRV_OK;
  if (!perm || !x || !y) {
    rc = drv_error(DRV_ERR_NOMEM, "training buffers: out of memory");
    goto out;
  }
  if (c->rank == 0)
    log_info("training %u samples x %u features, %u classes: %u epochs of %u steps (%" PRIu64
             " steps), global batch %u over %u rank(s), %zu parameters",
             n, features, classes, s->train.epochs, spe, total, B, c->world, ngrad);

  uint64_t step = 0;
  DRV_CHECK_GOTO(restore_checkpoint(w, &step), rc, out);
  if (step > total) {
    rc = drv_error(DRV_ERR_INVALID,
                   "the checkpoint has %" PRIu64
                   " steps done, more than the "
                   "%" PRIu64 " this spec runs",
                   step, total);
    goto out;
  }
  uint64_t first = step, last_ckpt = step; /* a resumed step is already checkpointed */
  if (step && w->metrics)
    fprintf(w->metrics, "{\"type\":\"resume\",\"step\":%" PRIu64 ",\"world\":%u}\n", step,
            c->world);
  uint32_t every = s->train.checkpoint_every;
  double train_s = 0, test_loss = NAN, test_acc = NAN;
  uint64_t global_samples = 0;
  w->rep_start_s = drv_now_s();
  /* A resumed job starts at its cursor: epoch step / spe, step step % spe of it. */
  for (uint32_t epoch = (uint32_t)(step / spe); epoch < s->train.epochs && step < total; epoch++) {
    shard_permutation(s->train.seed, epoch, n, perm);
    uint32_t si0 = step == first ? (uint32_t)(step % spe) : 0;
    for (uint32_t si = si0; si < spe && step < total; si++, step++) {
      double t0 = drv_now_s();
      uint32_t begin, count, batch;
      shard_slice(n, B, si, c->rank, c->world, &begin, &count, &batch);
      dataset_gather(w->train, perm + begin, count, x, y);
      double loss_sum = 0;
      DRV_CHECK_GOTO(trainer_forward_backward(w->trainer, x, y, count, batch, &loss_sum, NULL), rc,
                     out);
      DRV_CHECK_GOTO(ring_allreduce(w->ring, grads, ngrad), rc, out);
      float lsum = (float)loss_sum;
      DRV_CHECK_GOTO(ring_allreduce(w->ring, &lsum, 1), rc, out);
      float lr;
      DRV_CHECK_GOTO(trainer_apply(w->trainer, step, total, &lr), rc, out);
      double dt = drv_now_s() - t0;
      train_s += dt;
      global_samples += batch;
      w->rep_samples += count;
      w->rep_steps++;
      w->rep_step_s += dt;
      double loss = lsum / batch;
      if (!isfinite(loss)) {
        rc = drv_error(DRV_ERR_INVALID,
                       "loss became %f at step %" PRIu64 ": lower the learning rate", loss,
                       step + 1);
        goto out;
      }
      if (w->metrics)
        fprintf(w->metrics,
                "{\"type\":\"step\",\"step\":%" PRIu64
                ",\"epoch\":%u,\"loss\":%.9g,\"lr\":%.9g,"
                "\"batch\":%u,\"step_s\":%.6f,\"samples_per_s\":%.1f}\n",
                step + 1, epoch, loss, lr, batch, dt, batch / dt);
      if ((drv_now_s() - w->rep_start_s) * 1000 >= (double)drv_setting(DRV_SET_PROGRESS_MS) ||
          step + 1 == total) {
        report_progress(w, epoch, step + 1, total, loss, lr);
        DRV_CHECK_GOTO(check_abort(w), rc, out);
      }
      if (every && (step + 1) % every == 0 && step + 1 < total) {
        if (c->rank == 0) DRV_CHECK_GOTO(save_checkpoint(w, step + 1, spe), rc, out);
        last_ckpt = step + 1;
      }
    }
    DRV_CHECK_GOTO(evaluate(w, x, y, cap, &test_loss, &test_acc), rc, out);
    if (c->rank == 0) {
      proto_msg_t m;
      proto_msg_init(&m, PROTO_EVAL);
      m.u.eval = (proto_eval_t){.job = c->job,
                                .generation = c->generation,
                                .epoch = epoch,
                                .test_loss = test_loss,
                                .test_accuracy = test_acc};
      send_coord(w, &m);
      if (w->metrics) {
        fprintf(w->metrics,
                "{\"type\":\"eval\",\"epoch\":%u,\"step\":%" PRIu64
                ",\"test_loss\":%.9g,"
                "\"test_accuracy\":%.6f}\n",
                epoch, step, test_loss, test_acc);
        fflush(w->metrics);
      }
    }
  }
  if (isnan(test_loss)) /* resumed at its last step: nothing trained, still report */
    DRV_CHECK_GOTO(evaluate(w, x, y, cap, &test_loss, &test_acc), rc, out);
  if (c->rank == 0) {
    /* The end is always checkpointed, so a finished job can be resumed for more. */
    if (last_ckpt != step) DRV_CHECK_GOTO(save_checkpoint(w, step, spe), rc, out);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", c->run_dir);
    DRV_CHECK_GOTO(trainer_save(w->trainer, path), rc, out);
  }
  *done = (proto_done_t){.job = c->job,
                         .generation = c->generation,
                         .rank = c->rank,
                         .steps = step,
                         .test_loss = test_loss,
                         .test_accuracy = test_acc,
                         .samples_per_s = train_s > 0 ? global_samples / train_s : 0,
                         .train_s = train_s};
out:
  free(perm);
  free(x);
  free(y);
  return rc;
}

drv_result_t worker_run(const worker_config_t *cfg) {
  worker_t w = {.cfg = cfg};
  proto_done_t done = {0};
  drv_result_t rc = DRV_OK;
  DRV_CHECK_GOTO(connect_coord(&w), rc, fail);
  DRV_CHECK_GOTO(read_all(cfg->spec_in, &w.spec_yaml), rc, fail);
  DRV_CHECK_GOTO(jobspec_parse(w.spec_yaml, strlen(w.spec_yaml), "assigned spec", NULL, 0, &w.spec),
                 rc, fail);
  if (cfg->device >= 0)
    log_warn("device %d assigned, but the GPU backend is not built yet: training on the CPU",
             cfg->device);
  double t0 = drv_now_s();
  DRV_CHECK_GOTO(load_data(&w), rc, fail);
  log_info("data loaded in %.2f s", drv_now_s() - t0);
  if (cfg->rank == 0) {
    char path[1200];
    snprintf(path, sizeof path, "%s/spec.yaml", cfg->run_dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(w.spec_yaml, f) < 0 || fclose(f) != 0) {
      rc = drv_error(DRV_ERR_SYS, "write %s: %s", path, strerror(errno));
      goto fail;
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->run_dir);
    /* Appended: a job placed again after a failure keeps the history of its first runs. */
    if (!(w.metrics = fopen(path, "a"))) {
      rc = drv_error(DRV_ERR_SYS, "open %s: %s", path, strerror(errno));
      goto fail;
    }
    /* Whole lines only: a worker killed mid-run leaves no half record behind. */
    setvbuf(w.metrics, NULL, _IOLBF, 0);
  }
  DRV_CHECK_GOTO(rendezvous(&w), rc, fail);
  DRV_CHECK_GOTO(train(&w, &done), rc, fail);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_DONE);
  m.u.done = done;
  send_coord(&w, &m);
  log_info("done: %" PRIu64 " steps, test accuracy %.4f, %.0f samples/s", done.steps,
           done.test_accuracy, done.samples_per_s);
  goto out;
fail:
  log_error("%s", drv_last_error());
  if (w.sock && rc != DRV_ERR_CANCELLED) {
    proto_msg_t f;
    proto_msg_init(&f, PROTO_FAILED);
    f.u.failed = (proto_failed_t){.job = cfg->job,
                                  .generation = cfg->generation,
                                  .rank = cfg->rank,
                                  .reason = (char *)drv_last_error()};
    send_coord(&w, &f);
  }
out:
  if (w.metrics) fclose(w.metrics);
  trainer_destroy(&w.trainer);
  ring_destroy(&w.ring);
  if (w.sock) zmq_close(w.sock);
  if (w.ctx) zmq_ctx_term(w.ctx);
  dataset_destroy(&w.train);
  dataset_destroy(&w.test);
  jobspec_destroy(&w.spec);
  free(w.spec_yaml);
  return rc;
}
