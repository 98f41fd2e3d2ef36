/* test_checkpoint.c: agent/checkpoint against real directories under $TMPDIR: a write/load
 * round trip (bitwise), newest wins and same-step rewrites, pruning (old checkpoints and the
 * leftovers of dead writers), a writer SIGKILLed at random points many times (the newest
 * step-* directory must always load, bit for bit), flipped bytes, truncated files, corrupt
 * or missing manifests (each refused with its reason in the log, the previous checkpoint
 * used), a strict manifest parser, caller buffers that do not match the file, and
 * lineages: another job's checkpoint is never loaded nor pruned, a symlinked file never
 * read.
 *
 * The kill test is reproducible: DROVER_TEST_SEED picks its random delays (printed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "train/checkpoint.h"
#include "tests/tmpdir.h"
#include "common/log.h"

/* The lineage of the job that writes and loads the checkpoints of these tests. */
#define LINEAGE "00000000000000070000000012345678"
#define OTHER_LINEAGE "0000000000000007ffffffff12345678"

// --- Fixture: one temporary directory per test --------------------------------------------

typedef struct {
  char root[256]; /* mkdtemp'd, removed at teardown */
  char dir[300];  /* root/ckpt: the checkpoint directory (created by ckpt_write) */
} fx_t;

static int fx_setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(tmpdir_make(f->root, sizeof f->root, "ckpt"), 0);
  snprintf(f->dir, sizeof f->dir, "%s/ckpt", f->root);
  *state = f;
  return 0;
}

static int fx_teardown(void **state) {
  fx_t *f = *state;
  tmpdir_remove(f->root);
  free(f);
  return 0;
}

// --- A model's worth of tensors, filled deterministically from (step, seed) ---------------

enum { NT = 7 };
static const struct {
  const char *name;
  uint32_t ndim;
  uint64_t shape[2];
} layout[NT] = {
    {"layers.0.weight", 2, {512, 784}}, /* 1.6 MB */
    {"layers.0.bias", 1, {512}},
    {"layers.1.weight", 2, {10, 512}},
    {"layers.1.bias", 1, {10}},
    {"opt.m", 1, {406538}}, /* as many as the parameters */
    {"opt.v", 1, {406538}},
    {"rng.state", 0, {0}}, /* a scalar */
};

typedef struct {
  ckpt_tensor_t t[NT];
} set_t;

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Fills x (n) with values that depend on step, seed and the tensor index. */
static void fill(float *x, uint64_t n, uint64_t step, uint64_t seed, uint32_t tag) {
  uint64_t h = mix64(step * 1000003ULL ^ mix64(seed) ^ ((uint64_t)tag << 56));
  for (uint64_t i = 0; i < n; i++) {
    uint32_t v = (uint32_t)(h >> 32) + (uint32_t)i * 2654435761u;
    x[i] = (float)(v >> 8) / 16777216.0f - 0.5f;
  }
}

/* Allocates the tensors of `layout`; when fill_them, fills them for (step, seed), else
 * sets every byte to 0xAB (a sentinel). */
static void set_init(set_t *s, uint64_t step, uint64_t seed, int fill_them) {
  for (int i = 0; i < NT; i++) {
    ckpt_tensor_t *t = &s->t[i];
    memset(t, 0, sizeof *t);
    t->name = layout[i].name;
    t->ndim = layout[i].ndim;
    t->count = 1;
    for (uint32_t d = 0; d < t->ndim; d++) {
      t->shape[d] = layout[i].shape[d];
      t->count *= t->shape[d];
    }
    t->data = malloc(t->count * sizeof(float));
    assert_non_null(t->data);
    if (fill_them)
      fill(t->data, t->count, step, seed, (uint32_t)i);
    else
      memset(t->data, 0xAB, t->count * sizeof(float));
  }
}

static void set_fini(set_t *s) {
  for (int i = 0; i < NT; i++) free(s->t[i].data);
}

/* 1 when every tensor of s holds exactly what (step, seed) gives. */
static int set_matches(const set_t *s, uint64_t step, uint64_t seed) {
  int ok = 1;
  for (int i = 0; ok && i < NT; i++) {
    float *want = malloc(s->t[i].count * sizeof(float));
    assert_non_null(want);
    fill(want, s->t[i].count, step, seed, (uint32_t)i);
    ok = memcmp(want, s->t[i].data, s->t[i].count * sizeof(float)) == 0;
    free(want);
  }
  return ok;
}

/* 1 when every byte of every tensor is still the sentinel. */
static int set_untouched(const set_t *s) {
  for (int i = 0; i < NT; i++) {
    const unsigned char *p = (const unsigned char *)s->t[i].data;
    for (uint64_t b = 0; b < s->t[i].count * sizeof(float); b++)
      if (p[b] != 0xAB) return 0;
  }
  return 1;
}

