/* test_ring.c: the host ring all-reduce (collective/ring), run as real processes on loopback.
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
 *
 * Every ring proves one ring key, made before the first fork. Strangers (a child that
 * speaks the handshake by hand, from ring.h's description) try to join without it, as
 * dialer and as acceptor, replay another generation's transcript, or hold connections
 * open saying nothing: each is refused, gets nothing past the handshake, and the real
 * ring still forms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "collective/ring.h"
#include "common/drv.h"

#define RT_MAX 8
#define RT_JOB 0x1234
#define RT_GEN 7u
#define RT_WALL_MS 20000    /* hard limit for one run of children */
#define RT_CONNECT_MS 10000 /* ring_connect timeout in the healthy tests */
/* DROVER_RING_TIMEOUT_MS in every child: long enough that a busy 2-core CI machine does
 * not starve a healthy rank past it, short enough to keep the failure tests quick. */
#define RT_RING_TIMEOUT "5000"
#define RT_STOPPED (-1000) /* rt_run status: the child was stopped, then killed */

/* What a stranger's attempts saw, for the parent: per attempt, the bytes it got (-1: the
 * stream did not end) and the kind of the last message (0: none). */
#define RT_ATTEMPTS 32
typedef struct {
  long got[RT_ATTEMPTS];
  uint32_t last_kind[RT_ATTEMPTS];
  int attempts;
  int accepted; /* a legitimate handshake written by hand was accepted */
} rt_stranger_t;

typedef struct {
  char addr[RT_MAX][RING_ADDR_MAX];
  int listening; /* ranks that published their address (atomic) */
  int flag;      /* a test-specific go signal (atomic) */
  int done;      /* survivors finished (atomic) */
  int rc[RT_MAX];
  uint64_t hash[RT_MAX];
  char msg[RT_MAX][512];
  rt_stranger_t stranger;
} rt_shared_t;

static rt_shared_t *shm;
/* The job's ring key (made before any fork, so every child holds it) and the ring's
 * identity with it: job RT_JOB, generation RT_GEN. */
static unsigned char rt_key[RING_KEY_BYTES];
static ring_auth_t rt_auth;

/* rt_auth in another generation. */
static ring_auth_t rt_auth_gen(uint32_t generation) {
  ring_auth_t a = rt_auth;
  a.generation = generation;
  return a;
}

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
  drv_result_t rc =
      ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, &rt_auth, RT_CONNECT_MS);
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
  if (ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, &rt_auth, RT_CONNECT_MS) != DRV_OK) {
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
  if (ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, &rt_auth, RT_CONNECT_MS) != DRV_OK) {
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
  ring_auth_t other = rt_auth_gen(RT_GEN + 1);
  drv_result_t rc =
      ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, rank == 1 ? &other : &rt_auth, 3000);
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
    ring_auth_t stale = rt_auth_gen(RT_GEN - 1);
    drv_result_t rc = ring_connect(r, 1, 2, addrs, &stale, 5000);
    rt_note(slot, rc);
    __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    ring_destroy(&r);
    return rc == DRV_ERR_PROTO ? 0 : 40;
  }
  if (slot == 1 && !rt_wait_count(&shm->flag, 1)) return 41;
  drv_result_t rc = ring_connect(r, (uint32_t)slot, 2, addrs, &rt_auth, RT_CONNECT_MS);
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
  drv_result_t rc = ring_connect(a, 0, 2, addrs, &rt_auth, 300);
  fprintf(stderr, "missing peer: %s\n", drv_last_error());
  if (rc != DRV_ERR_TIMEOUT) return 60;
  if (!strstr(drv_last_error(), "rank 1")) return 61;

  /* Rank 1 listens (the kernel completes the TCP handshake) but never answers. */
  ring_t *b = NULL;
  if (ring_listen("127.0.0.1", NULL, &b) != DRV_OK) return 10;
  addrs[0] = ring_address(b);
  addrs[1] = ring_address(mute);
  rc = ring_connect(b, 0, 2, addrs, &rt_auth, 300);
  fprintf(stderr, "mute peer: %s\n", drv_last_error());
  if (rc != DRV_ERR_TIMEOUT) return 62;
  if (!strstr(drv_last_error(), "rank 1")) return 63;

  /* Misuse is refused, not crashed on. */
  float x = 1.0f;
  if (ring_allreduce(a, &x, 1) != DRV_ERR_INVALID) return 64;
  if (ring_connect(a, 2, 2, addrs, &rt_auth, 10) != DRV_ERR_INVALID) return 65;
  ring_t *bad = NULL;
  if (ring_listen("no-such-host.invalid", NULL, &bad) == DRV_OK || bad) return 66;

  /* A world of one needs no peer and leaves the data as it is. */
  ring_t *solo = NULL;
  if (ring_listen("127.0.0.1", NULL, &solo) != DRV_OK) return 10;
  const char *solo_addr[1] = {ring_address(solo)};
  if (ring_connect(solo, 0, 1, solo_addr, &rt_auth, 10) != DRV_OK) return 67;
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
  if (ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, &rt_auth, RT_CONNECT_MS) != DRV_OK)
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

