/* nccl_reducer.c: see nccl_reducer.h. Built where NCCL is found (collective/CMakeLists.txt);
 * nccl_none.c stands in for it elsewhere. */
#include "collective/nccl_reducer.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "kernels/cuda/cuda.h"
#include "kernels/cuda/checks.h" /* after nccl.h: NCCL_CHECK */

typedef struct {
  size_t lo, hi; /* element range of the reduced buffer */
} bucket_t;

struct nccl_reducer {
  nccl_config_t cfg;
  ncclComm_t comm;
  cudaStream_t comm_stream, compute;
  cudaEvent_t ev_ready, ev_done; /* compute -> comm fork, comm -> compute join */
  cudaEvent_t ev_j0, ev_j1;      /* timed: the compute stream before and after the join */
  double last_wait_ms;           /* the last step's time between them */
  bucket_t *buckets;             /* from the end of the buffer down */
  size_t nbuckets, next;         /* next: the first bucket not yet issued this step */
  void *d_low;                   /* (count) BF16 gradients, for dtype BF16 */
  uint64_t seq;
  int failed;
  trainer_reducer_t hooks;
};

/* NCCL_CHECK (kernels/cuda/checks.h) for a call on the non-blocking communicator:
 * ncclInProgress is not a failure but a completion to wait for (settle), and a failure's
 * message adds the communicator's last error. */
