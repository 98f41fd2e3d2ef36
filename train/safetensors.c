/* safetensors.c: see safetensors.h. The writer builds the JSON header in a growable string,
 * then header and data go to a temporary file that is renamed into place. The reader walks
 * the header once with the strict cursor of train/json.h, checking each entry as it comes
 * and matching it against the tensors asked for. */
#include "train/safetensors.h"

#include "common/fsutil.h"
#include "train/json.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdbool.h>
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

/* Checks tensors[i] (name, dtype, dims, unique name, size, data) and gives the bytes of its
 * data in *bytes. */
static drv_result_t tensor_check(const char *path, const safetensors_tensor_t *tensors, size_t i,
                                 size_t *bytes) {
  const safetensors_tensor_t *t = &tensors[i];
  size_t elem = safetensors_dtype_size(t->dtype);
  if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
    return drv_error(DRV_ERR_INVALID, "%s: tensor %zu has an empty or reserved name", path, i);
  if (elem == 0)
    return drv_error(DRV_ERR_INVALID, "%s: tensor %s: unknown dtype \"%s\"", path, t->name,
                     t->dtype ? t->dtype : "(null)");
  if (t->ndim > SAFETENSORS_MAX_DIMS)
    return drv_error(DRV_ERR_INVALID, "%s: tensor %s: %u dims, at most %d", path, t->name, t->ndim,
                     SAFETENSORS_MAX_DIMS);
  for (size_t j = 0; j < i; j++)
    if (strcmp(tensors[j].name, t->name) == 0)
      return drv_error(DRV_ERR_INVALID, "%s: tensor name %s appears twice", path, t->name);
  uint64_t elems = 1;
  for (uint32_t d = 0; d < t->ndim; d++) {
    if (t->shape[d] && elems > UINT64_MAX / t->shape[d] / elem)
      return drv_error(DRV_ERR_INVALID, "%s: tensor %s: shape overflows", path, t->name);
    elems *= t->shape[d];
  }
  if (elems && !t->data) return drv_error(DRV_ERR_INVALID, "%s: tensor %s: no data", path, t->name);
  *bytes = (size_t)(elems * elem);
  return DRV_OK;
}

/* The JSON header into sb: the tensors in the order given, each checked, with their
 * data_offsets (bytes[i] their sizes, filled here), then the metadata; padded with spaces
 * so that the data section starts 8-byte aligned. */
static drv_result_t header_build(const char *path, const safetensors_tensor_t *tensors,
                                 size_t count, const safetensors_meta_t *meta, size_t meta_count,
                                 strbuf_t *sb, size_t *bytes) {
  sb_append(sb, "{", 1);
  uint64_t offset = 0;
  for (size_t i = 0; i < count; i++) {
    const safetensors_tensor_t *t = &tensors[i];
    DRV_CHECK(tensor_check(path, tensors, i, &bytes[i]));
    if (i) sb_append(sb, ",", 1);
    sb_json_string(sb, t->name);
    sb_printf(sb, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
    for (uint32_t d = 0; d < t->ndim; d++) sb_printf(sb, "%s%" PRIu64, d ? "," : "", t->shape[d]);
    sb_printf(sb, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, offset + bytes[i]);
    offset += bytes[i];
  }
  if (meta_count) {
    if (count) sb_append(sb, ",", 1);
    sb_json_string(sb, "__metadata__");
    sb_append(sb, ":{", 2);
    for (size_t i = 0; i < meta_count; i++) {
      if (!meta[i].key || !meta[i].value)
        return drv_error(DRV_ERR_INVALID, "%s: metadata entry %zu is NULL", path, i);
      if (i) sb_append(sb, ",", 1);
      sb_json_string(sb, meta[i].key);
      sb_append(sb, ":", 1);
      sb_json_string(sb, meta[i].value);
    }
    sb_append(sb, "}", 1);
  }
  sb_append(sb, "}", 1);
  while ((8 + sb->len) % 8) sb_append(sb, " ", 1);
  if (sb->failed) return drv_error(DRV_ERR_NOMEM, "%s: out of memory building the header", path);
  return DRV_OK;
}

/* The length prefix, the header and every tensor's data into a temporary file next to path,
 * fsynced, closed and renamed over path; then the directory fsynced. The temporary file is
 * removed on failure. */
static drv_result_t file_write(const char *path, const strbuf_t *sb,
                               const safetensors_tensor_t *tensors, size_t count,
                               const size_t *bytes) {
  drv_result_t rc = DRV_OK;
  int fd = -1;
  bool created = false; /* tmp exists and is ours to remove */
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 8);
  if (!tmp) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".XXXXXX", 8);

  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: create temporary file: %s", tmp, strerror(errno));
    goto fail;
  }
  created = true;
  if (fchmod(fd, 0640) < 0) { /* owner and group: a model is nobody else's to read */
    rc = drv_error(DRV_ERR_SYS, "%s: chmod: %s", tmp, strerror(errno));
    goto fail;
  }
  unsigned char len_le[8];
  for (int b = 0; b < 8; b++) len_le[b] = (unsigned char)((uint64_t)sb->len >> (8 * b));
  DRV_CHECK_GOTO(fs_write_all(fd, len_le, sizeof len_le, tmp), rc, fail);
  DRV_CHECK_GOTO(fs_write_all(fd, sb->buf, sb->len, tmp), rc, fail);
  for (size_t i = 0; i < count; i++)
    DRV_CHECK_GOTO(
        write_le(fd, tensors[i].data, bytes[i], safetensors_dtype_size(tensors[i].dtype), tmp), rc,
        fail);
  if (fsync(fd) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: fsync: %s", tmp, strerror(errno));
    goto fail;
  }
  int closed = close(fd);
  fd = -1;
  if (closed < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: close: %s", tmp, strerror(errno));
    goto fail;
  }
  if (rename(tmp, path) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", tmp, path, strerror(errno));
    goto fail;
  }
  created = false; /* it is path now */
  rc = fsync_dir_of(path);

