/* checkpoint.c: see checkpoint.h. Sections: file helpers (paths, CRC, rm -r), the
 * manifest (read with the JSON cursor of train/json.h), then the three public functions.
 * The tensor files are written and read by train/safetensors.h.
 *
 * The loader never trusts a byte before it has been checked: the manifest carries its own
 * CRC32, each file's size and CRC32 are checked against it before any header is parsed,
 * every header field is range-checked, and the caller's buffers are only written once the
 * whole checkpoint has passed. */
#include "train/checkpoint.h"

#include "common/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <zlib.h>

#include "common/log.h"
#include "train/json.h"
#include "train/safetensors.h"

#define CKPT_MANIFEST "manifest.json"
#define CKPT_MODEL "model.safetensors"
#define CKPT_STATE "state.safetensors"
#define CKPT_MODEL_PREFIX "layers."
#define CKPT_FORMAT "drover-checkpoint"
#define CKPT_VERSION 2 /* 2: "lineage"; version 1 manifests still parse (lineage "") */
#define CKPT_FILE_MODE 0640
#define CKPT_DIR_MODE 0750
#define CKPT_MANIFEST_MAX 65536         /* bytes; ours are ~500 */
#define CKPT_IO_CHUNK ((size_t)1 << 20) /* bytes per read when checksumming */
#define CKPT_RM_DEPTH 8                 /* rm -r goes no deeper (ours are flat) */

enum { FILE_MODEL = 0, FILE_STATE = 1, FILE_COUNT = 2 };
static const char *const file_names[FILE_COUNT] = {CKPT_MODEL, CKPT_STATE};

/* Which file a tensor lives in. */
static int file_of(const char *name) {
  return strncmp(name, CKPT_MODEL_PREFIX, strlen(CKPT_MODEL_PREFIX)) == 0 ? FILE_MODEL : FILE_STATE;
}

// --- file helpers -------------------------------------------------------------------------

/* snprintf into a path buffer; DRV_ERR_INVALID when it does not fit. */
static drv_result_t path_fmt(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static drv_result_t path_fmt(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(out, cap, fmt, ap);
  va_end(ap);
  if (w < 0 || (size_t)w >= cap) return drv_error(DRV_ERR_INVALID, "path too long: %.200s...", out);
  return DRV_OK;
}

/* CRC32 (zlib) and length of everything in fd, read from offset 0. */
static drv_result_t fd_crc32(int fd, const char *what, uint64_t *size, uint32_t *crc) {
  unsigned char *buf = malloc(CKPT_IO_CHUNK);
  if (!buf) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", what);
  uLong c = crc32(0L, Z_NULL, 0);
  uint64_t off = 0;
  for (;;) {
    ssize_t r = pread(fd, buf, CKPT_IO_CHUNK, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      drv_result_t rc = drv_error(DRV_ERR_SYS, "%s: read: %s", what, strerror(errno));
      free(buf);
      return rc;
    }
    if (r == 0) break;
    c = crc32(c, buf, (uInt)r);
    off += (uint64_t)r;
  }
  free(buf);
  *size = off;
  *crc = (uint32_t)c;
  return DRV_OK;
}

/* rm -r of `name` relative to dirfd, never following symlinks. 0, or -1 with errno. */
static int rm_tree_at(int dirfd, const char *name, int depth) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return -1;
  if (!S_ISDIR(st.st_mode)) return unlinkat(dirfd, name, 0);
  if (depth >= CKPT_RM_DEPTH) {
    errno = ELOOP;
    return -1;
  }
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return -1;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -1;
  }
  int ret = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (rm_tree_at(fd, e->d_name, depth + 1) < 0 && errno != ENOENT) {
      ret = -1;
      break;
    }
  }
  int saved = errno;
  closedir(d);
  if (ret < 0) {
    errno = saved;
    return -1;
  }
  return unlinkat(dirfd, name, AT_REMOVEDIR);
}

/* rm -r path; a path that does not exist counts as removed. */
static drv_result_t rm_tree(const char *path) {
  if (rm_tree_at(AT_FDCWD, path, 0) < 0 && errno != ENOENT)
    return drv_error(DRV_ERR_SYS, "%s: remove: %s", path, strerror(errno));
  return DRV_OK;
}

// --- the manifest -------------------------------------------------------------------------

/* A CRC32 as the manifest writes it ("%08x"): a string of exactly 8 lowercase hex digits. */
static int read_crc32(json_cursor_t *j, uint32_t *v) {
  char s[16];
  if (json_str(j, s, sizeof s) < 0) return -1;
  if (strlen(s) != 8) return json_fail(j, "a CRC32 is 8 hex digits, found \"%s\"", s);
  uint32_t x = 0;
  for (int k = 0; k < 8; k++) {
    int h = json_hex_digit(s[k]);
    if (h < 0 || (s[k] >= 'A' && s[k] <= 'F'))
      return json_fail(j, "a CRC32 is 8 lowercase hex digits, found \"%s\"", s);
    x = x << 4 | (uint32_t)h;
  }
  *v = x;
  return 0;
}

typedef struct {
  ckpt_meta_t meta;
  uint32_t version; /* 1 or 2 */
  uint64_t size[FILE_COUNT];
  uint32_t crc[FILE_COUNT];
} manifest_t;

