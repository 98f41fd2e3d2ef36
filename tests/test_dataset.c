/* test_dataset.c: IDX loading, its error messages, and synthetic data (train/dataset.h).
 *
 * Small IDX files, plain and gzipped, are written into a fresh temporary directory; each
 * kind of corruption must be refused with DRV_ERR_INVALID and a message naming the file
 * and the problem. The real Fashion-MNIST is loaded when it is installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "train/dataset.h"
#include "common/rng.h"
#include "tests/tmpdir.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"

static char tmpdir[256];

// --- Helpers ------------------------------------------------------------------------------

/* An IDX file in memory: magic, big-endian dims, then `nvalues` bytes. (heap) */
typedef struct {
  uint8_t *bytes;
  size_t len;
} blob_t;

static blob_t idx_blob(uint32_t magic, const uint32_t *dims, uint32_t ndims, const uint8_t *values,
                       size_t nvalues) {
  blob_t b;
  b.len = 4 + 4 * (size_t)ndims + nvalues;
  b.bytes = malloc(b.len + 64); /* room for tests that append */
  assert_non_null(b.bytes);
  uint8_t *p = b.bytes;
  for (int k = 3; k >= 0; k--) *p++ = (uint8_t)(magic >> (8 * k));
  for (uint32_t d = 0; d < ndims; d++)
    for (int k = 3; k >= 0; k--) *p++ = (uint8_t)(dims[d] >> (8 * k));
  if (nvalues) memcpy(p, values, nvalues);
  return b;
}

