/* bench_ring.c: `drover bench ring`, the host ring all-reduce on this machine.
 *
 * For each world size it forks that many worker processes on 127.0.0.1, connects them in a
 * ring (collective/ring), runs warm-up all-reduces and then timed ones, each timed one started
 * together (a process-shared barrier) and timed as the slowest rank took. Afterwards the
 * workers refill their buffers with integer-valued floats, all-reduce once more and count
 * every element that is not exactly the expected sum (#wrong).
 *
 * In the same run it measures a raw loopback TCP stream (one process sends the same number
 * of bytes, another receives them) as the ceiling one link can reach, and reports each
 * world's busbw against it. Figures are medians over the timed iterations, min and max
 * beside them. algbw = bytes / time; busbw = algbw * 2(n-1)/n, the traffic each link
 * carries in a ring all-reduce, comparable across world sizes and with the raw stream.
 *
 * Everything is bounded: the parent kills the workers when one fails or when a generous
 * wall limit passes, and the ring's own timeouts apply inside.
 *
 * The timing loop, medians, bandwidths, check data, table and JSON line are the benchmark
 * driver's (bench.h); this file starts the processes and fills in what they measure.
 */
#include "cli/bench_ring.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/bench.h"
#include "collective/ring.h"
#include "common/drv.h"
#include "common/settings.h"

#define BENCH_MAX_WORKERS 64
#define BENCH_MAX_WORLDS 16
#define BENCH_MAX_ITERS 100000
#define BENCH_CONNECT_MS 30000
#define BENCH_SOCKBUF_BYTES (4 << 20) /* as collective/ring.c asks for its links */

typedef struct {
  int workers[BENCH_MAX_WORLDS];
  int nworlds;
  size_t bytes;
  int iters, warmup;
  bool json;
} bench_opts_t;

/* Shared between the parent and its workers (MAP_SHARED, set up before fork). */
typedef struct {
  pthread_barrier_t barrier;
  int listening; /* workers that published their address (atomic) */
  char addr[BENCH_MAX_WORKERS][RING_ADDR_MAX];
  unsigned char key[RING_KEY_BYTES]; /* the ring key, as a job's ranks share one */
  uint64_t wrong[BENCH_MAX_WORKERS];
  char err[BENCH_MAX_WORKERS][256];
  double t[]; /* [worker][iteration] seconds */
} bench_shared_t;

// --- options -------------------------------------------------------------------------------

static void bench_usage(FILE *out) {
  fprintf(out,
          "usage: drover bench ring [--workers 2,4] [--bytes 64M] [--iters 10] [--warmup 3] "
          "[--json]\n"
          "  --workers LIST  world sizes to run, comma-separated (local processes, 127.0.0.1)\n"
          "  --bytes SIZE    bytes per all-reduce (float32), suffixes K M G (powers of 1024)\n"
          "  --iters N       timed all-reduces per world size (median reported)\n"
          "  --warmup N      untimed all-reduces first\n"
          "  --json          also print one JSON line with every figure\n"
          "settings that apply: DROVER_RING_CHUNK_BYTES, DROVER_RING_TIMEOUT_MS\n");
}

static bool bench_parse_size(const char *s, size_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *s == '-') return false;
  unsigned long long mul = 1;
  switch (*end) {
  case 'k':
  case 'K':
    mul = 1ull << 10;
    end++;
    break;
  case 'm':
  case 'M':
    mul = 1ull << 20;
    end++;
    break;
  case 'g':
  case 'G':
    mul = 1ull << 30;
    end++;
    break;
  default: break;
  }
  if (mul > 1 && *end == 'i') end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end || v > SIZE_MAX / mul) return false;
  *out = (size_t)(v * mul);
  return true;
}

static bool bench_parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = (int)v;
  return true;
}

