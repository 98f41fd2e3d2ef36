/* shard.c: epoch permutations and per-rank slices of the global batch (see shard.h). */
#include "train/shard.h"

#include "common/drv.h"
#include "common/rng.h"

void shard_permutation(uint64_t seed, uint32_t epoch, uint32_t n, uint32_t *perm) {
  for (uint32_t i = 0; i < n; i++) perm[i] = i;
  rng_t r;
  rng_init(&r, seed, epoch);
  /* Fisher-Yates from the top: position i takes a uniform pick among 0..i. */
  for (uint32_t i = n; i > 1; i--) {
    uint32_t j = rng_below(&r, i);
    uint32_t t = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = t;
  }
}

uint32_t shard_steps_per_epoch(uint32_t n, uint32_t B) {
  if (n == 0 || B == 0) return 0;
  return n / B + (n % B != 0);
}

void shard_slice(uint32_t n, uint32_t B, uint32_t step, uint32_t rank, uint32_t world,
                 uint32_t *begin, uint32_t *count, uint32_t *batch) {
  /* 64-bit: step * B may pass 2^32 for a step beyond the epoch. */
  uint64_t start = (uint64_t)step * B;
  if (start >= n || B == 0) {
    *begin = n;
    *count = 0;
    *batch = 0;
    return;
  }
  uint32_t size = (uint32_t)DRV_MIN((uint64_t)B, (uint64_t)n - start);
  *batch = size;
  if (world == 0 || rank >= world) {
    *begin = (uint32_t)start + size;
    *count = 0;
    return;
  }
  uint32_t base = size / world, extra = size % world;
  *count = base + (rank < extra ? 1 : 0);
  *begin = (uint32_t)start + rank * base + (rank < extra ? rank : extra);
}
