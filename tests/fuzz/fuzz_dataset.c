/* fuzz_dataset.c: the IDX loader, dataset_load_idx, on any pair of files, plain or gzip.
 *
 * Input: a 4-byte little-endian length L, then the image file (its first L bytes, or all
 * that is left when fewer remain), then the label file (the rest). Both files are memfds,
 * opened by the loader through /proc/self/fd/<fd>, so nothing touches the disk.
 *
 * Promises checked: a pair is loaded or refused (DRV_ERR_INVALID, DRV_ERR_NOMEM), never a
 * crash, a read past a file or its mapping, or a leak; a loaded set has samples, features
 * (at most 2^24) and 1..256 classes, every label is below the class count and every
 * feature in [0, 1].
 *
 * Seeds: tests/fuzz/corpus/dataset/, tiny image and label files, plain and gzip
 * (fuzz_seeds). */
#include <fcntl.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "train/dataset.h"

#define FUZZ_GATHER 64 /* samples read back per loaded set: the first ones and the last */

static int fd_images = -1, fd_labels = -1;
static char path_images[64], path_labels[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_quiet();
  fd_images = fuzz_memfd("images.idx");
  fd_labels = fuzz_memfd("labels.idx");
  snprintf(path_images, sizeof path_images, "/proc/self/fd/%d", fd_images);
  snprintf(path_labels, sizeof path_labels, "/proc/self/fd/%d", fd_labels);
  return 0;
}

static void check_dataset(const dataset_t *ds) {
  uint32_t count = dataset_count(ds), features = dataset_features(ds);
  uint32_t classes = dataset_classes(ds);
  FUZZ_CHECK(count >= 1 && features >= 1 && features <= (1u << 24));
  FUZZ_CHECK(classes >= 1 && classes <= 256);
  uint32_t n = count < FUZZ_GATHER ? count : FUZZ_GATHER;
  uint32_t idx[FUZZ_GATHER];
  for (uint32_t i = 0; i < n; i++) idx[i] = i;
  idx[n - 1] = count - 1;
  float *x = malloc((size_t)n * features * sizeof *x);
  int32_t y[FUZZ_GATHER];
  FUZZ_CHECK(x);
  dataset_gather(ds, idx, n, x, y);
  for (uint32_t i = 0; i < n; i++) FUZZ_CHECK(y[i] >= 0 && (uint32_t)y[i] < classes);
  for (size_t k = 0; k < (size_t)n * features; k++) FUZZ_CHECK(x[k] >= 0.0f && x[k] <= 1.0f);
  free(x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  uint32_t split = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                   (uint32_t)data[3] << 24;
  data += 4;
  size -= 4;
  size_t n_images = split < size ? split : size;
  fuzz_memfd_fill(fd_images, data, n_images);
  fuzz_memfd_fill(fd_labels, data + n_images, size - n_images);

  dataset_t *ds = NULL;
  drv_result_t rc = dataset_load_idx(path_images, path_labels, &ds);
  if (rc == DRV_OK) {
    FUZZ_CHECK(ds != NULL);
    check_dataset(ds);
    dataset_destroy(&ds);
    FUZZ_CHECK(ds == NULL);
  } else {
    FUZZ_CHECK(rc == DRV_ERR_INVALID || rc == DRV_ERR_NOMEM);
    FUZZ_CHECK(ds == NULL);
  }
  return 0;
}