static bool bench_parse_workers(const char *s, bench_opts_t *o) {
  o->nworlds = 0;
  const char *p = s;
  while (*p) {
    char item[32];
    size_t n = strcspn(p, ",");
    if (n == 0 || n >= sizeof item || o->nworlds == BENCH_MAX_WORLDS) return false;
    memcpy(item, p, n);
    item[n] = '\0';
    if (!bench_parse_int(item, 1, BENCH_MAX_WORKERS, &o->workers[o->nworlds++])) return false;
    p += n;
    if (*p == ',') p++;
  }
  return o->nworlds > 0;
}

/* Returns 0 parsed, 1 help printed, 2 bad usage (message printed). */
static int bench_parse(int argc, char **argv, bench_opts_t *o) {
  *o =
      (bench_opts_t){.workers = {2, 4}, .nworlds = 2, .bytes = 64u << 20, .iters = 10, .warmup = 3};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = NULL;
    char name[32];
    const char *eq = strchr(a, '=');
    if (eq && (size_t)(eq - a) < sizeof name) {
      memcpy(name, a, (size_t)(eq - a));
      name[eq - a] = '\0';
      val = eq + 1;
      a = name;
    }
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      bench_usage(stdout);
      return 1;
    }
    if (!strcmp(a, "--json")) {
      o->json = true;
      continue;
    }
    bool known = !strcmp(a, "--workers") || !strcmp(a, "--bytes") || !strcmp(a, "--iters") ||
                 !strcmp(a, "--warmup");
    if (!known) {
      fprintf(stderr, "drover bench ring: unknown option '%s'\n", argv[i]);
      bench_usage(stderr);
      return 2;
    }
    if (!val) {
      if (i + 1 >= argc) {
        fprintf(stderr, "drover bench ring: %s needs a value\n", a);
        return 2;
      }
      val = argv[++i];
    }
    bool ok = !strcmp(a, "--workers") ? bench_parse_workers(val, o)
              : !strcmp(a, "--bytes") ? bench_parse_size(val, &o->bytes)
              : !strcmp(a, "--iters") ? bench_parse_int(val, 1, BENCH_MAX_ITERS, &o->iters)
                                      : bench_parse_int(val, 0, BENCH_MAX_ITERS, &o->warmup);
    if (!ok) {
      fprintf(stderr, "drover bench ring: bad value '%s' for %s\n", val, a);
      return 2;
    }
  }
  if (o->bytes < sizeof(float)) {
    fprintf(stderr, "drover bench ring: --bytes must be at least %zu\n", sizeof(float));
    return 2;
  }
  o->bytes -= o->bytes % sizeof(float);
  return 0;
}

// --- helpers -------------------------------------------------------------------------------

static bench_shared_t *bench_shared_new(int iters, size_t *size) {
  *size = sizeof(bench_shared_t) + (size_t)BENCH_MAX_WORKERS * (size_t)iters * sizeof(double);
  bench_shared_t *sh = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return sh == MAP_FAILED ? NULL : sh;
}

static bool bench_barrier_init(bench_shared_t *sh, int n) {
  pthread_barrierattr_t attr;
  if (pthread_barrierattr_init(&attr)) return false;
  pthread_barrierattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  int e = pthread_barrier_init(&sh->barrier, &attr, (unsigned)n);
  pthread_barrierattr_destroy(&attr);
  return e == 0;
}

/* Waits for n children until deadline; the first failure or the deadline kills the rest.
 * Returns true when every child exited 0. `what` names them in messages. */
static bool bench_wait(pid_t *pid, int n, int64_t deadline_ms, const char *what) {
  bool ok = true, done[BENCH_MAX_WORKERS] = {0};
  int left = n;
  while (left > 0) {
    for (int i = 0; i < n; i++) {
      if (done[i]) continue;
      int st;
      if (waitpid(pid[i], &st, WNOHANG) != pid[i]) continue;
      done[i] = true;
      left--;
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0) continue;
      if (ok) {
        if (WIFSIGNALED(st))
          fprintf(stderr, "drover bench ring: %s %d killed by signal %d\n", what, i, WTERMSIG(st));
        else
          fprintf(stderr, "drover bench ring: %s %d failed\n", what, i);
      }
      ok = false;
    }
    if (left == 0) break;
    if (!ok || drv_now_ms() > deadline_ms) {
      if (ok)
        fprintf(stderr, "drover bench ring: %s did not finish in time; stopping them\n", what);
      ok = false;
      for (int i = 0; i < n; i++)
        if (!done[i]) kill(pid[i], SIGKILL);
      for (int i = 0; i < n; i++)
        if (!done[i]) waitpid(pid[i], NULL, 0);
      break;
    }
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return ok;
}

