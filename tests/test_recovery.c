/* test_recovery.c: coordinator/recovery, re-formation planning as a pure function, driven
 * in-process from job snapshots: the plan for each kind of loss (a dead rank, a silent
 * rank after the deadline, a leaving agent, a rank lost before start), survivors' order
 * and the commit the new world goes on from, growth up to max_nodes, waiting below
 * min_nodes, max_restarts, and reasons that name the cause rather than a survivor's
 * broken ring. No processes, sockets or sleeps: the clock is a number. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "coordinator/recovery.h"

#define NOW 1000000
#define RING_MS 30000

static const char *const agent_ids[] = {"a0", "a1", "a2", "a3", "a4", "a5"};
static const char *const hosts[] = {"h0", "h1", "h2", "h3", "h4", "h5"};

/* A job of `nodes` ranks, all checked in, training at step 50 with their commit at 40;
 * min_nodes 1, max_nodes = nodes, 3 restarts allowed, no rejoin_timeout, no free agent. */
typedef struct {
  recovery_rank_t ranks[8];
  recovery_job_t job;
} fx_t;

static void fx_init(fx_t *f, job_phase_t phase, uint32_t nodes) {
  memset(f, 0, sizeof *f);
  for (uint32_t r = 0; r < nodes; r++)
    f->ranks[r] = (recovery_rank_t){.agent_id = agent_ids[r],
                                    .host = hosts[r],
                                    .rendezvoused = 1,
                                    .step = 50,
                                    .coll_seq = 7 + r,
                                    .commit = 40};
  f->job = (recovery_job_t){.phase = phase,
                            .nodes = nodes,
                            .ranks = f->ranks,
                            .min_nodes = 1,
                            .max_nodes = nodes,
                            .max_restarts = 3,
                            .ring_timeout_ms = RING_MS,
                            .first_cause = "",
                            .pause_reason = ""};
}

/* What the owner keeps of a plan, as job.c does: phase, restarts, deadline, cause, first
 * cause and each rank's marks. first must outlive the next plan. */
static void fx_apply(fx_t *f, const recovery_plan_t *p, char *first, size_t n) {
  f->job.phase = p->phase;
  f->job.restarts = p->restarts;
  f->job.deadline_ms = p->deadline_ms;
  f->job.cause = p->cause;
  snprintf(first, n, "%s", p->first_cause);
  f->job.first_cause = first;
  for (uint32_t r = 0; r < f->job.nodes; r++) {
    f->ranks[r].dead = p->fate[r] >= RECOVERY_RANK_DEAD;
    f->ranks[r].lost = p->fate[r] == RECOVERY_RANK_REPORTED;
  }
}

static void fail_rank(fx_t *f, int rank, const char *reason, int64_t now, recovery_plan_t *p) {
  if (rank >= 0) f->ranks[rank].dead = 1; /* the owner marks it and stops its worker */
  recovery_plan(&f->job, &(recovery_failure_t){.rank = rank, .reason = reason}, now, p);
}

#define KILLED_1 "rank 1 (agent a1, h1) was killed by signal 9 near step 50"

// --- One plan per kind of loss -------------------------------------------------------------