static ckpt_meta_t meta_for(uint64_t step, uint64_t seed) {
  ckpt_meta_t m = {
      .step = step, .epoch = (uint32_t)(step / 7), .world = 3, .seed = seed, .job = -42};
  snprintf(m.spec_sha, sizeof m.spec_sha, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64,
           mix64(step), mix64(seed), mix64(step + 1), mix64(seed + 1));
  snprintf(m.lineage, sizeof m.lineage, "%s", LINEAGE);
  return m;
}

static void assert_meta_equal(const ckpt_meta_t *a, const ckpt_meta_t *b) {
  assert_int_equal(a->step, b->step);
  assert_int_equal(a->epoch, b->epoch);
  assert_int_equal(a->world, b->world);
  assert_int_equal(a->seed, b->seed);
  assert_int_equal(a->job, b->job);
  assert_string_equal(a->spec_sha, b->spec_sha);
  assert_string_equal(a->lineage, b->lineage);
}

static void write_step(const fx_t *f, uint64_t step, uint64_t seed) {
  set_t s;
  set_init(&s, step, seed, 1);
  ckpt_meta_t m = meta_for(step, seed);
  drv_result_t rc = ckpt_write(f->dir, &m, s.t, NT);
  if (rc != DRV_OK) fail_msg("ckpt_write step %" PRIu64 ": %s", step, drv_last_error());
  set_fini(&s);
}

// --- stderr capture (the loader's log_warn lines) -----------------------------------------

typedef struct {
  int saved;
  FILE *f;
} cap_t;

static void cap_begin(cap_t *c) {
  fflush(stderr);
  c->f = tmpfile();
  assert_non_null(c->f);
  c->saved = dup(2);
  assert_true(c->saved >= 0);
  assert_true(dup2(fileno(c->f), 2) >= 0);
}

/* Restores stderr and returns what was written to it (caller frees); echoes it. */
static char *cap_end(cap_t *c) {
  fflush(stderr);
  dup2(c->saved, 2);
  close(c->saved);
  long n = ftell(c->f);
  char *s = calloc((size_t)(n > 0 ? n : 0) + 1, 1);
  assert_non_null(s);
  rewind(c->f);
  if (n > 0) assert_int_equal(fread(s, 1, (size_t)n, c->f), (size_t)n);
  fclose(c->f);
  if (*s) fprintf(stderr, "%s", s);
  return s;
}

/* Loads into a fresh set; returns rc, with the log in *log (caller frees). */
static drv_result_t load(const fx_t *f, set_t *s, ckpt_meta_t *m, char *found, size_t fsz,
                         char **log) {
  cap_t c;
  cap_begin(&c);
  drv_result_t rc = ckpt_load_latest(f->dir, LINEAGE, m, s->t, NT, found, fsz);
  char *text = cap_end(&c);
  if (log)
    *log = text;
  else
    free(text);
  return rc;
}

static const char *ends_with_step(const char *path, uint64_t step) {
  static char want[32];
  snprintf(want, sizeof want, "/step-%010" PRIu64, step);
  size_t n = strlen(path), w = strlen(want);
  return n >= w && strcmp(path + n - w, want) == 0 ? want : NULL;
}

// --- file helpers -------------------------------------------------------------------------

static char *read_text(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  rewind(fp);
  char *s = calloc((size_t)n + 1, 1);
  assert_non_null(s);
  assert_int_equal(fread(s, 1, (size_t)n, fp), (size_t)n);
  fclose(fp);
  if (len) *len = (size_t)n;
  return s;
}

static void write_text(const char *path, const char *s, size_t len) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(s, 1, len, fp), len);
  assert_int_equal(fclose(fp), 0);
}

static void flip_byte(const char *path, long off_from_end) {
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  off_t size = lseek(fd, 0, SEEK_END);
  off_t at = size - off_from_end;
  unsigned char b;
  assert_int_equal(pread(fd, &b, 1, at), 1);
  b ^= 0x10;
  assert_int_equal(pwrite(fd, &b, 1, at), 1);
  close(fd);
}

static void step_file(const fx_t *f, uint64_t step, const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/step-%010" PRIu64 "/%s", f->dir, step, name);
}

/* Checkpoints of steps 1 and 2, and the path of file `name` of step 2 (the one a test
 * damages, so that loading falls back to step 1). */
static void two_steps(const fx_t *f, const char *name, char *path, size_t cap) {
  write_step(f, 1, 1);
  write_step(f, 2, 1);
  step_file(f, 2, name, path, cap);
}

/* Names in dir that start with prefix. */
static int count_prefixed(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
  closedir(d);
  return n;
}

