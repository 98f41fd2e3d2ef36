/* test_proto.c: the wire codec: round trips of every message type, and refusal of
 * malformed frames, msgpack bombs, deep nesting, oversized frames, wrong versions, unknown
 * types, and missing or mistyped fields, each with a message naming what is wrong. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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
  proto_gpu_t gpus[2] = {{0, "H100", 80ull << 30, 9, 0}, {1, "A100", 40ull << 30, 8, 0}};
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
  /* one million tiny elements: refused by the element cap, not allocated */
  size_t n = (1u << 20) + 10;
  uint8_t *many = malloc(n + 5);
  assert_non_null(many);
  many[0] = 0xdd;
  many[1] = (uint8_t)(n >> 24);
  many[2] = (uint8_t)(n >> 16);
  many[3] = (uint8_t)(n >> 8);
  many[4] = (uint8_t)n;
  memset(many + 5, 0x01, n);
  proto_msg_t m;
  assert_int_equal(proto_unpack(many, n + 5, n + 5, &m), DRV_ERR_PROTO);
  assert_non_null(strstr(drv_last_error(), "too many elements"));
  proto_msg_fini(&m);
  free(many);
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
      cmocka_unit_test(test_fuzz),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