/* A lineage: 1..64 hex digits. */
static int lineage_ok(const char *s) {
  size_t n = strnlen(s, 65);
  if (n == 0 || n > 64) return 0;
  for (size_t k = 0; k < n; k++)
    if (json_hex_digit(s[k]) < 0) return 0;
  return 1;
}

static int spec_sha_ok(const char *s) {
  const char *nul = memchr(s, '\0', 65);
  if (!nul) return 0;
  for (const char *p = s; p < nul; p++)
    if (json_hex_digit(*p) < 0) return 0;
  return 1;
}

/* The manifest's text into out (cap bytes); its length, or 0 when it does not fit. */
static size_t manifest_format(const manifest_t *m, char *out, size_t cap) {
  // clang-format off
  int w = snprintf(out, cap,
                   "{\n"
                   "  \"format\": \"" CKPT_FORMAT "\",\n"
                   "  \"version\": %d,\n"
                   "  \"step\": %" PRIu64 ",\n"
                   "  \"epoch\": %" PRIu32 ",\n"
                   "  \"world\": %" PRIu32 ",\n"
                   "  \"seed\": %" PRIu64 ",\n"
                   "  \"job\": %" PRId64 ",\n"
                   "  \"spec_sha\": \"%s\",\n"
                   "  \"lineage\": \"%s\",\n"
                   "  \"files\": [\n"
                   "    {\"name\": \"%s\", \"size\": %" PRIu64 ", \"crc32\": \"%08" PRIx32 "\"},\n"
                   "    {\"name\": \"%s\", \"size\": %" PRIu64 ", \"crc32\": \"%08" PRIx32 "\"}\n"
                   "  ],\n"
                   "  ",
                   CKPT_VERSION, m->meta.step, m->meta.epoch, m->meta.world, m->meta.seed,
                   m->meta.job, m->meta.spec_sha, m->meta.lineage, file_names[0], m->size[0],
                   m->crc[0],
                   file_names[1], m->size[1], m->crc[1]);
  // clang-format on
  if (w < 0 || (size_t)w >= cap) return 0;
  /* The self-check covers every byte before the key. */
  uint32_t self = (uint32_t)crc32(crc32(0L, Z_NULL, 0), (const Bytef *)out, (uInt)w);
  int w2 = snprintf(out + w, cap - (size_t)w, "\"manifest_crc32\": \"%08" PRIx32 "\"\n}\n", self);
  if (w2 < 0 || (size_t)w2 >= cap - (size_t)w) return 0;
  return (size_t)w + (size_t)w2;
}

/* The "files" array: exactly one entry for each of our two files. */
static int manifest_parse_files(json_cursor_t *j, manifest_t *m) {
  int seen[FILE_COUNT] = {0};
  int n = 0;
  if (json_lit(j, '[') < 0) return -1;
  for (;;) {
    int r = json_element(j, &n);
    if (r < 0) return -1;
    if (r == 0) break;
    if (json_lit(j, '{') < 0) return -1;
    char key[32], name[64] = "";
    int members = 0, have_name = 0, have_size = 0, have_crc = 0;
    uint64_t size = 0;
    uint32_t crc = 0;
    for (;;) {
      r = json_member(j, &members, key, sizeof key);
      if (r < 0) return -1;
      if (r == 0) break;
      if (strcmp(key, "name") == 0 && !have_name++) {
        if (json_str(j, name, sizeof name) < 0) return -1;
      } else if (strcmp(key, "size") == 0 && !have_size++) {
        if (json_u64(j, &size) < 0) return -1;
      } else if (strcmp(key, "crc32") == 0 && !have_crc++) {
        if (read_crc32(j, &crc) < 0) return -1;
      } else {
        j->pos = j->key_pos;
        return json_fail(j, "files[%d]: unexpected or repeated key \"%s\"", n - 1, key);
      }
    }
    if (!have_name || !have_size || !have_crc)
      return json_fail(j, "files[%d]: needs \"name\", \"size\" and \"crc32\"", n - 1);
    int f = -1;
    for (int k = 0; k < FILE_COUNT; k++)
      if (strcmp(name, file_names[k]) == 0) f = k;
    if (f < 0) return json_fail(j, "files[%d]: unknown file \"%s\"", n - 1, name);
    if (seen[f]++) return json_fail(j, "files: \"%s\" listed twice", name);
    m->size[f] = size;
    m->crc[f] = crc;
  }
  for (int k = 0; k < FILE_COUNT; k++)
    if (!seen[k]) return json_fail(j, "files: \"%s\" is not listed", file_names[k]);
  return 0;
}

/* The manifest's top-level keys, in the order written; key k's bit in a seen-set is 1 << k
 * (MK_*). */
static const char *const manifest_keys[] = {"format",  "version", "step",          "epoch",
                                            "world",   "seed",    "job",           "spec_sha",
                                            "lineage", "files",   "manifest_crc32"};
enum {
  MK_FORMAT = 1 << 0,
  MK_VERSION = 1 << 1,
  MK_STEP = 1 << 2,
  MK_EPOCH = 1 << 3,
  MK_WORLD = 1 << 4,
  MK_SEED = 1 << 5,
  MK_JOB = 1 << 6,
  MK_SPEC = 1 << 7,
  MK_LINEAGE = 1 << 8,
  MK_FILES = 1 << 9,
  MK_SELF = 1 << 10,
  MK_COUNT = 11,
  MK_ALL = (1 << MK_COUNT) - 1,
};
_Static_assert(DRV_ARRAY_LEN(manifest_keys) == MK_COUNT, "one name per manifest key");

