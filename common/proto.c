/* proto.c: message tables, a bounds-checking pre-validator, and the generic msgpack
 * encoder/decoder driven by the tables. See proto.h for the frame format. */
#include "common/proto.h"

#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* A frame of tiny values could make msgpack-c build one object per byte; cap the count. */
#define PROTO_MAX_ELEMENTS (1u << 20)

// --- Tables, generated from the lists in proto.h ----------------------------------------

typedef enum { F_I64, F_I32, F_U32, F_U64, F_F64, F_STR, F_STRS, F_OBJS } fkind_t;

typedef struct schema schema_t;

typedef struct {
  const char *name;
  fkind_t kind;
  uint16_t off;
  uint8_t required;
  const schema_t *sub; /* F_OBJS: element schema */
  uint16_t count_off;  /* F_STRS, F_OBJS: offset of the uint32_t count */
} field_t;

struct schema {
  const char *name;
  const field_t *fields;
  uint32_t nfields;
  size_t size; /* element size, for F_OBJS */
};

#define REQ 1
#define OPT 0
#define COUNT_OFF_I64(B, f) 0
#define COUNT_OFF_I32(B, f) 0
#define COUNT_OFF_U32(B, f) 0
#define COUNT_OFF_U64(B, f) 0
#define COUNT_OFF_F64(B, f) 0
#define COUNT_OFF_STR(B, f) 0
#define COUNT_OFF_STRS(B, f) (uint16_t) offsetof(proto_##B##_t, f##_count)
#define FIELD_F(B, f, K, req) \
  {#f, F_##K, (uint16_t)offsetof(proto_##B##_t, f), req, NULL, COUNT_OFF_##K(B, f)},
#define FIELD_A(B, f, sub, req)                              \
  {#f,  F_OBJS,        (uint16_t)offsetof(proto_##B##_t, f), \
   req, &sub##_schema, (uint16_t)offsetof(proto_##B##_t, f##_count)},
#define SCHEMA(b)                                                                \
  static const field_t b##_fields[] = {PROTO_FIELDS_##b(FIELD_F, FIELD_A, b)};   \
  static const schema_t b##_schema = {#b, b##_fields, DRV_ARRAY_LEN(b##_fields), \
                                      sizeof(proto_##b##_t)};
PROTO_BODIES(SCHEMA)

/* The wire name, body schema and sockets of each type, in proto_type_t order. */
static const struct {
  const char *name;
  const schema_t *schema;
  unsigned at;
} types[PROTO_TYPE_COUNT] = {
#define TYPE_ENTRY(T, name, body, at) [PROTO_##T] = {#name, &body##_schema, at},
    PROTO_MESSAGES(TYPE_ENTRY)
#undef TYPE_ENTRY
};

const char *proto_type_name(proto_type_t type) {
  return (unsigned)type < PROTO_TYPE_COUNT ? types[type].name : NULL;
}

int proto_arrives_at(proto_type_t type, proto_at_t at) {
  return (unsigned)type < PROTO_TYPE_COUNT && (types[type].at & (unsigned)at);
}

void proto_refusal(proto_type_t type, proto_at_t at, char *buf, size_t n) {
  const char *what = at == PROTO_AT_API      ? "a request clients may send"
                     : at == PROTO_AT_COORD  ? "a message agents and workers may send"
                     : at == PROTO_AT_AGENT  ? "a message the coordinator sends agents"
                     : at == PROTO_AT_WORKER ? "a message the coordinator sends workers"
                     : at == PROTO_AT_CLIENT ? "a reply the coordinator sends clients"
                     : at == PROTO_AT_EVENTS ? "an event"
                     : at == PROTO_AT_STDIN  ? "a worker's assignment"
                     : at == PROTO_AT_REPORTS ? "a report a program sends its worker"
                     : at == PROTO_AT_PROGRAM ? "a reply a worker sends its program"
                                             : "expected here";
  const char *name = proto_type_name(type);
  snprintf(buf, n, "'%s' is not %s", name ? name : "?", what);
}

int proto_field_info(proto_type_t type, uint32_t i, const char **name, const char **kind,
                     int *required) {
  static const char *kinds[] = {"int", "int", "uint", "uint", "float", "string", "string[]"};
  if ((unsigned)type >= PROTO_TYPE_COUNT || i >= types[type].schema->nfields) return 0;
  const field_t *f = &types[type].schema->fields[i];
  *name = f->name;
  *required = f->required;
  if (f->kind == F_OBJS) {
    static _Thread_local char buf[32];
    snprintf(buf, sizeof buf, "%s[]", f->sub->name);
    *kind = buf;
  } else {
    *kind = kinds[f->kind];
  }
  return 1;
}

// --- Ownership: the arena ----------------------------------------------------------------

struct proto_block {
  proto_block_t *next;
  max_align_t data[];
};

void *proto_msg_alloc(proto_msg_t *m, size_t n) {
  proto_block_t *b = calloc(1, sizeof *b + (n ? n : 1));
  if (!b) return NULL;
  b->next = m->arena;
  m->arena = b;
  return b->data;
}

const char *proto_msg_strdup(proto_msg_t *m, const char *s) {
  if (!s) s = "";
  size_t n = strlen(s);
  char *d = proto_msg_alloc(m, n + 1);
  if (d) memcpy(d, s, n + 1);
  return d;
}

void proto_msg_init(proto_msg_t *m, proto_type_t type) {
  memset(m, 0, sizeof *m);
  m->type = type;
}

void proto_msg_fini(proto_msg_t *m) {
  for (proto_block_t *b = m->arena, *next; b; b = next) {
    next = b->next;
    free(b);
  }
  memset(m, 0, sizeof *m);
}

// --- Encoding ------------------------------------------------------------------------------

/* Strings go out as valid UTF-8 whatever they hold: each byte that starts no character
 * (text of ours cut mid-character by a fixed-size buffer) becomes U+FFFD, for the peer
 * refuses invalid UTF-8. Valid text, the rule, is packed as it is. */
static void pack_str(msgpack_packer *pk, const char *s) {
  static const char repl[] = "\xef\xbf\xbd"; /* U+FFFD */
  if (!s) s = "";
  size_t n = strlen(s), ok = drv_utf8_valid(s, n);
  if (ok == n) {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
    return;
  }
  size_t out = 0;
  for (size_t i = 0; i < n;) {
    size_t c = drv_utf8_char(s + i, n - i);
    out += c ? c : 3;
    i += c ? c : 1;
  }
  msgpack_pack_str(pk, out);
  for (size_t i = 0; i < n;) {
    size_t run = drv_utf8_valid(s + i, n - i);
    msgpack_pack_str_body(pk, s + i, run);
    i += run;
    if (i < n) {
      msgpack_pack_str_body(pk, repl, 3);
      i++;
    }
  }
}

static void pack_fields(msgpack_packer *pk, const schema_t *s, const void *base) {
  const char *b = base;
  msgpack_pack_map(pk, s->nfields);
  for (uint32_t i = 0; i < s->nfields; i++) {
    const field_t *f = &s->fields[i];
    const void *p = b + f->off;
    pack_str(pk, f->name);
    switch (f->kind) {
    case F_I64: msgpack_pack_int64(pk, *(const int64_t *)p); break;
    case F_I32: msgpack_pack_int32(pk, *(const int32_t *)p); break;
    case F_U32: msgpack_pack_uint32(pk, *(const uint32_t *)p); break;
    case F_U64: msgpack_pack_uint64(pk, *(const uint64_t *)p); break;
    case F_F64: msgpack_pack_double(pk, *(const double *)p); break;
    case F_STR: pack_str(pk, *(const char *const *)p); break;
    case F_STRS: {
      const char *const *arr = *(const char *const *const *)p;
      uint32_t n = *(const uint32_t *)(b + f->count_off);
      msgpack_pack_array(pk, arr ? n : 0);
      for (uint32_t j = 0; arr && j < n; j++) pack_str(pk, arr[j]);
      break;
    }
    case F_OBJS: {
      const char *arr = *(const char *const *)p;
      uint32_t n = *(const uint32_t *)(b + f->count_off);
      msgpack_pack_array(pk, arr ? n : 0);
      for (uint32_t j = 0; arr && j < n; j++) pack_fields(pk, f->sub, arr + j * f->sub->size);
      break;
    }
    }
  }
}

drv_result_t proto_pack(const proto_msg_t *m, char **buf, size_t *len) {
  *buf = NULL;
  *len = 0;
  if ((unsigned)m->type >= PROTO_TYPE_COUNT)
    return drv_error(DRV_ERR_INVALID, "proto_pack: unknown message type %d", (int)m->type);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 3);
  msgpack_pack_uint32(&pk, PROTO_VERSION);
  pack_str(&pk, types[m->type].name);
  pack_fields(&pk, types[m->type].schema, &m->u);
  if (!sb.data) return drv_error(DRV_ERR_NOMEM, "proto_pack: out of memory");
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  return DRV_OK;
}

// --- Validation of raw bytes ---------------------------------------------------------------

typedef struct {
  const uint8_t *p;
  size_t len, pos;
  size_t elements;
  const char *err;
  char why[96]; /* err, when it carries a figure */
} walker_t;

static uint64_t be_read(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/* Consumes one value at w->pos; 0 on success, -1 with w->err set. */
static int walk(walker_t *w, int depth) {
  if (depth > PROTO_MAX_DEPTH) return w->err = "nesting deeper than the limit", -1;
  if (++w->elements > PROTO_MAX_ELEMENTS) return w->err = "too many elements", -1;
  if (w->pos >= w->len) return w->err = "truncated value", -1;
  uint8_t t = w->p[w->pos++];
  size_t left = w->len - w->pos;
  uint64_t n = 0;    /* payload bytes to skip, or element count */
  int container = 0; /* 1 array, 2 map */
  int hdr = 0;       /* bytes of length field */
  int bytes = 0;     /* a string or binary: n is its length */
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return 0;
  if (t >= 0x80 && t <= 0x8f) {
    n = t & 0x0f;
    container = 2;
  } else if (t >= 0x90 && t <= 0x9f) {
    n = t & 0x0f;
    container = 1;
  } else if (t >= 0xa0 && t <= 0xbf) {
    n = t & 0x1f;
  } else {
    switch (t) {
    case 0xc4:
    case 0xd9: hdr = bytes = 1; break; /* bin8, str8 */
    case 0xc5:
    case 0xda: /* bin16, str16 */
      hdr = 2;
      bytes = 1;
      break;
    case 0xc6:
    case 0xdb: /* bin32, str32 */
      hdr = 4;
      bytes = 1;
      break;
    case 0xc7:
      hdr = 1;
      n = 1;
      break; /* ext8: + type byte */
    case 0xc8:
      hdr = 2;
      n = 1;
      break;
    case 0xc9:
      hdr = 4;
      n = 1;
      break;
    case 0xca: n = 4; break;
    case 0xcb: n = 8; break;
    case 0xcc:
    case 0xd0: n = 1; break;
    case 0xcd:
    case 0xd1: n = 2; break;
    case 0xce:
    case 0xd2: n = 4; break;
    case 0xcf:
    case 0xd3: n = 8; break;
    case 0xd4: n = 2; break; /* fixext: type + data */
    case 0xd5: n = 3; break;
    case 0xd6: n = 5; break;
    case 0xd7: n = 9; break;
    case 0xd8: n = 17; break;
    case 0xdc:
      hdr = 2;
      container = 1;
      break;
    case 0xdd:
      hdr = 4;
      container = 1;
      break;
    case 0xde:
      hdr = 2;
      container = 2;
      break;
    case 0xdf:
      hdr = 4;
      container = 2;
      break;
    default: return w->err = "invalid type byte 0xc1", -1;
    }
  }
  if (hdr) {
    if (left < (size_t)hdr) return w->err = "truncated length", -1;
    n += be_read(w->p + w->pos, hdr);
    w->pos += hdr;
    left -= hdr;
  }
  if (!container) {
    if (n > left) return w->err = "length larger than the bytes left", -1;
    if (bytes && n > PROTO_MAX_STR) {
      snprintf(w->why, sizeof w->why, "string of %" PRIu64 " bytes, more than %u", n,
               PROTO_MAX_STR);
      return w->err = w->why, -1;
    }
    w->pos += n;
    return 0;
  }
  uint64_t items = container == 2 ? n * 2 : n;
  if (items > left) return w->err = "count larger than the bytes left", -1;
  /* A frame's bytes already bound its elements; these bound what one map costs to look
   * fields up in, and keep every count near what the protocol sends. */
  if (container == 2 && n > PROTO_MAX_KEYS) {
    snprintf(w->why, sizeof w->why, "map of %" PRIu64 " keys, more than %d", n, PROTO_MAX_KEYS);
    return w->err = w->why, -1;
  }
  if (container == 1 && n > PROTO_MAX_ITEMS) {
    snprintf(w->why, sizeof w->why, "array of %" PRIu64 " elements, more than %d", n,
             PROTO_MAX_ITEMS);
    return w->err = w->why, -1;
  }
  for (uint64_t i = 0; i < items; i++)
    if (walk(w, depth + 1) < 0) return -1;
  return 0;
}

drv_result_t proto_validate(const void *buf, size_t len, size_t max_len) {
  if (len > max_len)
    return drv_error(DRV_ERR_PROTO, "frame of %zu bytes is over the %zu-byte limit", len, max_len);
  if (len == 0) return drv_error(DRV_ERR_PROTO, "empty frame");
  walker_t w = {.p = buf, .len = len};
  if (walk(&w, 0) < 0)
    return drv_error(DRV_ERR_PROTO, "malformed msgpack at byte %zu: %s", w.pos, w.err);
  if (w.pos != len)
    return drv_error(DRV_ERR_PROTO, "%zu trailing bytes after the message", len - w.pos);
  return DRV_OK;
}

// --- Decoding ------------------------------------------------------------------------------

static const char *obj_kind(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return "nil";
  case MSGPACK_OBJECT_BOOLEAN: return "boolean";
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return "unsigned integer";
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative integer";
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return "float";
  case MSGPACK_OBJECT_STR: return "string";
  case MSGPACK_OBJECT_ARRAY: return "array";
  case MSGPACK_OBJECT_MAP: return "map";
  case MSGPACK_OBJECT_BIN: return "binary";
  default: return "extension";
  }
}

static int key_is(const msgpack_object *k, const char *name) {
  size_t n = strlen(name);
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
         memcmp(k->via.str.ptr, name, n) == 0;
}

/* Whether string o may go into a field: valid UTF-8 without NUL (a C string would end
 * there, and the rest be silently lost). 0, or -1 with the error naming the field. */
static int str_refused(const msgpack_object *o, const char *path, const char *name) {
  const char *p = o->via.str.ptr;
  size_t n = o->via.str.size, ok = drv_utf8_valid(p, n);
  if (ok < n) {
    drv_error(DRV_ERR_PROTO, "%s: field '%s' is not valid UTF-8 (byte %zu)", path, name, ok);
    return -1;
  }
  const char *nul = memchr(p, '\0', n);
  if (nul) {
    drv_error(DRV_ERR_PROTO, "%s: field '%s' holds a NUL byte (byte %zu)", path, name,
              (size_t)(nul - p));
    return -1;
  }
  return 0;
}

static char *dup_str(proto_msg_t *m, const msgpack_object *o) {
  char *s = proto_msg_alloc(m, o->via.str.size + 1);
  if (!s) return NULL;
  memcpy(s, o->via.str.ptr, o->via.str.size);
  s[o->via.str.size] = '\0';
  return s;
}

static drv_result_t decode_fields(proto_msg_t *m, const schema_t *s, const msgpack_object *map,
                                  void *base, const char *path);

static drv_result_t bad_field(const char *path, const char *name, const char *want,
                              const msgpack_object *o) {
  return drv_error(DRV_ERR_PROTO, "%s: field '%s' must be %s, got %s", path, name, want,
                   obj_kind(o));
}

static drv_result_t decode_field(proto_msg_t *m, const field_t *f, const msgpack_object *v, char *b,
                                 const char *path) {
  void *p = b + f->off;
  switch (f->kind) {
  case F_I64:
  case F_I32: {
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
      x = (int64_t)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
      x = v->via.i64;
    else
      return bad_field(path, f->name, "an integer", v);
    if (f->kind == F_I32) {
      if (x < INT32_MIN || x > INT32_MAX)
        return drv_error(DRV_ERR_PROTO, "%s: field '%s' is out of range", path, f->name);
      *(int32_t *)p = (int32_t)x;
    } else {
      *(int64_t *)p = x;
    }
    return DRV_OK;
  }
  case F_U32:
  case F_U64:
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return bad_field(path, f->name, "an unsigned integer", v);
    if (f->kind == F_U32) {
      if (v->via.u64 > UINT32_MAX)
        return drv_error(DRV_ERR_PROTO, "%s: field '%s' is out of range", path, f->name);
      *(uint32_t *)p = (uint32_t)v->via.u64;
    } else {
      *(uint64_t *)p = v->via.u64;
    }
    return DRV_OK;
  case F_F64:
    if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
      *(double *)p = v->via.f64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      *(double *)p = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
      *(double *)p = (double)v->via.i64;
    else
      return bad_field(path, f->name, "a number", v);
    return DRV_OK;
  case F_STR:
    if (v->type != MSGPACK_OBJECT_STR) return bad_field(path, f->name, "a string", v);
    if (str_refused(v, path, f->name)) return DRV_ERR_PROTO;
    if (!(*(const char **)p = dup_str(m, v)))
      return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    return DRV_OK;
  case F_STRS: {
    if (v->type != MSGPACK_OBJECT_ARRAY) return bad_field(path, f->name, "an array", v);
    uint32_t n = v->via.array.size;
    const char **arr = proto_msg_alloc(m, sizeof *arr * n);
    if (!arr) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    *(const char ***)p = arr;
    *(uint32_t *)(b + f->count_off) = n;
    for (uint32_t j = 0; j < n; j++) {
      const msgpack_object *e = &v->via.array.ptr[j];
      char name[64];
      snprintf(name, sizeof name, "%s[%u]", f->name, j);
      if (e->type != MSGPACK_OBJECT_STR) return bad_field(path, name, "a string", e);
      if (str_refused(e, path, name)) return DRV_ERR_PROTO;
      if (!(arr[j] = dup_str(m, e))) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    }
    return DRV_OK;
  }
  case F_OBJS: {
    if (v->type != MSGPACK_OBJECT_ARRAY) return bad_field(path, f->name, "an array", v);
    uint32_t n = v->via.array.size;
    char *arr = proto_msg_alloc(m, (size_t)n * f->sub->size);
    if (!arr) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    *(char **)p = arr;
    *(uint32_t *)(b + f->count_off) = n;
    for (uint32_t j = 0; j < n; j++) {
      char sub[128];
      snprintf(sub, sizeof sub, "%s.%s[%u]", path, f->name, j);
      DRV_CHECK(decode_fields(m, f->sub, &v->via.array.ptr[j], arr + j * f->sub->size, sub));
    }
    return DRV_OK;
  }
  }
  return DRV_OK;
}

static drv_result_t decode_fields(proto_msg_t *m, const schema_t *s, const msgpack_object *map,
                                  void *base, const char *path) {
  if (map->type != MSGPACK_OBJECT_MAP)
    return drv_error(DRV_ERR_PROTO, "%s: body must be a map, got %s", path, obj_kind(map));
  char *b = base;
  for (uint32_t i = 0; i < s->nfields; i++) {
    const field_t *f = &s->fields[i];
    const msgpack_object *v = NULL;
    for (uint32_t k = 0; k < map->via.map.size; k++)
      if (key_is(&map->via.map.ptr[k].key, f->name)) {
        v = &map->via.map.ptr[k].val;
        break;
      }
    if (!v || (v->type == MSGPACK_OBJECT_NIL && !f->required)) {
      if (f->required) return drv_error(DRV_ERR_PROTO, "%s: missing field '%s'", path, f->name);
      if (f->kind == F_F64) *(double *)(b + f->off) = NAN;
      continue;
    }
    DRV_CHECK(decode_field(m, f, v, b, path));
  }
  return DRV_OK;
}

drv_result_t proto_unpack(const void *buf, size_t len, size_t max_len, proto_msg_t *m) {
  proto_msg_init(m, PROTO_TYPE_COUNT);
  DRV_CHECK(proto_validate(buf, len, max_len));

  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  size_t off = 0;
  drv_result_t rc = DRV_OK;
  if (msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    rc = drv_error(DRV_ERR_PROTO, "malformed msgpack");
    goto out;
  }
  const msgpack_object *root = &up.data;
  if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size != 3) {
    rc = drv_error(DRV_ERR_PROTO, "message must be [version, type, body], got %s of %u",
                   obj_kind(root), root->type == MSGPACK_OBJECT_ARRAY ? root->via.array.size : 0);
    goto out;
  }
  const msgpack_object *ver = &root->via.array.ptr[0], *type = &root->via.array.ptr[1];
  if (ver->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
    rc = drv_error(DRV_ERR_PROTO, "version must be an unsigned integer, got %s", obj_kind(ver));
    goto out;
  }
  if (ver->via.u64 != PROTO_VERSION) {
    rc = drv_error(DRV_ERR_PROTO, "unsupported protocol version %" PRIu64 " (this side speaks %d)",
                   ver->via.u64, PROTO_VERSION);
    goto out;
  }
  if (type->type != MSGPACK_OBJECT_STR) {
    rc = drv_error(DRV_ERR_PROTO, "type must be a string, got %s", obj_kind(type));
    goto out;
  }
  int t = -1;
  for (int i = 0; i < PROTO_TYPE_COUNT; i++)
    if (key_is(type, types[i].name)) t = i;
  if (t < 0) {
    /* Echoed to the sender: only as much as is valid UTF-8, whole characters. */
    size_t shown = drv_utf8_valid(type->via.str.ptr, DRV_MIN(type->via.str.size, 64));
    if (memchr(type->via.str.ptr, '\0', shown)) shown = 0;
    rc = drv_error(DRV_ERR_PROTO, "unknown message type '%.*s'%s", (int)shown, type->via.str.ptr,
                   shown < type->via.str.size ? " (cut)" : "");
    goto out;
  }
  m->type = (proto_type_t)t;
  rc = decode_fields(m, types[t].schema, &root->via.array.ptr[2], &m->u, types[t].name);
out:
  msgpack_unpacked_destroy(&up);
  return rc;
}