// --- strangers: the ring key's handshake ---------------------------------------------------
// A stranger speaks the wire format by hand, written here from ring.h's description (so
// the handshake a legitimate peer completes below also checks that description): a head
// (magic, kind, rank, world, tag), then by kind a nonce, a challenge or a proof.

#define RT_HEAD 24
#define RT_K_HELLO 1
#define RT_K_ACCEPT 2
#define RT_K_REFUSE 3
#define RT_K_AUTH_HELLO 4
#define RT_K_CHALLENGE 5
#define RT_K_PROOF 6

static void rt_put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t rt_get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rt_tag(uint32_t generation) {
  return ((uint64_t)RT_JOB << 32) | generation;
}

/* A message's head; returns its length so far (24). */
static size_t rt_head(unsigned char *p, uint32_t kind, uint32_t rank, uint32_t world,
                      uint64_t tag) {
  memcpy(p, "DRNG", 4);
  rt_put_u32(p + 4, kind);
  rt_put_u32(p + 8, rank);
  rt_put_u32(p + 12, world);
  rt_put_u32(p + 16, (uint32_t)tag);
  rt_put_u32(p + 20, (uint32_t)(tag >> 32));
  return RT_HEAD;
}

/* The generation's key and a side's proof, as ring.h defines them. */
static void rt_proof(const unsigned char *key, uint32_t generation, bool dialer,
                     const unsigned char *nd, const unsigned char *na, uint32_t rank_d,
                     uint32_t rank_a, uint32_t world, const char *addr_d, const char *addr_a,
                     unsigned char *out) {
  static const char glabel[] = "drover ring generation key v1";
  unsigned char msg[sizeof glabel + 12], k[32], b[8];
  memcpy(msg, glabel, sizeof glabel);
  for (int i = 0; i < 8; i++) msg[sizeof glabel + i] = (unsigned char)((uint64_t)RT_JOB >> (8 * i));
  rt_put_u32(msg + sizeof glabel + 8, generation);
  crypto_generichash(k, sizeof k, msg, sizeof msg, key, RING_KEY_BYTES);
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, k, sizeof k);
  const char *label = dialer ? "drover ring dialer proof v1" : "drover ring acceptor proof v1";
  const char *strs[3] = {label, addr_d, addr_a};
  for (int i = 0; i < 3; i++) {
    if (i == 1) {
      crypto_auth_hmacsha256_update(&st, nd, 32);
      crypto_auth_hmacsha256_update(&st, na, 32);
      uint32_t v[4] = {rank_d, rank_a, world, generation};
      for (int j = 0; j < 4; j++) {
        rt_put_u32(b, v[j]);
        crypto_auth_hmacsha256_update(&st, b, 4);
      }
      for (int j = 0; j < 8; j++) b[j] = (unsigned char)((uint64_t)RT_JOB >> (8 * j));
      crypto_auth_hmacsha256_update(&st, b, 8);
    }
    rt_put_u32(b, (uint32_t)strlen(strs[i]));
    crypto_auth_hmacsha256_update(&st, b, 4);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)strs[i], strlen(strs[i]));
  }
  crypto_auth_hmacsha256_final(&st, out);
}

/* "127.0.0.1:PORT" to a socket address. */
static struct sockaddr_in rt_sockaddr(const char *addr) {
  struct sockaddr_in sa = {.sin_family = AF_INET};
  const char *colon = strrchr(addr, ':');
  sa.sin_port = htons((uint16_t)atoi(colon + 1));
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  return sa;
}

