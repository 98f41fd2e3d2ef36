/* test_ring.c: the host ring all-reduce (agent/ring), run as real processes on loopback.
 *
 * Each test forks its ranks as child processes. A child listens, publishes its address in a
 * shared mapping the parent set up, waits until every rank has done so, connects the ring
 * and does its part; it checks its own results and _exits 0 when every expectation held
 * (or a numbered code and a line on stderr when one did not), and leaves the result codes
 * it saw in the shared mapping for the parent's assertions. The parent enforces a hard wall
 * limit: a ring that hangs is killed and fails the test instead of hanging ctest.
 *
 * Data are integer-valued floats (rank*1000 + i%1000), so the sums are exact and every
 * rank must match them exactly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "collective/ring.h"
#include "common/drv.h"

#define RT_MAX 8
#define RT_TAG 0x1234000000000007ull
#define RT_WALL_MS 20000    /* hard limit for one run of children */
#define RT_CONNECT_MS 10000 /* ring_connect timeout in the healthy tests */
/* DROVER_RING_TIMEOUT_MS in every child: long enough that a busy 2-core CI machine does
 * not starve a healthy rank past it, short enough to keep the failure tests quick. */
#define RT_RING_TIMEOUT "5000"
#define RT_STOPPED (-1000) /* rt_run status: the child was stopped, then killed */

typedef struct {
  char addr[RT_MAX][RING_ADDR_MAX];
  int listening; /* ranks that published their address (atomic) */
  int flag;      /* a test-specific go signal (atomic) */
  int done;      /* survivors finished (atomic) */
  int rc[RT_MAX];
  uint64_t hash[RT_MAX];
  char msg[RT_MAX][512];
} rt_shared_t;

static rt_shared_t *shm;

typedef int (*rt_child_fn)(int rank, int nproc, const void *arg);

// --- harness ------------------------------------------------------------------------------

static void rt_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Waits (bounded) until the shared counter reaches n. */
static bool rt_wait_count(int *counter, int n) {
  int64_t end = drv_now_ms() + RT_CONNECT_MS;
  while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < n) {
    if (drv_now_ms() > end) return false;
    rt_sleep_ms(1);
  }
  return true;
}

/* In a child: listen on loopback, publish the address as slot `rank`, wait for `nproc`
 * slots. Returns the ring or NULL. */
static ring_t *rt_join(int rank, int nproc) {
  ring_t *r = NULL;
  if (ring_listen("127.0.0.1", "127.0.0.1", &r) != DRV_OK) {
    fprintf(stderr, "rank %d: ring_listen: %s\n", rank, drv_last_error());
    return NULL;
  }
  snprintf(shm->addr[rank], RING_ADDR_MAX, "%s", ring_address(r));
  __atomic_add_fetch(&shm->listening, 1, __ATOMIC_RELEASE);
  if (!rt_wait_count(&shm->listening, nproc)) {
    fprintf(stderr, "rank %d: the other ranks never published their address\n", rank);
    ring_destroy(&r);
  }
  return r;
}

static void rt_addrs(const char **addrs, int n) {
  for (int i = 0; i < n; i++) addrs[i] = shm->addr[i];
}

static void rt_note(int rank, drv_result_t rc) {
  shm->rc[rank] = (int)rc;
  snprintf(shm->msg[rank], sizeof shm->msg[rank], "%s", drv_last_error());
}

/* Forks nproc children running fn, waits for them under RT_WALL_MS, and stores each one's
 * exit code in status[] (128+signal when killed by a signal, RT_STOPPED when it stopped
 * itself and was killed once every other child had finished). Returns false on a hang. */