/* The largest step-* in dir, or -1. */
static int64_t newest_step(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int64_t best = -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    unsigned long long v;
    if (strncmp(e->d_name, "step-", 5) == 0 && sscanf(e->d_name + 5, "%llu", &v) == 1 &&
        (int64_t)v > best)
      best = (int64_t)v;
  }
  closedir(d);
  return best;
}

// --- Round trip, newest wins, prune -------------------------------------------------------

static void test_round_trip(void **state) {
  fx_t *f = *state;
  set_t w, r;
  set_init(&w, 100, 7, 1);
  set_init(&r, 0, 0, 0);
  ckpt_meta_t m = meta_for(100, 7), got;
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_OK); /* also creates f->dir */

  char found[512];
  assert_int_equal(load(f, &r, &got, found, sizeof found, NULL), DRV_OK);
  assert_non_null(ends_with_step(found, 100));
  assert_meta_equal(&got, &m);
  for (int i = 0; i < NT; i++)
    assert_memory_equal(w.t[i].data, r.t[i].data, w.t[i].count * sizeof(float));

  // Exactly the three files, nothing temporary left behind.
  char sd[512];
  snprintf(sd, sizeof sd, "%s/step-0000000100", f->dir);
  assert_int_equal(count_prefixed(sd, ""), 5); /* . .. and three files */
  assert_int_equal(count_prefixed(f->dir, ".tmp-"), 0);
  // model.safetensors holds the layers only, state.safetensors the rest.
  char path[600];
  step_file(f, 100, "model.safetensors", path, sizeof path);
  char *model = read_text(path, NULL);
  assert_non_null(model);
  assert_non_null(strstr(model + 8, "layers.0.weight"));
  assert_null(strstr(model + 8, "opt.m"));
  free(model);
  step_file(f, 100, "state.safetensors", path, sizeof path);
  char *st = read_text(path, NULL);
  assert_non_null(strstr(st + 8, "opt.v"));
  assert_non_null(strstr(st + 8, "rng.state"));
  assert_null(strstr(st + 8, "layers."));
  free(st);

  // found_dir may be NULL; one byte too small is refused.
  assert_int_equal(load(f, &r, &got, NULL, 0, NULL), DRV_OK);
  assert_int_equal(load(f, &r, &got, found, strlen(found), NULL), DRV_ERR_INVALID);
  assert_int_equal(got.step, 0);
  set_fini(&w);
  set_fini(&r);
}

static void test_newest_wins_and_rewrite(void **state) {
  fx_t *f = *state;
  write_step(f, 100, 1);
  write_step(f, 300, 1);
  write_step(f, 200, 1); /* written last, but not the newest step */
  set_t r;
  set_init(&r, 0, 0, 0);
  ckpt_meta_t got;
  char found[512];
  assert_int_equal(load(f, &r, &got, found, sizeof found, NULL), DRV_OK);
  assert_int_equal(got.step, 300);
  assert_non_null(ends_with_step(found, 300));
  assert_true(set_matches(&r, 300, 1));

  // A rewrite of step 300 replaces it (different seed, different data), nothing left over.
  write_step(f, 300, 2);
  assert_int_equal(load(f, &r, &got, found, sizeof found, NULL), DRV_OK);
  assert_int_equal(got.step, 300);
  assert_int_equal(got.seed, 2);
  assert_true(set_matches(&r, 300, 2));
  assert_int_equal(count_prefixed(f->dir, ".tmp-"), 0);
  assert_int_equal(count_prefixed(f->dir, "step-"), 3);
  set_fini(&r);
}

static void test_empty_and_missing_dir(void **state) {
  fx_t *f = *state;
  set_t r;
  set_init(&r, 0, 0, 0);
  ckpt_meta_t got;
  memset(&got, 0x5A, sizeof got);
  char found[512] = "junk";
  assert_int_equal(load(f, &r, &got, found, sizeof found, NULL), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "does not exist"));
  assert_int_equal(got.step, 0);
  assert_int_equal(got.seed, 0);
  assert_string_equal(found, "");
  assert_int_equal(mkdir(f->dir, 0755), 0);
  assert_int_equal(load(f, &r, &got, found, sizeof found, NULL), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "no step-* directory"));
  uint32_t removed = 99;
  assert_int_equal(ckpt_prune(f->dir, LINEAGE, 2, &removed), DRV_OK);
  assert_int_equal(removed, 0);
  set_fini(&r);
}