/* The MK_* bit of a top-level key; 0 for a key the manifest has not. */
static unsigned manifest_key_bit(const char *key) {
  for (int k = 0; k < MK_COUNT; k++)
    if (strcmp(key, manifest_keys[k]) == 0) return 1u << k;
  return 0;
}

/* The value of the key with bit `bit` (named key) into m, or into *self for the
 * manifest's own CRC32. */
static int manifest_value(json_cursor_t *j, unsigned bit, const char *key, manifest_t *m,
                          uint32_t *self) {
  uint64_t u = 0;
  char fmt[32];
  switch (bit) {
  case MK_FORMAT:
    if (json_str(j, fmt, sizeof fmt) < 0) return -1;
    if (strcmp(fmt, CKPT_FORMAT) != 0)
      return json_fail(j, "format \"%s\", expected \"" CKPT_FORMAT "\"", fmt);
    return 0;
  case MK_VERSION:
    if (json_u64(j, &u) < 0) return -1;
    if (u < 1 || u > CKPT_VERSION)
      return json_fail(j, "version %" PRIu64 " is not supported (this build reads 1..%d)", u,
                       CKPT_VERSION);
    m->version = (uint32_t)u;
    return 0;
  case MK_STEP: return json_u64(j, &m->meta.step);
  case MK_EPOCH:
  case MK_WORLD:
    if (json_u64(j, &u) < 0) return -1;
    if (u > UINT32_MAX) return json_fail(j, "%s %" PRIu64 " out of range", key, u);
    *(bit == MK_EPOCH ? &m->meta.epoch : &m->meta.world) = (uint32_t)u;
    return 0;
  case MK_SEED: return json_u64(j, &m->meta.seed);
  case MK_JOB: return json_i64(j, &m->meta.job);
  case MK_SPEC:
    if (json_str(j, m->meta.spec_sha, sizeof m->meta.spec_sha) < 0) return -1;
    return spec_sha_ok(m->meta.spec_sha) ? 0 : json_fail(j, "spec_sha is not hex");
  case MK_LINEAGE:
    if (json_str(j, m->meta.lineage, sizeof m->meta.lineage) < 0) return -1;
    return lineage_ok(m->meta.lineage) ? 0 : json_fail(j, "lineage is not 1..64 hex digits");
  case MK_FILES: return manifest_parse_files(j, m);
  case MK_SELF: return read_crc32(j, self);
  }
  return json_fail(j, "unknown key \"%s\"", key);
}

/* Parses and checks manifest text: every key exactly once, nothing else, "manifest_crc32"
 * last and matching every byte before its key. On failure err holds why. */
static int manifest_parse(const char *buf, size_t len, manifest_t *m, char *err, size_t errcap) {
  json_cursor_t j = {.buf = buf, .len = len};
  memset(m, 0, sizeof *m);
  unsigned seen = 0;
  int members = 0, r;
  uint32_t self = 0;
  size_t self_pos = 0; /* where the key "manifest_crc32" starts: the CRC covers what is before */
  char key[32];
  if (json_lit(&j, '{') < 0) goto fail;
  while ((r = json_member(&j, &members, key, sizeof key)) > 0) {
    unsigned bit = manifest_key_bit(key);
    if ((seen & MK_SELF) || !bit || (seen & bit)) {
      j.pos = j.key_pos;
      if (seen & MK_SELF)
        json_fail(&j, "\"manifest_crc32\" must be the last key");
      else if (!bit)
        json_fail(&j, "unknown key \"%s\"", key);
      else
        json_fail(&j, "key \"%s\" appears twice", key);
      goto fail;
    }
    if (bit == MK_SELF) self_pos = j.key_pos;
    if (manifest_value(&j, bit, key, m, &self) < 0) goto fail;
    seen |= bit;
  }
  if (r < 0 || json_end(&j) < 0) goto fail;
  /* Version 1 had no lineage; version 2 must have one. */
  unsigned want = m->version == 1 ? MK_ALL & ~(unsigned)MK_LINEAGE : MK_ALL;
  if (m->version == 1 && (seen & MK_LINEAGE)) {
    snprintf(err, errcap, "key \"lineage\" in a version 1 manifest");
    return -1;
  }
  for (int k = 0; k < MK_COUNT; k++)
    if ((want & (1u << k)) && !(seen & (1u << k))) {
      snprintf(err, errcap, "key \"%s\" is missing", manifest_keys[k]);
      return -1;
    }
  uint32_t found = (uint32_t)crc32(crc32(0L, Z_NULL, 0), (const Bytef *)buf, (uInt)self_pos);
  if (found != self) {
    snprintf(err, errcap,
             "manifest CRC32 mismatch (expected 0x%08" PRIx32 ", found 0x%08" PRIx32 ")", self,
             found);
    return -1;
  }
  return 0;

fail:
  snprintf(err, errcap, "%s", j.err[0] ? j.err : "malformed");
  return -1;
}

// --- writing ------------------------------------------------------------------------------