fail:
  if (fd >= 0) close(fd);
  if (created) unlink(tmp);
  free(tmp);
  return rc;
}

drv_result_t safetensors_write(const char *path, const safetensors_tensor_t *tensors, size_t count,
                               const safetensors_meta_t *meta, size_t meta_count) {
  drv_result_t rc = DRV_OK;
  strbuf_t sb = {0};
  size_t *bytes = NULL; /* (count) data size of each tensor */

  if (!path || (count && !tensors) || (meta_count && !meta))
    return drv_error(DRV_ERR_INVALID, "safetensors_write: NULL argument");
  bytes = calloc(count ? count : 1, sizeof *bytes);
  if (!bytes) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  DRV_CHECK_GOTO(header_build(path, tensors, count, meta, meta_count, &sb, bytes), rc, fail);
  DRV_CHECK_GOTO(file_write(path, &sb, tensors, count, bytes), rc, fail);

fail:
  free(sb.buf);
  free(bytes);
  return rc;
}

// --- the reader -------------------------------------------------------------------------

/* One tensor's entry in a header, as read and checked on its own. */
typedef struct {
  char dtype[16];
  int ndim;
  uint64_t shape[SAFETENSORS_MAX_DIMS];
  uint64_t elems;
  uint64_t begin; /* data_offsets[0], relative to the data section */
} entry_t;

/* The "header ..." error of a header the JSON cursor stopped in. */
static drv_result_t malformed(const char *what, const json_cursor_t *j) {
  return drv_error(DRV_ERR_INVALID, "%s: header %s", what, j->err[0] ? j->err : "malformed");
}

/* The length prefix and the JSON header of fd (size bytes) into *hdr (malloc'ed, the
 * caller frees it; *hlen bytes, not NUL-terminated). */
static drv_result_t header_read(int fd, uint64_t size, const char *what, char **hdr,
                                uint64_t *hlen) {
  unsigned char lenb[8];
  if (size < 8) return drv_error(DRV_ERR_INVALID, "%s: %" PRIu64 " bytes, too short", what, size);
  DRV_CHECK(fs_pread_all(fd, lenb, 8, 0, what));
  uint64_t n = 0;
  for (int b = 7; b >= 0; b--) n = n << 8 | lenb[b];
  if (n > SAFETENSORS_HEADER_MAX || n > size - 8)
    return drv_error(DRV_ERR_INVALID,
                     "%s: header length %" PRIu64 " does not fit (file %" PRIu64
                     " bytes, at most %u)",
                     what, n, size, SAFETENSORS_HEADER_MAX);
  *hdr = malloc(n ? n : 1);
  if (!*hdr) return drv_error(DRV_ERR_NOMEM, "%s: out of memory for the header", what);
  *hlen = n;
  return fs_pread_all(fd, *hdr, n, 8, what);
}

