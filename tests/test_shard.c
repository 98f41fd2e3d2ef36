/* test_shard.c: epoch permutations and per-rank slices (train/shard.h).
 *
 * The property that matters: whatever the world size, the slices of all ranks over all
 * steps of an epoch visit every sample exactly once, in the order of the permutation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "train/shard.h"

static int is_permutation(const uint32_t *perm, uint32_t n) {
  uint8_t *seen = calloc(n ? n : 1, 1);
  assert_non_null(seen);
  int ok = 1;
  for (uint32_t i = 0; i < n && ok; i++) {
    if (perm[i] >= n || seen[perm[i]])
      ok = 0;
    else
      seen[perm[i]] = 1;
  }
  free(seen);
  return ok;
}

static void test_permutation_is_permutation(void **state) {
  const uint32_t sizes[] = {0, 1, 2, 3, 10, 1000, 60000};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    uint32_t n = sizes[k];
    uint32_t *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    shard_permutation(1234, 5, n, a);
    shard_permutation(1234, 5, n, b);
    assert_true(is_permutation(a, n));
    if (n) assert_memory_equal(a, b, n * sizeof *a); /* same on every call */
    free(a);
    free(b);
  }
}

static void test_permutation_shuffles_and_varies(void **state) {
  enum { N = 1000 };
  static uint32_t e0[N], e1[N], s2[N];
  shard_permutation(7, 0, N, e0);
  shard_permutation(7, 1, N, e1);
  shard_permutation(8, 0, N, s2);
  uint32_t fixed = 0, same01 = 0, same_seed = 0;
  for (uint32_t i = 0; i < N; i++) {
    fixed += e0[i] == i;
    same01 += e0[i] == e1[i];
    same_seed += e0[i] == s2[i];
  }
  /* A uniform permutation has about one fixed point, and two independent ones agree in
   * about one position; allow plenty of room, but far from "not shuffled". */
  assert_true(fixed < 20);
  assert_true(same01 < 20);
  assert_true(same_seed < 20);
  assert_memory_not_equal(e0, e1, sizeof e0);
}

/* The order is part of a job's reproducibility (a resume from a checkpoint on another
 * machine or build must see the same batches): pin two small cases. The values were
 * computed by an independent reimplementation of common/rng.c and the Fisher-Yates loop. */
static void test_permutation_pinned(void **state) {
  const uint32_t want0[10] = {6, 4, 3, 5, 2, 7, 1, 9, 8, 0};
  const uint32_t want1[10] = {1, 3, 9, 6, 7, 0, 5, 2, 8, 4};
  uint32_t p[10];
  shard_permutation(42, 0, 10, p);
  assert_memory_equal(p, want0, sizeof p);
  shard_permutation(42, 1, 10, p);
  assert_memory_equal(p, want1, sizeof p);
}

static void test_steps_per_epoch(void **state) {
  assert_int_equal(shard_steps_per_epoch(0, 32), 0);
  assert_int_equal(shard_steps_per_epoch(10, 0), 0);
  assert_int_equal(shard_steps_per_epoch(1, 32), 1);
  assert_int_equal(shard_steps_per_epoch(32, 32), 1);
  assert_int_equal(shard_steps_per_epoch(33, 32), 2);
  assert_int_equal(shard_steps_per_epoch(60000, 128), 469);
  assert_int_equal(shard_steps_per_epoch(60000, 100), 600);
  assert_int_equal(shard_steps_per_epoch(UINT32_MAX, 1), UINT32_MAX);
  assert_int_equal(shard_steps_per_epoch(UINT32_MAX, UINT32_MAX), 1);
}

static void test_slice_examples(void **state) {
  uint32_t begin, count, batch;
  /* n = 10, B = 4, W = 3: batches of 4, 4, 2. */
  const uint32_t want[3][3][2] = {
      {{0, 2}, {2, 1}, {3, 1}},
      {{4, 2}, {6, 1}, {7, 1}},
      {{8, 1}, {9, 1}, {10, 0}},
  };
  const uint32_t want_batch[3] = {4, 4, 2};
  for (uint32_t s = 0; s < 3; s++) {
    for (uint32_t r = 0; r < 3; r++) {
      shard_slice(10, 4, s, r, 3, &begin, &count, &batch);
      assert_int_equal(batch, want_batch[s]);
      assert_int_equal(begin, want[s][r][0]);
      assert_int_equal(count, want[s][r][1]);
    }
  }
  /* Past the epoch: nothing. */
  shard_slice(10, 4, 3, 0, 3, &begin, &count, &batch);
  assert_int_equal(batch, 0);
  assert_int_equal(count, 0);
  /* A step so far out that step * B overflows 32 bits. */
  shard_slice(10, 1u << 20, 1u << 20, 0, 1, &begin, &count, &batch);
  assert_int_equal(batch, 0);
  assert_int_equal(count, 0);
  /* B < W: ranks beyond the batch get nothing. */
  shard_slice(3, 2, 1, 0, 4, &begin, &count, &batch);
  assert_int_equal(batch, 1);
  assert_int_equal(begin, 2);
  assert_int_equal(count, 1);
  shard_slice(3, 2, 1, 3, 4, &begin, &count, &batch);
  assert_int_equal(count, 0);
}