static drv_result_t check_tensors(const ckpt_tensor_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!t[i].name || !t[i].name[0] || strcmp(t[i].name, "__metadata__") == 0)
      return drv_error(DRV_ERR_INVALID, "checkpoint tensor %zu: empty or reserved name", i);
    if (strlen(t[i].name) >= SAFETENSORS_NAME_MAX)
      return drv_error(DRV_ERR_INVALID, "checkpoint tensor %zu: name longer than %d bytes", i,
                       SAFETENSORS_NAME_MAX - 1);
    if (t[i].ndim > CKPT_MAX_DIMS)
      return drv_error(DRV_ERR_INVALID, "checkpoint tensor %s: %u dims, at most %d", t[i].name,
                       t[i].ndim, CKPT_MAX_DIMS);
    uint64_t elems = 1;
    for (uint32_t d = 0; d < t[i].ndim; d++) {
      if (t[i].shape[d] && elems > UINT64_MAX / sizeof(float) / t[i].shape[d])
        return drv_error(DRV_ERR_INVALID, "checkpoint tensor %s: shape overflows", t[i].name);
      elems *= t[i].shape[d];
    }
    if (elems != t[i].count)
      return drv_error(DRV_ERR_INVALID,
                       "checkpoint tensor %s: count %" PRIu64 " but the shape holds %" PRIu64,
                       t[i].name, t[i].count, elems);
    if (elems > SIZE_MAX / sizeof(float))
      return drv_error(DRV_ERR_INVALID, "checkpoint tensor %s: too large", t[i].name);
    if (elems && !t[i].data)
      return drv_error(DRV_ERR_INVALID, "checkpoint tensor %s: no data", t[i].name);
    for (size_t k = 0; k < i; k++)
      if (strcmp(t[k].name, t[i].name) == 0)
        return drv_error(DRV_ERR_INVALID, "checkpoint tensor name %s appears twice", t[i].name);
  }
  return DRV_OK;
}

/* Moves the directory tmp to final, replacing an existing final atomically where the
 * filesystem can. *old receives 1 when the previous final now sits at old_path. */
static drv_result_t publish(const char *tmp, const char *final, const char *old_path, int *old) {
  *old = 0;
  if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_NOREPLACE) == 0) return DRV_OK;
  int err = errno;
  if (err == EEXIST) {
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
      *old = 1; /* tmp now holds the previous checkpoint */
      return DRV_OK;
    }
    err = errno;
    if (err != EINVAL && err != ENOSYS && err != ENOTSUP)
      return drv_error(DRV_ERR_SYS, "%s: exchange with %s: %s", tmp, final, strerror(err));
  } else if (err != EINVAL && err != ENOSYS && err != ENOTSUP) {
    return drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", tmp, final, strerror(err));
  }
  // No renameat2 flags here: plain rename works when final is absent (or empty).
  if (rename(tmp, final) == 0) return DRV_OK;
  if (errno != ENOTEMPTY && errno != EEXIST)
    return drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", tmp, final, strerror(errno));
  // Move the old one aside first: final is then briefly absent, never incomplete.
  if (rename(final, old_path) < 0)
    return drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", final, old_path, strerror(errno));
  *old = 2;
  if (rename(tmp, final) < 0)
    return drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", tmp, final, strerror(errno));
  return DRV_OK;
}

/* The tensors as the two files' lists, one after the other (model file first): *st (n,
 * malloc'ed, the caller frees it) borrows t's names and data; counts[f] per file. */
static drv_result_t split_tensors(const ckpt_tensor_t *t, size_t n, const char *what,
                                  safetensors_tensor_t **st, size_t counts[FILE_COUNT]) {
  safetensors_tensor_t *v = calloc(n ? n : 1, sizeof *v);
  if (!v) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", what);
  size_t k = 0;
  for (int f = 0; f < FILE_COUNT; f++) {
    counts[f] = 0;
    for (size_t i = 0; i < n; i++) {
      if (file_of(t[i].name) != f) continue;
      safetensors_tensor_t *s = &v[k++];
      s->name = t[i].name;
      s->dtype = "F32";
      s->ndim = t[i].ndim;
      for (uint32_t d = 0; d < t[i].ndim; d++) s->shape[d] = t[i].shape[d];
      s->data = t[i].data;
      counts[f]++;
    }
  }
  *st = v;
  return DRV_OK;
}

/* The two tensor files into the directory tmp (each written to a temp file, fsynced and
 * renamed by the writer), their sizes and CRC32s into m. */
static drv_result_t tensor_files_write(const char *tmp, const safetensors_tensor_t *st,
                                       const size_t counts[FILE_COUNT], manifest_t *m) {
  static const safetensors_meta_t st_meta[] = {{"format", "pt"}};
  drv_result_t rc = DRV_OK;
  char file[PATH_MAX];
  int fd = -1;
  for (int f = 0; f < FILE_COUNT; f++) {
    DRV_CHECK_GOTO(path_fmt(file, sizeof file, "%s/%s", tmp, file_names[f]), rc, fail);
    DRV_CHECK_GOTO(safetensors_write(file, st + (f ? counts[0] : 0), counts[f], st_meta, 1), rc,
                   fail);
    DRV_CHECK_GOTO(fs_open_read(AT_FDCWD, file, file, &fd), rc, fail);
    DRV_CHECK_GOTO(fd_crc32(fd, file, &m->size[f], &m->crc[f]), rc, fail);
    close(fd);
    fd = -1;
  }
fail:
  if (fd >= 0) close(fd);
  return rc;
}

