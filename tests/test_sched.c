/* test_sched.c: coordinator/sched, the scheduler's pure decision, driven in-process from
 * snapshots of queued jobs and agents: gang placement, FIFO per queue (target + pool),
 * rank order by agent id, and the agents that may not take work (busy, cooling down,
 * leaving, another target or pool). No processes, sockets or sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdint.h>
#include <string.h>

#include "coordinator/sched.h"

#define NOW 1000000

static sched_agent_t agent(const char *id, const char *target, const char *pool) {
  return (sched_agent_t){.id = id, .target = target, .pool = pool};
}

static sched_job_t job(int64_t id, const char *target, const char *pool, uint32_t nodes) {
  return (sched_job_t){.id = id, .target = target, .pool = pool, .nodes = nodes};
}

/* The placement of queued[qi] in the plan, or NULL when it was not placed. */
static const sched_placement_t *placement_of(const sched_plan_t *p, uint32_t qi) {
  for (uint32_t k = 0; k < p->count; k++)
    if (p->placements[k].job == qi) return &p->placements[k];
  return NULL;
}

/* The agent id of rank r of queued[qi]'s placement. */
static const char *rank_agent(const sched_plan_t *p, const sched_agent_t *agents, uint32_t qi,
                              uint32_t r) {
  const sched_placement_t *pl = placement_of(p, qi);
  assert_non_null(pl);
  assert_true(r < pl->nodes);
  return agents[p->agents[pl->first + r]].id;
}

// --- Gang placement ------------------------------------------------------------------------

static void test_gang_waits_for_every_worker(void **state) {
  /* Listed out of id order: ranks must follow the ids, not the array. */
  sched_agent_t agents[] = {agent("c-agent", "attached", ""), agent("a-agent", "attached", ""),
                            agent("b-agent", "attached", "")};
  sched_job_t queued[] = {job(7, "attached", "", 3)};
  sched_plan_t plan;

  sched_plan(queued, 1, agents, 2, NOW, &plan); /* only c and a */
  assert_int_equal(plan.count, 0);

  sched_plan(queued, 1, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 0);
  assert_int_equal(plan.placements[0].nodes, 3);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "a-agent");
  assert_string_equal(rank_agent(&plan, agents, 0, 1), "b-agent");
  assert_string_equal(rank_agent(&plan, agents, 0, 2), "c-agent");
}

static void test_gang_does_not_count_busy_agents(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", ""),
                            agent("a3", "attached", "")};
  agents[1].busy = 1;
  sched_job_t queued[] = {job(1, "attached", "", 3)};
  sched_plan_t plan;
  sched_plan(queued, 1, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 0);
  agents[1].busy = 0;
  sched_plan(queued, 1, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
}

static void test_no_agent_in_two_placements(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", ""),
                            agent("a3", "attached", ""), agent("a4", "attached", "")};
  sched_job_t queued[] = {job(1, "attached", "", 2), job(2, "attached", "", 2),
                          job(3, "attached", "", 1)};
  sched_plan_t plan;
  sched_plan(queued, 3, agents, 4, NOW, &plan);
  /* Jobs 1 and 2 take all four agents, oldest first; job 3 waits for one. */
  assert_int_equal(plan.count, 2);
  assert_int_equal(plan.placements[0].job, 0);
  assert_int_equal(plan.placements[1].job, 1);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "a1");
  assert_string_equal(rank_agent(&plan, agents, 0, 1), "a2");
  assert_string_equal(rank_agent(&plan, agents, 1, 0), "a3");
  assert_string_equal(rank_agent(&plan, agents, 1, 1), "a4");
  assert_null(placement_of(&plan, 2));
}

// --- FIFO per queue ------------------------------------------------------------------------

static void test_fifo_older_job_blocks_its_queue(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", "")};
  agents[1].busy = 1;
  /* The younger job first in the array: age is the id, not the position. */
  sched_job_t queued[] = {job(9, "attached", "", 1), job(4, "attached", "", 2)};
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 2, NOW, &plan);
  /* Job 4 needs two agents and holds up job 9, which the idle agent could run. */
  assert_int_equal(plan.count, 0);
  assert_int_equal(plan.waits[0].kind, SCHED_WAIT_HELD);
  assert_int_equal(plan.waits[1].kind, SCHED_WAIT_RESOURCES);

  /* Without the older job, the younger one is placed. */
  sched_plan(queued, 1, agents, 2, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 0);
}