#define NCCL_COMM_CHECK(r, call)                                                        \
  do {                                                                                  \
    ncclResult_t n_ = (call);                                                           \
    if (n_ != ncclSuccess && n_ != ncclInProgress) return comm_failure((r), #call, n_); \
    if (n_ == ncclInProgress) DRV_CHECK(settle((r), #call));                            \
  } while (0)

/* An NCCL failure as an error. The communicator is left for the owner to abort (after
 * freeing graphs that hold its operations). */
static drv_result_t comm_failure(nccl_reducer_t *r, const char *what, ncclResult_t n) {
  const char *last = r->comm ? ncclGetLastError(r->comm) : NULL;
  return drv_error(drv_nccl_result(n), "%s: %s%s%s", what, ncclGetErrorString(n),
                   last && *last ? ": " : "", last ? last : "");
}

/* Calls after an abort have no communicator to use. */
static drv_result_t need_comm(const nccl_reducer_t *r) {
  return r->comm ? DRV_OK
                 : drv_error(DRV_ERR_NCCL, "NCCL: the communicator was aborted (collective %llu)",
                             (unsigned long long)r->seq);
}

static void nap(void) {
  struct timespec ts = {0, 50 * 1000}; /* 50 us */
  nanosleep(&ts, NULL);
}

/* One turn of a wait that has not ended yet: the deadline (DRV_ERR_TIMEOUT with `late`),
 * the poll callback at most every millisecond (its error), then a nap. DRV_OK: go on
 * waiting. Whoever gets an error aborts the communicator. */
static drv_result_t wait_turn(nccl_reducer_t *r, int64_t deadline, int64_t *next_poll,
                              const char *late) {
  int64_t now = drv_now_ms();
  if (now > deadline)
    return drv_error(DRV_ERR_TIMEOUT, "%s for %lld ms", late, (long long)r->cfg.timeout_ms);
  if (r->cfg.poll && next_poll && now >= *next_poll) {
    DRV_CHECK(r->cfg.poll(r->cfg.poll_ctx));
    *next_poll = now + 1;
  }
  nap();
  return DRV_OK;
}

/* Waits until the communicator is no longer ncclInProgress (a non-blocking call's
 * completion); with `poll`, the poll callback runs meanwhile. */
static drv_result_t settle_with(nccl_reducer_t *r, const char *what, bool poll) {
  int64_t deadline = drv_now_ms() + r->cfg.timeout_ms, next_poll = 0;
  char late[160];
  snprintf(late, sizeof late, "%s: still in progress", what);
  for (;;) {
    ncclResult_t st = ncclInProgress;
    ncclResult_t q = ncclCommGetAsyncError(r->comm, &st);
    if (q != ncclSuccess) return comm_failure(r, "ncclCommGetAsyncError", q);
    if (st == ncclSuccess) return DRV_OK;
    if (st != ncclInProgress) return comm_failure(r, what, st);
    DRV_CHECK(wait_turn(r, deadline, poll ? &next_poll : NULL, late));
  }
}

static drv_result_t settle(nccl_reducer_t *r, const char *what) {
  return settle_with(r, what, true);
}

/* Waits for everything issued on `s` so far: cudaStreamQuery, with the communicator's
 * asynchronous error checked in between. */
static drv_result_t wait_stream(nccl_reducer_t *r, cudaStream_t s, const char *what) {
  int64_t deadline = drv_now_ms() + r->cfg.timeout_ms, next_poll = 0;
  char late[200];
  snprintf(late, sizeof late, "%s: collective %llu made no progress (a peer is gone or hung)", what,
           (unsigned long long)r->seq);
  for (;;) {
    cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) return DRV_OK;
    if (e != cudaErrorNotReady)
      return drv_error(DRV_ERR_CUDA, "%s: %s", what, cudaGetErrorString(e));
    ncclResult_t st = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(r->comm, &st);
    if (q != ncclSuccess) return comm_failure(r, "ncclCommGetAsyncError", q);
    if (st != ncclSuccess && st != ncclInProgress) return comm_failure(r, what, st);
    DRV_CHECK(wait_turn(r, deadline, &next_poll, late));
  }
}

static drv_result_t issue_bucket(nccl_reducer_t *r, const bucket_t *b) {
  DRV_CHECK(need_comm(r));
  size_t n = b->hi - b->lo;
  if (r->cfg.dtype == BE_BF16) {
    /* Converted on the compute stream, after the gradients it reads, before the fork. */
    const backend_t *be = r->cfg.be;
    DRV_CHECK(
        be->convert(be, (uint16_t *)r->d_low + b->lo, BE_BF16, r->cfg.grads + b->lo, BE_F32, n));
  }
  CUDA_CHECK(cudaEventRecord(r->ev_ready, r->compute));
  CUDA_CHECK(cudaStreamWaitEvent(r->comm_stream, r->ev_ready, 0));
  if (r->cfg.dtype == BE_BF16) {
    void *p = (uint16_t *)r->d_low + b->lo;
    NCCL_COMM_CHECK(r, ncclAllReduce(p, p, n, ncclBfloat16, ncclSum, r->comm, r->comm_stream));
  } else {
    float *p = r->cfg.grads + b->lo;
    NCCL_COMM_CHECK(r, ncclAllReduce(p, p, n, ncclFloat32, ncclSum, r->comm, r->comm_stream));
  }
  return DRV_OK;
}

static drv_result_t hook_begin(void *ctx) {
  nccl_reducer_t *r = ctx;
  r->next = 0; /* the first bucket again, whatever an earlier (failed) step left */
  return DRV_OK;
}

static drv_result_t hook_ready(void *ctx, size_t first) {
  nccl_reducer_t *r = ctx;
  while (r->next < r->nbuckets && r->buckets[r->next].lo >= first)
    DRV_CHECK(issue_bucket(r, &r->buckets[r->next++]));
  return DRV_OK;
}

static drv_result_t hook_finish(void *ctx) {
  nccl_reducer_t *r = ctx;
  DRV_CHECK(hook_ready(r, 0));
  if (r->cfg.dtype == BE_BF16) {
    /* The loss pair, in F32: it was written before any gradient, so the fork is ordered. */
    CUDA_CHECK(cudaEventRecord(r->ev_ready, r->compute));
    CUDA_CHECK(cudaStreamWaitEvent(r->comm_stream, r->ev_ready, 0));
    float *p = r->cfg.grads + r->cfg.count;
    NCCL_COMM_CHECK(r, ncclAllReduce(p, p, 2, ncclFloat32, ncclSum, r->comm, r->comm_stream));
  }
  CUDA_CHECK(cudaEventRecord(r->ev_done, r->comm_stream));
  /* The compute stream's idle time at the join is the all-reduce time the backward pass
   * did not hide: the step's wait for the other ranks and the bytes. */
  /* (External records: inside a graph capture they become event-record nodes that fire
   * at every replay, not capture-internal dependencies.) */
  CUDA_CHECK(cudaEventRecordWithFlags(r->ev_j0, r->compute, cudaEventRecordExternal));
  CUDA_CHECK(cudaStreamWaitEvent(r->compute, r->ev_done, 0));
  CUDA_CHECK(cudaEventRecordWithFlags(r->ev_j1, r->compute, cudaEventRecordExternal));
  return DRV_OK;
}

/* Once per step, replayed from a graph or not: the step's sums are one collective. */
static drv_result_t hook_wait(void *ctx) {
  nccl_reducer_t *r = ctx;
  DRV_CHECK(need_comm(r));
  DRV_CHECK(wait_stream(r, r->compute, "training step"));
  r->seq++;
  float ms = 0;
  r->last_wait_ms = cudaEventElapsedTime(&ms, r->ev_j0, r->ev_j1) == cudaSuccess ? ms : 0;
  return DRV_OK;
}

static void hook_abort(void *ctx) {
  nccl_reducer_abort(ctx);
}

static drv_result_t hook_agree(void *ctx, double *value) {
  nccl_reducer_t *r = ctx;
  return r->cfg.agree ? r->cfg.agree(r->cfg.agree_ctx, value) : DRV_OK;
}

bool nccl_reducer_available(void) {
  return true;
}

static void to_hex(const unsigned char *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

static int from_hex(const char *s, unsigned char *b, size_t n) {
  if (!s || strlen(s) != 2 * n) return -1;
  for (size_t i = 0; i < 2 * n; i++) {
    char c = s[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return -1;
    if (i % 2 == 0)
      b[i / 2] = (unsigned char)(v << 4);
    else
      b[i / 2] |= (unsigned char)v;
  }
  return 0;
}

drv_result_t nccl_reducer_new_id(char *id_hex) {
  ncclUniqueId id;
  NCCL_CHECK(ncclGetUniqueId(&id));
  _Static_assert(sizeof id.internal * 2 + 1 == NCCL_ID_HEX_LEN, "ncclUniqueId size");
  to_hex((const unsigned char *)id.internal, sizeof id.internal, id_hex);
  return DRV_OK;
}

void nccl_reducer_share_device(const char *tag, bool loopback) {
  if (!getenv("NCCL_HOSTID")) setenv("NCCL_HOSTID", tag, 1);
  if (loopback && !getenv("NCCL_SOCKET_IFNAME")) setenv("NCCL_SOCKET_IFNAME", "lo", 1);
  /* Two "hosts" on one machine must meet over sockets, not over an InfiniBand adapter the
   * machine may also have. */
  if (loopback && !getenv("NCCL_IB_DISABLE")) setenv("NCCL_IB_DISABLE", "1", 1);
  /* (and over NCCL's own sockets: a network plugin may not heed NCCL_IB_DISABLE) */
  if (loopback && !getenv("NCCL_NET")) setenv("NCCL_NET", "Socket", 1);
  log_info("sharing a GPU with other ranks: NCCL_HOSTID=%s%s", getenv("NCCL_HOSTID"),
           loopback ? ", NCCL_SOCKET_IFNAME=lo" : "");
}

drv_result_t nccl_reducer_new(const nccl_config_t *cfg, nccl_reducer_t **out) {
  *out = NULL;
  ncclUniqueId id;
  if (from_hex(cfg->id_hex, (unsigned char *)id.internal, sizeof id.internal) != 0)
    return drv_error(DRV_ERR_PROTO, "NCCL id: expected %zu hex digits", 2 * sizeof id.internal);
  if (cfg->world < 2 || cfg->rank >= cfg->world)
    return drv_error(DRV_ERR_INVALID, "NCCL: rank %u of a world of %u", cfg->rank, cfg->world);
  nccl_reducer_t *r = calloc(1, sizeof *r);
  if (!r) return drv_error(DRV_ERR_NOMEM, "NCCL reducer: out of memory");
  r->cfg = *cfg;
  r->compute = backend_cuda_stream(cfg->be);
  drv_result_t rc = DRV_OK;
  CUDA_CHECK_GOTO(cudaSetDevice(backend_cuda_device(cfg->be)), rc, fail);
  int lo_prio = 0, hi_prio = 0;
  CUDA_CHECK_GOTO(cudaDeviceGetStreamPriorityRange(&lo_prio, &hi_prio), rc, fail);
  /* The sums run at high priority, so they start as soon as a bucket is ready. */
  CUDA_CHECK_GOTO(cudaStreamCreateWithPriority(&r->comm_stream, cudaStreamNonBlocking, hi_prio), rc,
                  fail);
  CUDA_CHECK_GOTO(cudaEventCreateWithFlags(&r->ev_ready, cudaEventDisableTiming), rc, fail);
  CUDA_CHECK_GOTO(cudaEventCreateWithFlags(&r->ev_done, cudaEventDisableTiming), rc, fail);
  CUDA_CHECK_GOTO(cudaEventCreate(&r->ev_j0), rc, fail);
  CUDA_CHECK_GOTO(cudaEventCreate(&r->ev_j1), rc, fail);
  if (cfg->dtype == BE_BF16) CUDA_CHECK_GOTO(cudaMalloc(&r->d_low, cfg->count * 2 + 64), rc, fail);

  if ((rc = nccl_reducer_rebucket(r, cfg->bucket_bytes)) != DRV_OK) goto fail;

  // Join, non-blocking, within the deadline.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t n = ncclCommInitRankConfig(&r->comm, (int)cfg->world, id, (int)cfg->rank, &config);
  if (n != ncclSuccess && n != ncclInProgress) {
    rc = comm_failure(r, "ncclCommInitRankConfig", n);
    nccl_reducer_abort(r);
    goto fail;
  }
  if (n == ncclInProgress && (rc = settle(r, "joining the NCCL communicator")) != DRV_OK) {
    nccl_reducer_abort(r); /* no graph holds it yet */
    goto fail;
  }
  r->hooks = (trainer_reducer_t){.ctx = r,
                                 .begin = hook_begin,
                                 .ready = hook_ready,
                                 .finish = hook_finish,
                                 .wait = hook_wait,
                                 .abort = hook_abort,
                                 .agree = hook_agree,
                                 .grads = cfg->dtype == BE_BF16 ? r->d_low : NULL,
                                 .grads_type = cfg->dtype};
  log_info("NCCL: rank %u of %u joined; %zu gradient bucket(s) of up to %zu MB, summed in %s",
           cfg->rank, cfg->world, r->nbuckets, cfg->bucket_bytes >> 20,
           cfg->dtype == BE_BF16 ? "bf16" : "fp32");
  *out = r;
  return DRV_OK;
fail:
  nccl_reducer_destroy(&r);
  return rc;
}

/* Buckets from the end: [hi - per, hi), ..., down to 0. F32 sums carry the loss pair in
 * the first bucket; BF16 sums it apart (hook_finish). */
drv_result_t nccl_reducer_rebucket(nccl_reducer_t *r, size_t bucket_bytes) {
  size_t esize = r->cfg.dtype == BE_BF16 ? 2 : 4;
  size_t per = bucket_bytes / esize;
  if (per < 1024) per = 1024;
  size_t total = r->cfg.dtype == BE_BF16 ? r->cfg.count : r->cfg.count + 2;
  size_t nb = (total + per - 1) / per;
  bucket_t *b = calloc(nb ? nb : 1, sizeof *b);
  if (!b) return drv_error(DRV_ERR_NOMEM, "NCCL reducer: out of memory");
  /* Inner boundaries on 64 elements (NCCL's fast paths want aligned buffers): a bucket
   * may be up to 63 elements over `per`, and the last one may not be needed. */
  size_t used = 0;
  for (size_t hi = total; hi > 0 && used < nb; used++) {
    size_t lo = hi > per ? (hi - per) & ~(size_t)63 : 0;
    b[used] = (bucket_t){lo, hi};
    hi = lo;
  }
  nb = used;
  free(r->buckets);
  r->buckets = b;
  r->nbuckets = nb;
  r->next = 0;
  r->cfg.bucket_bytes = bucket_bytes;
  return DRV_OK;
}

const trainer_reducer_t *nccl_reducer_hooks(nccl_reducer_t *r) {
  return &r->hooks;
}

uint64_t nccl_reducer_seq(const nccl_reducer_t *r) {
  return r ? r->seq : 0;
}

double nccl_reducer_wait_ms(const nccl_reducer_t *r) {
  return r ? r->last_wait_ms : 0;
}

drv_result_t nccl_reducer_sum(nccl_reducer_t *r, float *d_data, size_t count) {
  DRV_CHECK(need_comm(r));
  CUDA_CHECK(cudaEventRecord(r->ev_ready, r->compute));
  CUDA_CHECK(cudaStreamWaitEvent(r->comm_stream, r->ev_ready, 0));
  NCCL_COMM_CHECK(
      r, ncclAllReduce(d_data, d_data, count, ncclFloat32, ncclSum, r->comm, r->comm_stream));
  r->seq++;
  return wait_stream(r, r->comm_stream, "all-reduce");
}

drv_result_t nccl_reducer_broadcast(nccl_reducer_t *r, float *d_data, size_t count) {
  DRV_CHECK(need_comm(r));
  CUDA_CHECK(cudaEventRecord(r->ev_ready, r->compute));
  CUDA_CHECK(cudaStreamWaitEvent(r->comm_stream, r->ev_ready, 0));
  NCCL_COMM_CHECK(r, ncclBroadcast(d_data, d_data, count, ncclFloat32, 0, r->comm, r->comm_stream));
  r->seq++;
  return wait_stream(r, r->comm_stream, "broadcast");
}

void nccl_reducer_abort(nccl_reducer_t *r) {
  if (!r || !r->comm || r->failed) return;
  r->failed = 1;
  log_warn("aborting the NCCL communicator");
  ncclCommAbort(r->comm);
  r->comm = NULL;
}

void nccl_reducer_destroy(nccl_reducer_t **rp) {
  if (!rp || !*rp) return;
  nccl_reducer_t *r = *rp;
  if (r->comm) {
    /* A clean leave: flush, wait (bounded), then free; abort when that fails. Local work:
     * no poll callback (peers that finished first have closed their ring links, and an
     * `abort` from the coordinator must stay for the worker to read). */
    ncclResult_t n = ncclCommFinalize(r->comm);
    if ((n == ncclSuccess || n == ncclInProgress) &&
        settle_with(r, "leaving the NCCL communicator", false) == DRV_OK && r->comm)
      ncclCommDestroy(r->comm);
    else
      nccl_reducer_abort(r);
    r->comm = NULL;
  }
  if (r->comm_stream) {
    cudaStreamQuery(r->comm_stream);
    cudaStreamDestroy(r->comm_stream);
  }
  if (r->ev_ready) cudaEventDestroy(r->ev_ready);
  if (r->ev_done) cudaEventDestroy(r->ev_done);
  if (r->ev_j0) cudaEventDestroy(r->ev_j0);
  if (r->ev_j1) cudaEventDestroy(r->ev_j1);
  if (r->d_low) cudaFree(r->d_low);
  free(r->buckets);
  free(r);
  *rp = NULL;
}
