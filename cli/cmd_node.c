/* cmd_node.c: `drover coordinator`, `drover agent` and `drover worker` (cmd_node.h): parse
 * the flags, fill in the process's configuration and run it until it stops. */
#include "cli/cmd_node.h"

#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/jobspec.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "coordinator/coord.h"
#include "worker/worker.h"

int cmd_coordinator(int argc, char **argv) {
  static const struct option opts[] = {{"bind", required_argument, 0, 'b'},
                                       {"advertise", required_argument, 0, 'a'},
                                       {"state-dir", required_argument, 0, 's'},
                                       {"exit-when-idle", required_argument, 0, 'i'},
                                       {"targets", required_argument, 0, 'T'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *bind = NULL, *advertise = NULL, *state = NULL, *targets = NULL;
  int c, idle_s = 0;
  while ((c = getopt_long(argc, argv, "b:a:s:i:T:h", opts, NULL)) != -1) {
    if (c == 'T')
      targets = optarg;
    else if (c == 'b')
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
                            "[--exit-when-idle SECONDS] [--targets FILE] [--insecure]");
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
                        .exit_when_idle_s = idle_s,
                        .targets = targets,
                        .exe = cli_self_exe(),
                        .insecure = drv_setting(DRV_SET_INSECURE) != 0};
  drv_result_t rc = coord_run(&cfg, stop);
  if (rc != DRV_OK) {
    log_last_error();
    return 1;
  }
  return 0;
}

int cmd_agent(int argc, char **argv) {
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                       {"id", required_argument, 0, 'i'},
                                       {"target", required_argument, 0, 't'},
                                       {"host", required_argument, 0, 'H'},
                                       {"pool", required_argument, 0, 'p'},
                                       {"parent", required_argument, 0, 'P'},
                                       {"exit-without-coordinator", required_argument, 0, 'X'},
                                       {"allow-dir", required_argument, 0, 'A'},
                                       {"run-as", required_argument, 0, 'U'},
                                       {"node", required_argument, 0, 'N'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  agent_config_t cfg = {.target = "attached"};
  static const char *allow[64];
  int c;
  char *end;
  long v;
  while ((c = getopt_long(argc, argv, "c:i:t:H:p:P:X:A:U:N:h", opts, NULL)) != -1) {
    if (c == 'N')
      cfg.node = optarg;
    else if (c == 'A' && cfg.nallow_dirs < (int)DRV_ARRAY_LEN(allow))
      allow[cfg.nallow_dirs++] = optarg;
    else if (c == 'U')
      cfg.run_as = optarg;
    else if (c == 'c')
      cfg.coordinator = optarg;
    else if (c == 'i')
      cfg.agent_id = optarg;
    else if (c == 't')
      cfg.target = optarg;
    else if (c == 'H')
      cfg.host = optarg;
    else if (c == 'p')
      cfg.pool = optarg;
    else if ((c == 'P' || c == 'X') && (v = strtol(optarg, &end, 10)) > 0 && !*end &&
             v <= INT_MAX) {
      if (c == 'P')
        cfg.parent = (pid_t)v;
      else
        cfg.exit_without_coordinator_s = (int)v;
    } else
      return cli_usage_fail("agent",
                            "--coordinator tcp://HEAD:7700 [--id NAME] [--target attached|local|T] "
                            "[--host ADDR] [--pool NAME] [--parent PID] "
                            "[--exit-without-coordinator SECONDS] [--allow-dir DIR]... "
                            "[--run-as USER] [--node NAME] [--join FILE] [--insecure]");
  }
  cfg.allow_dirs = allow;
  if (!jobspec_name_ok(cfg.target, JOBSPEC_TARGET_MAX)) {
    fprintf(stderr,
            "drover agent: --target %s: expected attached, local or a target's name (1 to %d "
            "letters, digits, '.', '_' or '-')\n",
            cfg.target, JOBSPEC_TARGET_MAX);
    return 2;
  }
  cfg.coordinator = cli_coordinator(cfg.coordinator);
  cfg.exe = cli_self_exe();
  log_init("agent");
  sock_keys_t keys;
  int plaintext;
  if (cli_peer_keys("agent.secret", &keys, &plaintext) != DRV_OK) {
    log_last_error();
    return 1;
  }
  cfg.keys = plaintext ? NULL : &keys;
  volatile sig_atomic_t *stop = cli_stop_signals();
  if (agent_run(&cfg, stop) != DRV_OK) {
    log_last_error();
    return 1;
  }
  return 0;
}

/* Started by an agent, which writes the assignment on its stdin (worker.h). Its arguments
 * (--job J --rank R --run-dir DIR) only name the process for ps and pgrep. */
int cmd_worker(int argc, char **argv) {
  /* A terminal on stdin: a person, not an agent, started it; it would wait forever. */
  if (argc % 2 == 0 || isatty(0))
    return cli_usage_fail("worker",
                          "[--job J --rank R --run-dir DIR] (started by an agent, "
                          "assignment on stdin)");
  log_init("worker");
  proto_msg_t m;
  if (worker_read_assignment(0, &m) != DRV_OK) {
    log_last_error();
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
