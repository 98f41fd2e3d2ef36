/* test_proto.c: the wire codec: round trips of every message type, and refusal of
 * malformed frames, msgpack bombs, deep nesting, oversized frames, wrong versions, unknown
 * types, and missing or mistyped fields, each with a message naming what is wrong. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/proto.h"

#define LIMIT (1u << 20)

static void expect_refused(const void *buf, size_t len, const char *needle) {
  proto_msg_t m;
  drv_result_t rc = proto_unpack(buf, len, LIMIT, &m);
  proto_msg_fini(&m);
  if (rc != DRV_ERR_PROTO || !strstr(drv_last_error(), needle))
    fail_msg("expected refusal containing '%s', got rc %d: '%s'", needle, rc, drv_last_error());
}

static void test_roundtrip_progress(void **state) {
  (void)state;
  proto_msg_t m, out;
  proto_msg_init(&m, PROTO_PROGRESS);
  m.u.progress = (proto_progress_t){.job = 42,
                                    .generation = 3,
                                    .rank = 1,
                                    .epoch = 2,
                                    .step = 1234,
                                    .steps_total = 9999,
                                    .loss = 0.25,
                                    .lr = 0.1,
                                    .samples = 640,
                                    .interval_s = 0.5,
                                    .step_ms = 7.5};
  char *buf;
  size_t len;
  assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
  assert_int_equal(proto_unpack(buf, len, LIMIT, &out), DRV_OK);
  assert_int_equal(out.type, PROTO_PROGRESS);
  assert_int_equal(out.u.progress.job, 42);
  assert_int_equal(out.u.progress.generation, 3);
  assert_int_equal(out.u.progress.step, 1234);
  assert_true(out.u.progress.loss == 0.25);
  assert_true(out.u.progress.step_ms == 7.5);
  proto_msg_fini(&out);
  free(buf);
}

static void test_roundtrip_nested(void **state) {
  (void)state;
  proto_msg_t m, out;
  proto_msg_init(&m, PROTO_HELLO);
  proto_gpu_t gpus[2] = {{0, "H100", 80ull << 30, 9, 0, "0000:17:00.0", "GPU-a"},
                         {1, "A100", 40ull << 30, 8, 0, "0000:65:00.0", "GPU-b"}};
  m.u.hello = (proto_hello_t){.agent_id = "node-1",
                              .host = "10.0.0.1",
                              .target = "attached",
                              .pid = 77,
                              .cpus = 64,
                              .mem_bytes = 512ull << 30,
                              .gpus = gpus,
                              .gpus_count = 2};
  char *buf;
  size_t len;
  assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
  assert_int_equal(proto_unpack(buf, len, LIMIT, &out), DRV_OK);
  assert_string_equal(out.u.hello.agent_id, "node-1");
  assert_int_equal(out.u.hello.gpus_count, 2);
  assert_string_equal(out.u.hello.gpus[1].name, "A100");
  assert_string_equal(out.u.hello.gpus[1].pci_bus_id, "0000:65:00.0");
  assert_int_equal(out.u.hello.gpus[0].cc_major, 9);
  assert_int_equal(out.u.hello.mem_bytes, 512ull << 30);
  proto_msg_fini(&out);
  free(buf);

  const char *peers[3] = {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"};
  proto_msg_init(&m, PROTO_START);
  m.u.start =
      (proto_start_t){.job = 5, .generation = 1, .world = 3, .peers = peers, .peers_count = 3};
  assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
  assert_int_equal(proto_unpack(buf, len, LIMIT, &out), DRV_OK);
  assert_int_equal(out.u.start.peers_count, 3);
  assert_string_equal(out.u.start.peers[2], "127.0.0.1:3");
  proto_msg_fini(&out);
  free(buf);
}

/* Every type packs and unpacks from a zeroed body (strings go out as ""). */
static void test_every_type(void **state) {
  (void)state;
  for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
    proto_msg_t m, out;
    proto_msg_init(&m, (proto_type_t)t);
    char *buf;
    size_t len;
    assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
    if (proto_unpack(buf, len, LIMIT, &out) != DRV_OK)
      fail_msg("%s: %s", proto_type_name((proto_type_t)t), drv_last_error());
    assert_int_equal(out.type, t);
    proto_msg_fini(&out);
    free(buf);
    const char *name, *kind;
    int req;
    for (uint32_t i = 0; proto_field_info((proto_type_t)t, i, &name, &kind, &req); i++)
      assert_non_null(name);
  }
}