/* "__metadata__": an object of strings to strings, read and dropped. */
static int skip_metadata(json_cursor_t *j) {
  char key[256], value[4096];
  int members = 0, r;
  if (json_lit(j, '{') < 0) return -1;
  while ((r = json_member(j, &members, key, sizeof key)) > 0)
    if (json_str(j, value, sizeof value) < 0) return -1;
  return r;
}

/* An array of at most cap unsigned integers (tensor `name`'s `key`) into dst, *count of
 * them. */
static int read_u64s(json_cursor_t *j, const char *name, const char *key, uint64_t *dst, int cap,
                     int *count) {
  int n = 0, r;
  if (json_lit(j, '[') < 0) return -1;
  while ((r = json_element(j, &n)) > 0) {
    if (n > cap) return json_fail(j, "tensor %s: more than %d entries in \"%s\"", name, cap, key);
    if (json_u64(j, &dst[n - 1]) < 0) return -1;
  }
  *count = n;
  return r;
}

/* One tensor's entry, {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, each
 * key once: a known dtype, a shape whose byte size does not overflow, and data_offsets
 * that hold exactly that many bytes within the data_len bytes of data. */
static int entry_parse(json_cursor_t *j, const char *name, uint64_t data_len, entry_t *e) {
  char key[32];
  uint64_t offs[2] = {0, 0};
  int members = 0, r, noffs = 0, have_dtype = 0, have_shape = 0, have_offs = 0;
  *e = (entry_t){0};
  if (json_lit(j, '{') < 0) return -1;
  while ((r = json_member(j, &members, key, sizeof key)) > 0) {
    if (strcmp(key, "dtype") == 0 && !have_dtype++) {
      if (json_str(j, e->dtype, sizeof e->dtype) < 0) return -1;
    } else if (strcmp(key, "shape") == 0 && !have_shape++) {
      if (read_u64s(j, name, key, e->shape, SAFETENSORS_MAX_DIMS, &e->ndim) < 0) return -1;
    } else if (strcmp(key, "data_offsets") == 0 && !have_offs++) {
      if (read_u64s(j, name, key, offs, 2, &noffs) < 0) return -1;
      if (noffs != 2) return json_fail(j, "tensor %s: data_offsets needs 2 entries", name);
    } else {
      j->pos = j->key_pos;
      return json_fail(j, "tensor %s: unexpected or repeated key \"%s\"", name, key);
    }
  }
  if (r < 0) return -1;
  if (!have_dtype || !have_shape || !have_offs)
    return json_fail(j, "tensor %s: needs dtype, shape and data_offsets", name);
  size_t esize = safetensors_dtype_size(e->dtype);
  if (esize == 0) return json_fail(j, "tensor %s: unknown dtype \"%s\"", name, e->dtype);
  e->elems = 1;
  for (int d = 0; d < e->ndim; d++) {
    if (e->shape[d] && e->elems > UINT64_MAX / esize / e->shape[d])
      return json_fail(j, "tensor %s: shape overflows", name);
    e->elems *= e->shape[d];
  }
  if (offs[1] < offs[0] || offs[1] > data_len || offs[1] - offs[0] != e->elems * esize)
    return json_fail(j,
                     "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64
                     "] do not fit its shape or the %" PRIu64 " data bytes",
                     name, offs[0], offs[1], data_len);
  e->begin = offs[0];
  return 0;
}

/* "[a,b,c]" into out (cap bytes). */
static void shape_text(const uint64_t *shape, uint32_t ndim, char *out, size_t cap) {
  size_t len = 0;
  out[0] = '\0';
  for (uint32_t d = 0; d < ndim && d < SAFETENSORS_MAX_DIMS && len < cap; d++)
    len += (size_t)snprintf(out + len, cap - len, "%s%" PRIu64, d ? "," : "", shape[d]);
}

/* The entry `name` against every wanted tensor of that name: found once, with the dtype,
 * count and shape wanted; records where its data starts. */
