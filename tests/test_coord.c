/* test_coord.c: coordinator/coord's decision of whether the coordinator itself was not
 * running (coord_away_ms), a pure function of the loop's previous wake, the poll timeout it
 * asked for, this wake and the limit: a poll that slept as long as it asked, or was woken
 * early, or a loop merely busy a little is no absence; one that woke seconds late (a
 * SIGSTOP, a stall, a suspended VM) is, by the whole time unaccounted for. No processes,
 * sockets or sleeps: the clock is a number. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdint.h>

#include "coordinator/coord.h"

#define LIMIT 1500 /* half of a 3000 ms peer timeout */

static void test_on_time_is_not_away(void **state) {
  (void)state;
  assert_int_equal(coord_away_ms(1000, 200, 1200, LIMIT), 0); /* slept as asked */
  assert_int_equal(coord_away_ms(1000, 200, 1203, LIMIT), 0); /* a few ms of scheduling */
  assert_int_equal(coord_away_ms(1000, 200, 1050, LIMIT), 0); /* woken early by a message */
  assert_int_equal(coord_away_ms(1000, 0, 1000, LIMIT), 0);   /* timers due: no wait */
}

static void test_busy_below_the_limit_is_not_away(void **state) {
  (void)state;
  /* A slow pass (a store fsync) of a second: peers are still well within their timeout. */
  assert_int_equal(coord_away_ms(1000, 200, 2200, LIMIT), 0);
  assert_int_equal(coord_away_ms(1000, 200, 1000 + 200 + LIMIT, LIMIT), 0); /* at the limit */
}

static void test_stopped_is_away_by_the_time_unaccounted_for(void **state) {
  (void)state;
  /* SIGSTOP for 8 s in a 200 ms poll: woke 8 s late. */
  assert_int_equal(coord_away_ms(1000, 200, 9200, LIMIT), 8000);
  /* Stopped while handling messages, then a poll with nothing to wait for. */
  assert_int_equal(coord_away_ms(1000, 0, 9000, LIMIT), 8000);
  assert_int_equal(coord_away_ms(1000, 200, 1000 + 200 + LIMIT + 1, LIMIT), LIMIT + 1);
}

static void test_negative_wait_counts_as_none(void **state) {
  (void)state;
  assert_int_equal(coord_away_ms(1000, -5, 9000, LIMIT), 8000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_on_time_is_not_away),
      cmocka_unit_test(test_busy_below_the_limit_is_not_away),
      cmocka_unit_test(test_stopped_is_away_by_the_time_unaccounted_for),
      cmocka_unit_test(test_negative_wait_counts_as_none),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