/* Walks whole epochs for one (n, B, W) and checks tiling and exactly-once coverage. */
static void check_epochs(uint32_t n, uint32_t B, uint32_t W) {
  uint32_t *perm = malloc(n * sizeof *perm);
  uint32_t *seen = malloc(n * sizeof *seen);
  assert_non_null(perm);
  assert_non_null(seen);
  for (uint32_t epoch = 0; epoch < 3; epoch++) {
    shard_permutation(99, epoch, n, perm);
    memset(seen, 0, n * sizeof *seen);
    uint32_t steps = shard_steps_per_epoch(n, B);
    uint32_t pos = 0; /* where the next slice must begin */
    for (uint32_t s = 0; s < steps; s++) {
      uint32_t batch_start = pos, total = 0, first_count = 0;
      for (uint32_t r = 0; r < W; r++) {
        uint32_t begin, count, batch;
        shard_slice(n, B, s, r, W, &begin, &count, &batch);
        assert_int_equal(batch, s + 1 < steps ? B : n - s * B);
        /* Contiguous, in rank order, and balanced within one sample. */
        assert_int_equal(begin, pos);
        if (r == 0) first_count = count;
        assert_true(count == first_count || count + 1 == first_count);
        assert_int_equal(count, batch / W + (r < batch % W ? 1 : 0));
        for (uint32_t k = begin; k < begin + count; k++) seen[perm[k]]++;
        pos += count;
        total += count;
      }
      assert_int_equal(batch_start, s * B);
      assert_int_equal(total, s + 1 < steps ? B : n - s * B);
    }
    assert_int_equal(pos, n);
    for (uint32_t i = 0; i < n; i++) {
      if (seen[i] != 1)
        fail_msg("n=%u B=%u W=%u epoch %u: sample %u seen %u times", n, B, W, epoch, i, seen[i]);
    }
    /* One step past the epoch yields nothing for anyone. */
    uint32_t begin, count, batch;
    shard_slice(n, B, steps, 0, W, &begin, &count, &batch);
    assert_int_equal(batch, 0);
    assert_int_equal(count, 0);
  }
  free(seen);
  free(perm);
}

static void test_every_sample_once(void **state) {
  const uint32_t ns[] = {1, 2, 3, 5, 10, 97, 1000};
  for (uint32_t W = 1; W <= 4; W++) {
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
      uint32_t n = ns[a];
      const uint32_t Bs[] = {1, 2, 3, 4, 7, 32, n, n + 5};
      for (size_t b = 0; b < sizeof Bs / sizeof Bs[0]; b++) check_epochs(n, Bs[b], W);
    }
  }
}

/* Re-sharding is only a change of W: the global batch of a step is the same samples. */
static void test_global_batch_independent_of_world(void **state) {
  enum { N = 103, B = 10 };
  uint32_t perm[N];
  shard_permutation(5, 2, N, perm);
  for (uint32_t s = 0; s < shard_steps_per_epoch(N, B); s++) {
    uint32_t b1, c1, n1;
    shard_slice(N, B, s, 0, 1, &b1, &c1, &n1);
    for (uint32_t W = 2; W <= 4; W++) {
      uint32_t lo = UINT32_MAX, hi = 0, sum = 0;
      for (uint32_t r = 0; r < W; r++) {
        uint32_t b, c, n;
        shard_slice(N, B, s, r, W, &b, &c, &n);
        assert_int_equal(n, n1);
        if (c) {
          lo = b < lo ? b : lo;
          hi = b + c > hi ? b + c : hi;
        }
        sum += c;
      }
      assert_int_equal(lo, b1);
      assert_int_equal(hi, b1 + c1);
      assert_int_equal(sum, c1);
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_permutation_is_permutation),
      cmocka_unit_test(test_permutation_shuffles_and_varies),
      cmocka_unit_test(test_permutation_pinned),
      cmocka_unit_test(test_steps_per_epoch),
      cmocka_unit_test(test_slice_examples),
      cmocka_unit_test(test_every_sample_once),
      cmocka_unit_test(test_global_batch_independent_of_world),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
