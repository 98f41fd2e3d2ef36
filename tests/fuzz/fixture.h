/* fixture.h: the small model the checkpoint and safetensors harnesses expect, and that
 * fuzz_seeds writes their seeds from: the same names, shapes and values everywhere. */
#ifndef DROVER_TESTS_FUZZ_FIXTURE_H
#define DROVER_TESTS_FUZZ_FIXTURE_H

#include <stdint.h>
#include <string.h>

#include "train/checkpoint.h"

enum { FIXTURE_TENSORS = 3, FIXTURE_FLOATS = 6 + 2 + 6 };

/* layers.0.weight (2, 3) and layers.0.bias (2) go to model.safetensors, opt.m.0 (2, 3) to
 * state.safetensors. */
static const struct {
  const char *name;
  uint32_t ndim;
  uint64_t shape[2];
} fixture_shapes[FIXTURE_TENSORS] = {
    {"layers.0.weight", 2, {2, 3}},
    {"layers.0.bias", 1, {2, 0}},
    {"opt.m.0", 2, {2, 3}},
};

/* The checkpoint's meta: fuzz_checkpoint reads step-0000000007. */
static const ckpt_meta_t fixture_meta = {
    .step = 7, .epoch = 1, .world = 2, .seed = 42, .job = 3, .spec_sha = "c0ffee",
    .lineage = "0123456789abcdef0123456789abcdef"};

/* t[FIXTURE_TENSORS] over data[FIXTURE_FLOATS]; data filled with the fixture's values when
 * `fill` is set (zeroed otherwise, for loading into). */
static inline void fixture_tensors(ckpt_tensor_t *t, float *data, int fill) {
  for (int i = 0; i < FIXTURE_FLOATS; i++) data[i] = fill ? 0.25f * (float)(i + 1) : 0.0f;
  float *at = data;
  for (int i = 0; i < FIXTURE_TENSORS; i++) {
    memset(&t[i], 0, sizeof t[i]);
    t[i].name = fixture_shapes[i].name;
    t[i].ndim = fixture_shapes[i].ndim;
    t[i].count = 1;
    for (uint32_t d = 0; d < t[i].ndim; d++) {
      t[i].shape[d] = fixture_shapes[i].shape[d];
      t[i].count *= t[i].shape[d];
    }
    t[i].data = at;
    at += t[i].count;
  }
}

#endif
