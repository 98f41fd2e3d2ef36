/* drv.c: result codes, the per-thread last error (message and location), clocks, medians,
 * UTF-8 checks. */
#include "common/drv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static _Thread_local char last_error[DRV_ERROR_MAX];
static _Thread_local char last_where[DRV_WHERE_MAX]; /* "train/checkpoint.c:123" */

const char *drv_strerror(drv_result_t rc) {
  switch (rc) {
  case DRV_OK: return "ok";
  case DRV_ERR_SYS: return "system error";
  case DRV_ERR_CUDA: return "CUDA error";
  case DRV_ERR_NCCL: return "NCCL error";
  case DRV_ERR_ZMQ: return "ZeroMQ error";
  case DRV_ERR_PROTO: return "protocol error";
  case DRV_ERR_INVALID: return "invalid input";
  case DRV_ERR_TIMEOUT: return "timed out";
  case DRV_ERR_CANCELLED: return "cancelled";
  case DRV_ERR_NOMEM: return "out of memory";
  }
  return "unknown error";
}

/* __FILE__ relative to the source tree: this file is <root>/common/drv.c, and every file
 * of the tree is compiled with the same kind of path (absolute from CMake, or relative
 * under -ffile-prefix-map), so <root> is cut off where a file starts with it. */
static const char *source_relative(const char *file) {
  static const char self[] = __FILE__, tail[] = "common/drv.c";
  const size_t len = sizeof self - 1, tail_len = sizeof tail - 1;
  if (len < tail_len || strcmp(self + len - tail_len, tail) != 0) return file; /* renamed? */
  size_t root = len - tail_len;
  return strncmp(file, self, root) == 0 ? file + root : file;
}

static void set_where(const char *file, int line) {
  snprintf(last_where, sizeof last_where, "%s:%d", source_relative(file), line);
}

drv_result_t drv_error_at(const char *file, int line, drv_result_t rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  set_where(file, line);
  return rc;
}

drv_result_t drv_error_prefix(drv_result_t rc, const char *fmt, ...) {
  char prefix[512], old[sizeof last_error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, last_error, sizeof old);
  /* Truncation is acceptable here: the message is for people. */
  size_t n = strlen(prefix);
  if (n > sizeof last_error - 3) n = sizeof last_error - 3;
  memcpy(last_error, prefix, n);
  memcpy(last_error + n, ": ", 2);
  size_t room = sizeof last_error - n - 3;
  size_t m = strnlen(old, room);
  memcpy(last_error + n + 2, old, m);
  last_error[n + 2 + m] = '\0';
  return rc;
}

const char *drv_last_error(void) {
  return last_error;
}

const char *drv_last_error_where(void) {
  return last_where;
}

void drv_error_mark(const char *file, int line) {
  if (!last_where[0]) set_where(file, line);
}

void drv_error_clear(void) {
  last_error[0] = '\0';
  last_where[0] = '\0';
}

void drv_error_save(drv_error_saved_t *saved) {
  memcpy(saved->message, last_error, sizeof saved->message);
  memcpy(saved->where, last_where, sizeof saved->where);
}

drv_result_t drv_error_restore(const drv_error_saved_t *saved, drv_result_t rc) {
  memcpy(last_error, saved->message, sizeof last_error);
  memcpy(last_where, saved->where, sizeof last_where);
  return rc;
}

int64_t drv_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double drv_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double drv_wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double drv_median(double *v, size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void drv_hex(const void *bytes, size_t n, char *out) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *b = bytes;
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 15];
  }
  out[2 * n] = '\0';
}

void drv_random_hex(char *out, size_t n) {
  unsigned char b[64];
  n = n < sizeof b ? n : sizeof b;
  size_t got = 0;
  while (got < n) { /* getrandom blocks only before the kernel's pool is ready */
    ssize_t k = getrandom(b + got, n - got, 0);
    if (k > 0) got += (size_t)k;
  }
  drv_hex(b, n, out);
}

size_t drv_utf8_char(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  if (n == 0) return 0;
  if (p[0] < 0x80) return 1;
  /* The lead byte gives the length and the range the second byte must lie in (which is
   * what rules out overlong forms, surrogates and code points above U+10FFFF). */
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;
  if (p[0] >= 0xc2 && p[0] <= 0xdf) {
    len = 2;
  } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    len = 3;
    if (p[0] == 0xe0) lo = 0xa0; /* overlong below U+0800 */
    if (p[0] == 0xed) hi = 0x9f; /* surrogates */
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    len = 4;
    if (p[0] == 0xf0) lo = 0x90; /* overlong below U+10000 */
    if (p[0] == 0xf4) hi = 0x8f; /* above U+10FFFF */
  } else {
    return 0; /* a continuation byte, 0xc0, 0xc1 or 0xf5.. */
  }
  if (n < len || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (p[i] < 0x80 || p[i] > 0xbf) return 0;
  return len;
}

size_t drv_utf8_valid(const char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    if ((unsigned char)s[i] < 0x80) { /* the common case, byte by byte */
      i++;
      continue;
    }
    size_t len = drv_utf8_char(s + i, n - i);
    if (!len) break;
    i += len;
  }
  return i;
}
