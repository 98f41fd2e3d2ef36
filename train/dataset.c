/* dataset.c: IDX loading (plain through mmap, gzip through zlib) and synthetic data.
 *
 * An IDX file is a 4-byte magic (0, 0, data type, dimension count), one big-endian
 * uint32 per dimension, then the values in row-major order. We only accept unsigned bytes
 * (data type 0x08). The file must hold exactly header + product(dims) bytes: anything
 * else means a truncated download or a wrong file, and is refused.
 */
#include "train/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/fsutil.h"
#include "common/log.h"
#include "common/rng.h"

/* Sanity bound on features per sample (a 4096 x 4096 image); a header claiming more is
 * corrupt rather than big. */
#define IDX_FEATURES_MAX (1u << 24)
/* Decompressed bytes read per gzread call, and the first buffer size. */
#define GZ_CHUNK (1u << 24)
/* How far past the expected end we count trailing bytes before saying "at least". */
#define GZ_TRAILING_COUNT_MAX (1u << 24)

/* One IDX file's contents: either a read-only mapping of the whole file (plain) or a heap
 * copy of the decompressed values (gzip). */
typedef struct {
  void *map;           /* mmap base, or NULL */
  size_t map_len;      /* bytes mapped */
  uint8_t *heap;       /* decompressed values, or NULL */
  const uint8_t *data; /* (dims[0], dims[1], ...) row-major bytes */
  uint32_t ndims;
  uint32_t dims[3];
} idx_file_t;

struct dataset {
  uint32_t count, features, classes;
  /* IDX: bytes inside the files' storage. */
  idx_file_t images, labels;
  const uint8_t *x_u8; /* (count, features) */
  const uint8_t *y_u8; /* (count) */
  float scale[256];    /* byte -> float, v / 255 */
  /* Synthetic: owned arrays. */
  float *x_f32;   /* (count, features) */
  int32_t *y_i32; /* (count) */
};

// --- IDX files ----------------------------------------------------------------------------