/* A wall limit for one run: generous for a slow machine (50 MB/s per all-reduce). */
static int64_t bench_deadline(const bench_opts_t *o) {
  double s = 60.0 + (o->warmup + o->iters + 1) * (double)o->bytes * 2.0 / 50e6;
  return drv_now_ms() + (int64_t)(s * 1000.0);
}

// --- raw loopback stream -------------------------------------------------------------------

static void bench_sockopts(int fd) {
  int one = 1, sz = BENCH_SOCKBUF_BYTES;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
}

/* One end of the raw stream, as the driver times it: all o->bytes sent or received. */
typedef struct {
  bench_shared_t *sh;
  int fd, role; /* role 0 receives (and times), role 1 sends */
  char *buf;
  size_t bytes;
} bench_stream_op_t;

static drv_result_t bench_stream_start(void *arg) {
  pthread_barrier_wait(&((bench_stream_op_t *)arg)->sh->barrier);
  return DRV_OK;
}

static drv_result_t bench_stream_once(void *arg, bool warmup) {
  bench_stream_op_t *op = arg;
  size_t done = 0;
  while (done < op->bytes) {
    ssize_t k = op->role ? send(op->fd, op->buf + done, op->bytes - done, MSG_NOSIGNAL)
                         : recv(op->fd, op->buf + done, op->bytes - done, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      fprintf(stderr, "drover bench ring: raw stream %s: %s\n", op->role ? "send" : "recv",
              k ? strerror(errno) : "connection closed");
      return DRV_ERR_SYS;
    }
    done += (size_t)k;
  }
  return DRV_OK;
}

/* role 0 receives (and times), role 1 sends. Returns the exit status. */
static int bench_stream_child(int role, int lfd, int port, const bench_opts_t *o,
                              bench_shared_t *sh) {
  int fd = -1;
  char *buf = malloc(o->bytes);
  if (!buf) return 1;
  memset(buf, 1, o->bytes);
  if (role == 0) {
    fd = accept(lfd, NULL, NULL);
  } else {
    close(lfd);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bench_sockopts(fd);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    fprintf(stderr, "drover bench ring: raw stream: %s: %s\n", role ? "connect" : "accept",
            strerror(errno));
    return 1;
  }
  bench_sockopts(fd);
  bench_stream_op_t sop = {.sh = sh, .fd = fd, .role = role, .buf = buf, .bytes = o->bytes};
  bench_op_t op = {.run = bench_stream_once,
                   .prepare = bench_stream_start,
                   .arg = &sop,
                   .warmup = o->warmup,
                   .iters = o->iters};
  drv_result_t rc = bench_time(&op, role == 0 ? sh->t : NULL);
  close(fd);
  free(buf);
  return rc == DRV_OK ? 0 : 1;
}