static void test_prune(void **state) {
  fx_t *f = *state;
  for (uint64_t s = 1; s <= 6; s++) write_step(f, s, 1);

  // Leftovers: one of a dead writer (a child that has exited), one of ours (alive).
  pid_t child = fork();
  assert_true(child >= 0);
  if (child == 0) _exit(0);
  assert_int_equal(waitpid(child, NULL, 0), child);
  char dead[600], mine[600], file[700];
  snprintf(dead, sizeof dead, "%s/.tmp-step-7-%ld", f->dir, (long)child);
  snprintf(mine, sizeof mine, "%s/.tmp-step-8-%ld", f->dir, (long)getpid());
  assert_int_equal(mkdir(dead, 0755), 0);
  snprintf(file, sizeof file, "%s/model.safetensors", dead);
  write_text(file, "partial", 7);
  assert_int_equal(mkdir(mine, 0755), 0);

  uint32_t removed = 0;
  assert_int_equal(ckpt_prune(f->dir, LINEAGE, 0, &removed), DRV_ERR_INVALID);
  assert_int_equal(ckpt_prune(f->dir, LINEAGE, 2, &removed), DRV_OK);
  assert_int_equal(removed, 5); /* steps 1..4 and the dead writer's directory */
  assert_int_equal(count_prefixed(f->dir, "step-"), 2);
  assert_int_equal(access(dead, F_OK), -1);
  assert_int_equal(access(mine, F_OK), 0);
  assert_int_equal(count_prefixed(f->dir, ".tmp-del-"), 0);
  set_t r;
  set_init(&r, 0, 0, 0);
  ckpt_meta_t got;
  assert_int_equal(load(f, &r, &got, NULL, 0, NULL), DRV_OK);
  assert_int_equal(got.step, 6);
  assert_true(set_matches(&r, 6, 1));

  // A broken newest does not count as one to keep: with keep=1, step 5 stays as well.
  step_file(f, 6, "manifest.json", file, sizeof file);
  assert_int_equal(unlink(file), 0);
  write_step(f, 4, 1);
  assert_int_equal(ckpt_prune(f->dir, LINEAGE, 1, &removed), DRV_OK);
  assert_int_equal(removed, 1); /* step 4 */
  assert_int_equal(count_prefixed(f->dir, "step-"), 2);
  assert_int_equal(load(f, &r, &got, NULL, 0, NULL), DRV_OK);
  assert_int_equal(got.step, 5);
  assert_true(set_matches(&r, 5, 1));
  rmdir(mine);
  set_fini(&r);
}

// --- A writer killed at random points -----------------------------------------------------

/* Child: checkpoints of steps start, start+1, ... (data from (step, seed)) until killed. */
static void writer_child(const char *dir, uint64_t start, uint64_t seed) {
  log_set_level(LOG_ERROR);
  set_t s;
  set_init(&s, start, seed, 1);
  for (uint64_t step = start;; step++) {
    for (int i = 0; i < NT; i++) fill(s.t[i].data, s.t[i].count, step, seed, (uint32_t)i);
    ckpt_meta_t m = meta_for(step, seed);
    if (ckpt_write(dir, &m, s.t, NT) != DRV_OK) {
      fprintf(stderr, "writer: %s\n", drv_last_error());
      _exit(2);
    }
  }
}

/* Every step-* directory loads bit for bit and the newest comes first: loads the newest,
 * moves it aside, and repeats; then moves them all back. Returns how many were checked. */
static int check_all_steps(const fx_t *f, set_t *r, uint64_t max_seed) {
  char aside[64][600], back[64][600];
  int n = 0;
  for (int64_t newest; (newest = newest_step(f->dir)) >= 0; n++) {
    assert_true(n < 64);
    ckpt_meta_t got;
    char found[512], *log = NULL;
    drv_result_t rc = load(f, r, &got, found, sizeof found, &log);
    if (rc != DRV_OK) fail_msg("step %" PRId64 ": %s", newest, drv_last_error());
    /* A step-* directory is complete or absent: nothing is ever refused. */
    if (strstr(log, "warn"))
      fail_msg("step %" PRId64 ": a checkpoint was refused: %s", newest, log);
    free(log);
    assert_int_equal(got.step, (uint64_t)newest);
    assert_non_null(ends_with_step(found, (uint64_t)newest));
    assert_true(got.seed >= 1 && got.seed <= max_seed);
    ckpt_meta_t want = meta_for(got.step, got.seed);
    assert_meta_equal(&got, &want);
    if (!set_matches(r, got.step, got.seed))
      fail_msg("step %" PRIu64 " seed %" PRIu64 ": tensors differ", got.step, got.seed);
    snprintf(back[n], sizeof back[n], "%s", found);
    snprintf(aside[n], sizeof aside[n], "%s/checked-%d", f->dir, n);
    assert_int_equal(rename(back[n], aside[n]), 0);
  }
  for (int k = 0; k < n; k++) assert_int_equal(rename(aside[k], back[k]), 0);
  return n;
}