static void idx_file_release(idx_file_t *f) {
  if (f->map) munmap(f->map, f->map_len);
  free(f->heap);
  memset(f, 0, sizeof *f);
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Checks the 4 magic bytes for an image file (3 or 2 dimensions) or a label file (1).
 * The refusal says what was expected and how large the file is, never what it holds: a
 * job's reason is shown to every client, and the file may be anyone's. */
static drv_result_t idx_check_magic(const char *path, const uint8_t m[4], int is_labels,
                                    uint64_t size) {
  int ndims = m[3];
  int dims_ok = is_labels ? ndims == 1 : (ndims == 3 || ndims == 2);
  if (m[0] == 0 && m[1] == 0 && m[2] == 0x08 && dims_ok) return DRV_OK;
  return drv_error(DRV_ERR_INVALID,
                   "%s: not an IDX %s file (expected magic 0x%08x: %s; the file has %llu bytes%s)",
                   path, is_labels ? "labels" : "images", is_labels ? 0x00000801u : 0x00000803u,
                   is_labels ? "unsigned bytes, 1 dimension" : "unsigned bytes, 3 or 2 dimensions",
                   (unsigned long long)size, size ? "" : ", empty");
}

/* Reads the dimensions that follow the magic; checks they are non-zero and sane; returns
 * the number of value bytes the file must hold in *values. */
static drv_result_t idx_check_dims(const char *path, idx_file_t *f, const uint8_t *p,
                                   uint64_t *values) {
  uint64_t per_sample = 1;
  for (uint32_t d = 0; d < f->ndims; d++) {
    f->dims[d] = be32(p + 4 * d);
    if (f->dims[d] == 0)
      return drv_error(DRV_ERR_INVALID, "%s: dimension %u of %u is zero", path, d, f->ndims);
    if (d > 0) per_sample *= f->dims[d];
  }
  if (per_sample > IDX_FEATURES_MAX)
    return drv_error(DRV_ERR_INVALID,
                     "%s: %llu values per sample is not sane (limit %u); corrupt header?", path,
                     (unsigned long long)per_sample, IDX_FEATURES_MAX);
  *values = per_sample * f->dims[0];
  return DRV_OK;
}

/* A plain file: header by pread, length by fstat, values by a read-only mapping. */
static drv_result_t idx_read_plain(const char *path, int fd, int is_labels, idx_file_t *f) {
  struct stat st;
  if (fstat(fd, &st) < 0) return drv_error(DRV_ERR_SYS, "%s: fstat: %s", path, strerror(errno));
  uint64_t size = (uint64_t)st.st_size;
  uint8_t hdr[16];
  if (size < 4)
    return drv_error(DRV_ERR_INVALID,
                     "%s: truncated: expected at least 4 bytes of header, found %llu", path,
                     (unsigned long long)size);
  ssize_t got = pread(fd, hdr, 4, 0);
  if (got < 0) return drv_error(DRV_ERR_SYS, "%s: read: %s", path, strerror(errno));
  if (got != 4)
    return drv_error(DRV_ERR_SYS, "%s: read: file shrank while reading the header", path);
  DRV_CHECK(idx_check_magic(path, hdr, is_labels, size));
  f->ndims = hdr[3];
  uint64_t hdr_len = 4 + 4 * (uint64_t)f->ndims;
  if (size < hdr_len)
    return drv_error(DRV_ERR_INVALID,
                     "%s: truncated: expected at least %llu bytes of header, found %llu", path,
                     (unsigned long long)hdr_len, (unsigned long long)size);
  got = pread(fd, hdr + 4, hdr_len - 4, 4);
  if (got < 0) return drv_error(DRV_ERR_SYS, "%s: read: %s", path, strerror(errno));
  if ((uint64_t)got != hdr_len - 4)
    return drv_error(DRV_ERR_SYS, "%s: read: file shrank while reading the header", path);
  uint64_t values;
  DRV_CHECK(idx_check_dims(path, f, hdr + 4, &values));
  uint64_t expected = hdr_len + values;
  if (size < expected)
    return drv_error(DRV_ERR_INVALID, "%s: truncated: expected %llu bytes, found %llu", path,
                     (unsigned long long)expected, (unsigned long long)size);
  if (size > expected)
    return drv_error(DRV_ERR_INVALID, "%s: %llu trailing bytes: expected %llu bytes, found %llu",
                     path, (unsigned long long)(size - expected), (unsigned long long)expected,
                     (unsigned long long)size);
  void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) return drv_error(DRV_ERR_SYS, "%s: mmap: %s", path, strerror(errno));
  f->map = map;
  f->map_len = (size_t)size;
  f->data = (const uint8_t *)map + hdr_len;
  return DRV_OK;
}

/* After a short gzread: why the stream ended (DRV_OK for a clean end of stream). `found`
 * counts decompressed bytes so far, `expected` what the file should hold. */
static drv_result_t gz_check_end(const char *path, gzFile gz, uint64_t expected, uint64_t found) {
  int err = Z_OK;
  const char *msg = gzerror(gz, &err);
  if (err == Z_OK) return DRV_OK;
  /* zlib prefixes its message with the name it was given ("<fd:5>: "); we have a better
   * one. */
  const char *colon = strstr(msg, ": ");
  if (colon) msg = colon + 2;
  if (err == Z_BUF_ERROR && found >= expected)
    return drv_error(DRV_ERR_INVALID,
                     "%s: truncated gzip stream: all %llu bytes present but the trailer "
                     "(CRC, length) is cut short: %s",
                     path, (unsigned long long)expected, msg);
  if (err == Z_BUF_ERROR)
    return drv_error(DRV_ERR_INVALID,
                     "%s: truncated: expected %llu bytes, found %llu (gzip stream cut short: %s)",
                     path, (unsigned long long)expected, (unsigned long long)found, msg);
  if (err == Z_ERRNO) return drv_error(DRV_ERR_SYS, "%s: read: %s", path, strerror(errno));
  if (err == Z_MEM_ERROR) return drv_error(DRV_ERR_NOMEM, "%s: gzip: out of memory", path);
  /* No position: zlib decompresses ahead of what we asked for. */
  return drv_error(DRV_ERR_INVALID, "%s: corrupt gzip stream: %s", path, msg);
}