/* The manifest as tmp/manifest.json: created, written, fsynced and closed. */
static drv_result_t manifest_write(const char *tmp, const manifest_t *m) {
  drv_result_t rc = DRV_OK;
  char text[2048], file[PATH_MAX];
  size_t tlen = manifest_format(m, text, sizeof text);
  if (tlen == 0) return drv_error(DRV_ERR_INVALID, "%s: manifest does not fit", tmp);
  DRV_CHECK(path_fmt(file, sizeof file, "%s/" CKPT_MANIFEST, tmp));
  int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, CKPT_FILE_MODE);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "%s: create: %s", file, strerror(errno));
  DRV_CHECK_GOTO(fs_write_all(fd, text, tlen, file), rc, fail);
  if (fsync(fd) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: fsync: %s", file, strerror(errno));
    goto fail;
  }
  int closed = close(fd);
  fd = -1;
  if (closed < 0) rc = drv_error(DRV_ERR_SYS, "%s: close: %s", file, strerror(errno));
fail:
  if (fd >= 0) close(fd);
  return rc;
}

drv_result_t ckpt_write(const char *dir, const ckpt_meta_t *meta, const ckpt_tensor_t *t,
                        size_t n) {
  drv_result_t rc = DRV_OK;
  safetensors_tensor_t *st = NULL; /* (n) model tensors first, then state tensors */
  size_t counts[FILE_COUNT];
  char tmp[PATH_MAX], final[PATH_MAX], del[PATH_MAX], file[PATH_MAX];
  int made_tmp = 0;

  if (!dir || !*dir || !meta || (n && !t))
    return drv_error(DRV_ERR_INVALID, "ckpt_write: NULL argument");
  if (!spec_sha_ok(meta->spec_sha))
    return drv_error(DRV_ERR_INVALID, "ckpt_write: spec_sha must be 0..64 hex digits");
  if (!lineage_ok(meta->lineage))
    return drv_error(DRV_ERR_INVALID, "ckpt_write: the lineage must be 1..64 hex digits");
  DRV_CHECK(check_tensors(t, n));
  unsigned long long step = (unsigned long long)meta->step;
  long pid = (long)getpid();
  DRV_CHECK(path_fmt(final, sizeof final, "%s/step-%010llu", dir, step));
  DRV_CHECK(path_fmt(tmp, sizeof tmp, "%s/.tmp-step-%llu-%ld", dir, step, pid));
  DRV_CHECK(path_fmt(del, sizeof del, "%s/.tmp-del-step-%llu-%ld", dir, step, pid));
  DRV_CHECK(path_fmt(file, sizeof file, "%s/" CKPT_MANIFEST, tmp)); /* all paths fit */
  DRV_CHECK(split_tensors(t, n, final, &st, counts));

  DRV_CHECK_GOTO(fs_mkdir_p_durable(dir, CKPT_DIR_MODE), rc, fail);
  struct stat dst; /* the checkpoint directory itself, not a link to another one */
  if (lstat(dir, &dst) < 0 || !S_ISDIR(dst.st_mode)) {
    rc = drv_error(DRV_ERR_INVALID, "%s: not a directory (a symbolic link?): refused", dir);
    goto fail;
  }
  // A directory of this name is ours by name: an earlier attempt of this process.
  DRV_CHECK_GOTO(rm_tree(tmp), rc, fail);
  if (mkdir(tmp, CKPT_DIR_MODE) < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: mkdir: %s", tmp, strerror(errno));
    goto fail;
  }
  made_tmp = 1;
  manifest_t m = {.meta = *meta};
  DRV_CHECK_GOTO(tensor_files_write(tmp, st, counts, &m), rc, fail);
  DRV_CHECK_GOTO(manifest_write(tmp, &m), rc, fail); /* last: it vouches for the others */
  DRV_CHECK_GOTO(fs_fsync_dir(tmp), rc, fail);

  // Into place, then make the rename durable.
  int old = 0;
  rc = publish(tmp, final, del, &old);
  if (rc != DRV_OK) {
    if (old == 2 && rename(del, final) < 0) /* put the earlier one back */
      log_warn("%s: could not restore the earlier checkpoint from %s: %s", final, del,
               strerror(errno));
    goto fail;
  }
  made_tmp = old == 1; /* after an exchange, tmp holds the earlier copy */
  DRV_CHECK_GOTO(fs_fsync_dir(dir), rc, fail);
  if (old) {
    const char *gone = old == 1 ? tmp : del;
    if (rm_tree(gone) != DRV_OK)
      log_warn("%s: written, but the earlier copy was not removed: %s", final, drv_last_error());
    made_tmp = 0;
  }

fail:
  if (made_tmp) {
    drv_error_saved_t keep; /* the failure, not the clean-up's */
    drv_error_save(&keep);
    if (rm_tree(tmp) != DRV_OK) log_warn("%s: not removed: %s", tmp, drv_last_error());
    drv_error_restore(&keep, rc);
  }
  free(st);
  return rc;
}

// --- reading ------------------------------------------------------------------------------