static void path_of(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* Writes bytes to tmpdir/name, plain or through gzwrite; returns the path in out. */
static void write_file(char *out, size_t cap, const char *name, const void *bytes, size_t len,
                       int gz) {
  path_of(out, cap, name);
  if (gz) {
    gzFile f = gzopen(out, "wb6");
    assert_non_null(f);
    if (len) assert_int_equal(gzwrite(f, bytes, (unsigned)len), (int)len);
    assert_int_equal(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
  }
}

static long file_size(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return (long)st.st_size;
}

/* A well-formed pair: `count` images of rows x cols with value (i*7 + j) & 0xff and label
 * i % classes. */
static void write_pair(char *img, char *lab, size_t cap, const char *stem, uint32_t count,
                       uint32_t rows, uint32_t cols, uint32_t classes, int gz_img, int gz_lab) {
  size_t n = (size_t)count * rows * cols;
  uint8_t *v = malloc(n), *l = malloc(count);
  assert_non_null(v);
  assert_non_null(l);
  for (uint32_t i = 0; i < count; i++) {
    for (uint32_t j = 0; j < rows * cols; j++)
      v[(size_t)i * rows * cols + j] = (uint8_t)(i * 7 + j);
    l[i] = (uint8_t)(i % classes);
  }
  uint32_t idims[3] = {count, rows, cols}, ldims[1] = {count};
  blob_t bi = idx_blob(0x803, idims, 3, v, n), bl = idx_blob(0x801, ldims, 1, l, count);
  char name[128];
  snprintf(name, sizeof name, "%s-images.idx%s", stem, gz_img ? ".gz" : "");
  write_file(img, cap, name, bi.bytes, bi.len, gz_img);
  snprintf(name, sizeof name, "%s-labels.idx%s", stem, gz_lab ? ".gz" : "");
  write_file(lab, cap, name, bl.bytes, bl.len, gz_lab);
  free(bi.bytes);
  free(bl.bytes);
  free(v);
  free(l);
}

/* Loads and expects failure with `want` and a message holding every given substring. */
static void expect_error(const char *img, const char *lab, drv_result_t want, ...) {
  dataset_t *ds = (dataset_t *)0x1;
  drv_error_clear();
  drv_result_t rc = dataset_load_idx(img, lab, &ds);
  const char *msg = drv_last_error();
  if (rc != want) fail_msg("expected %s, got %s: %s", drv_strerror(want), drv_strerror(rc), msg);
  assert_null(ds);
  va_list ap;
  va_start(ap, want);
  for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
    if (!strstr(msg, s)) fail_msg("message \"%s\" lacks \"%s\"", msg, s);
  va_end(ap);
}

static int setup(void **state) {
  return tmpdir_make(tmpdir, sizeof tmpdir, "dataset");
}

static int teardown(void **state) {
  return tmpdir_remove(tmpdir);
}

// --- Loading good files -------------------------------------------------------------------

static void check_small(const char *img, const char *lab) {
  dataset_t *ds = NULL;
  drv_result_t rc = dataset_load_idx(img, lab, &ds);
  if (rc != DRV_OK) fail_msg("%s", drv_last_error());
  assert_int_equal(dataset_count(ds), 5);
  assert_int_equal(dataset_features(ds), 12);
  assert_int_equal(dataset_classes(ds), 4); /* labels 0,1,2,3,0 */
  uint32_t idx[3] = {4, 0, 2};
  float x[3 * 12];
  int32_t y[3];
  dataset_gather(ds, idx, 3, x, y);
  for (int r = 0; r < 3; r++) {
    assert_int_equal(y[r], idx[r] % 4);
    for (int j = 0; j < 12; j++) {
      uint8_t v = (uint8_t)(idx[r] * 7 + j);
      assert_true(x[r * 12 + j] == (float)v / 255.0f);
    }
  }
  dataset_destroy(&ds);
  assert_null(ds);
}

static void test_load_plain(void **state) {
  char img[512], lab[512];
  write_pair(img, lab, sizeof img, "plain", 5, 3, 4, 4, 0, 0);
  check_small(img, lab);
}

static void test_load_gzip(void **state) {
  char img[512], lab[512];
  write_pair(img, lab, sizeof img, "gz", 5, 3, 4, 4, 1, 1);
  check_small(img, lab);
  write_pair(img, lab, sizeof img, "mixed", 5, 3, 4, 4, 1, 0);
  check_small(img, lab);
}

/* Compression is told by the content, never by the name. */
static void test_load_by_magic_not_name(void **state) {
  char img[512], lab[512], img2[512], lab2[512];
  write_pair(img, lab, sizeof img, "named", 5, 3, 4, 4, 1, 0);
  /* gzip content under a plain name, plain content under a .gz name */
  snprintf(img2, sizeof img2, "%s/gz-content.idx", tmpdir);
  snprintf(lab2, sizeof lab2, "%s/plain-content.idx.gz", tmpdir);
  assert_int_equal(rename(img, img2), 0);
  assert_int_equal(rename(lab, lab2), 0);
  check_small(img2, lab2);
}

static void test_load_idx2_images(void **state) {
  uint8_t v[6] = {0, 255, 128, 1, 2, 3}, l[2] = {1, 6};
  uint32_t idims[2] = {2, 3}, ldims[1] = {2};
  blob_t bi = idx_blob(0x802, idims, 2, v, 6), bl = idx_blob(0x801, ldims, 1, l, 2);
  char img[512], lab[512];
  write_file(img, sizeof img, "idx2-images", bi.bytes, bi.len, 0);
  write_file(lab, sizeof lab, "idx2-labels", bl.bytes, bl.len, 0);
  dataset_t *ds = NULL;
  assert_int_equal(dataset_load_idx(img, lab, &ds), DRV_OK);
  assert_int_equal(dataset_count(ds), 2);
  assert_int_equal(dataset_features(ds), 3);
  assert_int_equal(dataset_classes(ds), 7);
  uint32_t idx[2] = {1, 0};
  float x[6];
  int32_t y[2];
  dataset_gather(ds, idx, 2, x, y);
  assert_int_equal(y[0], 6);
  assert_int_equal(y[1], 1);
  assert_true(x[0] == 1.0f / 255.0f && x[3] == 0.0f && x[4] == 1.0f);
  assert_true(x[5] == 128.0f / 255.0f);
  dataset_destroy(&ds);
  dataset_destroy(&ds); /* NULL-safe */
  dataset_destroy(NULL);
  free(bi.bytes);
  free(bl.bytes);
}

// --- Corrupt files ------------------------------------------------------------------------

/* Loads and expects failure naming `path` as "not an IDX <kind> file" of `size` bytes,
 * with none of the file's bytes in the message (nor the "found 0x..." of old). */
static void expect_not_idx(const char *img, const char *lab, const char *path, const char *kind,
                           long size, const char *secret) {
  char want[128], hex[16];
  snprintf(want, sizeof want, "not an IDX %s file", kind);
  char sz[64];
  snprintf(sz, sizeof sz, "the file has %ld bytes", size);
  expect_error(img, lab, DRV_ERR_INVALID, path, want, sz, NULL);
  const char *msg = drv_last_error();
  if (strstr(msg, "found 0x")) fail_msg("message \"%s\" shows the file's magic", msg);
  if (secret) {
    if (strstr(msg, secret)) fail_msg("message \"%s\" shows the file's bytes", msg);
    snprintf(hex, sizeof hex, "%02x%02x%02x%02x", (unsigned char)secret[0],
             (unsigned char)secret[1], (unsigned char)secret[2], (unsigned char)secret[3]);
    if (strstr(msg, hex)) fail_msg("message \"%s\" shows the file's bytes in hex", msg);
  }
}

static void test_wrong_magic(void **state) {
  char img[512], lab[512], bad[512];
  write_pair(img, lab, sizeof img, "magic", 5, 3, 4, 4, 0, 0);
  /* Labels given as images, and images as labels. */
  expect_not_idx(lab, lab, lab, "images", file_size(lab), NULL);
  assert_non_null(strstr(drv_last_error(), "expected magic 0x00000803"));
  expect_not_idx(img, img, img, "labels", file_size(img), NULL);
  assert_non_null(strstr(drv_last_error(), "expected magic 0x00000801"));
  /* Float data (type 0x0d) is not ours. */
  float f[4] = {0};
  uint32_t dims[3] = {1, 2, 2};
  blob_t b = idx_blob(0x0d03, dims, 3, (const uint8_t *)f, sizeof f);
  write_file(bad, sizeof bad, "float.idx", b.bytes, b.len, 0);
  expect_not_idx(bad, lab, bad, "images", (long)b.len, NULL);
  assert_null(strstr(drv_last_error(), "0x0d"));
  free(b.bytes);
  /* Four dimensions. */
  uint32_t dims4[4] = {1, 1, 2, 2};
  b = idx_blob(0x0804, dims4, 4, (const uint8_t *)"abcd", 4);
  write_file(bad, sizeof bad, "four-dims.idx", b.bytes, b.len, 0);
  expect_not_idx(bad, lab, bad, "images", (long)b.len, NULL);
  free(b.bytes);
  /* Not IDX at all, plain and gzipped: nothing of the text shows. */
  const char *text = "hello, this is not a dataset\n";
  write_file(bad, sizeof bad, "text.idx", text, strlen(text), 0);
  expect_not_idx(bad, lab, bad, "images", (long)strlen(text), "hell");
  write_file(bad, sizeof bad, "text.idx.gz", text, strlen(text), 1);
  expect_not_idx(bad, lab, bad, "images", file_size(bad), "hell");
  /* A gzip inside a gzip. */
  char inner[512];
  write_file(inner, sizeof inner, "inner.gz", text, strlen(text), 1);
  FILE *fp = fopen(inner, "rb");
  assert_non_null(fp);
  uint8_t buf[256];
  size_t n = fread(buf, 1, sizeof buf, fp);
  fclose(fp);
  write_file(bad, sizeof bad, "double.gz", buf, n, 1);
  expect_not_idx(bad, lab, bad, "images", file_size(bad), NULL);
  assert_null(strstr(drv_last_error(), "1f8b"));
}

/* A FIFO is refused at once (the open never waits for a writer), a symbolic link is
 * refused (even to a good file), and neither message says anything of a content. */
static void test_fifo_and_symlink(void **state) {
  char img[512], lab[512], path[600];
  write_pair(img, lab, sizeof img, "special", 5, 3, 4, 4, 0, 0);
  snprintf(path, sizeof path, "%s/fifo.idx", tmpdir);
  assert_int_equal(mkfifo(path, 0600), 0);
  expect_error(path, lab, DRV_ERR_INVALID, path, "not a regular file", NULL);
  expect_error(img, path, DRV_ERR_INVALID, path, "not a regular file", NULL);
  snprintf(path, sizeof path, "%s/link.idx", tmpdir);
  assert_int_equal(symlink(img, path), 0);
  expect_error(path, lab, DRV_ERR_INVALID, path, "is a symbolic link", NULL);
}

static void test_truncated_plain(void **state) {
  char img[512], lab[512], msg[256];
  write_pair(img, lab, sizeof img, "trunc", 5, 3, 4, 4, 0, 0);
  long full = file_size(img); /* 16 + 60 */
  assert_int_equal(full, 76);
  assert_int_equal(truncate(img, full - 10), 0);
  snprintf(msg, sizeof msg, "truncated: expected %ld bytes, found %ld", full, full - 10);
  expect_error(img, lab, DRV_ERR_INVALID, img, msg, NULL);
  /* Cut inside the header. */
  assert_int_equal(truncate(img, 9), 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated", "header", NULL);
  assert_int_equal(truncate(img, 2), 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated", NULL);
  assert_int_equal(truncate(img, 0), 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated", NULL);
  /* Labels short by one. */
  write_pair(img, lab, sizeof img, "trunc-lab", 5, 3, 4, 4, 0, 0);
  assert_int_equal(truncate(lab, file_size(lab) - 1), 0);
  expect_error(img, lab, DRV_ERR_INVALID, lab, "truncated: expected 13 bytes, found 12", NULL);
}

static void test_truncated_gzip_content(void **state) {
  /* A complete gzip stream whose content is short. */
  uint8_t v[60] = {0};
  uint32_t dims[3] = {5, 3, 4};
  blob_t b = idx_blob(0x803, dims, 3, v, sizeof v);
  char img[512], lab[512], tmp[512];
  write_pair(tmp, lab, sizeof tmp, "gzshort", 5, 3, 4, 4, 0, 0);
  write_file(img, sizeof img, "short-content.idx.gz", b.bytes, b.len - 1, 1);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated: expected 76 bytes, found 75", NULL);
  /* A header claiming 4e9 images of 28 x 28: refused as truncated, not as out of memory. */
  uint32_t huge[3] = {4000000000u, 28, 28};
  blob_t h = idx_blob(0x803, huge, 3, v, sizeof v);
  write_file(img, sizeof img, "huge-claim.idx.gz", h.bytes, h.len, 1);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated: expected 3136000000016 bytes, found 76",
               NULL);
  write_file(img, sizeof img, "huge-claim.idx", h.bytes, h.len, 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated: expected 3136000000016 bytes, found 76",
               NULL);
  free(b.bytes);
  free(h.bytes);
}

static void test_truncated_gzip_stream(void **state) {
  /* 200 random 28 x 28 images: random bytes do not compress, so the gzip file is ~157 kB
   * and cutting it in half cuts the deflate stream in the middle. */
  enum { COUNT = 200, F = 784 };
  uint8_t *v = malloc(COUNT * F), l[COUNT];
  assert_non_null(v);
  rng_t r;
  rng_init(&r, 3, 0);
  for (size_t i = 0; i < (size_t)COUNT * F; i++) v[i] = (uint8_t)rng_next(&r);
  for (int i = 0; i < COUNT; i++) l[i] = (uint8_t)(i % 10);
  uint32_t idims[3] = {COUNT, 28, 28}, ldims[1] = {COUNT};
  blob_t bi = idx_blob(0x803, idims, 3, v, (size_t)COUNT * F);
  blob_t bl = idx_blob(0x801, ldims, 1, l, COUNT);
  char img[512], lab[512];
  write_file(img, sizeof img, "cut-images.idx.gz", bi.bytes, bi.len, 1);
  write_file(lab, sizeof lab, "cut-labels.idx.gz", bl.bytes, bl.len, 1);
  /* Whole: loads. */
  dataset_t *ds = NULL;
  assert_int_equal(dataset_load_idx(img, lab, &ds), DRV_OK);
  assert_int_equal(dataset_count(ds), COUNT);
  uint32_t last = COUNT - 1;
  float x[F];
  int32_t y;
  dataset_gather(ds, &last, 1, x, &y);
  assert_int_equal(y, 9);
  for (int j = 0; j < F; j++) assert_true(x[j] == (float)v[(size_t)last * F + j] / 255.0f);
  dataset_destroy(&ds);

  long full = file_size(img);
  assert_true(full > 100000);
  /* Only the 8-byte trailer (CRC, length) cut: all values arrive, still refused. */
  assert_int_equal(truncate(img, full - 4), 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated", NULL);
  /* Cut in the middle of the deflate stream. */
  assert_int_equal(truncate(img, full / 2), 0);
  char msg[128];
  snprintf(msg, sizeof msg, "truncated: expected %zu bytes, found ", bi.len);
  expect_error(img, lab, DRV_ERR_INVALID, img, msg, "gzip", NULL);
  /* Cut inside the gzip header. */
  assert_int_equal(truncate(img, 5), 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "truncated", NULL);
  /* Corrupted in the middle: CRC or deflate error, never garbage values. */
  write_file(img, sizeof img, "flip-images.idx.gz", bi.bytes, bi.len, 1);
  FILE *f = fopen(img, "r+b");
  assert_non_null(f);
  assert_int_equal(fseek(f, full / 2, SEEK_SET), 0);
  uint8_t junk[64];
  memset(junk, 0xa5, sizeof junk);
  assert_int_equal(fwrite(junk, 1, sizeof junk, f), sizeof junk);
  fclose(f);
  expect_error(img, lab, DRV_ERR_INVALID, img, "corrupt gzip stream", NULL);
  free(bi.bytes);
  free(bl.bytes);
  free(v);
}

static void test_trailing_garbage(void **state) {
  char img[512], lab[512];
  uint8_t v[60] = {0};
  uint32_t dims[3] = {5, 3, 4};
  blob_t b = idx_blob(0x803, dims, 3, v, sizeof v);
  memcpy(b.bytes + b.len, "GARBAGE", 7);
  write_pair(img, lab, sizeof img, "trail", 5, 3, 4, 4, 0, 0);
  write_file(img, sizeof img, "trail.idx", b.bytes, b.len + 7, 0);
  expect_error(img, lab, DRV_ERR_INVALID, img, "7 trailing bytes", "expected 76 bytes, found 83",
               NULL);
  write_file(img, sizeof img, "trail.idx.gz", b.bytes, b.len + 1, 1);
  expect_error(img, lab, DRV_ERR_INVALID, img, "1 trailing bytes", "expected 76 bytes", NULL);
  free(b.bytes);
}

static void test_zero_and_insane_dimensions(void **state) {
  char img[512], lab[512], bad[512];
  write_pair(img, lab, sizeof img, "dims", 5, 3, 4, 4, 0, 0);
  uint32_t zero_rows[3] = {5, 0, 4};
  blob_t b = idx_blob(0x803, zero_rows, 3, NULL, 0);
  write_file(bad, sizeof bad, "zero-rows.idx", b.bytes, b.len, 0);
  expect_error(bad, lab, DRV_ERR_INVALID, bad, "dimension 1 of 3 is zero", NULL);
  write_file(bad, sizeof bad, "zero-rows.idx.gz", b.bytes, b.len, 1);
  expect_error(bad, lab, DRV_ERR_INVALID, bad, "dimension 1 of 3 is zero", NULL);
  free(b.bytes);
  uint32_t zero_count[1] = {0};
  b = idx_blob(0x801, zero_count, 1, NULL, 0);
  write_file(bad, sizeof bad, "zero-labels.idx", b.bytes, b.len, 0);
  expect_error(img, bad, DRV_ERR_INVALID, bad, "dimension 0 of 1 is zero", NULL);
  free(b.bytes);
  uint32_t huge[3] = {1, 65535, 65535};
  b = idx_blob(0x803, huge, 3, NULL, 0);
  write_file(bad, sizeof bad, "huge-image.idx", b.bytes, b.len, 0);
  expect_error(bad, lab, DRV_ERR_INVALID, bad, "not sane", NULL);
  free(b.bytes);
}

static void test_count_mismatch(void **state) {
  char img[512], lab[512], img6[512], lab6[512];
  write_pair(img, lab, sizeof img, "five", 5, 3, 4, 4, 0, 0);
  write_pair(img6, lab6, sizeof img6, "six", 6, 3, 4, 4, 0, 1);
  expect_error(img, lab6, DRV_ERR_INVALID, lab6, img, "6 labels", "5 images", NULL);
}

static void test_missing_file(void **state) {
  char img[512], lab[512], missing[512];
  write_pair(img, lab, sizeof img, "present", 5, 3, 4, 4, 0, 0);
  path_of(missing, sizeof missing, "no-such-file.idx.gz");
  expect_error(missing, lab, DRV_ERR_SYS, missing, strerror(ENOENT), NULL);
  expect_error(img, missing, DRV_ERR_SYS, missing, strerror(ENOENT), NULL);
  /* A directory is not a dataset. */
  expect_error(tmpdir, lab, DRV_ERR_INVALID, tmpdir, "not a regular file", NULL);
}

// --- Fashion-MNIST ------------------------------------------------------------------------

/* Reads `n` bytes at decompressed offset `off` of a .gz file, independently of the loader. */
static void gz_peek(const char *path, long off, uint8_t *out, unsigned n) {
  gzFile f = gzopen(path, "rb");
  assert_non_null(f);
  assert_int_equal(gzseek(f, off, SEEK_SET), off);
  assert_int_equal(gzread(f, out, n), (int)n);
  gzclose(f);
}

static void check_fmnist(const char *img, const char *lab, uint32_t count,
                         const int32_t *first_labels) {
  dataset_t *ds = NULL;
  if (dataset_load_idx(img, lab, &ds) != DRV_OK) fail_msg("%s", drv_last_error());
  assert_int_equal(dataset_count(ds), count);
  assert_int_equal(dataset_features(ds), 784);
  assert_int_equal(dataset_classes(ds), 10);
  /* Balanced: count / 10 per class. */
  uint32_t per_class[10] = {0};
  float *x = malloc(784 * sizeof *x);
  assert_non_null(x);
  for (uint32_t i = 0; i < count; i++) {
    int32_t y;
    dataset_gather(ds, &i, 1, x, &y);
    assert_true(y >= 0 && y < 10);
    per_class[y]++;
    if (i < 4) assert_int_equal(y, first_labels[i]);
  }
  for (int c = 0; c < 10; c++) assert_int_equal(per_class[c], count / 10);
  /* Pixels of the last image equal the file's bytes / 255. */
  uint8_t raw[784];
  gz_peek(img, 16 + (long)(count - 1) * 784, raw, 784);
  uint32_t last = count - 1;
  int32_t y;
  dataset_gather(ds, &last, 1, x, &y);
  int nonzero = 0;
  for (int j = 0; j < 784; j++) {
    assert_true(x[j] == (float)raw[j] / 255.0f);
    assert_true(x[j] >= 0.0f && x[j] <= 1.0f);
    nonzero += raw[j] != 0;
  }
  assert_true(nonzero > 50);
  free(x);
  dataset_destroy(&ds);
}

static void test_fashion_mnist(void **state) {
  const char *img = FMNIST_DIR "/train-images-idx3-ubyte.gz";
  if (access(img, R_OK) != 0) skip();
  const int32_t train_first[4] = {9, 0, 0, 3}, test_first[4] = {9, 2, 1, 1};
  check_fmnist(img, FMNIST_DIR "/train-labels-idx1-ubyte.gz", 60000, train_first);
  check_fmnist(FMNIST_DIR "/t10k-images-idx3-ubyte.gz", FMNIST_DIR "/t10k-labels-idx1-ubyte.gz",
               10000, test_first);
}

// --- Synthetic ----------------------------------------------------------------------------

static void gather_all(const dataset_t *ds, float *x, int32_t *y) {
  uint32_t n = dataset_count(ds);
  uint32_t *idx = malloc(n * sizeof *idx);
  assert_non_null(idx);
  for (uint32_t i = 0; i < n; i++) idx[i] = i;
  dataset_gather(ds, idx, n, x, y);
  free(idx);
}

static void test_synthetic_deterministic(void **state) {
  enum { N = 500, F = 33, C = 7 };
  static float xa[N * F], xb[N * F], xc[N * F];
  static int32_t ya[N], yb[N], yc[N];
  dataset_t *a = NULL, *b = NULL, *c = NULL, *half = NULL;
  assert_int_equal(dataset_synthetic(N, F, C, 11, 0, &a), DRV_OK);
  assert_int_equal(dataset_synthetic(N, F, C, 11, 0, &b), DRV_OK);
  assert_int_equal(dataset_synthetic(N, F, C, 12, 0, &c), DRV_OK);
  assert_int_equal(dataset_count(a), N);
  assert_int_equal(dataset_features(a), F);
  assert_int_equal(dataset_classes(a), C);
  gather_all(a, xa, ya);
  gather_all(b, xb, yb);
  gather_all(c, xc, yc);
  assert_memory_equal(xa, xb, sizeof xa);
  assert_memory_equal(ya, yb, sizeof ya);
  assert_memory_not_equal(xa, xc, sizeof xa);
  int same_label = 0;
  for (int i = 0; i < N; i++) {
    assert_true(ya[i] >= 0 && ya[i] < C);
    same_label += ya[i] == yc[i];
  }
  assert_true(same_label < N / 2); /* another seed, another problem */
  /* Sample i does not depend on the count. */
  assert_int_equal(dataset_synthetic(N / 2, F, C, 11, 0, &half), DRV_OK);
  static float xh[N / 2 * F];
  static int32_t yh[N / 2];
  gather_all(half, xh, yh);
  assert_memory_equal(xh, xa, sizeof xh);
  assert_memory_equal(yh, ya, sizeof yh);
  /* Gather follows the index list. */
  uint32_t idx[2] = {N - 1, 3};
  float x2[2 * F];
  int32_t y2[2];
  dataset_gather(a, idx, 2, x2, y2);
  assert_memory_equal(x2, xa + (N - 1) * F, F * sizeof(float));
  assert_memory_equal(x2 + F, xa + 3 * F, F * sizeof(float));
  assert_int_equal(y2[0], ya[N - 1]);
  assert_int_equal(y2[1], ya[3]);
  dataset_destroy(&a);
  dataset_destroy(&b);
  dataset_destroy(&c);
  dataset_destroy(&half);
}

static void test_synthetic_distribution(void **state) {
  enum { N = 20000, F = 50, C = 10 };
  dataset_t *ds = NULL;
  assert_int_equal(dataset_synthetic(N, F, C, 5, 0, &ds), DRV_OK);
  float *x = malloc((size_t)N * F * sizeof *x);
  int32_t *y = malloc(N * sizeof *y);
  assert_non_null(x);
  assert_non_null(y);
  gather_all(ds, x, y);
  double sum = 0, sq = 0, beyond3 = 0;
  for (size_t k = 0; k < (size_t)N * F; k++) {
    assert_true(isfinite(x[k]));
    sum += x[k];
    sq += (double)x[k] * x[k];
    beyond3 += fabsf(x[k]) > 3.0f;
  }
  double n = (double)N * F, mean = sum / n, var = sq / n - mean * mean;
  assert_true(fabs(mean) < 0.01);
  assert_true(fabs(var - 1.0) < 0.02);
  /* N(0,1) puts 0.27% beyond 3 sigma. */
  assert_true(beyond3 / n > 0.002 && beyond3 / n < 0.0035);
  uint32_t per_class[C] = {0};
  for (int i = 0; i < N; i++) per_class[y[i]]++;
  for (int k = 0; k < C; k++) assert_true(per_class[k] > N / C / 5); /* every class occurs */
  free(x);
  free(y);
  dataset_destroy(&ds);
}

/* Fits a nearest-class-mean rule (score_c = <mean_c, x>) on `train` and returns its
 * accuracy on `test`. */
static double class_mean_accuracy(const dataset_t *train, const dataset_t *test) {
  uint32_t F = dataset_features(train), C = dataset_classes(train);
  uint32_t ntr = dataset_count(train), nte = dataset_count(test);
  float *x = malloc((size_t)DRV_MAX(ntr, nte) * F * sizeof *x);
  int32_t *y = malloc(DRV_MAX(ntr, nte) * sizeof *y);
  double *mean = calloc((size_t)C * F, sizeof *mean);
  assert_non_null(x);
  assert_non_null(y);
  assert_non_null(mean);
  uint32_t *seen = calloc(C, sizeof *seen);
  assert_non_null(seen);
  gather_all(train, x, y);
  for (uint32_t i = 0; i < ntr; i++) {
    seen[y[i]]++;
    for (uint32_t j = 0; j < F; j++) mean[(size_t)y[i] * F + j] += x[(size_t)i * F + j];
  }
  for (uint32_t c = 0; c < C; c++)
    for (uint32_t j = 0; j < F; j++) mean[(size_t)c * F + j] /= seen[c] ? seen[c] : 1;
  gather_all(test, x, y);
  uint32_t right = 0;
  for (uint32_t i = 0; i < nte; i++) {
    uint32_t best = 0;
    double best_score = -INFINITY;
    for (uint32_t c = 0; c < C; c++) {
      double s = 0;
      for (uint32_t j = 0; j < F; j++) s += mean[(size_t)c * F + j] * x[(size_t)i * F + j];
      if (s > best_score) best_score = s, best = c;
    }
    right += (int32_t)best == y[i];
  }
  free(seen);
  free(mean);
  free(y);
  free(x);
  return (double)right / nte;
}

static void test_synthetic_splits_share_teacher(void **state) {
  enum { N = 20000, F = 32, C = 10 };
  dataset_t *train = NULL, *test = NULL, *other = NULL;
  assert_int_equal(dataset_synthetic(N, F, C, 77, 0, &train), DRV_OK);
  assert_int_equal(dataset_synthetic(N / 4, F, C, 77, 1, &test), DRV_OK);
  assert_int_equal(dataset_synthetic(N / 4, F, C, 78, 1, &other), DRV_OK);
  /* The splits are different samples... */
  float a[F], b[F];
  int32_t ya, yb;
  uint32_t zero = 0;
  dataset_gather(train, &zero, 1, a, &ya);
  dataset_gather(test, &zero, 1, b, &yb);
  assert_memory_not_equal(a, b, sizeof a);
  /* ...of the same problem: a rule learned on the train split carries over to the test
   * split of the same seed, and is at chance on another seed's. */
  double acc_same = class_mean_accuracy(train, test);
  double acc_other = class_mean_accuracy(train, other);
  print_message("class-mean rule: %.3f on the same teacher, %.3f on another\n", acc_same,
                acc_other);
  assert_true(acc_same > 0.6);
  assert_true(acc_other < 0.25);
  dataset_destroy(&train);
  dataset_destroy(&test);
  dataset_destroy(&other);
}

static void test_synthetic_bad_arguments(void **state) {
  dataset_t *ds = (dataset_t *)0x1;
  assert_int_equal(dataset_synthetic(0, 10, 10, 1, 0, &ds), DRV_ERR_INVALID);
  assert_null(ds);
  assert_int_equal(dataset_synthetic(10, 0, 10, 1, 0, &ds), DRV_ERR_INVALID);
  assert_int_equal(dataset_synthetic(10, 10, 1, 1, 0, &ds), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "classes >= 2"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_plain),
      cmocka_unit_test(test_load_gzip),
      cmocka_unit_test(test_load_by_magic_not_name),
      cmocka_unit_test(test_load_idx2_images),
      cmocka_unit_test(test_wrong_magic),
      cmocka_unit_test(test_fifo_and_symlink),
      cmocka_unit_test(test_truncated_plain),
      cmocka_unit_test(test_truncated_gzip_content),
      cmocka_unit_test(test_truncated_gzip_stream),
      cmocka_unit_test(test_trailing_garbage),
      cmocka_unit_test(test_zero_and_insane_dimensions),
      cmocka_unit_test(test_count_mismatch),
      cmocka_unit_test(test_missing_file),
      cmocka_unit_test(test_fashion_mnist),
      cmocka_unit_test(test_synthetic_deterministic),
      cmocka_unit_test(test_synthetic_distribution),
      cmocka_unit_test(test_synthetic_splits_share_teacher),
      cmocka_unit_test(test_synthetic_bad_arguments),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