/* Reads up to n bytes at decompressed offset `at`, looping over gzread's int-sized calls;
 * *got says how many. A hard error is reported against the whole file's `expected`. */
static drv_result_t gz_read_full(const char *path, gzFile gz, uint8_t *buf, uint64_t n, uint64_t at,
                                 uint64_t expected, uint64_t *got) {
  *got = 0;
  while (*got < n) {
    uint64_t want = DRV_MIN(n - *got, (uint64_t)GZ_CHUNK);
    int r = gzread(gz, buf + *got, (unsigned)want);
    if (r < 0) {
      drv_result_t rc = gz_check_end(path, gz, expected, at + *got);
      return rc != DRV_OK ? rc : drv_error(DRV_ERR_INVALID, "%s: gzread failed", path);
    }
    if (r == 0) break;
    *got += (uint64_t)r;
  }
  return DRV_OK;
}

/* The gzip stream's IDX header (magic and dims) into f; *hdr_len its length and *values
 * the bytes of values it promises. */
static drv_result_t gz_read_header(const char *path, gzFile gz, int is_labels, uint64_t size,
                                   idx_file_t *f, uint64_t *hdr_len, uint64_t *values) {
  uint8_t hdr[16];
  uint64_t got = 0;
  DRV_CHECK(gz_read_full(path, gz, hdr, 4, 0, 4, &got));
  if (got < 4) {
    DRV_CHECK(gz_check_end(path, gz, 4, got));
    return drv_error(DRV_ERR_INVALID,
                     "%s: truncated: expected at least 4 bytes of header, found %llu", path,
                     (unsigned long long)got);
  }
  DRV_CHECK(idx_check_magic(path, hdr, is_labels, size));
  f->ndims = hdr[3];
  *hdr_len = 4 + 4 * (uint64_t)f->ndims;
  DRV_CHECK(gz_read_full(path, gz, hdr + 4, *hdr_len - 4, 4, *hdr_len, &got));
  if (got < *hdr_len - 4) {
    DRV_CHECK(gz_check_end(path, gz, *hdr_len, 4 + got));
    return drv_error(DRV_ERR_INVALID,
                     "%s: truncated: expected at least %llu bytes of header, found %llu", path,
                     (unsigned long long)*hdr_len, (unsigned long long)(4 + got));
  }
  DRV_CHECK(idx_check_dims(path, f, hdr + 4, values));
  if (*values > SIZE_MAX / 2)
    return drv_error(DRV_ERR_INVALID, "%s: %llu bytes of values do not fit in memory", path,
                     (unsigned long long)*values);
  return DRV_OK;
}

/* The values after a header of hdr_len bytes into *buf (malloc'ed, `values` bytes), grown
 * by doubling up to the size the header promises. */
static drv_result_t gz_read_values(const char *path, gzFile gz, uint64_t hdr_len, uint64_t values,
                                   uint8_t **buf) {
  uint64_t expected = hdr_len + values, cap = 0, have = 0, got = 0;
  for (;;) {
    if (have == cap) {
      if (cap == values) break;
      uint64_t next = cap ? DRV_MIN(cap * 2, values) : DRV_MIN((uint64_t)GZ_CHUNK, values);
      uint8_t *grown = realloc(*buf, (size_t)next);
      if (!grown)
        return drv_error(DRV_ERR_NOMEM, "%s: cannot allocate %llu bytes for decompressed data",
                         path, (unsigned long long)next);
      *buf = grown;
      cap = next;
    }
    DRV_CHECK(gz_read_full(path, gz, *buf + have, cap - have, hdr_len + have, expected, &got));
    have += got;
    if (have < cap) break; /* end of stream (or an error, checked below) */
  }
  if (have < values) {
    DRV_CHECK(gz_check_end(path, gz, expected, hdr_len + have));
    return drv_error(DRV_ERR_INVALID, "%s: truncated: expected %llu bytes, found %llu", path,
                     (unsigned long long)expected, (unsigned long long)(hdr_len + have));
  }
  return DRV_OK;
}