static bool rt_run(int nproc, rt_child_fn fn, const void *arg, int *status) {
  memset(shm, 0, sizeof *shm);
  for (int i = 0; i < RT_MAX; i++) shm->rc[i] = -1;
  fflush(NULL);
  pid_t pid[RT_MAX];
  for (int i = 0; i < nproc; i++) {
    pid[i] = fork();
    if (pid[i] == 0) {
      struct rlimit nocore = {0, 0};
      setrlimit(RLIMIT_CORE, &nocore);
      /* Before anything reads the settings table in this process. */
      setenv("DROVER_RING_TIMEOUT_MS", RT_RING_TIMEOUT, 1);
      int code = fn(i, nproc, arg);
      fflush(NULL);
      _exit(code);
    }
    if (pid[i] < 0) {
      for (int j = 0; j < i; j++) kill(pid[j], SIGKILL);
      for (int j = 0; j < i; j++) waitpid(pid[j], NULL, 0);
      return false;
    }
  }
  bool done[RT_MAX] = {0}, stopped[RT_MAX] = {0};
  int left = nproc;
  bool hung = false;
  int64_t end = drv_now_ms() + RT_WALL_MS;
  while (left > 0) {
    int nstopped = 0;
    for (int i = 0; i < nproc; i++) {
      if (done[i]) continue;
      int st;
      pid_t w = waitpid(pid[i], &st, WNOHANG | WUNTRACED);
      if (w != pid[i]) {
        nstopped += stopped[i];
        continue;
      }
      if (WIFSTOPPED(st)) {
        stopped[i] = true;
        nstopped++;
        continue;
      }
      done[i] = true;
      left--;
      status[i] = stopped[i] ? RT_STOPPED : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (left > 0 && (nstopped == left || drv_now_ms() > end)) {
      hung = nstopped != left;
      for (int i = 0; i < nproc; i++)
        if (!done[i]) kill(pid[i], SIGKILL);
      for (int i = 0; i < nproc; i++) {
        if (done[i]) continue;
        waitpid(pid[i], NULL, 0);
        status[i] = stopped[i] ? RT_STOPPED : 128 + SIGKILL;
        done[i] = true;
      }
      left = 0;
    }
    if (left > 0) rt_sleep_ms(2);
  }
  return !hung;
}

static void rt_expect_all_ok(int nproc, const int *status) {
  for (int i = 0; i < nproc; i++) {
    if (status[i] != 0) print_error("rank %d exited with %d (%s)\n", i, status[i], shm->msg[i]);
    assert_int_equal(status[i], 0);
  }
}

// --- data ---------------------------------------------------------------------------------

/* data[i] = rank*1000 + i%1000 */
static void rt_fill(float *data, size_t count, int rank) {
  for (size_t i = 0; i < count; i++) data[i] = (float)(rank * 1000 + (int)(i % 1000));
}

/* Exact check against sum over ranks; returns the first wrong index or count. */
static size_t rt_check(const float *data, size_t count, int world) {
  float base = (float)(1000 * world * (world - 1) / 2);
  for (size_t i = 0; i < count; i++)
    if (data[i] != base + (float)(world * (int)(i % 1000))) return i;
  return count;
}

/* One all-reduce of `count` filled floats; 0 when exact everywhere. */
static int rt_sum_once(ring_t *r, int rank, int world, size_t count) {
  float *data = malloc(DRV_MAX(count, (size_t)1) * sizeof *data);
  if (!data) return 50;
  rt_fill(data, count, rank);
  drv_result_t rc = ring_allreduce(r, data, count);
  if (rc != DRV_OK) {
    fprintf(stderr, "rank %d/%d count %zu: %s: %s\n", rank, world, count, drv_strerror(rc),
            drv_last_error());
    free(data);
    return 51;
  }
  size_t bad = rt_check(data, count, world);
  if (bad != count) {
    fprintf(stderr, "rank %d/%d count %zu: data[%zu] = %g, expected %g\n", rank, world, count, bad,
            data[bad], 1000.0 * world * (world - 1) / 2 + world * (double)(bad % 1000));
    free(data);
    return 52;
  }
  free(data);
  return 0;
}

// --- exact sums over world sizes and awkward counts ---------------------------------------

typedef struct {
  const char *chunk_bytes; /* DROVER_RING_CHUNK_BYTES, or NULL for the default */
  const size_t *counts;    /* 0-terminated list is awkward: use n */
  size_t ncounts;
  bool add_world_minus_1;
} rt_sums_t;

static int child_sums(int rank, int world, const void *arg) {
  const rt_sums_t *a = arg;
  if (a->chunk_bytes) setenv("DROVER_RING_CHUNK_BYTES", a->chunk_bytes, 1);
  ring_t *r = rt_join(rank, world);
  if (!r) return 10;
  const char *addrs[RT_MAX];
  rt_addrs(addrs, world);
  drv_result_t rc = ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, RT_TAG, RT_CONNECT_MS);
  rt_note(rank, rc);
  if (rc != DRV_OK) {
    fprintf(stderr, "rank %d/%d: ring_connect: %s\n", rank, world, drv_last_error());
    ring_destroy(&r);
    return 11;
  }
  int code = 0;
  for (size_t k = 0; k < a->ncounts && !code; k++) code = rt_sum_once(r, rank, world, a->counts[k]);
  if (!code && a->add_world_minus_1) code = rt_sum_once(r, rank, world, (size_t)world - 1);
  /* The same ring again after all that: the streams must still be in step. */
  if (!code) code = rt_sum_once(r, rank, world, 12345);
  ring_destroy(&r);
  return code;
}