/* The message list gives every type a place to arrive; the agent's stop messages and the
 * coordinator's orders have bodies of their own. */
static void test_every_type_arrives_somewhere(void **state) {
  (void)state;
  for (int t = 0; t < PROTO_TYPE_COUNT; t++)
    if (!proto_arrives_at((proto_type_t)t, PROTO_AT_ANY))
      fail_msg("%s arrives nowhere", proto_type_name((proto_type_t)t));
  assert_true(proto_arrives_at(PROTO_SUBMIT, PROTO_AT_API));
  assert_false(proto_arrives_at(PROTO_SUBMIT, PROTO_AT_COORD));
  assert_true(proto_arrives_at(PROTO_ASSIGN, PROTO_AT_STDIN));
  char why[128];
  proto_refusal(PROTO_HELLO, PROTO_AT_API, why, sizeof why);
  assert_string_equal(why, "'hello' is not a request clients may send");
  proto_msg_t m;
  proto_msg_init(&m, PROTO_PAUSE);
  m.u.pause = (proto_pause_t){.job = 3, .generation = 2, .reason = "growth"};
  char *buf;
  size_t len;
  assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
  proto_msg_t out;
  assert_int_equal(proto_unpack(buf, len, LIMIT, &out), DRV_OK);
  assert_int_equal(out.type, PROTO_PAUSE);
  assert_int_equal(out.u.pause.generation, 2);
  assert_string_equal(out.u.pause.reason, "growth");
  proto_msg_fini(&out);
  free(buf);
}

/* A message's copies live in its arena and go with proto_msg_fini. */
static void test_arena(void **state) {
  (void)state;
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ERROR);
  char text[] = "changes after the copy";
  m.u.error.code = proto_msg_strdup(&m, "invalid");
  m.u.error.message = proto_msg_strdup(&m, text);
  text[0] = 'X';
  assert_string_equal(m.u.error.message, "changes after the copy");
  assert_string_equal(proto_msg_strdup(&m, NULL), "");
  int *zeros = proto_msg_alloc(&m, 64 * sizeof *zeros);
  assert_non_null(zeros);
  for (int i = 0; i < 64; i++) assert_int_equal(zeros[i], 0);
  proto_msg_fini(&m);
  assert_null(m.arena);
}

static void test_malformed(void **state) {
  (void)state;
  /* [1, "cancel", {"job": "seven"}] */
  const uint8_t mistyped[] = {0x93, 0x01, 0xa6, 'c', 'a',  'n', 'c', 'e', 'l', 0x81,
                              0xa3, 'j',  'o',  'b', 0xa5, 's', 'e', 'v', 'e', 'n'};
  expect_refused(mistyped, sizeof mistyped, "cancel: field 'job' must be an integer, got string");
  /* [1, "cancel", {}] */
  const uint8_t missing[] = {0x93, 0x01, 0xa6, 'c', 'a', 'n', 'c', 'e', 'l', 0x80};
  expect_refused(missing, sizeof missing, "cancel: missing field 'job'");
  /* [2, "cancel", {}] */
  const uint8_t version[] = {0x93, 0x02, 0xa6, 'c', 'a', 'n', 'c', 'e', 'l', 0x80};
  expect_refused(version, sizeof version, "unsupported protocol version 2");
  /* [1, "frobnicate", {}] */
  const uint8_t unknown[] = {0x93, 0x01, 0xaa, 'f', 'r', 'o', 'b',
                             'n',  'i',  'c',  'a', 't', 'e', 0x80};
  expect_refused(unknown, sizeof unknown, "unknown message type 'frobnicate'");
  /* not an array */
  const uint8_t notarray[] = {0xa3, 'a', 'b', 'c'};
  expect_refused(notarray, sizeof notarray, "[version, type, body]");
  /* body not a map */
  const uint8_t notmap[] = {0x93, 0x01, 0xa6, 'c', 'a', 'n', 'c', 'e', 'l', 0x01};
  expect_refused(notmap, sizeof notmap, "body must be a map");
  /* truncated */
  expect_refused(mistyped, sizeof mistyped - 3, "malformed msgpack");
  /* trailing bytes */
  uint8_t trailing[sizeof missing + 2];
  memcpy(trailing, missing, sizeof missing);
  trailing[sizeof missing] = trailing[sizeof missing + 1] = 0xc0;
  expect_refused(trailing, sizeof trailing, "trailing bytes");
  /* reserved byte 0xc1 */
  const uint8_t reserved[] = {0x93, 0x01, 0xc1, 0x80};
  expect_refused(reserved, sizeof reserved, "0xc1");
  /* empty */
  expect_refused("", 0, "empty frame");
}

