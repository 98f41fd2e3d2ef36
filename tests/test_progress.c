/* test_progress.c: coordinator/progress, the straggler decision as a pure function, driven
 * in-process from the ranks' smoothed step and all-reduce-wait times: a rank whose compute
 * time is above pct % of the others' median (and more than PROGRESS_STRAGGLER_MIN_MS above
 * it) is flagged, one at the threshold is not, a world of 1 flags nobody, ranks with no
 * report yet are ignored. Then progress_report and progress_event: reports folded into the
 * smoothed times, the flag kept on the rank, rank 0's report the job's, the event when due.
 * No processes, sockets or sleeps: the clock is a number. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/progress.h"

#define PCT 150 /* DROVER_STRAGGLER_PCT's default */
#define MAX_WORLD 8

static const char *const agent_ids[] = {"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"};

/* A world of n ranks whose smoothed times are step_ms[r] and wait_ms[r] (a step time of 0:
 * no report yet). */
typedef struct {
  progress_rank_t ranks[MAX_WORLD];
  progress_view_t world[MAX_WORLD];
  uint32_t n;
  int slow[MAX_WORLD];
  double median[MAX_WORLD];
} fx_t;

static void fx_init(fx_t *f, uint32_t n, const double *step_ms, const double *wait_ms) {
  memset(f, 0, sizeof *f);
  f->n = n;
  for (uint32_t r = 0; r < n; r++) {
    f->ranks[r].ewma_step_ms = step_ms[r];
    f->ranks[r].ewma_wait_ms = wait_ms ? wait_ms[r] : 0;
    f->world[r] = (progress_view_t){.rank = &f->ranks[r], .agent = agent_ids[r]};
  }
}

static void fx_judge(fx_t *f, int64_t pct) {
  memset(f->slow, 0x55, sizeof f->slow); /* whatever was there is overwritten */
  progress_stragglers(f->world, f->n, pct, f->slow, f->median);
}

// --- The straggler decision ----------------------------------------------------------------

static void test_rank_above_pct_of_median_is_flagged(void **state) {
  (void)state;
  fx_t f;
  /* compute times 2, 2, 2 and 4 (5 less 1 of waiting): 4 > 1.5 * 2 */
  fx_init(&f, 4, (double[]){2, 2, 2, 5}, (double[]){0, 0, 0, 1});
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[0], 0);
  assert_int_equal(f.slow[1], 0);
  assert_int_equal(f.slow[2], 0);
  assert_int_equal(f.slow[3], 1);
  assert_true(f.median[3] == 2.0);
  /* a higher pct tolerates it: 4 < 3 * 2 */
  fx_judge(&f, 300);
  assert_int_equal(f.slow[3], 0);
}

static void test_rank_at_threshold_is_not_flagged(void **state) {
  (void)state;
  fx_t f;
  /* 3 is exactly 1.5 * 2 (both exact in binary): not above it */
  fx_init(&f, 3, (double[]){2, 2, 3}, NULL);
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[2], 0);
  assert_true(f.median[2] == 2.0);
  /* just above it, it is */
  f.ranks[2].ewma_step_ms = 3.25;
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[2], 1);
}

static void test_rank_within_min_ms_of_median_is_not_flagged(void **state) {
  (void)state;
  fx_t f;
  /* 0.0625 is over 3 times 0.02, but only 0.0425 ms above it */
  fx_init(&f, 3, (double[]){0.02, 0.02, 0.0625}, NULL);
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[2], 0);
  /* 0.0725 is more than PROGRESS_STRAGGLER_MIN_MS above: flagged */
  f.ranks[2].ewma_step_ms = 0.0725;
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[2], 1);
}

static void test_compute_time_is_step_less_waits(void **state) {
  (void)state;
  fx_t f;
  /* the same step times; ranks 1 and 2 wait 8 of their 10 ms for rank 0: rank 0 is the
   * slow one (10 against 2), the ranks that wait are not (2 against 6) */
  fx_init(&f, 3, (double[]){10, 10, 10}, (double[]){0, 8, 8});
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[0], 1);
  assert_true(f.median[0] == 2.0);
  assert_int_equal(f.slow[1], 0);
  assert_int_equal(f.slow[2], 0);
  /* waits longer than the step: compute 0, never below */
  fx_init(&f, 1, (double[]){3}, (double[]){5});
  assert_true(progress_compute_ms(&f.ranks[0]) == 0.0);
}

static void test_world_of_one_flags_nobody(void **state) {
  (void)state;
  fx_t f;
  fx_init(&f, 1, (double[]){1000}, NULL);
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[0], 0);
  assert_true(f.median[0] == 0.0);
}