/* A blocking connection to addr whose reads give up after 10 s; -1 on failure. */
static int rt_dial(const char *addr) {
  struct sockaddr_in sa = rt_sockaddr(addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static bool rt_send(int fd, const void *p, size_t n) {
  return send(fd, p, n, MSG_NOSIGNAL) == (ssize_t)n;
}

/* Reads n bytes (fewer at the end of the stream or after the read timeout). */
static size_t rt_recv(int fd, unsigned char *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t k = recv(fd, p + got, n - got, 0);
    if (k <= 0) break;
    got += (size_t)k;
  }
  return got;
}

/* Everything up to the end of the stream (at most 10 s of silence): how many bytes, the
 * first `cap` of them kept. -1 when it did not end (the read timed out). */
static long rt_drain(int fd, unsigned char *p, size_t cap) {
  long total = 0;
  unsigned char sink[4096];
  for (;;) {
    ssize_t k = recv(fd, sink, sizeof sink, 0);
    if (k == 0) return total;
    if (k < 0) return -1;
    for (ssize_t i = 0; i < k; i++)
      if ((size_t)total + (size_t)i < cap) p[total + i] = sink[i];
    total += k;
  }
}

#define RT_STRANGER (&shm->stranger)
#define RT_PENDING_MAX 8 /* ring.c's table of connections waiting for their handshake */

/* One attempt as rank 1 of a 2-ring against the acceptor at addr: a hello (public-tag
 * `plain`, else an auth hello), then for an auth hello the proof `proof_of` computes from
 * the challenge (NULL: 32 zero bytes). Records what came back until the end of stream. */
typedef void (*rt_prover_fn)(const unsigned char *nd, const unsigned char *challenge,
                             const char *acceptor, unsigned char *proof);

static void rt_attempt(const char *addr, bool plain, rt_prover_fn proof_of) {
  rt_stranger_t *st = RT_STRANGER;
  int i = st->attempts++;
  int fd = rt_dial(addr);
  if (fd < 0) {
    st->got[i] = -2;
    return;
  }
  unsigned char out[88], in[256] = {0}, nd[32];
  randombytes_buf(nd, sizeof nd);
  size_t n = rt_head(out, plain ? RT_K_HELLO : RT_K_AUTH_HELLO, 1, 2, rt_tag(RT_GEN));
  if (!plain) memcpy(out + n, nd, 32), n += 32;
  rt_send(fd, out, n);
  long got = 0;
  if (!plain) {
    got = (long)rt_recv(fd, in, 88);
    if (got == 88 && rt_get_u32(in + 4) == RT_K_CHALLENGE) {
      unsigned char proof[32] = {0};
      if (proof_of) proof_of(nd, in, addr, proof);
      n = rt_head(out, RT_K_PROOF, 1, 2, rt_tag(RT_GEN));
      memcpy(out + n, proof, 32);
      rt_send(fd, out, n + 32);
    }
  }
  long rest = rt_drain(fd, in + got, sizeof in - (size_t)got);
  st->got[i] = rest < 0 ? -1 : got + rest;
  st->last_kind[i] = st->got[i] >= RT_HEAD ? rt_get_u32(in + st->got[i] - RT_HEAD + 4) : 0;
  close(fd);
}

/* A proof under another key than the job's. */
static void rt_prove_wrong_key(const unsigned char *nd, const unsigned char *ch,
                               const char *acceptor, unsigned char *proof) {
  unsigned char other[RING_KEY_BYTES];
  randombytes_buf(other, sizeof other);
  rt_proof(other, RT_GEN, true, nd, ch + RT_HEAD, 1, 0, 2, shm->addr[1], acceptor, proof);
}

/* Slots 0 and 1 are the real ranks of a 2-ring; slot 2, a stranger without the key,
 * claims to be rank 1 at rank 0's port before the real one dials: with the public-tag
 * hello, with a proof under a wrong key, with a proof of zeros. Each attempt must get
 * only the handshake's answers, ending in a refusal; then the real ring forms. */
static int child_stranger_dialer(int slot, int nproc, const void *arg) {
  ring_t *r = rt_join(slot, nproc);
  if (!r) return 10;
  if (slot == 2) {
    ring_destroy(&r);
    rt_attempt(shm->addr[0], true, NULL);
    rt_attempt(shm->addr[0], false, rt_prove_wrong_key);
    rt_attempt(shm->addr[0], false, NULL);
    __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    return 0;
  }
  if (slot == 1 && !rt_wait_count(&shm->flag, 1)) return 41;
  const char *addrs[2] = {shm->addr[0], shm->addr[1]};
  drv_result_t rc = ring_connect(r, (uint32_t)slot, 2, addrs, &rt_auth, RT_CONNECT_MS);
  rt_note(slot, rc);
  int code = rc == DRV_OK ? rt_sum_once(r, slot, 2, 100003) : 11;
  ring_destroy(&r);
  return code;
}

static void test_stranger_dialer_refused_ring_still_forms(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(3, child_stranger_dialer, NULL, status));
  rt_expect_all_ok(3, status);
  const rt_stranger_t *st = RT_STRANGER;
  assert_int_equal(st->attempts, 3);
  /* The public-tag hello: one refusal (24 bytes), then the end. */
  assert_int_equal(st->got[0], 24);
  assert_int_equal(st->last_kind[0], RT_K_REFUSE);
  /* The auth hellos: the challenge (88 bytes), the refusal of the proof, the end. */
  for (int i = 1; i < 3; i++) {
    assert_int_equal(st->got[i], 88 + 24);
    assert_int_equal(st->last_kind[i], RT_K_REFUSE);
  }
}