static void test_dead_rank_waits_then_reforms(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  fail_rank(&f, 1, KILLED_1, NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_int_equal(p.phase, JOB_PHASE_REFORMING);
  assert_true(p.restart);
  assert_int_equal(p.restarts, 1);
  /* A known death: its peers may take a ring timeout to notice. */
  assert_int_equal(p.deadline_ms, NOW + RING_MS + RECOVERY_GRACE_MS);
  assert_int_equal(p.cause.kind, RECOVERY_CAUSE_KNOWN);
  assert_string_equal(p.cause.text, KILLED_1);
  assert_int_equal(p.fate[1], RECOVERY_RANK_DEAD);
  assert_int_equal(p.fate[0], RECOVERY_RANK_IN);
  fx_apply(&f, &p, first, sizeof first);

  /* Rank 0 reports; rank 2 not yet: wait. */
  f.ranks[0].lost = 1;
  recovery_plan(&f.job, NULL, NOW + 100, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_false(p.restart);
  assert_int_equal(p.restarts, 1);

  /* Every survivor reported: re-form at once, long before the deadline. */
  f.ranks[2].lost = 1;
  recovery_plan(&f.job, NULL, NOW + 200, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.phase, JOB_PHASE_STARTING);
  assert_int_equal(p.world, 2);
  assert_int_equal(p.survivors, 2);
  assert_int_equal(p.newcomers, 0);
  assert_int_equal(p.from[0], 0);
  assert_int_equal(p.from[1], 2);
  assert_int_equal(p.fate[1], RECOVERY_RANK_DEAD);
  assert_true(p.settled);
  assert_string_equal(p.reason, "re-formed with 2 worker(s) (0 new) after: " KILLED_1);
  assert_string_equal(p.first_cause, KILLED_1);
}

static void test_survivors_keep_order_and_rank0_commit(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 4);
  fail_rank(&f, 0, "rank 0 (agent a0, h0) was killed by signal 9 near step 50", NOW, &p);
  fx_apply(&f, &p, first, sizeof first);
  /* They report in another order than their ranks, at different commits. */
  f.ranks[3] = (recovery_rank_t){.agent_id = "a3", .host = "h3", .lost = 1, .commit = 30};
  f.ranks[1] = (recovery_rank_t){.agent_id = "a1", .host = "h1", .lost = 1, .commit = 40};
  f.ranks[2] = (recovery_rank_t){.agent_id = "a2", .host = "h2", .lost = 1, .commit = 35};
  recovery_plan(&f.job, NULL, NOW + 10, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.survivors, 3);
  assert_int_equal(p.from[0], 1); /* old rank 1 is the new rank 0 */
  assert_int_equal(p.from[1], 2);
  assert_int_equal(p.from[2], 3);
  assert_int_equal(p.step, 40); /* and its commit is where everyone goes on from */
}

static void test_silent_rank_left_out_at_deadline_with_its_cause(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  /* Rank 2 hangs: ranks 0 and 1 see their ring break (a symptom, no rank known). */
  f.ranks[0].lost = 1;
  const char *sym0 = "rank 0 (agent a0) lost its ring at step 40: recv from rank 2 timed out";
  fail_rank(&f, -1, sym0, NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_true(p.restart);
  assert_int_equal(p.deadline_ms, NOW + RECOVERY_GRACE_MS); /* a broken ring: grace only */
  assert_int_equal(p.cause.kind, RECOVERY_CAUSE_SYMPTOM);
  fx_apply(&f, &p, first, sizeof first);

  f.ranks[1].lost = 1;
  fail_rank(&f, -1, "rank 1 (agent a1) lost its ring at step 40: send to rank 2 failed", NOW + 50,
            &p);
  assert_false(p.restart); /* the same re-formation */
  assert_int_equal(p.restarts, 1);
  assert_string_equal(p.cause.text, sym0); /* the first symptom stays until a cause shows */
  fx_apply(&f, &p, first, sizeof first);

  /* Before the deadline rank 2 may still report. */
  recovery_plan(&f.job, NULL, NOW + RECOVERY_GRACE_MS, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  /* After it, it is left out as silent, and it is the cause. */
  recovery_plan(&f.job, NULL, NOW + RECOVERY_GRACE_MS + 1, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.fate[2], RECOVERY_RANK_SILENT);
  assert_int_equal(p.world, 2);
  assert_int_equal(p.from[0], 0);
  assert_int_equal(p.from[1], 1);
  const char *silent =
      "rank 2 (agent a2, h2) stopped making progress after step 50 (collective 9): its ring "
      "broke and it did not report";
  char want[1024];
  snprintf(want, sizeof want, "re-formed with 2 worker(s) (0 new) after: %s", silent);
  assert_string_equal(p.reason, want);
  assert_string_equal(p.first_cause, silent);
  assert_null(strstr(p.reason, "lost its ring"));
}

static void test_silent_rank_of_a_quiet_agent_is_the_agents_death(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_REFORMING, 3);
  f.job.deadline_ms = NOW;
  f.job.cause = (recovery_cause_t){.kind = RECOVERY_CAUSE_SYMPTOM, .text = "rank 0 lost its ring"};
  f.job.agent_quiet_ms = 2500;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  f.ranks[0].agent_quiet_ms = f.ranks[1].agent_quiet_ms = 100;
  f.ranks[2].agent_quiet_ms = 3200; /* its agent went quiet when the ring broke */
  recovery_plan(&f.job, NULL, NOW + 1, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.fate[2], RECOVERY_RANK_SILENT);
  assert_string_equal(p.cause.text,
                      "agent a2 (h2, rank 2, near step 50) went silent with its "
                      "worker: no heartbeat for 3200 ms");
  /* Its agent still heartbeats: a hang, as before. */
  f.ranks[2].agent_quiet_ms = 300;
  recovery_plan(&f.job, NULL, NOW + 1, &p);
  assert_non_null(strstr(p.cause.text, "rank 2 (agent a2, h2) stopped making progress"));
  /* Its agent is gone from the registry already. */
  f.ranks[2].agent_quiet_ms = -1;
  recovery_plan(&f.job, NULL, NOW + 1, &p);
  assert_non_null(strstr(p.cause.text, "went silent with its worker: gone"));
}

static void test_failed_reports_ranked_own_over_peer(void **state) {
  assert_int_equal(recovery_failed_kind("ring all-reduce: rank 0: rank 2 (left) closed the "
                                        "connection"),
                   RECOVERY_REPORT_PEER);
  assert_int_equal(recovery_failed_kind("ring: rank 1 of 3: no word from rank 0 within 3000 ms"),
                   RECOVERY_REPORT_PEER);
  assert_int_equal(recovery_failed_kind("ring: broken by an earlier failure"),
                   RECOVERY_REPORT_PEER);
  assert_int_equal(recovery_failed_kind("loss became nan at step 12: lower the learning rate"),
                   RECOVERY_REPORT_OWN);
  assert_int_equal(recovery_failed_kind("/tmp/x/train.idx: expected magic 0x00000803"),
                   RECOVERY_REPORT_OWN);
  /* The order the coordinator ranks a held failure's reports by. */
  assert_true(RECOVERY_REPORT_OWN > RECOVERY_REPORT_SYMPTOM);
  assert_true(RECOVERY_REPORT_SYMPTOM > RECOVERY_REPORT_PEER);
  assert_true(RECOVERY_REPORT_PEER > RECOVERY_REPORT_NONE);
}

static void test_cause_replaces_symptom(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.ranks[0].lost = 1;
  fail_rank(&f, -1, "rank 0 (agent a0) lost its ring at step 40: peer closed", NOW, &p);
  fx_apply(&f, &p, first, sizeof first);
  /* Then rank 1's agent turns out to be gone: that is the cause. */
  const char *cause = "agent a1 (h1, rank 1, near step 50) lost: silent for 5001 ms";
  fail_rank(&f, 1, cause, NOW + 100, &p);
  assert_int_equal(p.cause.kind, RECOVERY_CAUSE_KNOWN);
  assert_string_equal(p.cause.text, cause);
  fx_apply(&f, &p, first, sizeof first);
  /* A later symptom does not replace a known cause. */
  f.ranks[2].lost = 1;
  fail_rank(&f, -1, "rank 2 (agent a2) lost its ring at step 40: peer closed", NOW + 200, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  char want[512];
  snprintf(want, sizeof want, "re-formed with 2 worker(s) (0 new) after: %s", cause);
  assert_string_equal(p.reason, want);
}

static void test_leaving_agent_planned(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_PAUSING, 3);
  f.job.pause_reason = "agent a1 (rank 1) leaving: preempted";
  f.job.deadline_ms = NOW + 63000;
  f.ranks[1].leaving = 1;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  recovery_plan(&f.job, NULL, NOW, &p); /* rank 2 still training towards the commit */
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_int_equal(p.phase, JOB_PHASE_PAUSING);

  f.ranks[2].lost = 1;
  recovery_plan(&f.job, NULL, NOW + 10, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_false(p.restart);
  assert_int_equal(p.restarts, 0); /* planned: no restart counted */
  assert_int_equal(p.fate[1], RECOVERY_RANK_LEAVING);
  assert_int_equal(p.world, 2);
  assert_int_equal(p.from[0], 0);
  assert_int_equal(p.from[1], 2);
  assert_string_equal(p.reason,
                      "re-formed with 2 worker(s) (0 new): agent a1 (rank 1) leaving: "
                      "preempted");
  assert_string_equal(p.first_cause, ""); /* not a failure */
}

static void test_failure_while_pausing_is_a_restart(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_PAUSING, 3);
  f.job.pause_reason = "taking in 1 free agent(s)";
  fail_rank(&f, 2, "rank 2 (agent a2, h2) was killed by signal 9 near step 50", NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_true(p.restart);
  assert_int_equal(p.restarts, 1);
  assert_int_equal(p.phase, JOB_PHASE_REFORMING);
}

static void test_rank_lost_before_start(void **state) {
  fx_t f;
  recovery_plan_t p;
  /* Ranks 0 and 2 checked in; rank 1 was killed before it did. */
  fx_init(&f, JOB_PHASE_STARTING, 3);
  f.ranks[1].rendezvoused = 0;
  fail_rank(&f, 1, KILLED_1, NOW, &p);
  /* Nobody trained: those that checked in hold their commit; re-form at once. */
  assert_true(p.restart);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.fate[0], RECOVERY_RANK_REPORTED);
  assert_int_equal(p.fate[2], RECOVERY_RANK_REPORTED);
  assert_int_equal(p.fate[1], RECOVERY_RANK_DEAD);
  assert_int_equal(p.world, 2);
  assert_int_equal(p.from[0], 0);
  assert_int_equal(p.from[1], 2);

  /* A rank that had not checked in either is dropped with the dead one. */
  fx_init(&f, JOB_PHASE_STARTING, 3);
  f.ranks[2].rendezvoused = 0;
  fail_rank(&f, 1, KILLED_1, NOW, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.fate[2], RECOVERY_RANK_DEAD);
  assert_int_equal(p.world, 1);
  assert_int_equal(p.from[0], 0);
}

// --- Growth, min_nodes, max_restarts -------------------------------------------------------

static void test_grows_up_to_max_nodes(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_PAUSING, 2);
  f.job.max_nodes = 3;
  f.job.free_agents = 3;
  f.job.pause_reason = "taking in 3 free agent(s)";
  f.job.deadline_ms = NOW + 63000;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  recovery_plan(&f.job, NULL, NOW, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.survivors, 2);
  assert_int_equal(p.newcomers, 1); /* three free, room for one */
  assert_int_equal(p.world, 3);
  assert_string_equal(p.reason, "re-formed with 3 worker(s) (1 new): taking in 3 free agent(s)");

  /* After a failure: newcomers fill the dead rank's place and the room left. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_nodes = 4;
  f.job.free_agents = 5;
  f.ranks[0].lost = f.ranks[2].lost = 1;
  fail_rank(&f, 1, KILLED_1, NOW, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.survivors, 2);
  assert_int_equal(p.newcomers, 2);
  assert_int_equal(p.world, 4);

  /* Already at max_nodes: nobody new. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.free_agents = 2;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  fail_rank(&f, 2, "rank 2 gone", NOW, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.newcomers, 1);
  assert_int_equal(p.world, 3);
}

static void test_below_min_nodes_waits_with_rejoin_timeout(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.min_nodes = 3;
  f.job.rejoin_timeout_s = 60;
  fail_rank(&f, 2, "rank 2 (agent a2, h2) was killed by signal 9 near step 50", NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_true(p.restart);
  assert_true(p.waits_for_agents);
  assert_int_equal(p.phase, JOB_PHASE_WAITING);
  assert_int_equal(p.workers, 2);
  assert_int_equal(p.deadline_ms, NOW + 60000); /* the longer of rejoin and ring timeout */
  fx_apply(&f, &p, first, sizeof first);

  /* The survivors report, but two workers are too few: wait on. */
  f.ranks[0].lost = f.ranks[1].lost = 1;
  recovery_plan(&f.job, NULL, NOW + 1000, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_false(p.waits_for_agents); /* it already waits */
  assert_int_equal(p.phase, JOB_PHASE_WAITING);

  /* An agent arrives: re-form with it. */
  f.job.free_agents = 1;
  recovery_plan(&f.job, NULL, NOW + 2000, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.world, 3);
  assert_int_equal(p.newcomers, 1);

  /* None arrives by the deadline: fail. */
  f.job.free_agents = 0;
  recovery_plan(&f.job, NULL, NOW + 60001, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_string_equal(p.reason,
                      "rank 2 (agent a2, h2) was killed by signal 9 near step 50 "
                      "(2 worker(s) left, min_nodes 3)");
}

/* With workers_per_node, min_nodes and max_nodes count nodes: the bounds in workers are
 * them times its workers, and a lost worker of a 2 x 2 world leaves 3, which is enough. */
static void test_bounds_count_nodes_of_workers(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 4); /* 2 nodes x 2 workers */
  f.job.workers_per_node = 2;
  f.job.min_nodes = 1, f.job.max_nodes = 2;
  f.job.free_agents = 2; /* one free agent of 2 slots: no room beyond max_nodes x 2 = 4 */
  f.ranks[0].lost = f.ranks[1].lost = f.ranks[3].lost = 1;
  fail_rank(&f, 2, "rank 2 (agent a1, h1) was killed by signal 9 near step 50", NOW, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.survivors, 3);
  assert_int_equal(p.newcomers, 1);
  assert_int_equal(p.world, 4);
  /* min_nodes 2 x 2 workers: 3 left and no free slot are too few. */
  fx_init(&f, JOB_PHASE_RUNNING, 4);
  f.job.workers_per_node = 2;
  f.job.min_nodes = 2;
  fail_rank(&f, 3, "rank 3 gone", NOW, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_string_equal(p.reason, "rank 3 gone (3 worker(s) left, min_nodes 2 x 2 workers)");
}

/* A preempted node (a spot reclaim, a Slurm preemption) re-forms the world but is no
 * restart: with max_restarts 0 the job goes on. A broken ring where preemptible nodes are
 * is counted once its cause is known: not when the lost rank was preemptible, yes when it
 * was not. */
static void test_preemption_is_no_restart(void **state) {
  (void)state;
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 0;
  f.ranks[2].preemptible = 1;
  f.ranks[2].dead = 1;
  f.ranks[2].agent_quiet_ms = -1; /* its agent gone */
  recovery_plan(&f.job, &(recovery_failure_t){.rank = 2, .reason = "agent a2 lost"}, NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_int_equal(p.phase, JOB_PHASE_REFORMING);
  assert_int_equal(p.restarts, 0);
  fx_apply(&f, &p, first, sizeof first);
  f.ranks[0].lost = f.ranks[1].lost = 1;
  recovery_plan(&f.job, NULL, NOW + 100, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.world, 2);
  assert_int_equal(p.restarts, 0);

  /* A survivor's broken ring first: pending; the preemptible rank never reports, its agent
   * leaving. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 0;
  f.ranks[2].preemptible = 1;
  f.ranks[2].leaving = 1;
  recovery_plan(&f.job, &(recovery_failure_t){.rank = -1, .reason = "rank 0 lost its ring"},
                NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_true(p.pending);
  assert_int_equal(p.restarts, 0);
  fx_apply(&f, &p, first, sizeof first);
  f.job.pending = p.pending;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  recovery_plan(&f.job, NULL, p.deadline_ms + 1, &p); /* rank 2 silent: preemptible */
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.restarts, 0);
  assert_false(p.pending);

  /* The same with a rank that is not preemptible dying: a restart, past max_restarts 0. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 0;
  f.ranks[2].preemptible = 1;
  recovery_plan(&f.job, &(recovery_failure_t){.rank = -1, .reason = "rank 0 lost its ring"},
                NOW, &p);
  fx_apply(&f, &p, first, sizeof first);
  f.job.pending = p.pending;
  fail_rank(&f, 1, KILLED_1, NOW + 10, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_false(p.pending);

  /* A preemptible node's worker killed while its agent stays (the OOM killer): counted. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 0;
  f.ranks[2].preemptible = 1;
  fail_rank(&f, 2, "rank 2 (agent a2, h2) was killed by signal 9", NOW, &p);
  assert_true(p.pending);
  fx_apply(&f, &p, first, sizeof first);
  f.job.pending = p.pending;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  recovery_plan(&f.job, NULL, NOW + 100, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
}

static void test_below_min_nodes_fails_without_rejoin_timeout(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.min_nodes = 3;
  fail_rank(&f, 2, "rank 2 (agent a2, h2) was killed by signal 9 near step 50", NOW, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_int_equal(p.phase, JOB_PHASE_FAILED);
  assert_string_equal(p.reason,
                      "rank 2 (agent a2, h2) was killed by signal 9 near step 50 "
                      "(2 worker(s) left, min_nodes 3)");
  /* A free agent makes up for it. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.min_nodes = 3;
  f.job.free_agents = 1;
  fail_rank(&f, 2, "rank 2 gone", NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_false(p.waits_for_agents);
}

static void test_no_survivor_fails(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 1);
  f.job.free_agents = 2;
  fail_rank(&f, 0, "rank 0 (agent a0, h0) was killed by signal 9 near step 50", NOW, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_non_null(strstr(p.reason, "rank 0 (agent a0, h0) was killed by signal 9"));
}

static void test_no_survivor_with_checkpoint_waits_then_reforms_from_it(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.min_nodes = 2;
  f.job.rejoin_timeout_s = 30;
  f.job.ckpt_step = 40;
  /* All three die together; their agents cool down, so none is free. */
  fail_rank(&f, 0, "rank 0 (agent a0, h0) was killed by signal 9 near step 50", NOW, &p);
  fx_apply(&f, &p, first, sizeof first);
  fail_rank(&f, 1, KILLED_1, NOW, &p);
  fx_apply(&f, &p, first, sizeof first);
  fail_rank(&f, 2, "rank 2 (agent a2, h2) was killed by signal 9 near step 50", NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT); /* not failed: it has a checkpoint */
  assert_int_equal(p.phase, JOB_PHASE_WAITING);
  assert_int_equal(p.restarts, 1); /* one failure, one restart */
  /* The longer of the re-formation's deadline (ring timeout + grace) and rejoin_timeout. */
  assert_int_equal(p.deadline_ms, NOW + RING_MS + RECOVERY_GRACE_MS);
  fx_apply(&f, &p, first, sizeof first);
  recovery_plan(&f.job, NULL, NOW + 5000, &p); /* still cooling down */
  assert_int_equal(p.action, RECOVERY_WAIT);
  /* The cool-down is over: the same three agents are free again. */
  f.job.free_agents = 3;
  recovery_plan(&f.job, NULL, NOW + 6000, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.survivors, 0);
  assert_int_equal(p.newcomers, 3);
  assert_int_equal(p.world, 3);
  assert_int_equal(p.step, 40); /* the checkpoint's */
  assert_non_null(strstr(p.reason, "from the checkpoint of step 40"));
  assert_non_null(strstr(p.reason, "rank 0 (agent a0, h0) was killed by signal 9"));
  /* Too few come back by the deadline: it fails, naming the cause. */
  f.job.free_agents = 1;
  recovery_plan(&f.job, NULL, NOW + RING_MS + RECOVERY_GRACE_MS + 1, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_non_null(strstr(p.reason, "(1 worker(s) left, min_nodes 2)"));
}

static void test_no_survivor_with_checkpoint_needs_restarts_and_rejoin(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 1);
  f.job.ckpt_step = 40;
  f.job.free_agents = 2;
  fail_rank(&f, 0, "rank 0 gone", NOW, &p); /* no rejoin_timeout: fails as before */
  assert_int_equal(p.action, RECOVERY_FAIL);
  fx_init(&f, JOB_PHASE_RUNNING, 1);
  f.job.ckpt_step = 40;
  f.job.rejoin_timeout_s = 30;
  f.job.max_restarts = 0;
  fail_rank(&f, 0, "rank 0 gone", NOW, &p); /* no restart left */
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_string_equal(p.reason, "rank 0 gone");
  fx_init(&f, JOB_PHASE_RUNNING, 1); /* with both, free agents take over at once */
  f.job.ckpt_step = 40;
  f.job.rejoin_timeout_s = 30;
  f.job.free_agents = 2;
  fail_rank(&f, 0, "rank 0 gone", NOW, &p);
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.world, 1); /* max_nodes */
  assert_int_equal(p.step, 40);
}

static void test_max_restarts_fails_with_first_cause(void **state) {
  fx_t f;
  char first[RECOVERY_REASON_MAX];
  recovery_plan_t p;
  const char *first_kill = "rank 2 (agent a2, h2) was killed by signal 9 near step 390";
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 1;
  f.job.free_agents = 1;
  f.ranks[0].lost = f.ranks[1].lost = 1;
  fail_rank(&f, 2, first_kill, NOW, &p); /* the one restart: re-formed with a newcomer */
  assert_int_equal(p.action, RECOVERY_REFORM);
  assert_int_equal(p.restarts, 1);
  fx_apply(&f, &p, first, sizeof first);
  assert_string_equal(f.job.first_cause, first_kill);

  /* The next world (the owner's new ranks) loses a rank again. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 1;
  f.job.restarts = 1;
  f.job.first_cause = first;
  fail_rank(&f, 0, "rank 0 (agent a0, h0) was killed by signal 9 near step 700", NOW + 5000, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_false(p.restart);
  char want[512];
  snprintf(want, sizeof want, "%s (max_restarts 1 reached)", first_kill);
  assert_string_equal(p.reason, want);

  /* max_restarts 0: the failure's own cause, as it is. */
  fx_init(&f, JOB_PHASE_RUNNING, 3);
  f.job.max_restarts = 0;
  fail_rank(&f, 1, KILLED_1, NOW, &p);
  assert_int_equal(p.action, RECOVERY_FAIL);
  assert_string_equal(p.reason, KILLED_1);
}

static void test_check_outside_reformation_does_nothing(void **state) {
  fx_t f;
  recovery_plan_t p;
  fx_init(&f, JOB_PHASE_RUNNING, 2);
  recovery_plan(&f.job, NULL, NOW, &p);
  assert_int_equal(p.action, RECOVERY_WAIT);
  assert_int_equal(p.phase, JOB_PHASE_RUNNING);
  assert_false(p.restart);
  assert_false(p.settled);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dead_rank_waits_then_reforms),
      cmocka_unit_test(test_survivors_keep_order_and_rank0_commit),
      cmocka_unit_test(test_silent_rank_left_out_at_deadline_with_its_cause),
      cmocka_unit_test(test_silent_rank_of_a_quiet_agent_is_the_agents_death),
      cmocka_unit_test(test_failed_reports_ranked_own_over_peer),
      cmocka_unit_test(test_cause_replaces_symptom),
      cmocka_unit_test(test_leaving_agent_planned),
      cmocka_unit_test(test_failure_while_pausing_is_a_restart),
      cmocka_unit_test(test_rank_lost_before_start),
      cmocka_unit_test(test_grows_up_to_max_nodes),
      cmocka_unit_test(test_below_min_nodes_waits_with_rejoin_timeout),
      cmocka_unit_test(test_below_min_nodes_fails_without_rejoin_timeout),
      cmocka_unit_test(test_bounds_count_nodes_of_workers),
      cmocka_unit_test(test_preemption_is_no_restart),
      cmocka_unit_test(test_no_survivor_fails),
      cmocka_unit_test(test_no_survivor_with_checkpoint_waits_then_reforms_from_it),
      cmocka_unit_test(test_no_survivor_with_checkpoint_needs_restarts_and_rejoin),
      cmocka_unit_test(test_max_restarts_fails_with_first_cause),
      cmocka_unit_test(test_check_outside_reformation_does_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
