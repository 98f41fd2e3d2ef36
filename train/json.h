/* json.h: a small strict JSON cursor, for the two JSON texts drover reads itself: the
 * checkpoint manifest (train/checkpoint.c) and the safetensors header (train/safetensors.c).
 *
 * Only what those use: objects, arrays, strings and integers, read in place from a buffer
 * by a caller that knows the schema and walks it (no tree, no allocation, no recursion).
 * Every string and number is bounded. The functions return 0 on success and -1 on a
 * failure, which also leaves "byte N: what" in j->err (the first failure only).
 *
 * Walking an object:
 *   if (json_lit(j, '{') < 0) return -1;
 *   for (int n = 0, r; (r = json_member(j, &n, key, sizeof key)) != 0;) {
 *     if (r < 0) return -1;
 *     ... read the value of `key` ...
 *   }
 */
#ifndef DROVER_TRAIN_JSON_H
#define DROVER_TRAIN_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *buf; /* the text (borrowed), len bytes, not NUL-terminated */
  size_t len, pos; /* pos: the next byte to read */
  size_t key_pos;  /* where the last key read by json_member began (its opening quote) */
  char err[200];   /* the first failure, "byte N: what"; "" while none */
} json_cursor_t;

/* Records "byte <pos>: <what>" in j->err (unless a failure is recorded already) and
 * returns -1, for the caller's own schema checks. */
int json_fail(json_cursor_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The next non-blank byte, not consumed; -1 at the end. */
int json_peek(json_cursor_t *j);

/* Consumes the byte c after any blanks. */
int json_lit(json_cursor_t *j, char c);

/* A string into out (cap bytes, NUL-terminated). Escapes: \" \\ \/ \b \f \n \r \t and
 * \u0001..\u007f; anything else, a raw control byte or a string of cap bytes or more, fails. */
int json_str(json_cursor_t *j, char *out, size_t cap);

/* A non-negative decimal integer: no sign, no leading zero, no fraction or exponent. */
int json_u64(json_cursor_t *j, uint64_t *v);

/* An integer with an optional '-', otherwise as json_u64, within int64_t. */
int json_i64(json_cursor_t *j, int64_t *v);

/* Object iteration, after its '{' was consumed: 1 when a member follows (its key read into
 * key and the ':' consumed), 0 when the closing '}' was consumed, -1 on error. *count is the
 * number of members read so far (start at 0). */
int json_member(json_cursor_t *j, int *count, char *key, size_t cap);

/* Array iteration, after its '[' was consumed: 1 when an element follows, 0 when ']' was
 * consumed, -1 on error. *count as json_member's. */
int json_element(json_cursor_t *j, int *count);

/* Only blanks may follow the value. */
int json_end(json_cursor_t *j);

/* The value of a hex digit (either case), or -1. */
int json_hex_digit(char c);

#endif