/* After the `expected` bytes the header promises: a clean end of the stream. Anything more
 * is a wrong file; a bounded amount of it is counted for the message. */
static drv_result_t gz_check_trailing(const char *path, gzFile gz, uint64_t expected) {
  drv_result_t rc = DRV_OK;
  uint8_t *scratch = malloc(1u << 16);
  if (!scratch) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  uint64_t extra = 0, got = 0;
  for (;;) {
    DRV_CHECK_GOTO(gz_read_full(path, gz, scratch, 1u << 16, expected + extra, expected, &got), rc,
                   fail);
    extra += got;
    if (got < (1u << 16) || extra >= GZ_TRAILING_COUNT_MAX) break;
  }
  /* A clean end of stream, or the gzip trailer (CRC, length) missing or wrong. */
  DRV_CHECK_GOTO(gz_check_end(path, gz, expected, expected + extra), rc, fail);
  if (extra > 0)
    rc = drv_error(DRV_ERR_INVALID,
                   "%s: %s%llu trailing bytes: expected %llu bytes (decompressed), found %llu%s",
                   path, extra >= GZ_TRAILING_COUNT_MAX ? "at least " : "",
                   (unsigned long long)extra, (unsigned long long)expected,
                   (unsigned long long)(expected + extra),
                   extra >= GZ_TRAILING_COUNT_MAX ? " or more" : "");
fail:
  free(scratch);
  return rc;
}

/* A gzip file: decompressed once into a buffer that grows as data arrives, so that a
 * header claiming gigabytes costs memory only for what the stream really holds. */
static drv_result_t idx_read_gzip(const char *path, int fd, int is_labels, uint64_t size,
                                  idx_file_t *f) {
  drv_result_t rc = DRV_OK;
  uint8_t *buf = NULL;
  int fd2 = dup(fd);
  if (fd2 < 0) return drv_error(DRV_ERR_SYS, "%s: dup: %s", path, strerror(errno));
  gzFile gz = gzdopen(fd2, "rb");
  if (!gz) {
    close(fd2);
    return drv_error(DRV_ERR_NOMEM, "%s: gzdopen failed", path);
  }
  gzbuffer(gz, 1u << 18);

  uint64_t hdr_len = 0, values = 0;
  DRV_CHECK_GOTO(gz_read_header(path, gz, is_labels, size, f, &hdr_len, &values), rc, fail);
  DRV_CHECK_GOTO(gz_read_values(path, gz, hdr_len, values, &buf), rc, fail);
  DRV_CHECK_GOTO(gz_check_trailing(path, gz, hdr_len + values), rc, fail);
  f->heap = buf;
  f->data = buf;
  buf = NULL; /* f's now */

fail:
  free(buf);
  gzclose(gz);
  return rc;
}

/* Opens one IDX file, plain or gzip (by its first two bytes), and checks it whole. The
 * open follows no symlink, never blocks (a FIFO is refused, not waited on) and takes
 * regular files only (fs_open_read). */
static drv_result_t idx_file_load(const char *path, int is_labels, idx_file_t *f) {
  drv_result_t rc = DRV_OK;
  memset(f, 0, sizeof *f);
  int fd;
  DRV_CHECK(fs_open_read(AT_FDCWD, path, path, &fd));
  struct stat st;
  if (fstat(fd, &st) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: fstat: %s", path, strerror(errno));
    goto fail;
  }
  uint8_t m[2] = {0, 0};
  ssize_t got = pread(fd, m, 2, 0);
  if (got < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: read: %s", path, strerror(errno));
    goto fail;
  }
  if (got == 2 && m[0] == 0x1f && m[1] == 0x8b)
    DRV_CHECK_GOTO(idx_read_gzip(path, fd, is_labels, (uint64_t)st.st_size, f), rc, fail);
  else
    DRV_CHECK_GOTO(idx_read_plain(path, fd, is_labels, f), rc, fail);
  close(fd);
  return DRV_OK;

fail:
  idx_file_release(f);
  close(fd);
  return rc;
}

