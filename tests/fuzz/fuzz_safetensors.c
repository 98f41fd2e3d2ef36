/* fuzz_safetensors.c: the safetensors reader, safetensors_locate and safetensors_read_f32,
 * on any file (a memfd holding the input).
 *
 * Promises checked: a file is accepted or refused (DRV_ERR_INVALID, DRV_ERR_NOMEM), never a
 * crash, an overread or a leak; the header alone is checked (no tensor wanted) before the
 * tensors of the fixture model (tests/fuzz/fixture.h) are looked for, and a file that
 * yields them passed that check too; every tensor found lies inside the file, after the
 * header, and reads.
 *
 * Seeds: tests/fuzz/corpus/safetensors/, the fixture's model.safetensors and
 * state.safetensors as ckpt_write makes them, and files with metadata (fuzz_seeds). */
#include <string.h>

#include "tests/fuzz/fixture.h"
#include "tests/fuzz/fuzz.h"
#include "train/safetensors.h"

static int fd = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_quiet();
  fd = fuzz_memfd("fuzz.safetensors");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_memfd_fill(fd, data, size);
  drv_result_t all = safetensors_locate(fd, size, "fuzz.safetensors", NULL, 0);
  FUZZ_CHECK(all == DRV_OK || all == DRV_ERR_INVALID || all == DRV_ERR_NOMEM);

  safetensors_want_t want[FIXTURE_TENSORS];
  for (int i = 0; i < FIXTURE_TENSORS; i++) {
    want[i] = (safetensors_want_t){
        .name = fixture_shapes[i].name, .dtype = "F32", .ndim = fixture_shapes[i].ndim};
    want[i].count = 1;
    for (uint32_t d = 0; d < want[i].ndim; d++) {
      want[i].shape[d] = fixture_shapes[i].shape[d];
      want[i].count *= want[i].shape[d];
    }
  }
  /* Each file holds some of the model: ask for every subset that is a prefix or a
   * suffix, so both the model file (weight, bias) and the state file (opt.m.0) match. */
  static const struct { int first, n; } asks[] = {{0, 2}, {2, 1}, {0, 3}};
  for (size_t a = 0; a < DRV_ARRAY_LEN(asks); a++) {
    safetensors_want_t *w = &want[asks[a].first];
    size_t n = (size_t)asks[a].n;
    drv_result_t rc = safetensors_locate(fd, size, "fuzz.safetensors", w, n);
    FUZZ_CHECK(rc == DRV_OK || rc == DRV_ERR_INVALID || rc == DRV_ERR_NOMEM);
    if (rc != DRV_OK) continue;
    FUZZ_CHECK(all == DRV_OK);
    uint64_t hlen = 0;
    for (int b = 7; b >= 0; b--) hlen = hlen << 8 | data[b];
    for (size_t i = 0; i < n; i++) {
      FUZZ_CHECK(w[i].offset >= 8 + hlen);
      FUZZ_CHECK(w[i].offset <= size && w[i].count * 4 <= size - w[i].offset);
      float v[FIXTURE_FLOATS];
      FUZZ_CHECK(w[i].count <= FIXTURE_FLOATS);
      FUZZ_CHECK(safetensors_read_f32(fd, w[i].offset, v, w[i].count, "fuzz.safetensors") ==
                 DRV_OK);
    }
  }
  return 0;
}