/* The stranger's side of rank 0's dial: what it answers each connection with. */
static void rt_answer(int fd, int how, const unsigned char *hello, const char *self) {
  unsigned char out[88] = {0};
  size_t n;
  if (how == 0) { /* the public-tag answer: accepted, without a proof */
    n = rt_head(out, RT_K_ACCEPT, 1, 2, rt_tag(RT_GEN));
  } else { /* a challenge whose proof is under a wrong key, or zeros */
    n = rt_head(out, RT_K_CHALLENGE, 1, 2, rt_tag(RT_GEN));
    randombytes_buf(out + n, 32);
    if (how == 1) {
      unsigned char other[RING_KEY_BYTES];
      randombytes_buf(other, sizeof other);
      rt_proof(other, RT_GEN, false, hello + RT_HEAD, out + n, 0, 1, 2, shm->addr[0], self,
               out + n + 32);
    }
    n += 64;
  }
  rt_send(fd, out, n);
}

/* The stranger's listener, until rank 0 is done with it (shm->flag): every dial of rank 0
 * answered in turn as rt_answer says; counts what rank 0 sent beyond its hello. */
static void rt_stranger_listen(int lfd) {
  rt_stranger_t *st = RT_STRANGER;
  while (!__atomic_load_n(&shm->flag, __ATOMIC_ACQUIRE) && st->attempts < RT_ATTEMPTS) {
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0) continue;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) continue;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int i = st->attempts++;
    unsigned char hello[56], rest[256];
    size_t got = rt_recv(fd, hello, RT_HEAD);
    if (got == RT_HEAD && rt_get_u32(hello + 4) == RT_K_AUTH_HELLO)
      got += rt_recv(fd, hello + RT_HEAD, 32);
    st->last_kind[i] = got >= RT_HEAD ? rt_get_u32(hello + 4) : 0;
    rt_answer(fd, i % 3, hello, shm->addr[2]);
    long more = rt_drain(fd, rest, sizeof rest); /* rank 0 closes: nothing more comes */
    st->got[i] = more;
    close(fd);
  }
}

/* Slot 2 is a stranger listening where rank 0 was told rank 1 is (a forged address): it
 * answers rank 0's dials with the public-tag accept, a wrong-key challenge, a challenge of
 * zeros. Rank 0 must send it nothing past its hello and keep dialling until its timeout;
 * then, given the real address, rank 0 forms the ring with the real rank 1. */