static void test_fifo_oldest_first(void **state) {
  sched_agent_t agents[] = {agent("z", "local", "p"), agent("y", "local", "p")};
  sched_job_t queued[] = {job(12, "local", "p", 1), job(11, "local", "p", 1),
                          job(13, "local", "p", 1)};
  sched_plan_t plan;
  sched_plan(queued, 3, agents, 1, NOW, &plan); /* one agent: the oldest job gets it */
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 1);

  sched_plan(queued, 3, agents, 2, NOW, &plan); /* two: jobs 11 and 12, in that order */
  assert_int_equal(plan.count, 2);
  assert_int_equal(plan.placements[0].job, 1);
  assert_int_equal(plan.placements[1].job, 0);
  assert_string_equal(rank_agent(&plan, agents, 1, 0), "y");
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "z");
  assert_null(placement_of(&plan, 2));
}

static void test_fifo_other_queues_not_blocked(void **state) {
  sched_agent_t agents[] = {agent("att", "attached", ""), agent("loc", "local", ""),
                            agent("pooled", "attached", "p1"), agent("att2", "attached", "")};
  agents[3].busy = 1;
  sched_job_t queued[] = {job(1, "attached", "", 2), job(2, "attached", "", 1),
                          job(3, "local", "", 1), job(4, "attached", "p1", 1)};
  sched_plan_t plan;
  sched_plan(queued, 4, agents, 4, NOW, &plan);
  /* attached/"" is blocked by job 1 (job 2 waits behind it, though "att" is free);
   * local/"" and attached/p1 go on. */
  assert_int_equal(plan.count, 2);
  assert_null(placement_of(&plan, 0));
  assert_null(placement_of(&plan, 1));
  assert_string_equal(rank_agent(&plan, agents, 2, 0), "loc");
  assert_string_equal(rank_agent(&plan, agents, 3, 0), "pooled");
}

// --- Which agents may take work ------------------------------------------------------------

static void test_targets_and_pools_respected(void **state) {
  sched_agent_t agents[] = {agent("a-local", "local", ""), agent("b-pool", "attached", "p"),
                            agent("c-plain", "attached", ""), agent("d-other", "attached", "q")};
  sched_job_t queued[] = {job(1, "attached", "", 2)};
  sched_plan_t plan;
  /* One agent of attached/"": the others serve another target or pool. */
  sched_plan(queued, 1, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 0);

  sched_job_t pooled[] = {job(2, "attached", "p", 1)};
  sched_plan(pooled, 1, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "b-pool");

  sched_job_t local[] = {job(3, "local", "", 1)};
  sched_plan(local, 1, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "a-local");
}

static void test_cooling_down_and_leaving_not_used(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", ""),
                            agent("a3", "attached", "")};
  agents[0].cooldown_until_ms = NOW + 5000;
  agents[1].leaving = 1;
  sched_job_t big[] = {job(1, "attached", "", 2)}, small[] = {job(2, "attached", "", 1)};
  sched_plan_t plan;
  sched_plan(big, 1, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 0);
  sched_plan(small, 1, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "a3");

  /* Once the cool-down is over, a1 works again; a leaving agent never does. */
  sched_plan(big, 1, agents, 3, NOW + 5000, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "a1");
  assert_string_equal(rank_agent(&plan, agents, 0, 1), "a3");
  assert_false(sched_fits(&agents[1], "attached", "", NOW + 5000));
}

static void test_free_agents_in_id_order(void **state) {
  sched_agent_t agents[] = {agent("n3", "attached", ""), agent("n1", "attached", ""),
                            agent("n2", "local", ""), agent("n0", "attached", "")};
  agents[3].busy = 1;
  uint32_t out[SCHED_MAX_AGENTS];
  assert_int_equal(sched_free(agents, 4, "attached", "", NOW, out), 2);
  assert_string_equal(agents[out[0]].id, "n1");
  assert_string_equal(agents[out[1]].id, "n3");
  assert_int_equal(sched_free(agents, 4, "attached", "nope", NOW, out), 0);
}

