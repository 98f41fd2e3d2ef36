/* test_drv.c: the per-thread last error (common/drv.h): its message, and the location where
 * it arose, as a path relative to the source tree, through drv_error_prefix and the check
 * macros; the UTF-8 checks at the edges of each range. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "common/drv.h"

/* "tests/test_drv.c:<line>" */
static void assert_where(int line) {
  char want[64];
  snprintf(want, sizeof want, "tests/test_drv.c:%d", line);
  assert_string_equal(drv_last_error_where(), want);
}

static int fail_line; /* the line of fails()'s drv_error */

static drv_result_t fails(const char *what) {
  fail_line = __LINE__ + 1;
  return drv_error(DRV_ERR_INVALID, "%s: truncated", what);
}

/* Fails without setting an error, as a callee that only returns a code would. */
static drv_result_t fails_silently(void) {
  return DRV_ERR_TIMEOUT;
}

static drv_result_t succeeds(void) {
  return DRV_OK;
}

static int check_line, goto_line;

static drv_result_t checked(drv_result_t (*callee)(void)) {
  check_line = __LINE__ + 1;
  DRV_CHECK(callee());
  return DRV_OK;
}

static drv_result_t checked_goto(drv_result_t (*callee)(void)) {
  drv_result_t rc = DRV_OK;
  goto_line = __LINE__ + 1;
  DRV_CHECK_GOTO(callee(), rc, fail);
fail:
  return rc;
}

static drv_result_t fails_loudly(void) {
  return fails("train.idx");
}

static void test_error_records_location(void **state) {
  drv_error_clear();
  assert_string_equal(drv_last_error(), "");
  assert_string_equal(drv_last_error_where(), "");
  assert_int_equal(fails("train.idx"), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "train.idx: truncated"); /* no location in the text */
  assert_where(fail_line);
  drv_error_clear();
  assert_string_equal(drv_last_error(), "");
  assert_string_equal(drv_last_error_where(), "");
}

static void test_prefix_keeps_location(void **state) {
  assert_int_equal(fails("train.idx"), DRV_ERR_INVALID);
  assert_int_equal(drv_error_prefix(DRV_ERR_INVALID, "dataset %d", 2), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "dataset 2: train.idx: truncated");
  assert_where(fail_line);
}

static void test_check_marks_only_unlocated_errors(void **state) {
  // A callee that set its error: the check leaves the callee's location.
  drv_error_clear();
  assert_int_equal(checked(fails_loudly), DRV_ERR_INVALID);
  assert_where(fail_line);
  drv_error_clear();
  assert_int_equal(checked_goto(fails_loudly), DRV_ERR_INVALID);
  assert_where(fail_line);

  // A callee that only returned a code: the first check that saw it.
  drv_error_clear();
  assert_int_equal(checked(fails_silently), DRV_ERR_TIMEOUT);
  assert_where(check_line);
  assert_string_equal(drv_last_error(), "");
  drv_error_clear();
  assert_int_equal(checked_goto(fails_silently), DRV_ERR_TIMEOUT);
  assert_where(goto_line);

  // A call that succeeds records nothing.
  drv_error_clear();
  assert_int_equal(checked(succeeds), DRV_OK);
  assert_int_equal(checked_goto(succeeds), DRV_OK);
  assert_string_equal(drv_last_error_where(), "");
}

static void test_save_restore(void **state) {
  drv_error_saved_t saved;
  assert_int_equal(fails("first"), DRV_ERR_INVALID);
  drv_error_save(&saved);
  int line = __LINE__ + 1;
  drv_error(DRV_ERR_SYS, "clean-up failed");
  assert_where(line);
  assert_int_equal(drv_error_restore(&saved, DRV_ERR_INVALID), DRV_ERR_INVALID);
  assert_string_equal(drv_last_error(), "first: truncated");
  assert_where(fail_line);
}

static void *other_thread(void *arg) {
  int *ok = arg;
  *ok = drv_last_error()[0] == '\0' && drv_last_error_where()[0] == '\0';
  drv_error(DRV_ERR_SYS, "elsewhere");
  return NULL;
}

static void test_per_thread(void **state) {
  assert_int_equal(fails("mine"), DRV_ERR_INVALID);
  pthread_t th;
  int ok = 0;
  assert_int_equal(pthread_create(&th, NULL, other_thread, &ok), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_true(ok);
  assert_string_equal(drv_last_error(), "mine: truncated");
  assert_where(fail_line);
}

/* Every boundary of the UTF-8 ranges: the last and first of each length, and the forms
 * just outside (overlong, surrogate, above U+10FFFF, cut short). */
static void test_utf8(void **state) {
  (void)state;
  static const struct {
    const char *s;
    size_t len;
  } chars[] = {
      {"\x00", 1},
      {"\x7f", 1},
      {"\xc2\x80", 2},
      {"\xdf\xbf", 2},
      {"\xe0\xa0\x80", 3},
      {"\xed\x9f\xbf", 3},
      {"\xee\x80\x80", 3},
      {"\xef\xbf\xbf", 3},
      {"\xf0\x90\x80\x80", 4},
      {"\xf4\x8f\xbf\xbf", 4},
      {"\x80", 0},
      {"\xbf", 0},
      {"\xc0\x80", 0},
      {"\xc1\xbf", 0},
      {"\xe0\x9f\xbf", 0},
      {"\xed\xa0\x80", 0},
      {"\xed\xbf\xbf", 0},
      {"\xf0\x8f\xbf\xbf", 0},
      {"\xf4\x90\x80\x80", 0},
      {"\xf5\x80\x80\x80", 0},
      {"\xff", 0},
      {"\xe2\x82", 0},
      {"\xc3\x28", 0},
  };
  for (size_t i = 0; i < DRV_ARRAY_LEN(chars); i++) {
    size_t n = chars[i].len ? chars[i].len : strlen(chars[i].s);
    if (drv_utf8_char(chars[i].s, n) != chars[i].len)
      fail_msg("case %zu: got %zu, want %zu", i, drv_utf8_char(chars[i].s, n), chars[i].len);
  }
  assert_int_equal(drv_utf8_char("", 0), 0);
  const char *text = "caf\xc3\xa9 \xe2\x82\xac\xf0\x9d\x84\x9e!";
  assert_int_equal(drv_utf8_valid(text, strlen(text)), strlen(text));
  assert_int_equal(drv_utf8_valid("ab\xc3\xa9\xc3", 5), 4); /* cut mid-character */
  assert_int_equal(drv_utf8_valid("\xff"
                                  "abc",
                                  4),
                   0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_error_records_location),
      cmocka_unit_test(test_prefix_keeps_location),
      cmocka_unit_test(test_check_marks_only_unlocated_errors),
      cmocka_unit_test(test_save_restore),
      cmocka_unit_test(test_per_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