/* The step of a canonical "step-%010llu" name; 0 when the name is not one. */
static int parse_step_name(const char *name, uint64_t *step) {
  if (strncmp(name, "step-", 5) != 0) return 0;
  const char *d = name + 5;
  size_t len = strlen(d);
  if (len < 10 || len > 20) return 0;
  for (size_t i = 0; i < len; i++)
    if (d[i] < '0' || d[i] > '9') return 0;
  errno = 0;
  unsigned long long v = strtoull(d, NULL, 10);
  if (errno) return 0;
  char canon[32];
  snprintf(canon, sizeof canon, "%010llu", v);
  if (strcmp(canon, d) != 0) return 0;
  *step = (uint64_t)v;
  return 1;
}

static int cmp_desc(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* The steps of dir's step-* directories, newest first (*steps owned by the caller, NULL when
 * none). *missing is set when dir does not exist. */
static drv_result_t list_steps(const char *dir, uint64_t **steps, size_t *count, int *missing) {
  *steps = NULL;
  *count = 0;
  *missing = 0;
  DIR *d = opendir(dir);
  if (!d) {
    if (errno == ENOENT) {
      *missing = 1;
      return DRV_OK;
    }
    return drv_error(DRV_ERR_SYS, "%s: open directory: %s", dir, strerror(errno));
  }
  size_t cap = 0;
  uint64_t *v = NULL;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    uint64_t s;
    if (!parse_step_name(e->d_name, &s)) continue;
    if (*count == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      uint64_t *nv = realloc(v, ncap * sizeof *nv);
      if (!nv) {
        free(v);
        closedir(d);
        return drv_error(DRV_ERR_NOMEM, "%s: out of memory listing checkpoints", dir);
      }
      v = nv;
      cap = ncap;
    }
    v[(*count)++] = s;
  }
  closedir(d);
  if (*count) qsort(v, *count, sizeof *v, cmp_desc);
  *steps = v;
  return DRV_OK;
}

/* Reads and parses path/manifest.json, checks its step. DRV_ERR_INVALID with the reason. */
static drv_result_t manifest_load(const char *path, uint64_t step, manifest_t *m) {
  char file[PATH_MAX], err[256];
  DRV_CHECK(path_fmt(file, sizeof file, "%s/" CKPT_MANIFEST, path));
  int fd;
  drv_result_t orc = fs_open_read(AT_FDCWD, file, CKPT_MANIFEST, &fd);
  if (orc != DRV_OK)
    return errno == ENOENT ? drv_error(DRV_ERR_INVALID, CKPT_MANIFEST ": missing") : orc;
  char *buf = malloc(CKPT_MANIFEST_MAX + 1);
  if (!buf) {
    close(fd);
    return drv_error(DRV_ERR_NOMEM, CKPT_MANIFEST ": out of memory");
  }
  size_t len = 0;
  drv_result_t rc = DRV_OK;
  for (;;) {
    ssize_t r = read(fd, buf + len, CKPT_MANIFEST_MAX + 1 - len);
    if (r < 0) {
      if (errno == EINTR) continue;
      rc = drv_error(DRV_ERR_SYS, CKPT_MANIFEST ": read: %s", strerror(errno));
      goto out;
    }
    if (r == 0) break;
    len += (size_t)r;
    if (len > CKPT_MANIFEST_MAX) {
      rc = drv_error(DRV_ERR_INVALID, CKPT_MANIFEST ": larger than %d bytes", CKPT_MANIFEST_MAX);
      goto out;
    }
  }
  if (len == 0) {
    rc = drv_error(DRV_ERR_INVALID, CKPT_MANIFEST ": empty");
    goto out;
  }
  if (manifest_parse(buf, len, m, err, sizeof err) < 0) {
    rc = drv_error(DRV_ERR_INVALID, CKPT_MANIFEST ": %s", err);
    goto out;
  }
  if (m->meta.step != step)
    rc = drv_error(DRV_ERR_INVALID, CKPT_MANIFEST ": step %" PRIu64 " does not match the name",
                   m->meta.step);
out:
  free(buf);
  close(fd);
  return rc;
}

/* Finds each t[i] in its file, open as fds[f] (size[f] bytes), as an F32 tensor of exactly
 * its count and shape, and puts its data's offset in off[i]. */
static drv_result_t locate_tensors(const int fds[FILE_COUNT], const uint64_t size[FILE_COUNT],
                                   const ckpt_tensor_t *t, size_t n, uint64_t *off) {
  drv_result_t rc = DRV_OK;
  safetensors_want_t *want = calloc(n ? n : 1, sizeof *want); /* one file's tensors at a time */
  if (!want) return drv_error(DRV_ERR_NOMEM, "out of memory");
  for (int f = 0; f < FILE_COUNT && rc == DRV_OK; f++) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
      if (file_of(t[i].name) != f) continue;
      safetensors_want_t *w = &want[k++];
      *w = (safetensors_want_t){
          .name = t[i].name, .dtype = "F32", .count = t[i].count, .ndim = t[i].ndim};
      memcpy(w->shape, t[i].shape, t[i].ndim * sizeof t[i].shape[0]); /* ndim <= 4, checked */
    }
    rc = safetensors_locate(fds[f], size[f], file_names[f], want, k);
    k = 0;
    for (size_t i = 0; rc == DRV_OK && i < n; i++)
      if (file_of(t[i].name) == f) off[i] = want[k++].offset;
  }
  free(want);
  return rc;
}

/* Checks the checkpoint at path (of step `step`) in full and, when `load` is set, reads
 * the tensors into the caller's buffers. The error message names the file, not the path. */