static void test_sums_every_world_and_count(void **state) {
  static const size_t counts[] = {0, 1, 3, 1000003, (3u << 20) + 5};
  rt_sums_t a = {NULL, counts, DRV_ARRAY_LEN(counts), true};
  for (int world = 1; world <= 5; world++) {
    int status[RT_MAX];
    assert_true(rt_run(world, child_sums, &a, status));
    rt_expect_all_ok(world, status);
  }
}

static void test_sums_small_chunks(void **state) {
  /* 4100 bytes = 1025 floats: many chunks per segment, and segments that do not split
   * into whole chunks. */
  static const size_t counts[] = {7, 5000, 1000003};
  rt_sums_t a = {"4100", counts, DRV_ARRAY_LEN(counts), true};
  for (int world = 2; world <= 4; world++) {
    int status[RT_MAX];
    assert_true(rt_run(world, child_sums, &a, status));
    rt_expect_all_ok(world, status);
  }
  /* One float per chunk. */
  static const size_t tiny[] = {1, 2, 3, 10, 37};
  rt_sums_t b = {"4", tiny, DRV_ARRAY_LEN(tiny), true};
  int status[RT_MAX];
  assert_true(rt_run(3, child_sums, &b, status));
  rt_expect_all_ok(3, status);
}

// --- bitwise-identical results with rounding ----------------------------------------------

#define RT_BITS_COUNT 100003u

static float rt_noise(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(*s >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static int child_bitwise(int rank, int world, const void *arg) {
  setenv("DROVER_RING_CHUNK_BYTES", "8192", 1);
  ring_t *r = rt_join(rank, world);
  if (!r) return 10;
  const char *addrs[RT_MAX];
  rt_addrs(addrs, world);
  if (ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, RT_TAG, RT_CONNECT_MS) != DRV_OK) {
    fprintf(stderr, "rank %d: ring_connect: %s\n", rank, drv_last_error());
    return 11;
  }
  float *data = malloc(RT_BITS_COUNT * sizeof *data);
  double *want = calloc(RT_BITS_COUNT, sizeof *want);
  if (!data || !want) return 50;
  /* Every rank can regenerate every other rank's input, so it knows the exact sum. */
  for (int q = 0; q < world; q++) {
    uint64_t s = 1000 + (uint64_t)q;
    for (size_t i = 0; i < RT_BITS_COUNT; i++) {
      float v = rt_noise(&s) * (float)(1 + i % 7);
      want[i] += v;
      if (q == rank) data[i] = v;
    }
  }
  drv_result_t rc = ring_allreduce(r, data, RT_BITS_COUNT);
  rt_note(rank, rc);
  if (rc != DRV_OK) return 51;
  uint64_t h = 1469598103934665603ull; /* FNV-1a over the result's bytes */
  const unsigned char *b = (const unsigned char *)data;
  for (size_t i = 0; i < RT_BITS_COUNT * sizeof *data; i++) h = (h ^ b[i]) * 1099511628211ull;
  shm->hash[rank] = h;
  for (size_t i = 0; i < RT_BITS_COUNT; i++)
    if (fabs(data[i] - want[i]) > 1e-5 * (1 + fabs(want[i]))) {
      fprintf(stderr, "rank %d: data[%zu] = %.9g, expected %.9g\n", rank, i, data[i], want[i]);
      return 52;
    }
  free(data);
  free(want);
  ring_destroy(&r);
  return 0;
}

static void test_results_bitwise_identical(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(4, child_bitwise, NULL, status));
  rt_expect_all_ok(4, status);
  for (int i = 1; i < 4; i++) assert_int_equal(shm->hash[i], shm->hash[0]);
}

