/* main.c: the `drover` command: dispatch, and the small subcommands (coordinator, agent,
 * worker, status, cancel, agents, bench). `submit` lives in submit.c. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "worker/worker.h"
#include "cli/bench.h"
#include "cli/cli.h"
#include "cli/submit.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"
#include "coordinator/coord.h"

// --- coordinator, agent, worker ------------------------------------------------------------

static int cmd_coordinator(int argc, char **argv) {
  static const struct option opts[] = {{"bind", required_argument, 0, 'b'},
                                       {"advertise", required_argument, 0, 'a'},
                                       {"state-dir", required_argument, 0, 's'},
                                       {"exit-when-idle", required_argument, 0, 'i'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *bind = NULL, *advertise = NULL, *state = NULL;
  int c, idle_s = 0;
  while ((c = getopt_long(argc, argv, "b:a:s:i:h", opts, NULL)) != -1) {
    if (c == 'b')
      bind = optarg;
    else if (c == 'a')
      advertise = optarg;
    else if (c == 's')
      state = optarg;
    else if (c == 'i')
      idle_s = atoi(optarg);
    else
      return cli_usage_fail("coordinator",
                            "[--bind tcp://*:7700] [--advertise tcp://HEAD:7700] [--state-dir DIR] "
                            "[--exit-when-idle SECONDS]");
  }
  log_init("coordinator");
  volatile sig_atomic_t *stop = cli_stop_signals();
  bind = cli_coordinator(bind);
  char adv[256];
  if (!advertise) {
    /* Workers connect where the coordinator listens; a wildcard bind needs a real name. */
    if (strstr(bind, "://*:") || strstr(bind, "://0.0.0.0:")) {
      char host[200] = "localhost";
      gethostname(host, sizeof host - 1);
      snprintf(adv, sizeof adv, "tcp://%s%s", host, strrchr(bind, ':'));
      advertise = adv;
    } else {
      advertise = bind;
    }
  }
  coord_config_t cfg = {.bind = bind,
                        .advertise = advertise,
                        .state_dir = cli_state_dir(state),
                        .exit_when_idle_s = idle_s};
  drv_result_t rc = coord_run(&cfg, stop);
  if (rc != DRV_OK) {
    log_error("%s", drv_last_error());
    return 1;
  }
  return 0;
}