static dataset_t *dataset_alloc(void) {
  dataset_t *ds = calloc(1, sizeof *ds);
  if (!ds) return NULL;
  for (int v = 0; v < 256; v++) ds->scale[v] = (float)v / 255.0f;
  return ds;
}

drv_result_t dataset_load_idx(const char *images, const char *labels, dataset_t **out) {
  drv_result_t rc = DRV_OK;
  *out = NULL;
  dataset_t *ds = dataset_alloc();
  if (!ds) return drv_error(DRV_ERR_NOMEM, "dataset: out of memory");
  DRV_CHECK_GOTO(idx_file_load(images, 0, &ds->images), rc, fail);
  DRV_CHECK_GOTO(idx_file_load(labels, 1, &ds->labels), rc, fail);
  if (ds->images.dims[0] != ds->labels.dims[0]) {
    rc = drv_error(DRV_ERR_INVALID, "%s: %u labels, but %s holds %u images", labels,
                   ds->labels.dims[0], images, ds->images.dims[0]);
    goto fail;
  }
  ds->count = ds->images.dims[0];
  ds->features = ds->images.dims[1] * (ds->images.ndims == 3 ? ds->images.dims[2] : 1);
  ds->x_u8 = ds->images.data;
  ds->y_u8 = ds->labels.data;

  uint32_t per_class[256] = {0};
  for (uint32_t i = 0; i < ds->count; i++) per_class[ds->y_u8[i]]++;
  uint32_t present = 0;
  for (uint32_t c = 0; c < 256; c++) {
    if (per_class[c] == 0) continue;
    ds->classes = c + 1;
    present++;
  }
  if (present < ds->classes)
    log_warn("%s: labels span 0..%u but only %u classes occur", labels, ds->classes - 1, present);
  log_debug("%s: %u samples x %u features, %u classes", images, ds->count, ds->features,
            ds->classes);
  *out = ds;
  return DRV_OK;

fail:
  dataset_destroy(&ds);
  return rc;
}

// --- Synthetic data -----------------------------------------------------------------------

/* Sample i of split s draws from stream (s << 32 | i) of the seed; the teacher from a
 * stream (features << 32 | classes) of the seed xor this tag, so the two never share a
 * generator in practice. */
#define SYN_TEACHER_TAG 0x7eac4e5d1a7a5e7dULL

/* Fills v[0..n) with N(0,1) draws: Box-Muller on 32+32 random bits, both outputs used.
 * u1 is in (0, 1], so the logarithm is finite. */
static void syn_normals(rng_t *r, float *v, uint32_t n) {
  uint32_t i = 0;
  for (; i + 1 < n; i += 2) {
    uint64_t b = rng_next(r);
    float u1 = ((float)(uint32_t)(b >> 40) + 1.0f) * (1.0f / 16777216.0f);
    float u2 = (float)(uint32_t)(b & 0xffffff) * (1.0f / 16777216.0f);
    float rad = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincosf(6.28318530717958647692f * u2, &s, &c);
    v[i] = rad * c;
    v[i + 1] = rad * s;
  }
  if (i < n) {
    uint64_t b = rng_next(r);
    float u1 = ((float)(uint32_t)(b >> 40) + 1.0f) * (1.0f / 16777216.0f);
    float u2 = (float)(uint32_t)(b & 0xffffff) * (1.0f / 16777216.0f);
    v[i] = sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
  }
}