// --- failures: killed, crashed and stopped peers ------------------------------------------

typedef enum { VICTIM_KILL_BEFORE, VICTIM_CRASH_MID, VICTIM_STOP } rt_victim_t;

typedef struct {
  rt_victim_t how;
  int victim;
  drv_result_t expect; /* what the survivors' all-reduce must return */
} rt_fail_t;

#define RT_FAIL_COUNT (1u << 20)

static void rt_sigsegv_to_sigkill(int sig) {
  kill(getpid(), SIGKILL);
}

static int child_fail(int rank, int world, const void *arg) {
  const rt_fail_t *a = arg;
  ring_t *r = rt_join(rank, world);
  if (!r) return 10;
  const char *addrs[RT_MAX];
  rt_addrs(addrs, world);
  if (ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, RT_TAG, RT_CONNECT_MS) != DRV_OK) {
    fprintf(stderr, "rank %d: ring_connect: %s\n", rank, drv_last_error());
    return 11;
  }
  /* Every rank has connected before anyone goes on, so the victim's exit is not taken for
   * a connect failure. */
  __atomic_add_fetch(&shm->flag, 1, __ATOMIC_RELEASE);
  if (!rt_wait_count(&shm->flag, world)) return 12;

  size_t bytes = RT_FAIL_COUNT * sizeof(float);
  float *data = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) return 50;
  rt_fill(data, RT_FAIL_COUNT - 4096 / sizeof(float), rank);
  if (rank == a->victim) {
    if (a->how == VICTIM_KILL_BEFORE) kill(getpid(), SIGKILL);
    if (a->how == VICTIM_STOP) {
      raise(SIGSTOP);
      return 13; /* the parent kills it instead of continuing it */
    }
    /* VICTIM_CRASH_MID: the last page of the array is unreadable. The victim (rank 0 of 3)
     * first receives segment 2, which ends there, and adds it in chunk by chunk: it dies
     * in that addition, after sending all of segment 0 and forwarding most of segment 2. */
    signal(SIGSEGV, rt_sigsegv_to_sigkill);
    mprotect((char *)data + bytes - 4096, 4096, PROT_NONE);
    ring_allreduce(r, data, RT_FAIL_COUNT);
    return 14; /* not reached */
  }
  rt_fill(data, RT_FAIL_COUNT, rank);
  int64_t t0 = drv_now_ms();
  drv_result_t rc = ring_allreduce(r, data, RT_FAIL_COUNT);
  int64_t took = drv_now_ms() - t0;
  rt_note(rank, rc);
  fprintf(stderr, "rank %d: survivor got '%s' after %lld ms: %s\n", rank, drv_strerror(rc),
          (long long)took, drv_last_error());
  /* Keep this rank's sockets open until every survivor has its answer: a survivor that
   * closes early would turn its neighbour's timeout into a closed-connection error. */
  __atomic_add_fetch(&shm->done, 1, __ATOMIC_RELEASE);
  rt_wait_count(&shm->done, world - 1);
  if (rc != a->expect) return 20;
  if (!strstr(drv_last_error(), "rank ")) return 21; /* the message names the peer */
  /* The ring is broken now: it refuses further use instead of misreading the streams. */
  if (ring_allreduce(r, data, 16) != DRV_ERR_INVALID) return 22;
  ring_destroy(&r);
  return 0;
}

static void rt_expect_survivors(const rt_fail_t *a, int world, const int *status, int victim_st) {
  for (int i = 0; i < world; i++) {
    if (i == a->victim) {
      assert_int_equal(status[i], victim_st);
      continue;
    }
    if (status[i] != 0) print_error("rank %d exited with %d (%s)\n", i, status[i], shm->msg[i]);
    assert_int_equal(status[i], 0);
    assert_int_equal(shm->rc[i], a->expect);
  }
}

