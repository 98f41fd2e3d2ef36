/* rng.h: a small seeded random generator (SplitMix64 seeding xoshiro256**) that gives the
 * same stream on every machine, so every rank draws identical initial weights and the same
 * epoch permutation. Not for cryptography. */
#ifndef DROVER_COMMON_RNG_H
#define DROVER_COMMON_RNG_H

#include <stdint.h>

typedef struct {
  uint64_t s[4];
} rng_t;

/* Seeds from (seed, stream): different streams of one seed are independent. */
void rng_init(rng_t *r, uint64_t seed, uint64_t stream);

/* Next 64 random bits. */
uint64_t rng_next(rng_t *r);

/* Uniform integer in [0, n), without modulo bias. n > 0. */
uint32_t rng_below(rng_t *r, uint32_t n);

/* Uniform float in [0, 1). */
float rng_uniform(rng_t *r);

/* Standard normal (Box-Muller). */
float rng_normal(rng_t *r);

#endif