static drv_result_t try_checkpoint(const char *path, uint64_t step, const char *lineage,
                                   ckpt_meta_t *meta, ckpt_tensor_t *t, size_t n) {
  drv_result_t rc = DRV_OK;
  manifest_t m;
  int fds[FILE_COUNT] = {-1, -1};
  uint64_t *off = NULL;
  char file[PATH_MAX];

  DRV_CHECK(manifest_load(path, step, &m));
  /* Whose it is before anything else: another job's checkpoint is never read, however
   * intact (its lineage is not named: the refusal is shown to whoever asks). */
  if (strcmp(m.meta.lineage, lineage) != 0)
    return drv_error(DRV_ERR_INVALID, CKPT_MANIFEST ": of another job's lineage%s: not loaded",
                     m.meta.lineage[0] ? "" : " (it records none: an older drover wrote it)");
  // Sizes and CRCs first: nothing in a file is parsed before it is known intact.
  for (int f = 0; f < FILE_COUNT; f++) {
    DRV_CHECK_GOTO(path_fmt(file, sizeof file, "%s/%s", path, file_names[f]), rc, fail);
    rc = fs_open_read(AT_FDCWD, file, file_names[f], &fds[f]);
    if (rc != DRV_OK) {
      if (errno == ENOENT) rc = drv_error(DRV_ERR_INVALID, "%s: missing", file_names[f]);
      goto fail;
    }
    struct stat st;
    if (fstat(fds[f], &st) < 0) {
      rc = drv_error(DRV_ERR_SYS, "%s: stat: %s", file_names[f], strerror(errno));
      goto fail;
    }
    if ((uint64_t)st.st_size != m.size[f]) {
      rc = drv_error(DRV_ERR_INVALID, "%s: size %" PRIu64 " bytes, the manifest says %" PRIu64,
                     file_names[f], (uint64_t)st.st_size, m.size[f]);
      goto fail;
    }
    uint64_t size;
    uint32_t crc;
    DRV_CHECK_GOTO(fd_crc32(fds[f], file_names[f], &size, &crc), rc, fail);
    if (size != m.size[f]) {
      rc = drv_error(DRV_ERR_INVALID, "%s: read %" PRIu64 " bytes, the manifest says %" PRIu64,
                     file_names[f], size, m.size[f]);
      goto fail;
    }
    if (crc != m.crc[f]) {
      rc = drv_error(DRV_ERR_INVALID,
                     "%s: CRC32 mismatch (expected 0x%08" PRIx32 ", found 0x%08" PRIx32 ")",
                     file_names[f], m.crc[f], crc);
      goto fail;
    }
  }
  // Every tensor found and matching before any buffer is touched.
  off = calloc(n ? n : 1, sizeof *off);
  if (!off) {
    rc = drv_error(DRV_ERR_NOMEM, "out of memory");
    goto fail;
  }
  DRV_CHECK_GOTO(locate_tensors(fds, m.size, t, n, off), rc, fail);
  for (size_t i = 0; i < n; i++)
    DRV_CHECK_GOTO(safetensors_read_f32(fds[file_of(t[i].name)], off[i], t[i].data, t[i].count,
                                        file_names[file_of(t[i].name)]),
                   rc, fail);
  *meta = m.meta;

fail:
  free(off);
  for (int f = 0; f < FILE_COUNT; f++)
    if (fds[f] >= 0) close(fds[f]);
  return rc;
}

drv_result_t ckpt_load_latest(const char *dir, const char *lineage, ckpt_meta_t *meta,
                              ckpt_tensor_t *t, size_t n, char *found_dir, size_t found_sz) {
  drv_result_t rc = DRV_OK;
  uint64_t *steps = NULL;
  size_t count = 0;
  int missing = 0;
  char why[768] = ""; /* "step-...: reason; step-...: reason" */
  size_t why_len = 0, refused = 0;
  char path[PATH_MAX];

  if (meta) memset(meta, 0, sizeof *meta);
  if (found_dir && found_sz) found_dir[0] = '\0';
  if (!dir || !lineage || !meta || (n && !t) || (found_dir && !found_sz))
    return drv_error(DRV_ERR_INVALID, "ckpt_load_latest: NULL argument");
  for (size_t i = 0; i < n; i++)
    if (!t[i].name || (t[i].count && !t[i].data) || t[i].ndim > CKPT_MAX_DIMS)
      return drv_error(DRV_ERR_INVALID,
                       "ckpt_load_latest: tensor %zu: no name, no buffer or "
                       "more than %d dims",
                       i, CKPT_MAX_DIMS);
  DRV_CHECK(list_steps(dir, &steps, &count, &missing));
  if (count == 0) {
    free(steps);
    return drv_error(DRV_ERR_INVALID, "%s: no checkpoint (%s)", dir,
                     missing ? "the directory does not exist" : "no step-* directory");
  }
  for (size_t k = 0; k < count; k++) {
    DRV_CHECK_GOTO(
        path_fmt(path, sizeof path, "%s/step-%010llu", dir, (unsigned long long)steps[k]), rc,
        fail);
    if (found_dir && strlen(path) >= found_sz) {
      rc = drv_error(DRV_ERR_INVALID, "%s: found_sz %zu too small for the path", path, found_sz);
      goto fail;
    }
    ckpt_meta_t got;
    rc = try_checkpoint(path, steps[k], lineage, &got, t, n);
    if (rc == DRV_OK) {
      *meta = got;
      if (found_dir) snprintf(found_dir, found_sz, "%s", path);
      if (refused) log_info("%s: using this checkpoint after refusing %zu newer", path, refused);
      free(steps);
      return DRV_OK;
    }
    if (rc == DRV_ERR_NOMEM) goto fail;
    log_warn("%s: %s", path, drv_last_error());
    refused++;
    if (why_len < sizeof why - 1) {
      int w = snprintf(why + why_len, sizeof why - why_len, "%sstep-%010llu: %s",
                       why_len ? "; " : "", (unsigned long long)steps[k], drv_last_error());
      why_len = w < 0 ? why_len : DRV_MIN(sizeof why - 1, why_len + (size_t)w);
    }
  }
  rc = drv_error(DRV_ERR_INVALID, "%s: no usable checkpoint, %zu refused: %s", dir, refused, why);

fail:
  memset(meta, 0, sizeof *meta);
  if (found_dir && found_sz) found_dir[0] = '\0';
  free(steps);
  return rc;
}