static void test_peer_killed_before_first_send(void **state) {
  rt_fail_t a = {VICTIM_KILL_BEFORE, 2, DRV_ERR_SYS};
  int status[RT_MAX];
  assert_true(rt_run(3, child_fail, &a, status));
  rt_expect_survivors(&a, 3, status, 128 + SIGKILL);
}

static void test_peer_crashes_mid_allreduce(void **state) {
  rt_fail_t a = {VICTIM_CRASH_MID, 0, DRV_ERR_SYS};
  int status[RT_MAX];
  assert_true(rt_run(3, child_fail, &a, status));
  rt_expect_survivors(&a, 3, status, 128 + SIGKILL);
}

static void test_stopped_peer_times_out(void **state) {
  /* A peer that is alive but silent: the sockets stay open, only the timeout ends it. */
  rt_fail_t a = {VICTIM_STOP, 1, DRV_ERR_TIMEOUT};
  int status[RT_MAX];
  assert_true(rt_run(3, child_fail, &a, status));
  rt_expect_survivors(&a, 3, status, RT_STOPPED);
}

// --- connecting: tags, stale peers, missing peers, mismatched calls -----------------------

static int child_wrong_tag(int rank, int world, const void *arg) {
  ring_t *r = rt_join(rank, world);
  if (!r) return 10;
  const char *addrs[RT_MAX];
  rt_addrs(addrs, world);
  drv_result_t rc = ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs,
                                 rank == 1 ? RT_TAG + 1 : RT_TAG, 3000);
  rt_note(rank, rc);
  ring_destroy(&r);
  return rc == DRV_OK ? 30 : 0;
}

static void test_wrong_tag_refused(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(2, child_wrong_tag, NULL, status));
  rt_expect_all_ok(2, status);
  /* Whichever side read the other's hello first refused it explicitly. */
  assert_true(shm->rc[0] == DRV_ERR_PROTO || shm->rc[1] == DRV_ERR_PROTO);
}

/* Slots 0 and 1 are the real ranks of a 2-ring with tag T; slot 2 is a stale rank 1 from
 * an earlier generation (tag T-1) that dials rank 0 first. */
static int child_stale(int slot, int nproc, const void *arg) {
  ring_t *r = rt_join(slot, nproc);
  if (!r) return 10;
  const char *addrs[2] = {shm->addr[0], shm->addr[slot == 2 ? 2 : 1]};
  if (slot == 2) {
    drv_result_t rc = ring_connect(r, 1, 2, addrs, RT_TAG - 1, 5000);
    rt_note(slot, rc);
    __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    ring_destroy(&r);
    return rc == DRV_ERR_PROTO ? 0 : 40;
  }
  if (slot == 1 && !rt_wait_count(&shm->flag, 1)) return 41;
  drv_result_t rc = ring_connect(r, (uint32_t)slot, 2, addrs, RT_TAG, RT_CONNECT_MS);
  rt_note(slot, rc);
  if (rc != DRV_OK) {
    fprintf(stderr, "rank %d: ring_connect: %s\n", slot, drv_last_error());
    return 11;
  }
  int code = rt_sum_once(r, slot, 2, 1000);
  ring_destroy(&r);
  return code;
}

static void test_stale_peer_refused_ring_still_forms(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(3, child_stale, NULL, status));
  rt_expect_all_ok(3, status);
  assert_int_equal(shm->rc[2], DRV_ERR_PROTO);
  assert_int_equal(shm->rc[0], DRV_OK);
  assert_int_equal(shm->rc[1], DRV_OK);
}