drv_result_t dataset_synthetic(uint32_t count, uint32_t features, uint32_t classes, uint64_t seed,
                               uint32_t split, dataset_t **out) {
  drv_result_t rc = DRV_OK;
  float *w = NULL, *logits = NULL;
  *out = NULL;
  if (count == 0 || features == 0 || classes < 2)
    return drv_error(DRV_ERR_INVALID,
                     "synthetic dataset: need count >= 1, features >= 1, classes >= 2 "
                     "(got %u, %u, %u)",
                     count, features, classes);
  uint64_t nx = (uint64_t)count * features;
  if (nx > SIZE_MAX / sizeof(float) || (uint64_t)features * classes > SIZE_MAX / sizeof(float))
    return drv_error(DRV_ERR_NOMEM, "synthetic dataset: %u x %u floats do not fit in memory", count,
                     features);
  dataset_t *ds = dataset_alloc();
  if (!ds) return drv_error(DRV_ERR_NOMEM, "synthetic dataset: out of memory");
  ds->count = count;
  ds->features = features;
  ds->classes = classes;
  ds->x_f32 = malloc((size_t)nx * sizeof(float));
  ds->y_i32 = malloc((size_t)count * sizeof(int32_t));
  w = malloc((size_t)features * classes * sizeof(float));
  logits = malloc((size_t)classes * sizeof(float));
  if (!ds->x_f32 || !ds->y_i32 || !w || !logits) {
    rc = drv_error(DRV_ERR_NOMEM, "synthetic dataset: cannot allocate %u x %u floats", count,
                   features);
    goto fail;
  }

  /* The teacher: (features, classes) row-major, i.e. W transposed, so that the inner loop
   * below runs over classes with independent sums and vectorizes. N(0, 1/features) keeps
   * logits of order 1 whatever the width. */
  rng_t r;
  rng_init(&r, seed ^ SYN_TEACHER_TAG, (uint64_t)features << 32 | classes);
  syn_normals(&r, w, features * classes);
  float wscale = 1.0f / sqrtf((float)features);
  for (uint64_t k = 0; k < (uint64_t)features * classes; k++) w[k] *= wscale;

  for (uint32_t i = 0; i < count; i++) {
    /* Sample i has its own stream, so it does not depend on count. */
    float *x = ds->x_f32 + (size_t)i * features; /* (features) */
    rng_init(&r, seed, (uint64_t)split << 32 | i);
    syn_normals(&r, x, features);
    for (uint32_t c = 0; c < classes; c++) logits[c] = 0.0f;
    for (uint32_t j = 0; j < features; j++) {
      const float *wj = w + (size_t)j * classes;
      float xj = x[j];
      for (uint32_t c = 0; c < classes; c++) logits[c] += wj[c] * xj;
    }
    uint32_t best = 0;
    for (uint32_t c = 1; c < classes; c++)
      if (logits[c] > logits[best]) best = c;
    ds->y_i32[i] = (int32_t)best;
  }
  free(logits);
  free(w);
  *out = ds;
  return DRV_OK;

fail:
  free(logits);
  free(w);
  dataset_destroy(&ds);
  return rc;
}

// --- Access -------------------------------------------------------------------------------

uint32_t dataset_count(const dataset_t *ds) {
  return ds->count;
}

uint32_t dataset_features(const dataset_t *ds) {
  return ds->features;
}

uint32_t dataset_classes(const dataset_t *ds) {
  return ds->classes;
}

void dataset_gather(const dataset_t *ds, const uint32_t *idx, uint32_t n, float *x, int32_t *y) {
  size_t f = ds->features;
  for (uint32_t i = 0; i < n; i++) {
    size_t k = idx[i];
    float *xi = x + i * f; /* (features) */
    if (ds->x_f32) {
      memcpy(xi, ds->x_f32 + k * f, f * sizeof(float));
      y[i] = ds->y_i32[k];
    } else {
      const uint8_t *src = ds->x_u8 + k * f;
      for (size_t j = 0; j < f; j++) xi[j] = ds->scale[src[j]];
      y[i] = ds->y_u8[k];
    }
  }
}

void dataset_destroy(dataset_t **ds) {
  if (!ds || !*ds) return;
  dataset_t *d = *ds;
  idx_file_release(&d->images);
  idx_file_release(&d->labels);
  free(d->x_f32);
  free(d->y_i32);
  free(d);
  *ds = NULL;
}