static void test_bombs(void **state) {
  (void)state;
  /* array32 claiming 4 billion elements in 5 bytes */
  const uint8_t arr_bomb[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
  expect_refused(arr_bomb, sizeof arr_bomb, "count larger than the bytes left");
  /* map32 bomb inside a valid envelope */
  const uint8_t map_bomb[] = {0x93, 0x01, 0xa6, 'c',  'a',  'n',  'c',
                              'e',  'l',  0xdf, 0x7f, 0xff, 0xff, 0xff};
  expect_refused(map_bomb, sizeof map_bomb, "count larger than the bytes left");
  /* str32 claiming 2 GiB */
  const uint8_t str_bomb[] = {0x93, 0x01, 0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
  expect_refused(str_bomb, sizeof str_bomb, "length larger than the bytes left");
  /* bin32 / ext32 */
  const uint8_t bin_bomb[] = {0xc6, 0xff, 0xff, 0xff, 0xf0, 0x00};
  expect_refused(bin_bomb, sizeof bin_bomb, "length larger than the bytes left");
  /* nesting 100 deep: [[[[...]]]] */
  uint8_t deep[101];
  memset(deep, 0x91, 100);
  deep[100] = 0x01;
  expect_refused(deep, sizeof deep, "nesting deeper than the limit");
  /* a frame over the limit is refused before any parsing */
  size_t big = LIMIT + 1;
  uint8_t *huge = calloc(1, big);
  assert_non_null(huge);
  expect_refused(huge, big, "over the");
  free(huge);
  /* over a million tiny elements (257 arrays of 4096), each array within its own limit:
   * refused by the element cap, not allocated */
  size_t outer = 257, inner = PROTO_MAX_ITEMS, n = 3 + outer * (3 + inner);
  uint8_t *many = malloc(n), *p = many;
  assert_non_null(many);
  *p++ = 0xdc;
  *p++ = (uint8_t)(outer >> 8);
  *p++ = (uint8_t)outer;
  for (size_t i = 0; i < outer; i++) {
    *p++ = 0xdc;
    *p++ = (uint8_t)(inner >> 8);
    *p++ = (uint8_t)inner;
    memset(p, 0x01, inner);
    p += inner;
  }
  proto_msg_t m;
  assert_int_equal(proto_unpack(many, n, n, &m), DRV_ERR_PROTO);
  assert_non_null(strstr(drv_last_error(), "too many elements"));
  proto_msg_fini(&m);
  free(many);
}

// --- Limits on what one frame may cost ---------------------------------------------------

/* A growing buffer of raw msgpack, for frames the encoder would never make. */
typedef struct {
  uint8_t *p;
  size_t len, cap;
} raw_t;

static void raw_put(raw_t *r, const void *b, size_t n) {
  if (r->len + n > r->cap) {
    r->cap = (r->len + n) * 2;
    r->p = realloc(r->p, r->cap);
    assert_non_null(r->p);
  }
  memcpy(r->p + r->len, b, n);
  r->len += n;
}

static void raw_byte(raw_t *r, uint8_t b) {
  raw_put(r, &b, 1);
}

static void raw_be(raw_t *r, uint8_t tag, uint64_t v, int bytes) {
  raw_byte(r, tag);
  for (int i = bytes - 1; i >= 0; i--) raw_byte(r, (uint8_t)(v >> (8 * i)));
}

static void raw_str(raw_t *r, const char *s, size_t n) {
  if (n < 32)
    raw_byte(r, (uint8_t)(0xa0 | n));
  else
    raw_be(r, 0xdb, n, 4);
  raw_put(r, s, n);
}

static void raw_map(raw_t *r, uint32_t n) {
  if (n < 16)
    raw_byte(r, (uint8_t)(0x80 | n));
  else
    raw_be(r, 0xdf, n, 4);
}

static void raw_array(raw_t *r, uint32_t n) {
  if (n < 16)
    raw_byte(r, (uint8_t)(0x90 | n));
  else
    raw_be(r, 0xdd, n, 4);
}

/* [1, type, ...]: the envelope, up to the body. */
static void raw_envelope(raw_t *r, const char *type) {
  raw_array(r, 3);
  raw_byte(r, 0x01);
  raw_str(r, type, strlen(type));
}

static double now_ms(void) {
  return (double)drv_now_ms();
}

/* The frame of the flood that once made agents lose their coordinator: heartbeats whose
 * body is a map of 524286 junk keys (1 MiB). Refused at the map's header, before any object
 * is built, however many keys it claims; a map of 64 keys (unknown ones ignored) is fine. */
static void test_junk_keys_refused(void **state) {
  (void)state;
  raw_t r = {0};
  uint32_t keys = 524286; /* with the envelope, exactly the element cap */
  raw_envelope(&r, "heartbeat");
  raw_map(&r, keys);
  for (uint32_t i = 0; i < keys; i++) {
    raw_byte(&r, 0xa0); /* "" */
    raw_byte(&r, 0xc0); /* nil */
  }
  double t0 = now_ms();
  proto_msg_t m;
  drv_result_t rc = DRV_OK;
  for (int i = 0; i < 200; i++) {
    rc = proto_unpack(r.p, r.len, 16u << 20, &m);
    proto_msg_fini(&m);
  }
  print_message("200 frames of %u junk keys (%zu bytes each) refused in %.0f ms\n", keys, r.len,
                now_ms() - t0);
  assert_int_equal(rc, DRV_ERR_PROTO);
  assert_non_null(strstr(drv_last_error(), "map of 524286 keys, more than 64"));
  free(r.p);

  r = (raw_t){0};
  raw_envelope(&r, "heartbeat");
  raw_map(&r, PROTO_MAX_KEYS);
  raw_str(&r, "seq", 3);
  raw_byte(&r, 0x07);
  for (int i = 1; i < PROTO_MAX_KEYS; i++) {
    char k[8];
    int n = snprintf(k, sizeof k, "k%d", i);
    raw_str(&r, k, (size_t)n);
    raw_byte(&r, 0xc0);
  }
  assert_int_equal(proto_unpack(r.p, r.len, LIMIT, &m), DRV_OK);
  assert_int_equal(m.u.heartbeat.seq, 7);
  proto_msg_fini(&m);
  free(r.p);

  r = (raw_t){0};
  raw_envelope(&r, "heartbeat");
  raw_map(&r, PROTO_MAX_KEYS + 1);
  for (int i = 0; i <= PROTO_MAX_KEYS; i++) {
    raw_byte(&r, 0xa0);
    raw_byte(&r, 0xc0);
  }
  expect_refused(r.p, r.len, "map of 65 keys, more than 64");
  free(r.p);
}

/* Arrays and strings have limits of their own, checked at their headers; a string over
 * its limit is refused even when the frame may be larger. */
static void test_array_and_string_limits(void **state) {
  (void)state;
  raw_t r = {0};
  raw_envelope(&r, "start");
  raw_map(&r, 1);
  raw_str(&r, "peers", 5);
  raw_array(&r, PROTO_MAX_ITEMS + 1);
  for (int i = 0; i <= PROTO_MAX_ITEMS; i++) raw_byte(&r, 0xa0);
  expect_refused(r.p, r.len, "array of 4097 elements, more than 4096");
  free(r.p);

  size_t big = PROTO_MAX_STR + 1;
  char *text = malloc(big);
  assert_non_null(text);
  memset(text, 'x', big);
  r = (raw_t){0};
  raw_envelope(&r, "submit");
  raw_map(&r, 1);
  raw_str(&r, "spec", 4);
  raw_str(&r, text, big);
  proto_msg_t m;
  assert_int_equal(proto_unpack(r.p, r.len, 4u << 20, &m), DRV_ERR_PROTO);
  assert_non_null(strstr(drv_last_error(), "string of 1048577 bytes, more than 1048576"));
  proto_msg_fini(&m);
  /* a spec of the largest size goes through */
  r.len = 0;
  raw_envelope(&r, "submit");
  raw_map(&r, 1);
  raw_str(&r, "spec", 4);
  raw_str(&r, text, PROTO_MAX_STR);
  assert_int_equal(proto_unpack(r.p, r.len, 4u << 20, &m), DRV_OK);
  assert_int_equal(strlen(m.u.submit.spec), PROTO_MAX_STR);
  proto_msg_fini(&m);
  free(text);
  free(r.p);

  /* Every body fits the key limit with room for fields a newer peer adds. */
  for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
    const char *name, *kind;
    int req;
    uint32_t i = 0;
    while (proto_field_info((proto_type_t)t, i, &name, &kind, &req)) i++;
    assert_true(i * 2 <= PROTO_MAX_KEYS);
  }
}

/* A hello's envelope and its fields up to the key "gpus", whose array comes next. */
static void raw_hello_head(raw_t *r) {
  raw_envelope(r, "hello");
  raw_map(r, 6);
  raw_str(r, "agent_id", 8);
  raw_str(r, "a", 1);
  raw_str(r, "host", 4);
  raw_str(r, "h", 1);
  raw_str(r, "target", 6);
  raw_str(r, "attached", 8);
  raw_str(r, "cpus", 4);
  raw_byte(r, 0x01);
  raw_str(r, "mem_bytes", 9);
  raw_byte(r, 0x01);
  raw_str(r, "gpus", 4);
}

/* The costliest frames the limits allow, decoded or refused: what one costs is printed,
 * not asserted (the point is that it is bounded, and the figure says by how much). */
static void test_costliest_frames(void **state) {
  (void)state;
  /* A hello of 4096 gpus, each a map of 64 keys (59 unknown ones first, then the 5
   * fields): the most objects and field lookups one frame of the agents' port can ask
   * for. */
  static const char *const gpu_fields[] = {"index", "name", "mem_bytes", "cc_major", "cc_minor"};
  raw_t r = {0};
  raw_hello_head(&r);
  raw_array(&r, PROTO_MAX_ITEMS);
  for (int g = 0; g < PROTO_MAX_ITEMS; g++) {
    raw_map(&r, PROTO_MAX_KEYS);
    for (int k = 0; k < PROTO_MAX_KEYS - 5; k++) {
      raw_byte(&r, 0xa0);
      raw_byte(&r, 0xc0);
    }
    for (int k = 0; k < 5; k++) {
      raw_str(&r, gpu_fields[k], strlen(gpu_fields[k]));
      raw_byte(&r, k == 1 ? 0xa0 : 0x01);
    }
  }
  double t0 = now_ms();
  proto_msg_t m;
  assert_int_equal(proto_unpack(r.p, r.len, 16u << 20, &m), DRV_OK);
  print_message("hello of 4096 gpus x 64 keys (%zu bytes): decoded in %.1f ms\n", r.len,
                now_ms() - t0);
  assert_int_equal(m.u.hello.gpus_count, PROTO_MAX_ITEMS);
  proto_msg_fini(&m);
  free(r.p);

  /* start with 4096 peers of 255 bytes each: the most strings one array may hold. */
  char peer[255];
  memset(peer, 'p', sizeof peer);
  r = (raw_t){0};
  raw_envelope(&r, "start");
  raw_map(&r, 4);
  raw_str(&r, "job", 3);
  raw_byte(&r, 0x01);
  raw_str(&r, "generation", 10);
  raw_byte(&r, 0x01);
  raw_str(&r, "world", 5);
  raw_byte(&r, 0x02);
  raw_str(&r, "peers", 5);
  raw_array(&r, PROTO_MAX_ITEMS);
  for (int i = 0; i < PROTO_MAX_ITEMS; i++) raw_str(&r, peer, sizeof peer);
  t0 = now_ms();
  assert_int_equal(proto_unpack(r.p, r.len, 16u << 20, &m), DRV_OK);
  print_message("start of 4096 peers (%zu bytes): decoded in %.1f ms\n", r.len, now_ms() - t0);
  assert_int_equal(m.u.start.peers_count, PROTO_MAX_ITEMS);
  proto_msg_fini(&m);
  free(r.p);
}

/* Every string field must be valid UTF-8 without NUL: refused naming the field, nested
 * ones with their path. */
static void test_utf8_fields(void **state) {
  (void)state;
  static const struct {
    const char *bytes, *why;
  } bad[] = {
      {"\xff", "a byte that starts nothing"},   {"ok\x80", "a lone continuation byte"},
      {"\xc0\xaf", "an overlong '/'"},          {"\xe0\x80\xaf", "an overlong '/', three bytes"},
      {"\xed\xa0\x80", "a surrogate"},          {"\xf4\x90\x80\x80", "above U+10FFFF"},
      {"abc\xe2\x82", "a character cut short"},
  };
  for (size_t i = 0; i < DRV_ARRAY_LEN(bad); i++) {
    raw_t r = {0};
    raw_envelope(&r, "submit");
    raw_map(&r, 1);
    raw_str(&r, "spec", 4);
    raw_str(&r, bad[i].bytes, strlen(bad[i].bytes));
    proto_msg_t m;
    if (proto_unpack(r.p, r.len, LIMIT, &m) != DRV_ERR_PROTO ||
        !strstr(drv_last_error(), "submit: field 'spec' is not valid UTF-8"))
      fail_msg("%s: '%s'", bad[i].why, drv_last_error());
    proto_msg_fini(&m);
    free(r.p);
  }
  /* valid text of every length goes through as it is */
  const char *good = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e \xef\xbf\xbf";
  raw_t r = {0};
  raw_envelope(&r, "submit");
  raw_map(&r, 1);
  raw_str(&r, "spec", 4);
  raw_str(&r, good, strlen(good));
  proto_msg_t m;
  assert_int_equal(proto_unpack(r.p, r.len, LIMIT, &m), DRV_OK);
  assert_string_equal(m.u.submit.spec, good);
  proto_msg_fini(&m);
  /* a NUL would cut the C string short */
  r.len = 0;
  raw_envelope(&r, "submit");
  raw_map(&r, 2);
  raw_str(&r, "spec", 4);
  raw_str(&r, "a", 1);
  raw_str(&r, "token", 5);
  raw_str(&r, "ab\0cd", 5);
  expect_refused(r.p, r.len, "submit: field 'token' holds a NUL byte (byte 2)");
  /* an element of a string array */
  r.len = 0;
  raw_envelope(&r, "start");
  raw_map(&r, 4);
  raw_str(&r, "job", 3);
  raw_byte(&r, 0x01);
  raw_str(&r, "generation", 10);
  raw_byte(&r, 0x01);
  raw_str(&r, "world", 5);
  raw_byte(&r, 0x02);
  raw_str(&r, "peers", 5);
  raw_array(&r, 2);
  raw_str(&r, "a:1", 3);
  raw_str(&r, "b:\xfe", 3);
  expect_refused(r.p, r.len, "start: field 'peers[1]' is not valid UTF-8 (byte 2)");
  /* a field of a nested map (built by hand: our encoder repairs what it sends) */
  const char *gpu_name =
      "H\xff"
      "00";
  r.len = 0;
  raw_hello_head(&r);
  raw_array(&r, 1);
  raw_map(&r, 5);
  raw_str(&r, "index", 5);
  raw_byte(&r, 0x00);
  raw_str(&r, "name", 4);
  raw_str(&r, gpu_name, strlen(gpu_name));
  raw_str(&r, "mem_bytes", 9);
  raw_byte(&r, 0x01);
  raw_str(&r, "cc_major", 8);
  raw_byte(&r, 0x09);
  raw_str(&r, "cc_minor", 8);
  raw_byte(&r, 0x00);
  expect_refused(r.p, r.len, "hello.gpus[0]: field 'name' is not valid UTF-8 (byte 1)");
  /* an unknown type that is not UTF-8 is named only as far as it is */
  r.len = 0;
  raw_envelope(&r, "frob\xffnicate");
  raw_map(&r, 0);
  expect_refused(r.p, r.len, "unknown message type 'frob' (cut)");
  free(r.p);
}

/* What a sender packs is valid UTF-8 even when its own text is not (cut mid-character by
 * a fixed-size buffer): each stray byte becomes U+FFFD, the rest is kept. */
static void test_pack_repairs_utf8(void **state) {
  (void)state;
  proto_msg_t m, out;
  proto_msg_init(&m, PROTO_ERROR);
  m.u.error.code = "invalid";
  m.u.error.message = "agent \xc3\xa9t\xc3"; /* "agent ét" and half of a character */
  char *buf;
  size_t len;
  assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
  assert_int_equal(proto_unpack(buf, len, LIMIT, &out), DRV_OK);
  assert_string_equal(out.u.error.message, "agent \xc3\xa9t\xef\xbf\xbd");
  proto_msg_fini(&out);
  free(buf);
}

/* Random bytes and random mutations of valid frames never crash the decoder. */
static void test_fuzz(void **state) {
  (void)state;
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ASSIGN);
  m.u.assign = (proto_assign_t){.job = 9,
                                .generation = 1,
                                .rank = 0,
                                .world = 2,
                                .device = -1,
                                .spec = "name: x\n",
                                .run_dir = "/tmp/x",
                                .coordinator = "tcp://a:1"};
  char *buf;
  size_t len;
  assert_int_equal(proto_pack(&m, &buf, &len), DRV_OK);
  uint32_t seed = 12345;
  for (int iter = 0; iter < 20000; iter++) {
    uint8_t copy[512];
    assert_true(len <= sizeof copy);
    memcpy(copy, buf, len);
    int flips = 1 + iter % 4;
    for (int k = 0; k < flips; k++) {
      seed = seed * 1103515245u + 12345u;
      copy[(seed >> 8) % len] = (uint8_t)(seed >> 16);
    }
    size_t cut = iter % 7 == 0 ? (seed >> 4) % (len + 1) : len;
    proto_msg_t out;
    proto_unpack(copy, cut, LIMIT, &out); /* any result but a crash or a leak */
    proto_msg_fini(&out);
  }
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_progress),
      cmocka_unit_test(test_roundtrip_nested),
      cmocka_unit_test(test_every_type),
      cmocka_unit_test(test_every_type_arrives_somewhere),
      cmocka_unit_test(test_arena),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_bombs),
      cmocka_unit_test(test_junk_keys_refused),
      cmocka_unit_test(test_array_and_string_limits),
      cmocka_unit_test(test_costliest_frames),
      cmocka_unit_test(test_utf8_fields),
      cmocka_unit_test(test_pack_repairs_utf8),
      cmocka_unit_test(test_fuzz),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
