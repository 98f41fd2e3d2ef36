/* safetensors.c: see safetensors.h. The JSON header is built in a growable string, then
 * header and data go to a temporary file that is renamed into place. */
#include "train/safetensors.h"

#include "common/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// --- a growable string for the header ---------------------------------------------------

typedef struct {
  char *buf;
  size_t len, cap;
  int failed; /* an allocation failed: everything after is dropped */
} strbuf_t;

static void sb_append(strbuf_t *sb, const char *s, size_t n) {
  if (sb->failed) return;
  if (sb->len + n + 1 > sb->cap) {
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + n + 1) cap *= 2;
    char *p = realloc(sb->buf, cap);
    if (!p) {
      sb->failed = 1;
      return;
    }
    sb->buf = p;
    sb->cap = cap;
  }
  memcpy(sb->buf + sb->len, s, n);
  sb->len += n;
  sb->buf[sb->len] = '\0';
}

static void sb_printf(strbuf_t *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf_t *sb, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) {
    sb->failed = 1;
    return;
  }
  sb_append(sb, tmp, (size_t)n);
}

/* A JSON string literal, quotes included. */
static void sb_json_string(strbuf_t *sb, const char *s) {
  sb_append(sb, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      sb_append(sb, esc, 2);
    } else if (*p < 0x20) {
      sb_printf(sb, "\\u%04x", *p);
    } else {
      sb_append(sb, (const char *)p, 1);
    }
  }
  sb_append(sb, "\"", 1);
}

// --- dtypes -----------------------------------------------------------------------------

static const struct {
  const char *name;
  size_t size;
} dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
    {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
};

size_t safetensors_dtype_size(const char *dtype) {
  if (!dtype) return 0;
  for (size_t i = 0; i < DRV_ARRAY_LEN(dtypes); i++)
    if (strcmp(dtypes[i].name, dtype) == 0) return dtypes[i].size;
  return 0;
}

// --- file output ------------------------------------------------------------------------

/* Writes `bytes` of elements of `elem` bytes each in little-endian order. */
static drv_result_t write_le(int fd, const void *data, size_t bytes, size_t elem,
                             const char *path) {
  if (elem == 1 || fs_host_little_endian()) return fs_write_all(fd, data, bytes, path);
  unsigned char chunk[65536];
  const unsigned char *src = data;
  size_t per = sizeof chunk / elem * elem;
  while (bytes > 0) {
    size_t n = DRV_MIN(bytes, per);
    for (size_t i = 0; i < n; i += elem)
      for (size_t b = 0; b < elem; b++) chunk[i + b] = src[i + elem - 1 - b];
    DRV_CHECK(fs_write_all(fd, chunk, n, path));
    src += n;
    bytes -= n;
  }
  return DRV_OK;
}

/* fsyncs the directory holding path, so that a rename into it is durable. */
static drv_result_t fsync_dir_of(const char *path) {
  char *copy = strdup(path);
  if (!copy) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  drv_result_t rc = fs_fsync_dir(dirname(copy));
  free(copy);
  return rc;
}

// --- the writer -------------------------------------------------------------------------

