/* json.c: see json.h. */
#include "train/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int json_fail(json_cursor_t *j, const char *fmt, ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (!j->err[0]) snprintf(j->err, sizeof j->err, "byte %zu: %s", j->pos, what);
  return -1;
}

static void skip_blanks(json_cursor_t *j) {
  while (j->pos < j->len) {
    char c = j->buf[j->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    j->pos++;
  }
}

int json_peek(json_cursor_t *j) {
  skip_blanks(j);
  return j->pos < j->len ? (unsigned char)j->buf[j->pos] : -1;
}

int json_lit(json_cursor_t *j, char c) {
  if (json_peek(j) != (unsigned char)c) {
    if (j->pos >= j->len) return json_fail(j, "expected '%c', found the end", c);
    return json_fail(j, "expected '%c', found '%c'", c, j->buf[j->pos]);
  }
  j->pos++;
  return 0;
}

int json_hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int json_str(json_cursor_t *j, char *out, size_t cap) {
  if (json_lit(j, '"') < 0) return -1;
  size_t n = 0;
  for (;;) {
    if (j->pos >= j->len) return json_fail(j, "unterminated string");
    unsigned char c = (unsigned char)j->buf[j->pos++];
    if (c == '"') break;
    if (c < 0x20) return json_fail(j, "control byte 0x%02x in a string", c);
    if (c == '\\') {
      if (j->pos >= j->len) return json_fail(j, "unterminated string");
      char e = j->buf[j->pos++];
      switch (e) {
      case '"':
      case '\\':
      case '/': c = (unsigned char)e; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'u': {
        if (j->len - j->pos < 4) return json_fail(j, "truncated \\u escape");
        int v = 0;
        for (int k = 0; k < 4; k++) {
          int h = json_hex_digit(j->buf[j->pos + (size_t)k]);
          if (h < 0) return json_fail(j, "bad \\u escape");
          v = v * 16 + h;
        }
        if (v == 0 || v > 0x7f) return json_fail(j, "\\u%04x: only \\u0001..\\u007f supported", v);
        j->pos += 4;
        c = (unsigned char)v;
        break;
      }
      default: return json_fail(j, "bad escape '\\%c'", e);
      }
    }
    if (n + 1 >= cap) return json_fail(j, "string longer than %zu bytes", cap - 1);
    out[n++] = (char)c;
  }
  out[n] = '\0';
  return 0;
}

int json_u64(json_cursor_t *j, uint64_t *v) {
  skip_blanks(j);
  size_t start = j->pos;
  uint64_t x = 0;
  while (j->pos < j->len && j->buf[j->pos] >= '0' && j->buf[j->pos] <= '9') {
    unsigned d = (unsigned)(j->buf[j->pos] - '0');
    if (x > (UINT64_MAX - d) / 10) return json_fail(j, "integer out of range");
    x = x * 10 + d;
    j->pos++;
  }
  if (j->pos == start) return json_fail(j, "expected an unsigned integer");
  if (j->pos - start > 1 && j->buf[start] == '0') return json_fail(j, "leading zero in an integer");
  if (j->pos < j->len && strchr(".eE+-", j->buf[j->pos]))
    return json_fail(j, "expected an integer, found a fraction or exponent");
  *v = x;
  return 0;
}

int json_i64(json_cursor_t *j, int64_t *v) {
  int neg = json_peek(j) == '-';
  if (neg) j->pos++;
  if (neg && j->pos < j->len && (j->buf[j->pos] < '0' || j->buf[j->pos] > '9'))
    return json_fail(j, "expected digits after '-'");
  uint64_t u;
  if (json_u64(j, &u) < 0) return -1;
  if (neg ? u > (uint64_t)INT64_MAX + 1 : u > (uint64_t)INT64_MAX)
    return json_fail(j, "integer out of range");
  *v = neg ? (int64_t)(0 - u) : (int64_t)u;
  return 0;
}

int json_member(json_cursor_t *j, int *count, char *key, size_t cap) {
  int c = json_peek(j);
  if (c == '}') {
    j->pos++;
    return 0;
  }
  if (*count > 0) {
    if (c != ',') return json_fail(j, "expected ',' or '}'");
    j->pos++;
    skip_blanks(j);
  }
  j->key_pos = j->pos;
  if (json_str(j, key, cap) < 0 || json_lit(j, ':') < 0) return -1;
  (*count)++;
  return 1;
}

int json_element(json_cursor_t *j, int *count) {
  int c = json_peek(j);
  if (c == ']') {
    j->pos++;
    return 0;
  }
  if (*count > 0) {
    if (c != ',') return json_fail(j, "expected ',' or ']'");
    j->pos++;
    if (json_peek(j) == ']') return json_fail(j, "trailing ',' in an array");
  }
  (*count)++;
  return 1;
}

int json_end(json_cursor_t *j) {
  if (json_peek(j) != -1) return json_fail(j, "unexpected bytes after the end");
  return 0;
}