static int child_stranger_acceptor(int slot, int nproc, const void *arg) {
  if (slot == 2) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = rt_sockaddr("127.0.0.1:0");
    socklen_t sl = sizeof sa;
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 16) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0)
      return 10;
    snprintf(shm->addr[2], RING_ADDR_MAX, "127.0.0.1:%u", ntohs(sa.sin_port));
    __atomic_add_fetch(&shm->listening, 1, __ATOMIC_RELEASE);
    rt_stranger_listen(lfd);
    close(lfd);
    return 0;
  }
  ring_t *r = rt_join(slot, nproc);
  if (!r) return 10;
  const char *forged[2] = {shm->addr[0], shm->addr[2]}, *real[2] = {shm->addr[0], shm->addr[1]};
  if (slot == 0) {
    drv_result_t rc = ring_connect(r, 0, 2, forged, &rt_auth, 2000);
    rt_note(0, rc);
    __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    if (rc != DRV_ERR_TIMEOUT) return 42;
    if (!strstr(shm->msg[0], "did not prove the ring key")) return 43;
  } else if (!rt_wait_count(&shm->flag, 1)) {
    return 41;
  }
  drv_result_t rc = ring_connect(r, (uint32_t)slot, 2, real, &rt_auth, RT_CONNECT_MS);
  if (slot == 1) rt_note(1, rc);
  int code = rc == DRV_OK ? rt_sum_once(r, slot, 2, 100003) : 11;
  ring_destroy(&r);
  return code;
}

static void test_stranger_acceptor_refused(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(3, child_stranger_acceptor, NULL, status));
  rt_expect_all_ok(3, status);
  const rt_stranger_t *st = RT_STRANGER;
  assert_true(st->attempts >= 3); /* every answer was tried, and rank 0 kept dialling */
  for (int i = 0; i < st->attempts; i++) {
    assert_int_equal(st->last_kind[i], RT_K_AUTH_HELLO);
    assert_int_equal(st->got[i], 0); /* no proof of rank 0's, no gradient byte */
  }
}

/* Slot 2 first takes part legitimately in generation RT_GEN-1, by hand: it dials rank 0
 * (whose own dial finds nobody then), checks rank 0's challenge with its own reading of
 * the format, proves the key and is accepted, and keeps the transcript. In generation
 * RT_GEN it replays that transcript to rank 0: verbatim, and with the heads rewritten to
 * the new generation. Both must be refused; then the real rank 1 joins. */
static int rt_replayer(void) {
  rt_stranger_t *st = RT_STRANGER;
  const char *acc = shm->addr[0], *dead = shm->addr[2]; /* rank 0's view of rank 1 then */
  unsigned char hello[56], ch[88], proof[56], ans[24], mine[32];
  int fd = rt_dial(acc);
  if (fd < 0) return 45;
  randombytes_buf(hello + RT_HEAD, 32);
  rt_head(hello, RT_K_AUTH_HELLO, 1, 2, rt_tag(RT_GEN - 1));
  rt_send(fd, hello, sizeof hello);
  if (rt_recv(fd, ch, sizeof ch) != sizeof ch || rt_get_u32(ch + 4) != RT_K_CHALLENGE) return 46;
  rt_proof(rt_key, RT_GEN - 1, false, hello + RT_HEAD, ch + RT_HEAD, 1, 0, 2, dead, acc, mine);
  if (memcmp(mine, ch + RT_HEAD + 32, 32) != 0) return 47; /* rank 0's proof, as documented */
  rt_head(proof, RT_K_PROOF, 1, 2, rt_tag(RT_GEN - 1));
  rt_proof(rt_key, RT_GEN - 1, true, hello + RT_HEAD, ch + RT_HEAD, 1, 0, 2, dead, acc,
           proof + RT_HEAD);
  rt_send(fd, proof, sizeof proof);
  st->accepted = rt_recv(fd, ans, sizeof ans) == sizeof ans && rt_get_u32(ans + 4) == RT_K_ACCEPT;
  close(fd);
  if (!rt_wait_count(&shm->flag, 2)) return 41; /* rank 0 is in generation RT_GEN now */
  for (int rewrite = 0; rewrite < 2; rewrite++) {
    unsigned char in[256] = {0};
    int i = st->attempts++;
    if ((fd = rt_dial(acc)) < 0) return 45;
    if (rewrite) rt_head(hello, RT_K_AUTH_HELLO, 1, 2, rt_tag(RT_GEN));
    if (rewrite) rt_head(proof, RT_K_PROOF, 1, 2, rt_tag(RT_GEN));
    rt_send(fd, hello, sizeof hello);
    long got = (long)rt_recv(fd, in, rewrite ? 88 : 24);
    if (got == 88) rt_send(fd, proof, sizeof proof); /* the old proof for the new challenge */
    long rest = rt_drain(fd, in + got, sizeof in - (size_t)got);
    st->got[i] = rest < 0 ? -1 : got + rest;
    st->last_kind[i] = st->got[i] >= RT_HEAD ? rt_get_u32(in + st->got[i] - RT_HEAD + 4) : 0;
    close(fd);
  }
  __atomic_store_n(&shm->flag, 3, __ATOMIC_RELEASE);
  return 0;
}