static void test_killed_writer(void **state) {
  fx_t *f = *state;
  const char *env = getenv("DROVER_TEST_SEED");
  unsigned seed = env ? (unsigned)strtoul(env, NULL, 10) : (unsigned)time(NULL);
  srand(seed);

  // Calibrate: how long one checkpoint takes here, so the kills land all over it.
  set_t r;
  set_init(&r, 0, 0, 0);
  int64_t t0 = drv_now_ms();
  write_step(f, 1, 1);
  int64_t write_ms = DRV_MAX(drv_now_ms() - t0, 1);
  int64_t max_delay_ms = DRV_MIN(DRV_MAX(3 * write_ms, 10), 150);
  fprintf(stderr,
          "killed writer: seed %u (DROVER_TEST_SEED), one write %" PRId64
          " ms, kills after 1..%" PRId64 " ms\n",
          seed, write_ms, max_delay_ms);

  const int rounds = 60;
  int advanced = 0, rewritten = 0, leftovers = 0, checked = 0;
  for (int round = 0; round < rounds; round++) {
    int64_t before = newest_step(f->dir);
    assert_true(before >= 1);
    uint64_t wseed = (uint64_t)round + 2; /* this round's data differs from every other's */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) writer_child(f->dir, (uint64_t)before, wseed); /* rewrites `before` first */
    int64_t delay_us = 1000 + (int64_t)(rand() % (int)(max_delay_ms * 1000));
    struct timespec ts = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFSIGNALED(status)) fail_msg("writer exited on its own (status %d)", status);

    int64_t after = newest_step(f->dir);
    advanced += after > before;
    leftovers += count_prefixed(f->dir, ".tmp-") > 0;
    // The newest step-* (and every other) is complete and holds exactly its writer's data.
    checked += check_all_steps(f, &r, wseed);
    ckpt_meta_t got;
    assert_int_equal(load(f, &r, &got, NULL, 0, NULL), DRV_OK);
    rewritten += after == before && got.seed == wseed; /* only the rewrite of `before` done */

    // The dead writer's leftovers go; a bounded number of checkpoints stays.
    uint32_t removed = 0;
    assert_int_equal(ckpt_prune(f->dir, LINEAGE, 3, &removed), DRV_OK);
    assert_int_equal(count_prefixed(f->dir, ".tmp-"), 0);
    assert_true(count_prefixed(f->dir, "step-") <= 3);
    assert_int_equal(newest_step(f->dir), after);
  }
  fprintf(stderr,
          "killed writer: %d rounds, newest step advanced in %d, newest only rewritten in %d, "
          "temporary leftovers in %d, %d checkpoint loads verified; newest step now %" PRId64 "\n",
          rounds, advanced, rewritten, leftovers, checked, newest_step(f->dir));
  set_fini(&r);
}

// --- Corruption: each refused with its reason, the previous one used ----------------------

/* Steps 1 and 2 written and step 2 broken: the load must return step 1 and log
 * "step-0000000002: <reason>" and, when detail is not NULL, detail too. */
static void expect_fallback_detail(const fx_t *f, const char *reason, const char *detail) {
  set_t r;
  set_init(&r, 0, 0, 0);
  ckpt_meta_t got;
  char found[512], *log = NULL;
  assert_int_equal(load(f, &r, &got, found, sizeof found, &log), DRV_OK);
  assert_int_equal(got.step, 1);
  assert_non_null(ends_with_step(found, 1));
  assert_true(set_matches(&r, 1, 1));
  char want[512];
  snprintf(want, sizeof want, "step-0000000002: %s", reason);
  if (!strstr(log, want)) fail_msg("log lacks \"%s\":\n%s", want, log);
  if (detail && !strstr(log, detail)) fail_msg("log lacks \"%s\":\n%s", detail, log);
  assert_non_null(strstr(log, "warn"));
  free(log);
  set_fini(&r);
}

static void expect_fallback(const fx_t *f, const char *reason) {
  expect_fallback_detail(f, reason, NULL);
}

static void test_flipped_model_byte(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "model.safetensors", path, sizeof path);
  flip_byte(path, 1000);
  expect_fallback(f, "model.safetensors: CRC32 mismatch (expected 0x");
}

static void test_flipped_state_byte(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "state.safetensors", path, sizeof path);
  flip_byte(path, 5);
  expect_fallback(f, "state.safetensors: CRC32 mismatch (expected 0x");
}

static void test_flipped_header_byte(void **state) {
  fx_t *f = *state;
  char path[600];
  struct stat st;
  two_steps(f, "model.safetensors", path, sizeof path);
  assert_int_equal(stat(path, &st), 0);
  flip_byte(path, (long)st.st_size - 20); /* inside the JSON header */
  expect_fallback(f, "model.safetensors: CRC32 mismatch");
}

static void test_truncated_file(void **state) {
  fx_t *f = *state;
  char path[600];
  struct stat st;
  two_steps(f, "model.safetensors", path, sizeof path);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(truncate(path, st.st_size - 10), 0);
  char reason[200];
  snprintf(reason, sizeof reason, "model.safetensors: size %lld bytes, the manifest says %lld",
           (long long)st.st_size - 10, (long long)st.st_size);
  expect_fallback(f, reason);
}

