/* test_assignment.c: the worker's assignment on stdin (worker/worker.h): one packed
 * `assign`, as an agent writes it, is read whole and checked; anything else (garbage, a
 * truncated frame, another message type, an assignment that names no rank of a job) is
 * refused with a message saying what is wrong, and a missing host defaults to loopback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/proto.h"
#include "worker/worker.h"

/* A pipe whose read end holds `len` bytes of buf and then the end of the stream. */
static int pipe_with(const void *buf, size_t len) {
  int fd[2];
  assert_int_equal(pipe(fd), 0);
  assert_true(len < 65536); /* fits the pipe: no reader needed while writing */
  assert_int_equal(write(fd[1], buf, len), (ssize_t)len);
  close(fd[1]);
  return fd[0];
}

static int packed(const proto_msg_t *m) {
  char *buf;
  size_t len;
  assert_int_equal(proto_pack(m, &buf, &len), DRV_OK);
  int fd = pipe_with(buf, len);
  free(buf);
  return fd;
}

static proto_msg_t assignment(void) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ASSIGN);
  m.u.assign = (proto_assign_t){.job = 7,
                                .generation = 2,
                                .rank = 1,
                                .world = 3,
                                .device = -1,
                                .spec = "name: t\n",
                                .run_dir = "/runs/t-7",
                                .coordinator = "tcp://10.0.0.1:7700",
                                .host = "10.0.0.2",
                                .lineage = "0123456789abcdef0123456789abcdef"};
  return m;
}

static void expect_refused(int fd, drv_result_t want, const char *needle) {
  proto_msg_t m;
  drv_result_t rc = worker_read_assignment(fd, &m);
  close(fd);
  proto_msg_fini(&m);
  if (rc != want || !strstr(drv_last_error(), needle))
    fail_msg("expected %d with '%s', got %d: '%s'", want, needle, rc, drv_last_error());
}

static void test_read_whole(void **state) {
  (void)state;
  proto_msg_t in = assignment(), m;
  int fd = packed(&in);
  assert_int_equal(worker_read_assignment(fd, &m), DRV_OK);
  close(fd);
  assert_int_equal(m.u.assign.job, 7);
  assert_int_equal(m.u.assign.generation, 2);
  assert_int_equal(m.u.assign.rank, 1);
  assert_int_equal(m.u.assign.world, 3);
  assert_int_equal(m.u.assign.device, -1);
  assert_string_equal(m.u.assign.spec, "name: t\n");
  assert_string_equal(m.u.assign.run_dir, "/runs/t-7");
  assert_string_equal(m.u.assign.coordinator, "tcp://10.0.0.1:7700");
  assert_string_equal(m.u.assign.host, "10.0.0.2");
  assert_string_equal(m.u.assign.lineage, "0123456789abcdef0123456789abcdef");
  proto_msg_fini(&m);

  in.u.assign.host = NULL; /* goes out as "": the ring listens on loopback */
  fd = packed(&in);
  assert_int_equal(worker_read_assignment(fd, &m), DRV_OK);
  close(fd);
  assert_string_equal(m.u.assign.host, "127.0.0.1");
  proto_msg_fini(&m);
}

static void test_refused(void **state) {
  (void)state;
  expect_refused(pipe_with("", 0), DRV_ERR_PROTO, "the assignment on stdin: empty frame");
  expect_refused(pipe_with("\x93\x01\xa6", 3), DRV_ERR_PROTO, "the assignment on stdin");

  proto_msg_t other;
  proto_msg_init(&other, PROTO_STATUS);
  expect_refused(packed(&other), DRV_ERR_PROTO, "expected assign, got status");

  proto_msg_t in = assignment();
  in.u.assign.rank = 3; /* of a world of 3 */
  expect_refused(packed(&in), DRV_ERR_INVALID, "rank 3 of 3");
  in = assignment();
  in.u.assign.job = 0;
  expect_refused(packed(&in), DRV_ERR_INVALID, "not a rank of a job");
  in = assignment();
  in.u.assign.run_dir = "";
  expect_refused(packed(&in), DRV_ERR_INVALID, "run_dir ''");
  in = assignment();
  in.u.assign.coordinator = NULL;
  expect_refused(packed(&in), DRV_ERR_INVALID, "coordinator ''");
  in = assignment();
  in.u.assign.run_dir = "runs/t-7"; /* relative: not a run directory anyone checked */
  expect_refused(packed(&in), DRV_ERR_INVALID, "run_dir 'runs/t-7'");
  in = assignment();
  in.u.assign.lineage = NULL; /* checkpoints could not be told apart */
  expect_refused(packed(&in), DRV_ERR_INVALID, "job 7: no lineage");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_whole),
      cmocka_unit_test(test_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
