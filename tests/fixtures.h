/* fixtures.h: what the trainer tests share (the CPU ones and the GPU ones): a spec with only
 * what the trainer reads, and a small separable classification problem. */
#ifndef DROVER_TESTS_FIXTURES_H
#define DROVER_TESTS_FIXTURES_H

#include <stdint.h>

#include "common/jobspec.h"
#include "common/rng.h"

static uint32_t hidden_2[2] = {16, 12};

/* A spec as the loader would fill it, with only what the trainer reads. */
static inline jobspec_t make_spec(spec_optimizer_t opt, spec_activation_t act, float lr) {
  jobspec_t spec = {0};
  spec.model.hidden = hidden_2;
  spec.model.hidden_count = 2;
  spec.model.activation = act;
  spec.train.seed = 42;
  spec.train.global_batch = 32;
  spec.train.optimizer.type = opt;
  spec.train.optimizer.lr = lr;
  spec.train.optimizer.momentum = 0.9f;
  spec.train.optimizer.beta1 = 0.9f;
  spec.train.optimizer.beta2 = 0.999f;
  spec.train.optimizer.eps = 1e-8f;
  spec.train.lr_schedule.type = SPEC_LR_CONSTANT;
  return spec;
}

/* Gaussian blobs: class k is centred at a random point of norm ~3 in `features`
 * dimensions, with unit noise; the classes are (nearly) linearly separable. */
static inline void make_blobs(uint32_t n, uint32_t features, uint32_t classes, uint64_t seed, float *x,
                       int32_t *y) {
  rng_t rng;
  rng_init(&rng, seed, 7);
  float centres[8][16];
  for (uint32_t k = 0; k < classes; k++)
    for (uint32_t f = 0; f < features; f++) centres[k][f] = 1.5f * rng_normal(&rng);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t k = rng_below(&rng, classes);
    y[i] = (int32_t)k;
    for (uint32_t f = 0; f < features; f++)
      x[(size_t)i * features + f] = centres[k][f] + 0.5f * rng_normal(&rng);
  }
}

#endif