static void test_empty_inputs(void **state) {
  sched_agent_t agents[] = {agent("a", "attached", "")};
  sched_job_t queued[] = {job(1, "attached", "", 1)};
  sched_plan_t plan = {.count = 99};
  sched_plan(queued, 0, agents, 1, NOW, &plan);
  assert_int_equal(plan.count, 0);
  plan.count = 99;
  sched_plan(queued, 1, agents, 0, NOW, &plan);
  assert_int_equal(plan.count, 0);
}

// --- A job that was running before: it may shrink to min_nodes -----------------------------

static void test_resumable_job_shrinks_after_its_wait(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a3", "attached", "")};
  sched_job_t queued[] = {job(4, "attached", "", 3)};
  queued[0].min_nodes = 2;
  queued[0].shrink_at_ms = NOW + 10000;
  sched_plan_t plan;
  sched_plan(queued, 1, agents, 2, NOW, &plan); /* still waiting for the third */
  assert_int_equal(plan.count, 0);
  sched_plan(queued, 1, agents, 2, NOW + 10000, &plan); /* the wait is over: 2 of 3 */
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].nodes, 2);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "a1");
  assert_string_equal(rank_agent(&plan, agents, 0, 1), "a3");
  sched_plan(queued, 1, agents, 1, NOW + 10000, &plan); /* never below min_nodes */
  assert_int_equal(plan.count, 0);
}

static void test_resumable_job_takes_all_nodes_at_once(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", ""),
                            agent("a3", "attached", ""), agent("a4", "attached", "")};
  sched_job_t queued[] = {job(4, "attached", "", 3)};
  queued[0].min_nodes = 2;
  queued[0].shrink_at_ms = NOW + 10000;
  sched_plan_t plan;
  sched_plan(queued, 1, agents, 4, NOW, &plan); /* whole before the deadline: no wait */
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].nodes, 3); /* nodes, not every free agent */
}

static void test_fresh_job_keeps_strict_gang(void **state) {
  /* min_nodes 0 (a job never started): however long it has waited, all or nothing. */
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", "")};
  sched_job_t queued[] = {job(5, "attached", "", 3)};
  sched_plan_t plan;
  sched_plan(queued, 1, agents, 2, NOW + 1000000, &plan);
  assert_int_equal(plan.count, 0);
  assert_int_equal(sched_world(&queued[0], 2, NOW + 1000000), 0);
  assert_int_equal(sched_world(&queued[0], 3, NOW), 3);
}

static void test_shrinking_job_still_blocks_its_queue(void **state) {
  sched_agent_t agents[] = {agent("a1", "attached", ""), agent("a2", "attached", "")};
  sched_job_t queued[] = {job(4, "attached", "", 3), job(9, "attached", "", 1)};
  queued[0].min_nodes = 2;
  queued[0].shrink_at_ms = NOW + 10000;
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 2, NOW, &plan); /* the older job waits: the younger too */
  assert_int_equal(plan.count, 0);
}

// --- Priorities, backfill, resources and reasons -------------------------------------------

static void test_priority_first(void **state) {
  sched_agent_t agents[] = {agent("a", "attached", "")};
  sched_job_t queued[] = {job(1, "attached", "", 1), job(2, "attached", "", 1)};
  queued[1].priority = 5; /* younger but higher: it goes first */
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 1, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 1);
  /* Job 1 is its queue's head now. */
  assert_int_equal(plan.waits[0].kind, SCHED_WAIT_RESOURCES);
  queued[0].priority = -1, queued[1].priority = 0; /* negative priorities sort below 0 */
  sched_plan(queued, 2, agents, 1, NOW, &plan);
  assert_int_equal(plan.placements[0].job, 1);
}

static void test_fifo_within_priority(void **state) {
  sched_agent_t agents[] = {agent("a", "attached", "")};
  sched_job_t queued[] = {job(8, "attached", "", 1), job(3, "attached", "", 1),
                          job(5, "attached", "", 1)};
  for (int i = 0; i < 3; i++) queued[i].priority = 2;
  sched_plan_t plan;
  sched_plan(queued, 3, agents, 1, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 1); /* job 3: the oldest of the priority */
  assert_int_equal(plan.waits[2].ahead, 0);    /* job 5 is the head */
  assert_int_equal(plan.waits[0].ahead, 1);    /* job 8 waits behind it */
}