static int child_replay(int slot, int nproc, const void *arg) {
  ring_t *r = rt_join(slot, nproc);
  if (!r) return 10;
  if (slot == 2) {
    ring_destroy(&r); /* nobody listens at shm->addr[2] from now on */
    __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    return rt_replayer();
  }
  if (slot == 0) {
    if (!rt_wait_count(&shm->flag, 1)) return 41;
    const char *old[2] = {shm->addr[0], shm->addr[2]};
    ring_auth_t prev = rt_auth_gen(RT_GEN - 1);
    drv_result_t rc = ring_connect(r, 0, 2, old, &prev, 1500);
    if (rc != DRV_ERR_TIMEOUT) return 44; /* accepted its left, found no right */
    __atomic_store_n(&shm->flag, 2, __ATOMIC_RELEASE);
  } else if (!rt_wait_count(&shm->flag, 3)) {
    return 41;
  }
  const char *addrs[2] = {shm->addr[0], shm->addr[1]};
  drv_result_t rc = ring_connect(r, (uint32_t)slot, 2, addrs, &rt_auth, RT_CONNECT_MS);
  rt_note(slot, rc);
  int code = rc == DRV_OK ? rt_sum_once(r, slot, 2, 1000) : 11;
  ring_destroy(&r);
  return code;
}

static void test_replayed_generation_refused(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(3, child_replay, NULL, status));
  rt_expect_all_ok(3, status);
  const rt_stranger_t *st = RT_STRANGER;
  assert_int_equal(st->accepted, 1); /* the handshake as documented is the handshake */
  assert_int_equal(st->attempts, 2);
  assert_int_equal(st->got[0], 24); /* verbatim: refused at its (old) head */
  assert_int_equal(st->last_kind[0], RT_K_REFUSE);
  assert_int_equal(st->got[1], 88 + 24); /* rewritten: its old proof refused */
  assert_int_equal(st->last_kind[1], RT_K_REFUSE);
}

/* Slot 2 holds connections to rank 0 that say nothing, or half a hello, while the real
 * rank 1 waits: `arg` NULL, one silent and one slow connection, which rank 0 must close
 * (DROVER_RING_HANDSHAKE_MS 300) while it is still waiting for rank 1; else 8 silent ones
 * that fill rank 0's table (handshake time left at its 5 s), and rank 1 must still get in
 * within a 4 s connect timeout, by closing the oldest. */
static int child_silent(int slot, int nproc, const void *arg) {
  bool flood = arg != NULL;
  if (!flood) setenv("DROVER_RING_HANDSHAKE_MS", "300", 1);
  ring_t *r = rt_join(slot, nproc);
  if (!r) return 10;
  if (slot == 2) {
    ring_destroy(&r);
    rt_stranger_t *st = RT_STRANGER;
    int fds[RT_MAX];
    int n = flood ? RT_PENDING_MAX : 2;
    for (int i = 0; i < n; i++)
      if ((fds[i] = rt_dial(shm->addr[0])) < 0) return 45;
    unsigned char half[RT_HEAD];
    rt_head(half, RT_K_AUTH_HELLO, 1, 2, rt_tag(RT_GEN));
    if (!flood) rt_send(fds[1], half, 10); /* a slow one: the first 10 bytes, then nothing */
    if (flood) __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < n; i++) {
      unsigned char in[64];
      st->got[i] = rt_drain(fds[i], in, sizeof in); /* 0: closed by rank 0, nothing sent */
      st->attempts++;
      close(fds[i]);
    }
    __atomic_store_n(&shm->flag, 1, __ATOMIC_RELEASE);
    return 0;
  }
  if (slot == 1 && !rt_wait_count(&shm->flag, 1)) return 41;
  const char *addrs[2] = {shm->addr[0], shm->addr[1]};
  drv_result_t rc =
      ring_connect(r, (uint32_t)slot, 2, addrs, &rt_auth, flood ? 4000 : RT_CONNECT_MS);
  rt_note(slot, rc);
  int code = rc == DRV_OK ? rt_sum_once(r, slot, 2, 1000) : 11;
  ring_destroy(&r);
  return code;
}