drv_result_t safetensors_write(const char *path, const safetensors_tensor_t *tensors, size_t count,
                               const safetensors_meta_t *meta, size_t meta_count) {
  drv_result_t rc = DRV_OK;
  strbuf_t sb = {0};
  size_t *bytes = NULL; /* (count) data size of each tensor */
  char *tmp = NULL;
  int fd = -1;

  if (!path || (count && !tensors) || (meta_count && !meta))
    return drv_error(DRV_ERR_INVALID, "safetensors_write: NULL argument");
  bytes = calloc(count ? count : 1, sizeof *bytes);
  if (!bytes) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);

  // Header: tensors first, in the order given, then the metadata.
  sb_append(&sb, "{", 1);
  uint64_t offset = 0;
  for (size_t i = 0; i < count; i++) {
    const safetensors_tensor_t *t = &tensors[i];
    size_t elem = safetensors_dtype_size(t->dtype);
    if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0) {
      rc = drv_error(DRV_ERR_INVALID, "%s: tensor %zu has an empty or reserved name", path, i);
      goto fail;
    }
    if (elem == 0) {
      rc = drv_error(DRV_ERR_INVALID, "%s: tensor %s: unknown dtype \"%s\"", path, t->name,
                     t->dtype ? t->dtype : "(null)");
      goto fail;
    }
    if (t->ndim > SAFETENSORS_MAX_DIMS) {
      rc = drv_error(DRV_ERR_INVALID, "%s: tensor %s: %u dims, at most %d", path, t->name, t->ndim,
                     SAFETENSORS_MAX_DIMS);
      goto fail;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(tensors[j].name, t->name) == 0) {
        rc = drv_error(DRV_ERR_INVALID, "%s: tensor name %s appears twice", path, t->name);
        goto fail;
      }
    uint64_t elems = 1;
    for (uint32_t d = 0; d < t->ndim; d++) {
      if (t->shape[d] && elems > UINT64_MAX / t->shape[d] / elem) {
        rc = drv_error(DRV_ERR_INVALID, "%s: tensor %s: shape overflows", path, t->name);
        goto fail;
      }
      elems *= t->shape[d];
    }
    if (elems && !t->data) {
      rc = drv_error(DRV_ERR_INVALID, "%s: tensor %s: no data", path, t->name);
      goto fail;
    }
    bytes[i] = (size_t)(elems * elem);

    if (i) sb_append(&sb, ",", 1);
    sb_json_string(&sb, t->name);
    sb_printf(&sb, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
    for (uint32_t d = 0; d < t->ndim; d++) sb_printf(&sb, "%s%" PRIu64, d ? "," : "", t->shape[d]);
    sb_printf(&sb, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, offset + bytes[i]);
    offset += bytes[i];
  }
  if (meta_count) {
    if (count) sb_append(&sb, ",", 1);
    sb_json_string(&sb, "__metadata__");
    sb_append(&sb, ":{", 2);
    for (size_t i = 0; i < meta_count; i++) {
      if (!meta[i].key || !meta[i].value) {
        rc = drv_error(DRV_ERR_INVALID, "%s: metadata entry %zu is NULL", path, i);
        goto fail;
      }
      if (i) sb_append(&sb, ",", 1);
      sb_json_string(&sb, meta[i].key);
      sb_append(&sb, ":", 1);
      sb_json_string(&sb, meta[i].value);
    }
    sb_append(&sb, "}", 1);
  }
  sb_append(&sb, "}", 1);
  /* Pad with spaces so the data section starts 8-byte aligned. */
  while ((8 + sb.len) % 8) sb_append(&sb, " ", 1);
  if (sb.failed) {
    rc = drv_error(DRV_ERR_NOMEM, "%s: out of memory building the header", path);
    goto fail;
  }

  // Data: to a temporary file next to the target, then renamed into place.
  size_t plen = strlen(path);
  tmp = malloc(plen + 8);
  if (!tmp) {
    rc = drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    goto fail;
  }
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".XXXXXX", 8);
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: create temporary file: %s", tmp, strerror(errno));
    free(tmp);
    tmp = NULL; /* nothing to unlink */
    goto fail;
  }
  if (fchmod(fd, 0644) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: chmod: %s", tmp, strerror(errno));
    goto fail;
  }
  unsigned char len_le[8];
  for (int b = 0; b < 8; b++) len_le[b] = (unsigned char)((uint64_t)sb.len >> (8 * b));
  DRV_CHECK_GOTO(fs_write_all(fd, len_le, sizeof len_le, tmp), rc, fail);
  DRV_CHECK_GOTO(fs_write_all(fd, sb.buf, sb.len, tmp), rc, fail);
  for (size_t i = 0; i < count; i++)
    DRV_CHECK_GOTO(
        write_le(fd, tensors[i].data, bytes[i], safetensors_dtype_size(tensors[i].dtype), tmp), rc,
        fail);
  if (fsync(fd) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: fsync: %s", tmp, strerror(errno));
    goto fail;
  }
  if (close(fd) < 0) {
    fd = -1;
    rc = drv_error(DRV_ERR_SYS, "%s: close: %s", tmp, strerror(errno));
    goto fail;
  }
  fd = -1;
  if (rename(tmp, path) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", tmp, path, strerror(errno));
    goto fail;
  }
  free(tmp);
  tmp = NULL;
  DRV_CHECK_GOTO(fsync_dir_of(path), rc, fail);
  free(sb.buf);
  free(bytes);
  return DRV_OK;

fail:
  if (fd >= 0) close(fd);
  if (tmp) {
    unlink(tmp);
    free(tmp);
  }
  free(sb.buf);
  free(bytes);
  return rc;
}
