/* drv.h: drover's one result type, its per-thread error message, and the check macros.
 *
 * Every fallible function returns drv_result_t. On failure it also leaves a message in
 * the calling thread's last-error slot saying what and where
 * ("train.idx: expected magic 0x00000803, found 0x1f8b0808"); callers that add context
 * wrap it with drv_error_prefix(). Beside the message the slot keeps the source location
 * the error came from ("train/dataset.c:212", drv_last_error_where), for people reading
 * logs; the message never contains it. Library code never exits: only main() decides to
 * stop.
 */
#ifndef DROVER_COMMON_DRV_H
#define DROVER_COMMON_DRV_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  DRV_OK = 0,
  DRV_ERR_SYS,       /* an OS call failed (errno in the message) */
  DRV_ERR_CUDA,      /* the CUDA runtime or a kernel launch failed */
  DRV_ERR_NCCL,      /* an NCCL call failed */
  DRV_ERR_ZMQ,       /* a ZeroMQ call failed */
  DRV_ERR_PROTO,     /* a message broke the wire protocol */
  DRV_ERR_INVALID,   /* bad input: a job spec, a dataset, an argument */
  DRV_ERR_TIMEOUT,   /* a peer or an operation did not answer in time */
  DRV_ERR_CANCELLED, /* the operation was cancelled or aborted */
  DRV_ERR_NOMEM,     /* an allocation failed */
} drv_result_t;

/* A short fixed name for a result code ("invalid input"). Never NULL. */
const char *drv_strerror(drv_result_t rc);

/* Sets the calling thread's last-error message (printf-style) and its location, and
 * returns rc, so that `return drv_error(DRV_ERR_INVALID, "%s: truncated", path);` reads as
 * one step. drv_error() is a macro that passes the caller's __FILE__ and __LINE__ (kept as
 * a path relative to the source tree, "train/checkpoint.c:123"; see drv_last_error_where).
 * The message itself carries no location. */
drv_result_t drv_error_at(const char *file, int line, drv_result_t rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define drv_error(rc, ...) drv_error_at(__FILE__, __LINE__, (rc), __VA_ARGS__)

/* Prepends "<prefix>: " to the current last-error message; returns rc unchanged. The
 * location stays the one where the error arose. */
drv_result_t drv_error_prefix(drv_result_t rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The calling thread's last-error message ("" when none). Valid until the next set. */
const char *drv_last_error(void);

/* Where the calling thread's last error arose, "train/checkpoint.c:123" (the path relative
 * to drover's source tree), or "" when none is recorded. Valid until the next set. */
const char *drv_last_error_where(void);

/* Records file:line as where the calling thread's error arose, unless a location is set
 * already (since the last drv_error_clear; the check macros call it, so an error returned without
 * drv_error() still gets the place it was first seen). */
void drv_error_mark(const char *file, int line);

/* Clears the calling thread's last-error message and location. */
void drv_error_clear(void);

/* A copy of the calling thread's last error (message and location), for a clean-up path
 * that may set errors of its own and must then put the first one back. */
#define DRV_ERROR_MAX 1024 /* bytes of a last-error message, NUL included */
#define DRV_WHERE_MAX 256  /* bytes of its location */
typedef struct {
  char message[DRV_ERROR_MAX];
  char where[DRV_WHERE_MAX];
} drv_error_saved_t;
void drv_error_save(drv_error_saved_t *saved);
/* Puts a saved error back as the calling thread's last error; returns rc. */
drv_result_t drv_error_restore(const drv_error_saved_t *saved, drv_result_t rc);

/* ---- Check macros (NCCL's checks.h): one cleanup label per function ------------------ */

/* Returns (or, _GOTO, stores in rc and jumps to label) the result of a failed call. The
 * error keeps the location its own drv_error() recorded; a call that failed without one
 * gets the check's file:line. */
#define DRV_CHECK(call)                   \
  do {                                    \
    drv_result_t drv_rc_ = (call);        \
    if (drv_rc_ != DRV_OK) {              \
      drv_error_mark(__FILE__, __LINE__); \
      return drv_rc_;                     \
    }                                     \
  } while (0)

#define DRV_CHECK_GOTO(call, rc, label)   \
  do {                                    \
    (rc) = (call);                        \
    if ((rc) != DRV_OK) {                 \
      drv_error_mark(__FILE__, __LINE__); \
      goto label;                         \
    }                                     \
  } while (0)

/* For calls that return -1 and set errno (POSIX, ZeroMQ). */
#define SYS_CHECK_GOTO(call, rc, label, what)                           \
  do {                                                                  \
    if ((call) < 0) {                                                   \
      (rc) = drv_error(DRV_ERR_SYS, "%s: %s", (what), strerror(errno)); \
      goto label;                                                       \
    }                                                                   \
  } while (0)

#define DRV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DRV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DRV_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Monotonic clock in milliseconds and seconds. */
int64_t drv_now_ms(void);
double drv_now_s(void);

/* Wall clock, seconds since the epoch. */
double drv_wall_s(void);

/* The median of v[0..n), n >= 1, sorting v in place (so v[0] is then the minimum and
 * v[n-1] the maximum): for the medians every benchmark reports. */
double drv_median(double *v, size_t n);

/* UTF-8 as the protocol and job specs take it: shortest forms only, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF. drv_utf8_char: the length (1 to 4) of the one
 * character s[0..n) starts with, 0 when those bytes start none (n == 0 included).
 * drv_utf8_valid: the length of the longest valid prefix of s[0..n), so n when all of it
 * is valid and otherwise the offset of the first byte that is not. */
size_t drv_utf8_char(const char *s, size_t n);
size_t drv_utf8_valid(const char *s, size_t n);

/* n bytes as 2n lowercase hex digits and a NUL into out. */
void drv_hex(const void *bytes, size_t n, char *out);

/* n (at most 64) bytes from the system's random source as 2n hex digits and a NUL. */
void drv_random_hex(char *out, size_t n);

#endif