/* Three agents, a and b busy with job 12 (no max_runtime), c idle; job 20 needs 3. */
static void backfill_setup(sched_agent_t *agents, sched_job_t *queued) {
  agents[0] = agent("a", "attached", "");
  agents[1] = agent("b", "attached", "");
  agents[2] = agent("c", "attached", "");
  agents[0].busy = agents[1].busy = 1;
  agents[0].job = agents[1].job = 12;
  queued[0] = job(20, "attached", "", 3);
  queued[1] = job(21, "attached", "", 1);
}

static void test_no_backfill_that_would_delay_the_head(void **state) {
  sched_agent_t agents[3];
  sched_job_t queued[2];
  backfill_setup(agents, queued);
  agents[0].free_at_ms = agents[1].free_at_ms = NOW + 60000; /* job 12 ends in 60 s */
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 3, NOW, &plan); /* job 21 has no max_runtime */
  assert_int_equal(plan.count, 0);
  assert_int_equal(plan.waits[1].kind, SCHED_WAIT_HELD);
  assert_int_equal(plan.waits[1].head, 20);
  queued[1].max_runtime_ms = 120000; /* it would end after job 20 can start */
  sched_plan(queued, 2, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 0);
}

static void test_backfill_with_max_runtime(void **state) {
  sched_agent_t agents[3];
  sched_job_t queued[2];
  backfill_setup(agents, queued);
  agents[0].free_at_ms = agents[1].free_at_ms = NOW + 60000;
  queued[1].max_runtime_ms = 30000; /* ends before job 20 can start: it may use c */
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 1, 0), "c");
  /* Not known when job 12 ends: job 20's start is never known, any max_runtime fits. */
  agents[0].free_at_ms = agents[1].free_at_ms = 0;
  queued[1].max_runtime_ms = 3600 * 1000;
  sched_plan(queued, 2, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  /* One idle agent, two jobs that would fit in time: the older one takes it. */
  sched_job_t three[] = {queued[0], queued[1], job(22, "attached", "", 1)};
  agents[0].free_at_ms = agents[1].free_at_ms = NOW + 60000;
  three[1].max_runtime_ms = 40000, three[2].max_runtime_ms = 40000;
  sched_plan(three, 3, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 1);
  assert_int_equal(plan.waits[2].kind, SCHED_WAIT_RESOURCES);
  assert_int_equal(plan.waits[2].ahead, 1);
  assert_int_equal(plan.waits[2].busy, 3); /* job 12 on two, job 21 (this plan's) on one */
  assert_int_equal(plan.waits[2].jobs, 2);
}

/* The head's start counts agents cooling down (free at the end of it) and leaves out
 * leaving ones (they never come back). */
static void test_head_start_estimate(void **state) {
  sched_agent_t agents[] = {agent("a", "attached", ""), agent("b", "attached", ""),
                            agent("c", "attached", ""), agent("d", "attached", "")};
  agents[0].busy = 1, agents[0].job = 12, agents[0].free_at_ms = NOW + 60000;
  agents[1].cooldown_until_ms = NOW + 5000;
  agents[3].leaving = 1;
  sched_job_t queued[] = {job(1, "attached", "", 3), job(2, "attached", "", 1)};
  queued[1].max_runtime_ms = 60000; /* ends just when job 1 can start: may go */
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 1, 0), "c");
  assert_int_equal(plan.waits[0].busy, 2); /* a running, b cooling down */
  assert_int_equal(plan.waits[0].registered, 3);
  queued[1].max_runtime_ms = 60001;
  sched_plan(queued, 2, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 0);
  /* b's cool-down outlasting a's job moves the start to 90 s: 80 s fits. */
  agents[1].cooldown_until_ms = NOW + 90000;
  queued[1].max_runtime_ms = 80000;
  sched_plan(queued, 2, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 1);
}