static void test_missing_files(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "state.safetensors", path, sizeof path);
  assert_int_equal(unlink(path), 0);
  expect_fallback(f, "state.safetensors: missing");
  step_file(f, 2, "manifest.json", path, sizeof path);
  assert_int_equal(unlink(path), 0);
  expect_fallback(f, "manifest.json: missing");
}

static void test_garbage_manifest(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "manifest.json", path, sizeof path);
  write_text(path, "\x89PNG\r\n", 6);
  expect_fallback(f, "manifest.json: byte 0: expected '{'");
  write_text(path, "", 0);
  expect_fallback(f, "manifest.json: empty");
  // A digit of the step changed: the manifest's own CRC catches it.
  write_step(f, 2, 1);
  size_t len;
  char *text = read_text(path, &len);
  char *p = strstr(text, "\"step\": 2");
  assert_non_null(p);
  p[8] = '3';
  write_text(path, text, len);
  expect_fallback(f, "manifest.json: manifest CRC32 mismatch");
  free(text);
}

static void test_nothing_usable(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "model.safetensors", path, sizeof path);
  flip_byte(path, 1);
  step_file(f, 1, "manifest.json", path, sizeof path);
  assert_int_equal(unlink(path), 0);
  set_t r;
  set_init(&r, 0, 0, 0);
  ckpt_meta_t got;
  memset(&got, 0x77, sizeof got);
  char found[512], *log = NULL;
  assert_int_equal(load(f, &r, &got, found, sizeof found, &log), DRV_ERR_INVALID);
  const char *e = drv_last_error();
  assert_non_null(strstr(e, "no usable checkpoint, 2 refused"));
  assert_non_null(strstr(e, "step-0000000002: model.safetensors: CRC32 mismatch"));
  assert_non_null(strstr(e, "step-0000000001: manifest.json: missing"));
  assert_non_null(strstr(log, "step-0000000002: model.safetensors: CRC32 mismatch"));
  assert_non_null(strstr(log, "step-0000000001: manifest.json: missing"));
  free(log);
  ckpt_meta_t zero;
  memset(&zero, 0, sizeof zero);
  assert_memory_equal(&got, &zero, sizeof zero);
  assert_string_equal(found, "");
  assert_true(set_untouched(&r)); /* no buffer written from a refused checkpoint */
  set_fini(&r);
}

// --- The manifest parser is strict --------------------------------------------------------

/* Replaces the first `from` in s (before the "manifest_crc32" key) by `to` and re-signs the
 * manifest, so that only the parser can object. from == NULL appends `to` after the end. */
static void resign(const char *path, const char *orig, const char *from, const char *to) {
  const char *key = strstr(orig, "\"manifest_crc32\"");
  assert_non_null(key);
  size_t body_len = (size_t)(key - orig);
  char body[4096], out[4096];
  assert_true(body_len < sizeof body);
  memcpy(body, orig, body_len);
  body[body_len] = '\0';
  if (from) {
    char *p = strstr(body, from);
    if (!p) fail_msg("\"%s\" not in the manifest", from);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%.*s%s%s", (int)(p - body), body, to, p + strlen(from));
    snprintf(body, sizeof body, "%s", tmp);
  }
  uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), (const Bytef *)body, (uInt)strlen(body));
  int n =
      snprintf(out, sizeof out, "%s\"manifest_crc32\": \"%08x\"\n}\n%s", body, crc, from ? "" : to);
  write_text(path, out, (size_t)n);
}