static int child_missing(int rank, int nproc, const void *arg) {
  ring_t *a = NULL, *gone = NULL, *mute = NULL;
  if (ring_listen("127.0.0.1", NULL, &a) != DRV_OK) return 10;
  if (ring_listen("127.0.0.1", NULL, &gone) != DRV_OK) return 10;
  if (ring_listen("127.0.0.1", NULL, &mute) != DRV_OK) return 10;
  char gone_addr[RING_ADDR_MAX];
  snprintf(gone_addr, sizeof gone_addr, "%s", ring_address(gone));
  ring_destroy(&gone); /* nobody listens there any more */

  /* Rank 1's port is closed: the dial is refused again and again until the timeout. */
  const char *addrs[2] = {ring_address(a), gone_addr};
  drv_result_t rc = ring_connect(a, 0, 2, addrs, RT_TAG, 300);
  fprintf(stderr, "missing peer: %s\n", drv_last_error());
  if (rc != DRV_ERR_TIMEOUT) return 60;
  if (!strstr(drv_last_error(), "rank 1")) return 61;

  /* Rank 1 listens (the kernel completes the TCP handshake) but never answers. */
  ring_t *b = NULL;
  if (ring_listen("127.0.0.1", NULL, &b) != DRV_OK) return 10;
  addrs[0] = ring_address(b);
  addrs[1] = ring_address(mute);
  rc = ring_connect(b, 0, 2, addrs, RT_TAG, 300);
  fprintf(stderr, "mute peer: %s\n", drv_last_error());
  if (rc != DRV_ERR_TIMEOUT) return 62;
  if (!strstr(drv_last_error(), "rank 1")) return 63;

  /* Misuse is refused, not crashed on. */
  float x = 1.0f;
  if (ring_allreduce(a, &x, 1) != DRV_ERR_INVALID) return 64;
  if (ring_connect(a, 2, 2, addrs, RT_TAG, 10) != DRV_ERR_INVALID) return 65;
  ring_t *bad = NULL;
  if (ring_listen("no-such-host.invalid", NULL, &bad) == DRV_OK || bad) return 66;

  /* A world of one needs no peer and leaves the data as it is. */
  ring_t *solo = NULL;
  if (ring_listen("127.0.0.1", NULL, &solo) != DRV_OK) return 10;
  const char *solo_addr[1] = {ring_address(solo)};
  if (ring_connect(solo, 0, 1, solo_addr, RT_TAG, 10) != DRV_OK) return 67;
  if (ring_allreduce(solo, &x, 1) != DRV_OK || x != 1.0f) return 68;
  ring_destroy(&solo);
  ring_destroy(&a);
  ring_destroy(&b);
  ring_destroy(&mute);
  ring_destroy(&mute); /* NULL-safe */
  return 0;
}

static void test_missing_peer_times_out(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(1, child_missing, NULL, status));
  rt_expect_all_ok(1, status);
}

static int child_mismatch(int rank, int world, const void *arg) {
  ring_t *r = rt_join(rank, world);
  if (!r) return 10;
  const char *addrs[RT_MAX];
  rt_addrs(addrs, world);
  if (ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, RT_TAG, RT_CONNECT_MS) != DRV_OK)
    return 11;
  float data[101] = {0};
  drv_result_t rc = ring_allreduce(r, data, rank == 0 ? 100 : 101);
  rt_note(rank, rc);
  __atomic_add_fetch(&shm->done, 1, __ATOMIC_RELEASE);
  rt_wait_count(&shm->done, world); /* neither closes before both have checked */
  ring_destroy(&r);
  return rc == DRV_ERR_PROTO ? 0 : 70;
}

static void test_count_mismatch_detected(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(2, child_mismatch, NULL, status));
  rt_expect_all_ok(2, status);
  assert_int_equal(shm->rc[0], DRV_ERR_PROTO);
  assert_int_equal(shm->rc[1], DRV_ERR_PROTO);
}

// -------------------------------------------------------------------------------------------

static int setup(void **state) {
  shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return shm == MAP_FAILED ? -1 : 0;
}

static int teardown(void **state) {
  munmap(shm, sizeof *shm);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sums_every_world_and_count),
      cmocka_unit_test(test_sums_small_chunks),
      cmocka_unit_test(test_results_bitwise_identical),
      cmocka_unit_test(test_peer_killed_before_first_send),
      cmocka_unit_test(test_peer_crashes_mid_allreduce),
      cmocka_unit_test(test_stopped_peer_times_out),
      cmocka_unit_test(test_wrong_tag_refused),
      cmocka_unit_test(test_stale_peer_refused_ring_still_forms),
      cmocka_unit_test(test_missing_peer_times_out),
      cmocka_unit_test(test_count_mismatch_detected),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