static void test_backfill_onto_nodes_the_head_cannot_use(void **state) {
  sched_agent_t agents[] = {agent("g1", "attached", ""), agent("g2", "attached", ""),
                            agent("cpu", "attached", "")};
  agents[0].gpus = agents[1].gpus = 4;
  agents[0].busy = 1, agents[0].job = 7;
  sched_job_t queued[] = {job(1, "attached", "", 2), job(2, "attached", "", 1),
                          job(3, "attached", "", 1)};
  queued[0].gpus = 2; /* the head fits g1 and g2 only: cpu is not held */
  sched_plan_t plan;
  sched_plan(queued, 3, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_string_equal(rank_agent(&plan, agents, 1, 0), "cpu"); /* g2 is held for job 1 */
  assert_int_equal(plan.waits[2].kind, SCHED_WAIT_HELD);
  assert_int_equal(plan.waits[0].kind, SCHED_WAIT_RESOURCES);
}

static void test_resources_respected(void **state) {
  sched_agent_t agents[] = {agent("small", "attached", ""), agent("big", "attached", "")};
  agents[0].cpus = 2, agents[0].mem_mb = 1024;
  agents[1].cpus = 16, agents[1].mem_mb = 65536, agents[1].gpus = 8;
  sched_job_t queued[] = {job(1, "attached", "", 1)};
  queued[0].cpus = 4, queued[0].mem_mb = 2048;
  sched_plan_t plan;
  sched_plan(queued, 1, agents, 2, NOW, &plan);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "big");
}

/* workers_per_node multiplies what a node needs: 4 workers of 2 GPUs need an 8-GPU agent. */
static void test_resources_per_node(void **state) {
  (void)state;
  sched_agent_t agents[] = {agent("four", "attached", ""), agent("eight", "attached", "")};
  agents[0].gpus = 4, agents[0].cpus = 64;
  agents[1].gpus = 8, agents[1].cpus = 64;
  sched_job_t queued[] = {job(1, "attached", "", 1)};
  queued[0].gpus = 2, queued[0].workers_per_node = 4;
  assert_false(sched_holds(&agents[0], &queued[0]));
  assert_true(sched_holds(&agents[1], &queued[0]));
  sched_plan_t plan;
  sched_plan(queued, 1, agents, 2, NOW, &plan);
  assert_string_equal(rank_agent(&plan, agents, 0, 0), "eight");
  /* Two such nodes: only one agent holds one; the reason says what a node needs. */
  queued[0].nodes = 2, queued[0].cpus = 4;
  sched_plan(queued, 1, agents, 2, NOW, &plan);
  assert_int_equal(plan.waits[0].kind, SCHED_WAIT_NEVER);
  char why[256];
  sched_reason(&queued[0], &plan.waits[0], why, sizeof why);
  assert_string_equal(why, "needs 2 nodes x 8 GPUs, 16 CPUs, only 1 agent of target attached "
                           "registered with that");
  /* workers_per_node 0 (one per GPU): a node needs one worker's worth. */
  queued[0].workers_per_node = 0, queued[0].nodes = 1;
  assert_true(sched_holds(&agents[0], &queued[0]));
}

static void test_impossible_job_does_not_block(void **state) {
  sched_agent_t agents[] = {agent("a", "attached", ""), agent("b", "attached", ""),
                            agent("c", "attached", "")};
  sched_job_t queued[] = {job(1, "attached", "", 5), job(2, "attached", "", 1)};
  queued[0].priority = 9;
  sched_plan_t plan;
  sched_plan(queued, 2, agents, 3, NOW, &plan);
  assert_int_equal(plan.count, 1);
  assert_int_equal(plan.placements[0].job, 1);
  assert_int_equal(plan.waits[0].kind, SCHED_WAIT_NEVER);
  char why[256];
  sched_reason(&queued[0], &plan.waits[0], why, sizeof why);
  assert_string_equal(why, "needs 5 nodes, only 3 agents of target attached registered");
  /* Too few with its resources is the same. */
  queued[0].nodes = 1, queued[0].gpus = 1;
  sched_plan(queued, 2, agents, 3, NOW, &plan);
  assert_int_equal(plan.waits[0].kind, SCHED_WAIT_NEVER);
  sched_reason(&queued[0], &plan.waits[0], why, sizeof why);
  assert_string_equal(why,
                      "needs 1 node x 1 GPU, only 0 agents of target attached registered "
                      "with that");
  /* A pool with no agent at all. */
  sched_job_t pooled = job(3, "attached", "gpu-a", 1);
  sched_plan(&pooled, 1, agents, 3, NOW, &plan);
  sched_reason(&pooled, &plan.waits[0], why, sizeof why);
  assert_string_equal(why, "pool gpu-a: no agent of target attached registered");
}