// --- pruning ------------------------------------------------------------------------------

/* The pid at the end of a ".tmp-...-<pid>" name; 0 when there is none. */
static pid_t tmp_name_pid(const char *name) {
  if (strncmp(name, ".tmp-", 5) != 0) return 0;
  const char *dash = strrchr(name, '-');
  if (!dash || !dash[1] || dash - name < 5) return 0;
  long v = 0;
  for (const char *p = dash + 1; *p; p++) {
    if (*p < '0' || *p > '9' || v > 1000000000L) return 0;
    v = v * 10 + (*p - '0');
  }
  return v > 0 ? (pid_t)v : 0;
}

static int pid_alive(pid_t pid) {
  return kill(pid, 0) == 0 || errno != ESRCH;
}

drv_result_t ckpt_prune(const char *dir, const char *lineage, uint32_t keep, uint32_t *removed) {
  drv_result_t rc = DRV_OK;
  uint64_t *steps = NULL;
  size_t count = 0;
  int missing = 0;
  uint32_t done = 0;
  char path[PATH_MAX], del[PATH_MAX];
  DIR *d = NULL;

  if (removed) *removed = 0;
  if (!dir || !lineage) return drv_error(DRV_ERR_INVALID, "ckpt_prune: NULL argument");
  if (keep == 0) return drv_error(DRV_ERR_INVALID, "%s: ckpt_prune: keep must be at least 1", dir);

  // Leftovers of writers that died.
  d = opendir(dir);
  if (!d) {
    if (errno == ENOENT) return DRV_OK;
    return drv_error(DRV_ERR_SYS, "%s: open directory: %s", dir, strerror(errno));
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    pid_t pid = tmp_name_pid(e->d_name);
    if (pid == 0 || pid == getpid() || pid_alive(pid)) continue;
    DRV_CHECK_GOTO(path_fmt(path, sizeof path, "%s/%s", dir, e->d_name), rc, fail);
    DRV_CHECK_GOTO(rm_tree(path), rc, fail);
    log_info("%s: removed (its writer, pid %ld, is gone)", path, (long)pid);
    done++;
  }
  closedir(d);
  d = NULL;

  // Checkpoints beyond the newest `keep` complete ones.
  DRV_CHECK_GOTO(list_steps(dir, &steps, &count, &missing), rc, fail);
  uint32_t complete = 0;
  size_t k = 0;
  for (; k < count && complete < keep; k++) {
    DRV_CHECK_GOTO(
        path_fmt(path, sizeof path, "%s/step-%010llu", dir, (unsigned long long)steps[k]), rc,
        fail);
    manifest_t m;
    int ok = manifest_load(path, steps[k], &m) == DRV_OK && !strcmp(m.meta.lineage, lineage);
    for (int f = 0; ok && f < FILE_COUNT; f++) {
      char file[PATH_MAX];
      struct stat st;
      ok = path_fmt(file, sizeof file, "%s/%s", path, file_names[f]) == DRV_OK &&
           stat(file, &st) == 0 && (uint64_t)st.st_size == m.size[f];
    }
    if (ok) complete++;
  }
  for (; k < count; k++) {
    unsigned long long s = (unsigned long long)steps[k];
    DRV_CHECK_GOTO(path_fmt(path, sizeof path, "%s/step-%010llu", dir, s), rc, fail);
    manifest_t m;
    if (manifest_load(path, steps[k], &m) == DRV_OK && strcmp(m.meta.lineage, lineage) != 0) {
      log_warn("%s: of another job's lineage: left alone", path);
      continue;
    }
    DRV_CHECK_GOTO(path_fmt(del, sizeof del, "%s/.tmp-del-step-%llu-%ld", dir, s, (long)getpid()),
                   rc, fail);
    DRV_CHECK_GOTO(rm_tree(del), rc, fail);
    if (rename(path, del) < 0) {
      rc = drv_error(DRV_ERR_SYS, "%s: rename to %s: %s", path, del, strerror(errno));
      goto fail;
    }
    DRV_CHECK_GOTO(rm_tree(del), rc, fail);
    done++;
  }
  if (done) DRV_CHECK_GOTO(fs_fsync_dir(dir), rc, fail);

fail:
  if (d) closedir(d);
  free(steps);
  if (removed) *removed = done;
  return rc;
}