/* Median GB/s of a raw TCP stream of o->bytes over loopback, into *out. */
static bool bench_stream(const bench_opts_t *o, bench_stat_t *out) {
  size_t shsize;
  bench_shared_t *sh = bench_shared_new(o->iters, &shsize);
  if (!sh) return false;
  bool ok = false;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  if (lfd < 0) goto done;
  bench_sockopts(lfd);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1) < 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0 || !bench_barrier_init(sh, 2)) {
    fprintf(stderr, "drover bench ring: raw stream: %s\n", strerror(errno));
    goto done;
  }
  int64_t deadline = bench_deadline(o);
  pid_t pid[2];
  fflush(NULL);
  for (int role = 0; role < 2; role++) {
    pid[role] = fork();
    if (pid[role] == 0) _exit(bench_stream_child(role, lfd, ntohs(sa.sin_port), o, sh));
    if (pid[role] < 0) {
      if (role) {
        kill(pid[0], SIGKILL);
        waitpid(pid[0], NULL, 0);
      }
      goto done;
    }
  }
  close(lfd);
  lfd = -1;
  if (!bench_wait(pid, 2, deadline, "raw stream process")) goto done;
  double *gbs = malloc((size_t)o->iters * sizeof *gbs);
  if (!gbs) goto done;
  for (int i = 0; i < o->iters; i++) gbs[i] = (double)o->bytes / sh->t[i] / 1e9;
  *out = bench_stat(gbs, o->iters);
  free(gbs);
  ok = true;
done:
  if (lfd >= 0) close(lfd);
  munmap(sh, shsize);
  return ok;
}

// --- ring workers --------------------------------------------------------------------------

/* One rank's all-reduce, as the driver times it. The timed loop sums its own output again
 * and again: values grow, but stay finite for any sane iteration count, and the ring's
 * cost does not depend on them. */
typedef struct {
  bench_shared_t *sh;
  ring_t *r;
  float *data;
  size_t count;
} bench_ring_op_t;

static drv_result_t bench_ring_start(void *arg) {
  pthread_barrier_wait(&((bench_ring_op_t *)arg)->sh->barrier);
  return DRV_OK;
}

static drv_result_t bench_ring_once(void *arg, bool warmup) {
  bench_ring_op_t *op = arg;
  return ring_allreduce(op->r, op->data, op->count);
}

static int bench_ring_child(int rank, int world, const bench_opts_t *o, bench_shared_t *sh) {
  ring_t *r = NULL;
  float *data = NULL;
  size_t count = o->bytes / sizeof(float);
  int code = 1;
  drv_result_t rc = ring_listen("127.0.0.1", "127.0.0.1", &r);
  if (rc != DRV_OK) goto fail;
  snprintf(sh->addr[rank], RING_ADDR_MAX, "%s", ring_address(r));
  __atomic_add_fetch(&sh->listening, 1, __ATOMIC_RELEASE);
  int64_t end = drv_now_ms() + BENCH_CONNECT_MS;
  while (__atomic_load_n(&sh->listening, __ATOMIC_ACQUIRE) < world) {
    if (drv_now_ms() > end) {
      rc = drv_error(DRV_ERR_TIMEOUT, "the other workers never published their address");
      goto fail;
    }
    struct timespec ts = {0, 1000000L};
    nanosleep(&ts, NULL);
  }
  const char *addrs[BENCH_MAX_WORKERS];
  for (int i = 0; i < world; i++) addrs[i] = sh->addr[i];
  ring_auth_t auth = {.job = 0xbe4c, .generation = (uint32_t)world, .key = sh->key};
  rc = ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, &auth, BENCH_CONNECT_MS);
  if (rc != DRV_OK) goto fail;
  data = malloc(count * sizeof *data);
  if (!data) {
    rc = drv_error(DRV_ERR_NOMEM, "%zu bytes for the data", o->bytes);
    goto fail;
  }
  bench_allreduce_fill(data, count, rank);
  bench_ring_op_t rop = {.sh = sh, .r = r, .data = data, .count = count};
  bench_op_t op = {.run = bench_ring_once,
                   .prepare = bench_ring_start,
                   .arg = &rop,
                   .warmup = o->warmup,
                   .iters = o->iters};
  rc = bench_time(&op, sh->t + (size_t)rank * (size_t)o->iters);
  if (rc != DRV_OK) goto fail;
  bench_allreduce_fill(data, count, rank);
  rc = ring_allreduce(r, data, count);
  if (rc != DRV_OK) goto fail;
  sh->wrong[rank] = bench_allreduce_wrong(data, count, world);
  code = 0;
