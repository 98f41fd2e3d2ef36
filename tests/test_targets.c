/* test_targets.c: coordinator/targets, the targets file: a full file loads with its
 * defaults; every schema error names the file, the line and the key; the checks the schema
 * cannot make (bounds, one launcher section, ssh hosts, names) name the target and key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/targets.h"

#ifndef DROVER_SOURCE_DIR
#define DROVER_SOURCE_DIR "."
#endif

static const char *const good =
    "targets:\n"
    "  - name: cpu-pool\n"
    "    launcher: command\n"
    "    max_nodes: 4\n"
    "    command: {start: \"{agent}\"}\n"
    "  - name: gpu\n"
    "    launcher: slurm\n"
    "    min_nodes: 1\n"
    "    max_nodes: 8\n"
    "    idle_timeout: 60\n"
    "    launch_timeout: 600\n"
    "    preemptible: true\n"
    "    node: {cpus: 64, gpus: 8, memory_mb: 512000}\n"
    "    agent_args: [--allow-dir, /data]\n"
    "    slurm: {partition: gpu, gres: \"gpu:8\", time_limit: \"04:00:00\"}\n"
    "  - name: lab\n"
    "    launcher: ssh\n"
    "    max_nodes: 2\n"
    "    ssh: {hosts: [h1, h2], user: ml, port: 2222}\n";

static void test_good_file(void **state) {
  (void)state;
  targets_file_t *f = NULL;
  assert_int_equal(targets_parse(good, strlen(good), "t.yaml", &f), DRV_OK);
  assert_int_equal(f->targets_count, 3);
  const target_t *c = targets_find(f, "cpu-pool");
  assert_non_null(c);
  assert_int_equal(c->launcher, LAUNCHER_COMMAND);
  assert_int_equal(c->min_nodes, 0);
  assert_int_equal(c->max_nodes, 4);
  assert_int_equal(c->idle_timeout_s, 300); /* the defaults */
  assert_int_equal(c->launch_timeout_s, 120);
  assert_false(c->preemptible);
  assert_string_equal(c->command->start, "{agent}");
  assert_null(c->command->stop);
  const target_t *g = targets_find(f, "gpu");
  assert_int_equal(g->launcher, LAUNCHER_SLURM);
  assert_true(g->preemptible);
  assert_int_equal(g->node.gpus, 8);
  assert_int_equal(g->agent_args_count, 2);
  assert_string_equal(g->slurm->gres, "gpu:8");
  assert_int_equal(g->idle_timeout_s, 60);
  const target_t *l = targets_find(f, "lab");
  assert_int_equal(l->ssh->hosts_count, 2);
  assert_int_equal(l->ssh->port, 2222);
  assert_null(targets_find(f, "local"));
  assert_null(targets_find(f, "nope"));
  assert_string_equal(targets_launcher_name(LAUNCHER_SSH), "ssh");
  targets_free(&f);
  assert_null(f);
}

/* Parsing fails with DRV_ERR_INVALID and a message holding each needle. */
static void expect_invalid(const char *yaml, ...) {
  targets_file_t *f = (targets_file_t *)&f;
  drv_result_t rc = targets_parse(yaml, strlen(yaml), "t.yaml", &f);
  if (rc != DRV_ERR_INVALID) fail_msg("expected DRV_ERR_INVALID, got %d for:\n%s", rc, yaml);
  assert_null(f);
  const char *msg = drv_last_error();
  va_list ap;
  va_start(ap, yaml);
  for (const char *needle; (needle = va_arg(ap, const char *));)
    if (!strstr(msg, needle)) fail_msg("message \"%s\" lacks \"%s\"", msg, needle);
  va_end(ap);
}

#define ONE(extra) "targets:\n  - name: p\n    launcher: command\n    max_nodes: 2\n" \
                   "    command: {start: x}\n" extra

static void test_schema_errors_name_line_and_key(void **state) {
  (void)state;
  expect_invalid(ONE("    colour: red\n"), "t.yaml:6: colour (target at line 2): unknown key",
                 (const char *)NULL);
  expect_invalid("targets:\n  - name: p\n    launcher: rocket\n    max_nodes: 2\n",
                 "t.yaml:3", "launcher", (const char *)NULL);
  expect_invalid("targets:\n  - name: p\n    launcher: command\n    max_nodes: many\n",
                 "t.yaml:4", "max_nodes", (const char *)NULL);
  expect_invalid("targets:\n  - name: p\n    launcher: command\n", "t.yaml", "max_nodes",
                 (const char *)NULL);
  expect_invalid("", "t.yaml", (const char *)NULL);
  expect_invalid("targets: []\n", "t.yaml", (const char *)NULL);
}

static void test_value_checks(void **state) {
  (void)state;
  expect_invalid("targets:\n  - name: p\n    launcher: command\n    min_nodes: 3\n"
                 "    max_nodes: 2\n    command: {start: x}\n",
                 "target p: min_nodes 3 is more than max_nodes 2", (const char *)NULL);
  expect_invalid("targets:\n  - name: p\n    launcher: command\n    max_nodes: 0\n"
                 "    command: {start: x}\n",
                 "target p: max_nodes: must be 1 to 256", (const char *)NULL);
  expect_invalid("targets:\n  - name: p\n    launcher: slurm\n    max_nodes: 2\n"
                 "    command: {start: x}\n",
                 "target p: launcher slurm needs its section `slurm:`", (const char *)NULL);
  expect_invalid(ONE("    ssh: {hosts: [a]}\n"), "only the section of its launcher (command)",
                 (const char *)NULL);
  expect_invalid("targets:\n  - name: p\n    launcher: ssh\n    max_nodes: 3\n"
                 "    ssh: {hosts: [a, b]}\n",
                 "max_nodes 3 is more than its 2 ssh host(s)", (const char *)NULL);
  expect_invalid("targets:\n  - name: local\n    launcher: command\n    max_nodes: 1\n"
                 "    command: {start: x}\n",
                 "target local: name: local is a built-in target", (const char *)NULL);
  expect_invalid("targets:\n  - name: ../x\n    launcher: command\n    max_nodes: 1\n"
                 "    command: {start: x}\n",
                 "targets[0].name", "not a target name", (const char *)NULL);
  expect_invalid(ONE("  - name: p\n    launcher: command\n    max_nodes: 1\n"
                     "    command: {start: y}\n"),
                 "target p: name given twice", (const char *)NULL);
}

/* examples/targets.yaml loads as it is. */
static void test_example_file(void **state) {
  (void)state;
  targets_file_t *f = NULL;
  if (targets_load(DROVER_SOURCE_DIR "/examples/targets.yaml", &f) != DRV_OK)
    fail_msg("%s", drv_last_error());
  const target_t *t = targets_find(f, "cpu-pool");
  assert_non_null(t);
  assert_int_equal(t->launcher, LAUNCHER_COMMAND);
  assert_int_equal(t->max_nodes, 4);
  targets_free(&f);
  assert_int_equal(targets_load("/nonexistent/targets.yaml", &f), DRV_ERR_SYS);
  assert_non_null(strstr(drv_last_error(), "/nonexistent/targets.yaml"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_file),
      cmocka_unit_test(test_schema_errors_name_line_and_key),
      cmocka_unit_test(test_value_checks),
      cmocka_unit_test(test_example_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
