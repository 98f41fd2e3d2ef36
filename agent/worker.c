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
  double train_s = 0, test_loss = NAN, test_acc = NAN;
  uint64_t global_samples = 0;
  w->rep_start_s = drv_now_s();
  for (uint32_t epoch = 0; epoch < s->train.epochs && step < total; epoch++) {
    shard_permutation(s->train.seed, epoch, n, perm);
    for (uint32_t si = 0; si < spe && step < total; si++, step++) {
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
  if (c->rank == 0) {
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
    if (!(w.metrics = fopen(path, "w"))) {
      rc = drv_error(DRV_ERR_SYS, "open %s: %s", path, strerror(errno));
      goto fail;
    }
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