static void test_silent_strangers_cannot_stall(void **state) {
  int status[RT_MAX];
  /* Closed by their handshake's deadline while rank 0 still waited for rank 1. */
  assert_true(rt_run(3, child_silent, NULL, status));
  rt_expect_all_ok(3, status);
  assert_int_equal(RT_STRANGER->attempts, 2);
  for (int i = 0; i < 2; i++) assert_int_equal(RT_STRANGER->got[i], 0);
  /* A full table of them: the real rank 1 takes the oldest one's place. */
  assert_true(rt_run(3, child_silent, "flood", status));
  rt_expect_all_ok(3, status);
  assert_int_equal(RT_STRANGER->attempts, RT_PENDING_MAX);
  for (int i = 0; i < RT_PENDING_MAX; i++) assert_int_equal(RT_STRANGER->got[i], 0);
}

/* Without a key on either side the ring forms by the public tag (the insecure fallback);
 * a rank with a key and one without refuse each other. */
static int child_keyless(int rank, int world, const void *arg) {
  bool mixed = arg != NULL;
  ring_t *r = rt_join(rank, world);
  if (!r) return 10;
  const char *addrs[RT_MAX];
  rt_addrs(addrs, world);
  ring_auth_t none = rt_auth;
  none.key = NULL;
  const ring_auth_t *a = mixed && rank == 0 ? &rt_auth : &none;
  drv_result_t rc = ring_connect(r, (uint32_t)rank, (uint32_t)world, addrs, a, 3000);
  rt_note(rank, rc);
  int code = rc == DRV_OK ? rt_sum_once(r, rank, world, 1000) : mixed ? 0 : 11;
  ring_destroy(&r);
  return mixed && rc == DRV_OK ? 30 : code;
}

static void test_keyless_ring(void **state) {
  int status[RT_MAX];
  assert_true(rt_run(3, child_keyless, NULL, status));
  rt_expect_all_ok(3, status);
  assert_true(rt_run(2, child_keyless, "mixed", status));
  rt_expect_all_ok(2, status);
  assert_true(shm->rc[0] == DRV_ERR_PROTO || shm->rc[1] == DRV_ERR_PROTO);
}

/* The ring key's text form. */
static void test_ring_key_parse(void **state) {
  unsigned char k[RING_KEY_BYTES];
  char hex[2 * RING_KEY_BYTES + 2];
  for (int i = 0; i < RING_KEY_BYTES; i++) snprintf(hex + 2 * i, 3, "%02x", i * 7 + 1);
  assert_int_equal(ring_key_parse(hex, k), DRV_OK);
  assert_int_equal(k[0], 1);
  assert_int_equal(k[RING_KEY_BYTES - 1], (RING_KEY_BYTES - 1) * 7 + 1);
  hex[5] = 'g';
  assert_int_equal(ring_key_parse(hex, k), DRV_ERR_INVALID);
  hex[5] = '0';
  hex[2 * RING_KEY_BYTES - 1] = '\0';
  assert_int_equal(ring_key_parse(hex, k), DRV_ERR_INVALID);
  assert_int_equal(ring_key_parse("", k), DRV_ERR_INVALID);
  assert_int_equal(ring_key_parse(NULL, k), DRV_ERR_INVALID);
}

// -------------------------------------------------------------------------------------------

static int setup(void **state) {
  shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED || ring_key_new(rt_key) != DRV_OK) return -1;
  rt_auth = (ring_auth_t){.job = RT_JOB, .generation = RT_GEN, .key = rt_key};
  return 0;
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
      cmocka_unit_test(test_stranger_dialer_refused_ring_still_forms),
      cmocka_unit_test(test_stranger_acceptor_refused),
      cmocka_unit_test(test_replayed_generation_refused),
      cmocka_unit_test(test_silent_strangers_cannot_stall),
      cmocka_unit_test(test_keyless_ring),
      cmocka_unit_test(test_ring_key_parse),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
