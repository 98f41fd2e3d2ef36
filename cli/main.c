/* main.c: the `drover` command: dispatch and the summary `drover help` prints. The
 * commands live in cmd_node.c (coordinator, agent, worker), cmd_jobs.c (status, cancel,
 * agents, settings), submit.c and bench_*.c. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/bench.h"
#include "cli/cmd_jobs.h"
#include "cli/cmd_node.h"
#include "cli/submit.h"

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
  if (!strcmp(cmd, "settings")) return cmd_settings(argc, argv);
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    usage(stdout);
    return 0;
  }
  fprintf(stderr, "drover: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return 2;
}