static void test_manifest_strict(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "manifest.json", path, sizeof path);
  char *orig = read_text(path, NULL);
  assert_non_null(orig);

  // Re-signed unchanged, it still loads (the helper itself is right).
  resign(path, orig, "\"world\": 3", "\"world\": 3");
  set_t r;
  set_init(&r, 0, 0, 0);
  ckpt_meta_t got;
  assert_int_equal(load(f, &r, &got, NULL, 0, NULL), DRV_OK);
  assert_int_equal(got.step, 2);

  static const struct {
    const char *from, *to, *reason;
  } cases[] = {
      {"\"version\": 2", "\"version\": 3", "version 3 is not supported"},
      {"\"version\": 2", "\"version\": 0", "version 0 is not supported"},
      {"\"lineage\": \"", "\"lineage\": \"xyz", "lineage is not 1..64 hex digits"},
      {"\"lineage\": \"" LINEAGE "\"", "\"lineage\": \"\"", "lineage is not 1..64 hex digits"},
      {"  \"lineage\": \"" LINEAGE "\",\n", "", "key \"lineage\" is missing"},
      {"\"version\": 2", "\"version\": 1", "key \"lineage\" in a version 1 manifest"},
      {"\"lineage\": \"" LINEAGE, "\"lineage\": \"" OTHER_LINEAGE, "of another job's lineage"},
      {"\"format\": \"drover-checkpoint\"", "\"format\": \"other\"", "format \"other\""},
      {"\"world\": 3,", "\"world\": 3,\n  \"extra\": 1,", "unknown key \"extra\""},
      {"\"world\": 3,", "\"world\": 3,\n  \"step\": 2,", "key \"step\" appears twice"},
      {"\"world\": 3,\n", "", "key \"world\" is missing"},
      {"\"world\": 3", "\"world\": 03", "leading zero"},
      {"\"world\": 3", "\"world\": 3.5", "fraction or exponent"},
      {"\"world\": 3", "\"world\": -3", "expected an unsigned integer"},
      {"\"world\": 3", "\"world\": 4294967296", "world 4294967296 out of range"},
      {"\"step\": 2", "\"step\": 99999999999999999999", "integer out of range"},
      {"\"step\": 2", "\"step\": 3", "step 3 does not match the name"},
      {"\"job\": -42", "\"job\": -9223372036854775809", "integer out of range"},
      {"\"spec_sha\": \"", "\"spec_sha\": \"xyz\", \"zz\": \"", "spec_sha is not hex"},
      {"\"spec_sha\": \"", "\"spec_sha\": \"\\u0000", "only \\u0001..\\u007f"},
      {"\"spec_sha\": \"", "\"spec_sha\": \"\n", "control byte 0x0a"},
      {"\"name\": \"state.safetensors\"", "\"name\": \"model.safetensors\"",
       "\"model.safetensors\" listed twice"},
      {"\"name\": \"state.safetensors\"", "\"name\": \"evil.bin\"", "unknown file \"evil.bin\""},
      {"\"crc32\": \"", "\"crc32\": \"A", "8 hex digits"},
      {"\"size\": ", "\"bytes\": ", "unexpected or repeated key \"bytes\""},
      {"},\n    {", "}\n    {", "expected ',' or ']'"},
      {"\"files\": [", "\"files\": {", "expected '['"},
      {"\"epoch\": 0,", "\"epoch\": 0,,", "expected '\"'"},
      {NULL, "x", "unexpected bytes after the end"},
      {NULL, "{}", "unexpected bytes after the end"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    resign(path, orig, cases[k].from, cases[k].to);
    expect_fallback_detail(f, "manifest.json: ", cases[k].reason);
  }
  // A manifest with "manifest_crc32" not last.
  char bad[4096];
  const char *key = strstr(orig, "\"manifest_crc32\"");
  snprintf(bad, sizeof bad, "%.*s%.*s,\n  \"job\": 1\n}\n", (int)(key - orig), orig, 28, key);
  write_text(path, bad, strlen(bad));
  expect_fallback_detail(f, "manifest.json: ", "\"manifest_crc32\" must be the last key");
  free(orig);
  set_fini(&r);
}

// --- Caller buffers that do not match the file --------------------------------------------

static void expect_refused(const fx_t *f, set_t *r, const char *what) {
  ckpt_meta_t got;
  char *log = NULL;
  assert_int_equal(load(f, r, &got, NULL, 0, &log), DRV_ERR_INVALID);
  if (!strstr(drv_last_error(), what)) fail_msg("error lacks \"%s\": %s", what, drv_last_error());
  assert_non_null(strstr(log, what));
  assert_int_equal(got.step, 0);
  assert_true(set_untouched(r));
  free(log);
}

static void test_shape_mismatch(void **state) {
  fx_t *f = *state;
  write_step(f, 1, 1);
  set_t r;
  set_init(&r, 0, 0, 0);

  // Fewer elements than the file holds.
  r.t[1].count = 511;
  r.t[1].shape[0] = 511;
  expect_refused(f, &r,
                 "model.safetensors: tensor layers.0.bias: 512 elements in the file, "
                 "511 expected");
  r.t[1].count = 512;
  r.t[1].shape[0] = 512;

  // Same count, transposed shape.
  r.t[0].shape[0] = 784;
  r.t[0].shape[1] = 512;
  expect_refused(f, &r, "tensor layers.0.weight: shape [512,784] in the file, [784,512] expected");
  r.t[0].shape[0] = 512;
  r.t[0].shape[1] = 784;

  // A scalar asked for as a vector of one.
  r.t[6].ndim = 1;
  r.t[6].shape[0] = 1;
  expect_refused(f, &r, "tensor rng.state: shape [] in the file, [1] expected");
  r.t[6].ndim = 0;

  // A tensor that is not there.
  r.t[5].name = "opt.w";
  expect_refused(f, &r, "state.safetensors: tensor opt.w is not in the file");
  r.t[5].name = "opt.v";

  // Everything right again: it loads.
  ckpt_meta_t got;
  assert_int_equal(load(f, &r, &got, NULL, 0, NULL), DRV_OK);
  assert_true(set_matches(&r, 1, 1));
  set_fini(&r);
}