static int cmd_agent(int argc, char **argv) {
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                       {"id", required_argument, 0, 'i'},
                                       {"target", required_argument, 0, 't'},
                                       {"host", required_argument, 0, 'H'},
                                       {"pool", required_argument, 0, 'p'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  agent_config_t cfg = {.target = "attached"};
  int c;
  while ((c = getopt_long(argc, argv, "c:i:t:H:p:h", opts, NULL)) != -1) {
    if (c == 'c')
      cfg.coordinator = optarg;
    else if (c == 'i')
      cfg.agent_id = optarg;
    else if (c == 't')
      cfg.target = optarg;
    else if (c == 'H')
      cfg.host = optarg;
    else if (c == 'p')
      cfg.pool = optarg;
    else
      return cli_usage_fail("agent",
                            "--coordinator tcp://HEAD:7700 [--id NAME] [--target attached|local] "
                            "[--host ADDR] [--pool NAME]");
  }
  if (strcmp(cfg.target, "attached") && strcmp(cfg.target, "local") &&
      strcmp(cfg.target, "managed")) {
    fprintf(stderr, "drover agent: --target %s: expected attached, local or managed\n", cfg.target);
    return 2;
  }
  cfg.coordinator = cli_coordinator(cfg.coordinator);
  cfg.exe = cli_self_exe();
  log_init("agent");
  volatile sig_atomic_t *stop = cli_stop_signals();
  if (agent_run(&cfg, stop) != DRV_OK) {
    log_error("%s", drv_last_error());
    return 1;
  }
  return 0;
}

/* Started by an agent, which writes the assignment on its stdin (worker.h). Its arguments
 * (--job J --rank R --run-dir DIR) only name the process for ps and pgrep. */
static int cmd_worker(int argc, char **argv) {
  if (argc % 2 == 0)
    return cli_usage_fail("worker",
                          "[--job J --rank R --run-dir DIR] (started by an agent, "
                          "assignment on stdin)");
  log_init("worker");
  proto_msg_t m;
  if (worker_read_assignment(0, &m) != DRV_OK) {
    log_error("%s", drv_last_error());
    proto_msg_fini(&m);
    return 2;
  }
  char role[48];
  snprintf(role, sizeof role, "worker %u", m.u.assign.rank);
  log_init(role);
  signal(SIGPIPE, SIG_IGN);
  drv_result_t rc = worker_run(&m.u.assign);
  proto_msg_fini(&m);
  return rc == DRV_OK ? 0 : rc == DRV_ERR_CANCELLED ? 3 : 1;
}

// --- status, cancel, agents ----------------------------------------------------------------

static void print_time(double t, char *buf, size_t n) {
  if (t <= 0) {
    snprintf(buf, n, "-");
    return;
  }
  time_t s = (time_t)t;
  struct tm tm;
  localtime_r(&s, &tm);
  strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

static int cmd_status(int argc, char **argv) {
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                       {"json", no_argument, 0, 'j'},
                                       {"limit", required_argument, 0, 'n'},
                                       {0, 0, 0, 0}};
  const char *coord = NULL;
  int json = 0, c;
  uint32_t limit = 20;
  while ((c = getopt_long(argc, argv, "c:jn:", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else if (c == 'j')
      json = 1;
    else if (c == 'n')
      limit = (uint32_t)strtoul(optarg, NULL, 10);
    else
      return cli_usage_fail("status", "[JOB] [--json] [--limit N] [--coordinator EP]");
  }
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.limit = limit;
  if (optind < argc) {
    char *end;
    req.u.status.job = strtoll(argv[optind], &end, 10);
    if (*end || req.u.status.job <= 0) {
      fprintf(stderr, "drover status: '%s' is not a job id\n", argv[optind]);
      return 2;
    }
  }
  sock_ctx_t *ctx = sock_ctx_new();
  drv_result_t rc = sock_request(ctx, cli_coordinator(coord), &req, &rep,
                                 (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS));
  int ret = 0;
  if (rc != DRV_OK) {
    fprintf(stderr, "drover status: %s\n", drv_last_error());
    ret = 1;
  } else if (rep.type != PROTO_JOBS) {
    fprintf(stderr, "drover status: unexpected reply '%s'\n", proto_type_name(rep.type));
    ret = 1;
  } else if (json) {
    fputs("[", stdout);
    for (uint32_t i = 0; i < rep.u.jobs.jobs_count; i++) {
      proto_job_t *j = &rep.u.jobs.jobs[i];
      printf("%s{\"job\":%" PRId64 ",\"name\":", i ? "," : "", j->id);
      cli_json_str(stdout, j->name);
      fputs(",\"status\":", stdout);
      cli_json_str(stdout, j->state);
      fputs(",\"reason\":", stdout);
      cli_json_str(stdout, j->reason);
      fputs(",\"target\":", stdout);
      cli_json_str(stdout, j->target);
      printf(",\"nodes\":%u,\"epoch\":%u,\"epochs\":%u,\"step\":%" PRIu64
             ",\"steps_total\":%" PRIu64,
             j->nodes, j->epoch, j->epochs, j->step, j->steps_total);
      fputs(",\"loss\":", stdout);
      cli_json_num(stdout, j->loss);
      fputs(",\"samples_per_s\":", stdout);
      cli_json_num(stdout, j->samples_per_s);
      fputs(",\"test_loss\":", stdout);
      cli_json_num(stdout, j->test_loss);
      fputs(",\"test_accuracy\":", stdout);
      cli_json_num(stdout, j->test_accuracy);
      fputs(",\"run_dir\":", stdout);
      cli_json_str(stdout, j->run_dir);
      fputs(",\"submitted_at\":", stdout);
      cli_json_num(stdout, j->submitted_at);
      fputs(",\"started_at\":", stdout);
      cli_json_num(stdout, j->started_at);
      fputs(",\"finished_at\":", stdout);
      cli_json_num(stdout, j->finished_at);
      printf(",\"ckpt_step\":%" PRIu64 ",\"ranks\":[", j->ckpt_step);
      for (uint32_t r = 0; r < j->ranks_count; r++) {
        const proto_rank_t *k = &j->ranks[r];
        printf("%s{\"rank\":%u,\"agent\":", r ? "," : "", k->rank);
        cli_json_str(stdout, k->agent);
        fputs(",\"host\":", stdout);
        cli_json_str(stdout, k->host);
        printf(
            ",\"step_ms\":%.3f,\"compute_ms\":%.3f,\"wait_ms\":%.3f,\"data_ms\":%.3f,"
            "\"straggler\":%s}",
            k->step_ms, k->compute_ms, k->wait_ms, isfinite(k->data_ms) ? k->data_ms : 0,
            k->straggler ? "true" : "false");
      }
      fputs("]", stdout);
      fputs("}", stdout);
    }
    fputs("]\n", stdout);
  } else {
    printf("%-5s %-20s %-10s %-9s %5s %13s %9s %11s  %-19s  %s\n", "JOB", "NAME", "STATE", "TARGET",
           "NODES", "STEP", "TEST_ACC", "SAMPLES/S", "SUBMITTED", "REASON");
    for (uint32_t i = 0; i < rep.u.jobs.jobs_count; i++) {
      proto_job_t *j = &rep.u.jobs.jobs[i];
      char when[32], step[32], acc[16], sps[16];
      print_time(j->submitted_at, when, sizeof when);
      if (j->steps_total)
        snprintf(step, sizeof step, "%" PRIu64 "/%" PRIu64, j->step, j->steps_total);
      else
        snprintf(step, sizeof step, "%" PRIu64, j->step);
      if (isfinite(j->test_accuracy))
        snprintf(acc, sizeof acc, "%.4f", j->test_accuracy);
      else
        snprintf(acc, sizeof acc, "-");
      if (isfinite(j->samples_per_s) && j->samples_per_s > 0)
        snprintf(sps, sizeof sps, "%.0f", j->samples_per_s);
      else
        snprintf(sps, sizeof sps, "-");
      printf("%-5" PRId64 " %-20.20s %-10s %-9s %5u %13s %9s %11s  %-19s  %s\n", j->id, j->name,
             j->state, j->target, j->nodes, step, acc, sps, when, j->reason);
    }
    /* One running job: its ranks, for spotting the one the others wait for. */
    if (req.u.status.job && rep.u.jobs.jobs_count == 1 && rep.u.jobs.jobs[0].ranks_count) {
      const proto_job_t *j = &rep.u.jobs.jobs[0];
      printf("\n%-5s %-28s %-16s %10s %12s %10s %10s  %s\n", "RANK", "AGENT", "HOST", "STEP_MS",
             "COMPUTE_MS", "WAIT_MS", "DATA_MS", "");
      for (uint32_t r = 0; r < j->ranks_count; r++) {
        const proto_rank_t *k = &j->ranks[r];
        printf("%-5u %-28.28s %-16.16s %10.2f %12.2f %10.2f %10.2f  %s\n", k->rank, k->agent,
               k->host, k->step_ms, k->compute_ms, k->wait_ms,
               isfinite(k->data_ms) ? k->data_ms : 0, k->straggler ? "straggler" : "");
      }
    }
  }
  proto_msg_fini(&rep);
  sock_ctx_destroy(&ctx);
  return ret;
}

static int cmd_cancel(int argc, char **argv) {
  const char *coord = NULL;
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else
      return cli_usage_fail("cancel", "JOB [--coordinator EP]");
  }
  if (optind >= argc) return cli_usage_fail("cancel", "JOB [--coordinator EP]");
  char *end;
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_CANCEL);
  req.u.cancel.job = strtoll(argv[optind], &end, 10);
  if (*end || req.u.cancel.job <= 0) {
    fprintf(stderr, "drover cancel: '%s' is not a job id\n", argv[optind]);
    return 2;
  }
  sock_ctx_t *ctx = sock_ctx_new();
  drv_result_t rc = sock_request(ctx, cli_coordinator(coord), &req, &rep,
                                 (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS));
  if (rc == DRV_OK)
    printf("job %" PRId64 " cancelled\n", req.u.cancel.job);
  else
    fprintf(stderr, "drover cancel: %s\n", drv_last_error());
  proto_msg_fini(&rep);
  sock_ctx_destroy(&ctx);
  return rc == DRV_OK ? 0 : 1;
}

static int cmd_agents(int argc, char **argv) {
  const char *coord = NULL;
  int json = 0, c;
  static const struct option opts[] = {
      {"coordinator", required_argument, 0, 'c'}, {"json", no_argument, 0, 'j'}, {0, 0, 0, 0}};
  while ((c = getopt_long(argc, argv, "c:j", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else if (c == 'j')
      json = 1;
    else
      return cli_usage_fail("agents", "[--json] [--coordinator EP]");
  }
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_AGENTS);
  sock_ctx_t *ctx = sock_ctx_new();
  drv_result_t rc = sock_request(ctx, cli_coordinator(coord), &req, &rep,
                                 (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS));
  int ret = 0;
  if (rc != DRV_OK || rep.type != PROTO_AGENT_LIST) {
    fprintf(stderr, "drover agents: %s\n", rc != DRV_OK ? drv_last_error() : "unexpected reply");
    ret = 1;
  } else if (json) {
    fputs("[", stdout);
    for (uint32_t i = 0; i < rep.u.agent_list.agents_count; i++) {
      proto_agent_t *a = &rep.u.agent_list.agents[i];
      fputs(i ? ",{\"agent\":" : "{\"agent\":", stdout);
      cli_json_str(stdout, a->agent_id);
      fputs(",\"host\":", stdout);
      cli_json_str(stdout, a->host);
      fputs(",\"target\":", stdout);
      cli_json_str(stdout, a->target);
      fputs(",\"state\":", stdout);
      cli_json_str(stdout, a->state);
      printf(",\"cpus\":%u,\"gpus\":%u,\"mem_bytes\":%" PRIu64 ",\"job\":%" PRId64
             ",\"last_seen_s\":%.3f}",
             a->cpus, a->gpus, a->mem_bytes, a->job, a->last_seen_s);
    }
    fputs("]\n", stdout);
  } else {
    printf("%-28s %-16s %-9s %-5s %5s %5s %9s %6s %10s\n", "AGENT", "HOST", "TARGET", "STATE",
           "CPUS", "GPUS", "MEM_GIB", "JOB", "LAST_SEEN");
    for (uint32_t i = 0; i < rep.u.agent_list.agents_count; i++) {
      proto_agent_t *a = &rep.u.agent_list.agents[i];
      char job[24] = "-";
      if (a->job) snprintf(job, sizeof job, "%" PRId64, a->job);
      printf("%-28.28s %-16.16s %-9s %-5s %5u %5u %9.1f %6s %9.1fs\n", a->agent_id, a->host,
             a->target, a->state, a->cpus, a->gpus, (double)a->mem_bytes / (1 << 30), job,
             a->last_seen_s);
    }
  }
  proto_msg_fini(&rep);
  sock_ctx_destroy(&ctx);
  return ret;
}

// --- main ----------------------------------------------------------------------------------

static void usage(FILE *out) {
  fputs(
      "drover: distributed training on a laptop, attached nodes or a managed cluster\n\n"
      "usage: drover COMMAND [ARGS]\n\n"
      "  submit SPEC.yaml [--target local|attached] [--nodes N] [--set key.path=value]...\n"
      "                   [--json] [--detach] [--coordinator EP] [--state-dir DIR] [-v]\n"
      "                   [--resume JOB]\n"
      "                   submit a job and follow it (starts a coordinator if none answers)\n"
      "  submit --resume JOB [--set key.path=value]...\n"
      "                   continue a finished, failed or cancelled job from its last checkpoint\n"
      "  status [JOB] [--json]            jobs, past and present\n"
      "  cancel JOB                       stop a queued or running job\n"
      "  agents [--json]                  the agent registry\n"
      "  agent --coordinator tcp://HEAD:7700 [--id NAME] [--target attached|local]\n"
      "        [--host ADDR] [--pool NAME]\n"
      "                                   run the node daemon (one per node)\n"
      "  coordinator [--bind tcp://*:7700] [--advertise EP] [--state-dir DIR]\n"
      "              [--exit-when-idle SECONDS]\n"
      "                                   run the coordinator in the foreground\n"
      "  bench ring [--workers 2,4] [--bytes 64M] [--iters N] [--json]\n"
      "                                   host ring all-reduce benchmark\n"
      "  bench train [--sizes 784,1024,1024,10] [--batch 256] [--precision fp32|tf32|bf16]\n"
      "              [--steps 100] [--repeats 5] [--graphs auto|on|off] [--data "
      "synthetic|fashion]\n"
      "              [--backend auto|cpu|cuda] [--json]\n"
      "                                   the training step: ms/step, samples/s, TFLOP/s\n"
      "  bench overlap [--bucket-mb 64] [--json]\n"
      "                                   2 ranks on GPU 0: NCCL all-reduce hidden behind "
      "backward\n"
      "  settings                         tunables and their environment variables\n\n"
      "The coordinator endpoint defaults to $DROVER_COORDINATOR or tcp://127.0.0.1:7700\n"
      "(agents use that port, clients +1, events +2).\n",
      out);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  /* A peer gone mid-write is an error to report, never a reason to die (libzmq's I/O
   * threads write without MSG_NOSIGNAL). */
  signal(SIGPIPE, SIG_IGN);
  const char *cmd = argv[1];
  argc--;
  argv++;
  if (!strcmp(cmd, "submit")) return cmd_submit(argc, argv);
  if (!strcmp(cmd, "status")) return cmd_status(argc, argv);
  if (!strcmp(cmd, "cancel")) return cmd_cancel(argc, argv);
  if (!strcmp(cmd, "agents")) return cmd_agents(argc, argv);
  if (!strcmp(cmd, "agent")) return cmd_agent(argc, argv);
  if (!strcmp(cmd, "coordinator")) return cmd_coordinator(argc, argv);
  if (!strcmp(cmd, "worker")) return cmd_worker(argc, argv);
  if (!strcmp(cmd, "bench")) {
    if (argc >= 2 && !strcmp(argv[1], "ring")) return bench_ring_main(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "train") || !strcmp(argv[1], "overlap")))
      return bench_train_main(argc - 1, argv + 1);
    fputs("usage: drover bench ring|train|overlap [options] (drover help)\n", stderr);
    return 2;
  }
  if (!strcmp(cmd, "settings")) {
    drv_settings_print(stdout);
    return 0;
  }
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    usage(stdout);
    return 0;
  }
  fprintf(stderr, "drover: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return 2;
}
