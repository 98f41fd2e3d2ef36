/* test_autoscale.c: coordinator/autoscale, the managed target's plan as a pure function:
 * scale up for queued jobs within max_nodes counting starting nodes, min_nodes kept, the
 * back-off holds launches, idle nodes stopped after idle_timeout (longest idle first),
 * never below what busy nodes and queued jobs need. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdint.h>
#include <string.h>

#include "coordinator/autoscale.h"

#define NOW 1000000

static autoscale_in_t target(uint32_t min, uint32_t max) {
  autoscale_in_t in;
  memset(&in, 0, sizeof in);
  in.min_nodes = min;
  in.max_nodes = max;
  in.idle_timeout_ms = 30000;
  return in;
}

static void test_cold_target_scales_up_for_a_job(void **state) {
  (void)state;
  autoscale_in_t in = target(0, 4);
  autoscale_plan_t p;
  autoscale_plan(&in, NOW, &p); /* nothing queued: nothing */
  assert_int_equal(p.launch, 0);
  assert_int_equal(p.wanted, 0);
  in.demand = 2;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 2);
  in.starting = 2; /* the next pass: they are starting, none more */
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 0);
  in.starting = 1, in.idle = 1, in.idle_since_ms[0] = NOW; /* one up: the gang still waits */
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 0);
  assert_int_equal(p.nstop, 0);
}

static void test_max_nodes_bounds_and_second_job_waits(void **state) {
  (void)state;
  autoscale_in_t in = target(0, 3);
  in.demand = 4; /* two jobs of 2 */
  autoscale_plan_t p;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.wanted, 3);
  assert_int_equal(p.launch, 3);
  /* The first runs on 2, the second waits for 2 with 1 idle: nothing more to launch. */
  in.demand = 2, in.busy = 2, in.idle = 1, in.idle_since_ms[0] = NOW - 60000;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 0);
  assert_int_equal(p.nstop, 0); /* the waiting job needs it */
  /* Nodes being stopped still count against max_nodes. */
  in = target(0, 3);
  in.demand = 3, in.stopping = 2;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 1);
}

static void test_idle_nodes_stop_after_idle_timeout(void **state) {
  (void)state;
  autoscale_in_t in = target(1, 4);
  in.idle = 3;
  in.idle_since_ms[0] = NOW - 10000;
  in.idle_since_ms[1] = NOW - 50000;
  in.idle_since_ms[2] = NOW - 40000;
  autoscale_plan_t p;
  autoscale_plan(&in, NOW, &p);
  /* min_nodes 1: two may go, both idle long enough, the longest idle first. */
  assert_int_equal(p.nstop, 2);
  assert_int_equal(p.stop[0], 1);
  assert_int_equal(p.stop[1], 2);
  /* A busy node is never a candidate; idle ones not yet past idle_timeout stay. */
  in = target(0, 4);
  in.busy = 1, in.idle = 1, in.idle_since_ms[0] = NOW - 1000;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.nstop, 0);
  in.idle_since_ms[0] = NOW - 30000;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.nstop, 1);
  /* min_nodes 0 scales to zero. */
  in = target(0, 4);
  in.idle = 2, in.idle_since_ms[0] = in.idle_since_ms[1] = NOW - 31000;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.nstop, 2);
}

static void test_min_nodes_and_back_off(void **state) {
  (void)state;
  autoscale_in_t in = target(2, 4);
  autoscale_plan_t p;
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 2); /* kept up with nothing to do */
  in.retry_at_ms = NOW + 5000;   /* after a launch failure */
  autoscale_plan(&in, NOW, &p);
  assert_int_equal(p.launch, 0);
  assert_int_equal(p.held, 2);
  autoscale_plan(&in, NOW + 5000, &p);
  assert_int_equal(p.launch, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cold_target_scales_up_for_a_job),
      cmocka_unit_test(test_max_nodes_bounds_and_second_job_waits),
      cmocka_unit_test(test_idle_nodes_stop_after_idle_timeout),
      cmocka_unit_test(test_min_nodes_and_back_off),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