fail:
  if (code) snprintf(sh->err[rank], sizeof sh->err[rank], "%s", drv_last_error());
  if (code)
    fprintf(stderr, "drover bench ring: worker %d of %d: %s\n", rank, world, drv_last_error());
  free(data);
  ring_destroy(&r);
  return code;
}

typedef struct {
  int world;
  bench_stat_t ms; /* per-iteration time of the slowest rank */
  bench_bw_t bw;   /* GB/s at the median time */
  uint64_t wrong;
  bool ok;
} bench_row_t;

static void bench_ring_world(int world, const bench_opts_t *o, bench_row_t *row) {
  *row = (bench_row_t){.world = world};
  size_t shsize;
  bench_shared_t *sh = bench_shared_new(o->iters, &shsize);
  if (!sh) return;
  bool barrier = bench_barrier_init(sh, world);
  if (!barrier) goto done;
  if (ring_key_new(sh->key) != DRV_OK) {
    fprintf(stderr, "drover bench ring: %s\n", drv_last_error());
    goto done;
  }
  int64_t deadline = bench_deadline(o);
  pid_t pid[BENCH_MAX_WORKERS];
  fflush(NULL);
  for (int i = 0; i < world; i++) {
    pid[i] = fork();
    if (pid[i] == 0) _exit(bench_ring_child(i, world, o, sh));
    if (pid[i] < 0) {
      for (int j = 0; j < i; j++) kill(pid[j], SIGKILL);
      for (int j = 0; j < i; j++) waitpid(pid[j], NULL, 0);
      goto done;
    }
  }
  if (!bench_wait(pid, world, deadline, "ring worker")) goto done;
  double *ms = malloc((size_t)o->iters * sizeof *ms);
  if (!ms) goto done;
  bench_slowest(sh->t, world, o->iters, 1e3, ms);
  row->ms = bench_stat(ms, o->iters);
  free(ms);
  row->bw = bench_allreduce_bw(o->bytes, row->ms.med, world);
  for (int q = 0; q < world; q++) row->wrong += sh->wrong[q];
  row->ok = true;
done:
  if (barrier) pthread_barrier_destroy(&sh->barrier);
  munmap(sh, shsize);
}

// --- main ----------------------------------------------------------------------------------

/* The columns of the table; docs/benchmarks.md and docs/user-guide.md show them. */
static const bench_col_t COLUMNS[] = {
    {"world", 5},    {"bytes", 12},       {"count", 11},       {"time(ms)", 10},  {"min(ms)", 10},
    {"max(ms)", 10}, {"algbw(GB/s)", 11}, {"busbw(GB/s)", 11}, {"busbw/raw", 10}, {"#wrong", 7}};

static void bench_print_row(bench_table_t *tab, const bench_opts_t *o, const bench_row_t *row,
                            const bench_stat_t *raw) {
  bench_table_cell(tab, "%d", row->world);
  bench_table_cell(tab, "%zu", o->bytes);
  bench_table_cell(tab, "%zu", o->bytes / sizeof(float));
  if (!row->ok) {
    bench_table_cell(tab, "failed");
    bench_table_end_row(tab);
    return;
  }
  /* A world of one moves nothing: its bandwidths would only measure a no-op call. */
  char alg[16] = "-", bus[16] = "-", ratio[16] = "-";
  if (row->world > 1) {
    snprintf(alg, sizeof alg, "%.3f", row->bw.algbw);
    snprintf(bus, sizeof bus, "%.3f", row->bw.busbw);
    if (raw) snprintf(ratio, sizeof ratio, "%.2f", row->bw.busbw / raw->med);
  }
  bench_table_cell(tab, "%.2f", row->ms.med);
  bench_table_cell(tab, "%.2f", row->ms.min);
  bench_table_cell(tab, "%.2f", row->ms.max);
  bench_table_cell(tab, "%s", alg);
  bench_table_cell(tab, "%s", bus);
  bench_table_cell(tab, "%s", ratio);
  bench_table_cell(tab, "%llu", (unsigned long long)row->wrong);
  bench_table_end_row(tab);
}