static void test_ranks_without_a_report_are_ignored(void **state) {
  (void)state;
  fx_t f;
  /* rank 1 has not reported: rank 2 is held against rank 0 alone (2.5 < 1.5 * 2); counted
   * as 0 it would have made the median 1 and rank 2 a straggler */
  fx_init(&f, 3, (double[]){2, 0, 2.5}, NULL);
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[1], 0);
  assert_true(f.median[1] == 0.0);
  assert_int_equal(f.slow[2], 0);
  assert_true(f.median[2] == 2.0);
  assert_true(f.median[0] == 2.5);
  /* nobody to be held against: the one that reported is no straggler either */
  fx_init(&f, 2, (double[]){50, 0}, NULL);
  fx_judge(&f, PCT);
  assert_int_equal(f.slow[0], 0);
  assert_int_equal(f.slow[1], 0);
}

// --- Reports and the job's event -----------------------------------------------------------

static proto_progress_t report(uint32_t rank, uint64_t step, double step_ms, double wait_ms) {
  return (proto_progress_t){.job = 7,
                            .generation = 1,
                            .rank = rank,
                            .epoch = 0,
                            .step = step,
                            .steps_total = 100,
                            .loss = 0.5,
                            .lr = 0.01,
                            .samples = 640,
                            .interval_s = 2.0,
                            .step_ms = step_ms,
                            .wait_ms = wait_ms,
                            .data_ms = NAN};
}

static void test_report_smooths_flags_and_publishes(void **state) {
  (void)state;
  fx_t f;
  fx_init(&f, 2, (double[]){0, 0}, NULL);
  progress_job_t job = {0};
  int64_t now = 1000000;
  /* rank 1 first: folded, nothing for the job, no straggler (nobody to compare with) */
  proto_progress_t m = report(1, 10, 10, 0);
  assert_int_equal(progress_report(&job, f.world, f.n, &m, now), 0);
  assert_true(f.ranks[1].ewma_step_ms == 10.0);
  assert_true(f.ranks[1].samples_per_s == 320.0);
  assert_true(f.ranks[1].ewma_data_ms == 0.0); /* none reported: 0 */
  assert_int_equal(f.ranks[1].straggler, 0);
  assert_int_equal(job.step, 0);
  /* rank 0: the job's step, due at once; rank 1 (10) is now a straggler against 2 */
  m = report(0, 10, 2, 0);
  assert_int_equal(progress_report(&job, f.world, f.n, &m, now), 1);
  assert_int_equal(job.step, 10);
  assert_int_equal(job.last_publish_ms, now);
  assert_int_equal(f.ranks[1].straggler, 1);
  assert_int_equal(f.ranks[0].straggler, 0);
  /* smoothed: 0.7 of the old, 0.3 of the new */
  m = report(1, 11, 2, 0);
  progress_report(&job, f.world, f.n, &m, now);
  assert_true(fabs(f.ranks[1].ewma_step_ms - 7.6) < 1e-9);
  assert_int_equal(f.ranks[1].straggler, 1); /* 7.6 > 3 */
  /* rank 0 again at once: not due; at the last step it is */
  m = report(0, 11, 2, 0);
  assert_int_equal(progress_report(&job, f.world, f.n, &m, now + 1), 0);
  m = report(0, 100, 2, 0);
  assert_int_equal(progress_report(&job, f.world, f.n, &m, now + 2), 1);
  /* a rank outside the world is not looked at */
  m = report(2, 5, 1, 0);
  assert_int_equal(progress_report(&job, f.world, f.n, &m, now + 3), 0);

  proto_ev_progress_t ev = {.job = 7, .generation = 1, .epochs = 3};
  job.step = 50;
  progress_event(&job, f.world, f.n, &ev);
  assert_int_equal(ev.job, 7); /* the caller's fields are left alone */
  assert_int_equal(ev.epochs, 3);
  assert_int_equal(ev.step, 50);
  assert_int_equal(ev.steps_total, 100);
  assert_true(ev.samples_per_s == 640.0); /* 320 + 320 */
  assert_true(job.samples_per_s == 640.0);
  assert_int_equal(ev.slowest_rank, 1);     /* the most compute per step */
  assert_true(ev.slowest_step_ms == 2.0);   /* both last reported 2 ms */
  assert_true(fabs(ev.eta_s - 0.1) < 1e-9); /* 50 steps at 500 steps/s */
}

int main(void) {
  /* progress_report reads these settings (once): the defaults, whatever the environment */
  setenv("DROVER_STRAGGLER_PCT", "150", 1);
  setenv("DROVER_PROGRESS_MS", "100", 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rank_above_pct_of_median_is_flagged),
      cmocka_unit_test(test_rank_at_threshold_is_not_flagged),
      cmocka_unit_test(test_rank_within_min_ms_of_median_is_not_flagged),
      cmocka_unit_test(test_compute_time_is_step_less_waits),
      cmocka_unit_test(test_world_of_one_flags_nobody),
      cmocka_unit_test(test_ranks_without_a_report_are_ignored),
      cmocka_unit_test(test_report_smooths_flags_and_publishes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