static void test_reasons_text(void **state) {
  sched_agent_t agents[] = {agent("a", "attached", ""), agent("b", "attached", ""),
                            agent("c", "attached", ""), agent("d", "attached", "")};
  agents[0].busy = 1, agents[0].job = 12;
  agents[1].busy = 1, agents[1].job = 12;
  sched_job_t queued[] = {job(1, "attached", "", 4), job(2, "attached", "", 3),
                          job(3, "attached", "", 1)};
  sched_plan_t plan;
  char why[256];
  sched_plan(queued, 3, agents, 4, NOW, &plan);
  assert_int_equal(plan.count, 0);
  sched_reason(&queued[0], &plan.waits[0], why, sizeof why);
  assert_string_equal(why, "resources: needs 4 nodes, 2 idle, 2 busy (job 12), 4 registered");
  sched_reason(&queued[1], &plan.waits[1], why, sizeof why);
  assert_string_equal(why, "priority: 1 job ahead; needs 3 nodes, 4 registered");
  sched_reason(&queued[2], &plan.waits[2], why, sizeof why);
  assert_string_equal(why,
                      "priority: 2 jobs ahead; backfill: job 1 holds the idle nodes it "
                      "fits; it has no max_runtime to fit before that job's start");
  queued[2].max_runtime_ms = 1000;
  agents[0].free_at_ms = agents[1].free_at_ms = NOW + 500;
  sched_plan(queued, 3, agents, 4, NOW, &plan);
  sched_reason(&queued[2], &plan.waits[2], why, sizeof why);
  assert_string_equal(why,
                      "priority: 2 jobs ahead; backfill: job 1 holds the idle nodes it "
                      "fits; its max_runtime ends after that job's earliest start");
  /* Placed: no reason. */
  agents[0].busy = agents[1].busy = 0;
  sched_plan(queued, 1, agents, 4, NOW, &plan);
  sched_reason(&queued[0], &plan.waits[0], why, sizeof why);
  assert_string_equal(why, "");
  /* Busy agents of two jobs. */
  agents[0].busy = 1, agents[0].job = 12;
  agents[1].busy = 1, agents[1].job = 13;
  sched_plan(queued, 1, agents, 4, NOW, &plan);
  sched_reason(&queued[0], &plan.waits[0], why, sizeof why);
  assert_string_equal(why, "resources: needs 4 nodes, 2 idle, 2 busy (jobs 12, 13), 4 registered");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gang_waits_for_every_worker),
      cmocka_unit_test(test_gang_does_not_count_busy_agents),
      cmocka_unit_test(test_no_agent_in_two_placements),
      cmocka_unit_test(test_fifo_older_job_blocks_its_queue),
      cmocka_unit_test(test_fifo_oldest_first),
      cmocka_unit_test(test_fifo_other_queues_not_blocked),
      cmocka_unit_test(test_targets_and_pools_respected),
      cmocka_unit_test(test_cooling_down_and_leaving_not_used),
      cmocka_unit_test(test_free_agents_in_id_order),
      cmocka_unit_test(test_empty_inputs),
      cmocka_unit_test(test_resumable_job_shrinks_after_its_wait),
      cmocka_unit_test(test_resumable_job_takes_all_nodes_at_once),
      cmocka_unit_test(test_fresh_job_keeps_strict_gang),
      cmocka_unit_test(test_shrinking_job_still_blocks_its_queue),
      cmocka_unit_test(test_priority_first),
      cmocka_unit_test(test_fifo_within_priority),
      cmocka_unit_test(test_no_backfill_that_would_delay_the_head),
      cmocka_unit_test(test_backfill_with_max_runtime),
      cmocka_unit_test(test_head_start_estimate),
      cmocka_unit_test(test_backfill_onto_nodes_the_head_cannot_use),
      cmocka_unit_test(test_resources_respected),
      cmocka_unit_test(test_resources_per_node),
      cmocka_unit_test(test_impossible_job_does_not_block),
      cmocka_unit_test(test_reasons_text),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