static drv_result_t entry_match(const char *what, const char *name, const entry_t *e,
                                uint64_t data_start, safetensors_want_t *want, size_t n,
                                uint8_t *found) {
  for (size_t i = 0; i < n; i++) {
    safetensors_want_t *w = &want[i];
    if (strcmp(w->name, name) != 0) continue;
    if (found[i]++) return drv_error(DRV_ERR_INVALID, "%s: tensor %s appears twice", what, name);
    if (strcmp(e->dtype, w->dtype) != 0)
      return drv_error(DRV_ERR_INVALID, "%s: tensor %s: dtype %s, expected %s", what, name,
                       e->dtype, w->dtype);
    if (e->elems != w->count)
      return drv_error(DRV_ERR_INVALID,
                       "%s: tensor %s: %" PRIu64 " elements in the file, %" PRIu64 " expected",
                       what, name, e->elems, w->count);
    int same = (uint32_t)e->ndim == w->ndim;
    for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == w->shape[d];
    if (!same) {
      char in_file[200], expected[200];
      shape_text(e->shape, (uint32_t)e->ndim, in_file, sizeof in_file);
      shape_text(w->shape, w->ndim, expected, sizeof expected);
      return drv_error(DRV_ERR_INVALID, "%s: tensor %s: shape [%s] in the file, [%s] expected",
                       what, name, in_file, expected);
    }
    w->offset = data_start + e->begin;
  }
  return DRV_OK;
}

/* Walks the header's top-level object in file order, each entry checked as it comes. */
static drv_result_t header_walk(json_cursor_t *j, const char *what, uint64_t data_start,
                                uint64_t data_len, safetensors_want_t *want, size_t n,
                                uint8_t *found, char *key) {
  int members = 0, have_meta = 0, r;
  if (json_lit(j, '{') < 0) return malformed(what, j);
  while ((r = json_member(j, &members, key, SAFETENSORS_NAME_MAX)) > 0) {
    if (strcmp(key, "__metadata__") == 0) {
      int bad = have_meta++ ? json_fail(j, "\"__metadata__\" appears twice") : skip_metadata(j);
      if (bad < 0) return malformed(what, j);
      continue;
    }
    entry_t e;
    if (entry_parse(j, key, data_len, &e) < 0) return malformed(what, j);
    DRV_CHECK(entry_match(what, key, &e, data_start, want, n, found));
  }
  if (r < 0 || json_end(j) < 0) return malformed(what, j);
  return DRV_OK;
}

drv_result_t safetensors_locate(int fd, uint64_t size, const char *what, safetensors_want_t *want,
                                size_t n) {
  drv_result_t rc = DRV_OK;
  char *hdr = NULL;
  char *key = NULL;      /* (SAFETENSORS_NAME_MAX) the entry being read */
  uint8_t *found = NULL; /* (n) how often want[i] was seen */
  uint64_t hlen = 0;

  DRV_CHECK_GOTO(header_read(fd, size, what, &hdr, &hlen), rc, fail);
  key = malloc(SAFETENSORS_NAME_MAX);
  found = calloc(n ? n : 1, 1);
  if (!key || !found) {
    rc = drv_error(DRV_ERR_NOMEM, "%s: out of memory for the header", what);
    goto fail;
  }
  json_cursor_t j = {.buf = hdr, .len = hlen};
  DRV_CHECK_GOTO(header_walk(&j, what, 8 + hlen, size - 8 - hlen, want, n, found, key), rc, fail);
  for (size_t i = 0; i < n; i++)
    if (!found[i]) {
      rc = drv_error(DRV_ERR_INVALID, "%s: tensor %s is not in the file", what, want[i].name);
      goto fail;
    }

fail:
  free(found);
  free(key);
  free(hdr);
  return rc;
}

drv_result_t safetensors_read_f32(int fd, uint64_t off, float *dst, uint64_t count,
                                  const char *what) {
  DRV_CHECK(fs_pread_all(fd, dst, (size_t)(count * sizeof(float)), off, what));
  if (!fs_host_little_endian()) {
    unsigned char *p = (unsigned char *)dst;
    for (uint64_t i = 0; i < count; i++, p += 4) {
      unsigned char a = p[0], b = p[1];
      p[0] = p[3];
      p[1] = p[2];
      p[2] = b;
      p[3] = a;
    }
  }
  return DRV_OK;
}