/* The --json line: the run's parameters, the raw stream (null when it failed), one result
 * per world. */
static void bench_print_json(const bench_opts_t *o, long long chunk, long cpus,
                             const bench_stat_t *raw, const bench_row_t *rows) {
  bench_json_t j;
  bench_json_begin(&j, stdout);
  bench_json_str(&j, "bench", "ring");
  bench_json_uint(&j, "bytes", o->bytes);
  bench_json_uint(&j, "count", o->bytes / sizeof(float));
  bench_json_int(&j, "warmup", o->warmup);
  bench_json_int(&j, "iters", o->iters);
  bench_json_int(&j, "chunk_bytes", chunk);
  bench_json_int(&j, "cpus", cpus);
  if (raw)
    bench_json_stat(&j, "raw_gbps", raw, 4);
  else
    bench_json_null(&j, "raw_gbps");
  bench_json_open(&j, "results", '[');
  for (int w = 0; w < o->nworlds; w++) {
    const bench_row_t *row = &rows[w];
    bench_json_open(&j, NULL, '{');
    bench_json_int(&j, "world", row->world);
    bench_json_bool(&j, "ok", row->ok);
    if (row->ok) {
      bench_json_stat(&j, "time_ms", &row->ms, 4);
      bench_json_uint(&j, "wrong", row->wrong);
      if (row->world > 1) {
        bench_json_fixed(&j, "algbw_gbps", row->bw.algbw, 4);
        bench_json_fixed(&j, "busbw_gbps", row->bw.busbw, 4);
      }
      if (raw && row->world > 1)
        bench_json_fixed(&j, "busbw_over_raw", row->bw.busbw / raw->med, 4);
    }
    bench_json_close(&j, '}');
  }
  bench_json_close(&j, ']');
  bench_json_end(&j);
}

int bench_ring_main(int argc, char **argv) {
  bench_opts_t o;
  int prc = bench_parse(argc, argv, &o);
  if (prc) return prc == 1 ? 0 : 2;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  long long chunk = (long long)drv_setting(DRV_SET_RING_CHUNK_BYTES);

  printf("# drover bench ring: host ring all-reduce (float32 sum) over loopback TCP\n");
  printf("# bytes %zu, warm-up %d, iterations %d, chunk %lld B, %ld CPUs online\n", o.bytes,
         o.warmup, o.iters, chunk, cpus);
  fflush(stdout);

  bench_stat_t raw = {0};
  bool raw_ok = bench_stream(&o, &raw);
  if (raw_ok)
    printf(
        "# raw loopback TCP stream, 1 sender -> 1 receiver: %.3f GB/s median "
        "(min %.3f, max %.3f)\n",
        raw.med, raw.min, raw.max);
  else
    printf("# raw loopback TCP stream: failed\n");
  printf("#\n");
  bench_table_t tab = {.out = stdout, .cols = COLUMNS, .ncols = (int)DRV_ARRAY_LEN(COLUMNS)};
  bench_table_header(&tab);

  bench_row_t rows[BENCH_MAX_WORLDS];
  bool all_ok = raw_ok;
  for (int w = 0; w < o.nworlds; w++) {
    bench_ring_world(o.workers[w], &o, &rows[w]);
    bench_print_row(&tab, &o, &rows[w], raw_ok ? &raw : NULL);
    if (!rows[w].ok || rows[w].wrong) all_ok = false;
  }
  for (int w = 0; w < o.nworlds; w++)
    if (o.workers[w] > cpus) {
      printf(
          "# note: worlds of more than %ld workers are oversubscribed on %ld CPUs: their rows "
          "measure contention as much as the ring\n",
          cpus, cpus);
      break;
    }

  if (o.json) bench_print_json(&o, chunk, cpus, raw_ok ? &raw : NULL, rows);
  fflush(stdout);
  return all_ok ? 0 : 1;
}