/* A version 1 manifest (an older drover's, no lineage) still parses and is refused for
 * its lineage; another job's checkpoint, newer and intact, is skipped for ours and never
 * pruned; a symlinked manifest is not followed. */
static void test_lineage(void **state) {
  fx_t *f = *state;
  char path[600];
  two_steps(f, "manifest.json", path, sizeof path);
  char *orig = read_text(path, NULL);
  assert_non_null(orig);
  char v1[4096];
  const char *at = strstr(orig, "  \"lineage\"");
  const char *end = strchr(at, '\n') + 1;
  snprintf(v1, sizeof v1, "%.*s%s", (int)(at - orig), orig, end);
  resign(path, v1, "\"version\": 2", "\"version\": 1");
  expect_fallback_detail(f, "manifest.json: of another job's lineage", "it records none");

  // Another lineage's step 3, newer than ours: ours (step 2, restored) is loaded.
  resign(path, orig, "\"world\": 3", "\"world\": 3");
  set_t w, r;
  set_init(&w, 3, 9, 1);
  set_init(&r, 0, 0, 0);
  ckpt_meta_t m = meta_for(3, 9), got;
  snprintf(m.lineage, sizeof m.lineage, "%s", OTHER_LINEAGE);
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_OK);
  char *log = NULL;
  assert_int_equal(load(f, &r, &got, NULL, 0, &log), DRV_OK);
  assert_int_equal(got.step, 2);
  assert_true(set_matches(&r, 2, 1));
  assert_non_null(strstr(log, "step-0000000003: manifest.json: of another job's lineage"));
  assert_null(strstr(log, OTHER_LINEAGE)); /* the other lineage is not shown */
  free(log);
  // Pruning keeps 1 of ours: step 1 goes, the other's step 3 stays.
  uint32_t removed = 0;
  assert_int_equal(ckpt_prune(f->dir, LINEAGE, 1, &removed), DRV_OK);
  assert_int_equal(removed, 1);
  char other[600];
  step_file(f, 3, "manifest.json", other, sizeof other);
  assert_int_equal(access(other, F_OK), 0);
  assert_int_equal(count_prefixed(f->dir, "step-"), 2);
  // Only ever loaded by its own lineage.
  assert_int_equal(ckpt_load_latest(f->dir, OTHER_LINEAGE, &got, r.t, NT, NULL, 0), DRV_OK);
  assert_int_equal(got.step, 3);
  assert_string_equal(got.lineage, OTHER_LINEAGE);

  // A manifest that is a symlink (to our own good one) is refused, not followed.
  char real[700];
  step_file(f, 3, "manifest.json", other, sizeof other);
  snprintf(real, sizeof real, "%s.real", other);
  assert_int_equal(rename(other, real), 0);
  assert_int_equal(symlink(real, other), 0);
  assert_int_equal(ckpt_load_latest(f->dir, OTHER_LINEAGE, &got, r.t, NT, NULL, 0),
                   DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "manifest.json: is a symbolic link"));
  free(orig);
  set_fini(&w);
  set_fini(&r);
}

static void test_write_refuses_bad_input(void **state) {
  fx_t *f = *state;
  set_t w;
  set_init(&w, 1, 1, 1);
  ckpt_meta_t m = meta_for(1, 1);

  w.t[2].count = 5;
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "layers.1.weight: count 5 but the shape holds 5120"));
  w.t[2].count = 5120;

  w.t[3].name = "layers.0.bias";
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "layers.0.bias appears twice"));
  w.t[3].name = "layers.1.bias";

  snprintf(m.spec_sha, sizeof m.spec_sha, "not-hex");
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "spec_sha"));
  m.spec_sha[0] = '\0'; /* "" is fine */
  m.lineage[0] = '\0';  /* no lineage is not */
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "lineage"));
  snprintf(m.lineage, sizeof m.lineage, "%s", LINEAGE);
  assert_int_equal(ckpt_write(f->dir, &m, w.t, NT), DRV_OK);
  assert_int_equal(count_prefixed(f->dir, "step-"), 1);
  assert_int_equal(count_prefixed(f->dir, ".tmp-"), 0);
  set_fini(&w);
}

int main(void) {
  log_init("test");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_round_trip, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_newest_wins_and_rewrite, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_empty_and_missing_dir, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_prune, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_killed_writer, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_flipped_model_byte, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_flipped_state_byte, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_flipped_header_byte, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_truncated_file, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_missing_files, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_garbage_manifest, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_nothing_usable, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_manifest_strict, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_shape_mismatch, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_write_refuses_bad_input, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_lineage, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
