/* main.c: the `drover` command: one table of subcommands (name, handler, synopsis, a line of
 * help), from which main() dispatches and `drover help` prints the summary. A command is
 * declared here once; what it does lives in its own file (cmd_node.c, cmd_jobs.c,
 * submit.c, bench_*.c).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "cli/bench_ring.h"
#include "cli/bench_train.h"
#include "cli/cmd_jobs.h"
#include "cli/cmd_keys.h"
#include "cli/cmd_node.h"
#include "cli/submit.h"

/* One row of the table. `name` is one word, or two for a command of a group
 * ("bench ring"); the handler gets the arguments from its last word on (argv[0] "ring").
 * `args` is the synopsis after the name; its continuation lines start at the first
 * argument's column. A short one-line synopsis shares its line with the help (at
 * HELP_COL); a longer one has the help on a line of its own. `col`, when set, moves the
 * continuation lines and that help line to that column (for the widest synopsis). A row
 * with `run` NULL is another form of the command above it: listed, not dispatched; a row
 * with `args` NULL is dispatched, not listed. */
typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *args, *help;
  int col;
} command_t;

static int cmd_help(int argc, char **argv);

static const command_t COMMANDS[] = {
    {"submit", cmd_submit,
     "SPEC.yaml [--target local|attached] [--nodes N] [--set key.path=value]...\n"
     "[--json] [--detach] [--coordinator EP] [--state-dir DIR] [-v]\n"
     "[--resume JOB]",
     "submit a job and follow it (starts a coordinator if none answers)", 19},
    {"submit", NULL, "--resume JOB [--set key.path=value]...",
     "continue a finished, failed or cancelled job from its last checkpoint", 19},
    {"status", cmd_status, "[JOB...] [--state S] [--name N] [--json]", "jobs, past and present", 0},
    {"cancel", cmd_cancel, "JOB...", "stop queued or running jobs", 0},
    {"agents", cmd_agents, "[--json]", "the agent registry", 0},
    {"targets", cmd_targets, "[--json]", "the compute targets and their nodes", 0},
    {"logs", cmd_logs, "JOB [-f] [--rank N]", "a command job's output, rank by rank", 0},
    {"agent", cmd_agent,
     "--coordinator tcp://HEAD:7700 [--id NAME] [--target attached|local]\n"
     "[--host ADDR] [--pool NAME] [--allow-dir DIR]... [--run-as USER]",
     "run the node daemon (one per node)", 0},
    {"coordinator", cmd_coordinator,
     "[--bind tcp://*:7700] [--advertise EP] [--state-dir DIR]\n"
     "[--exit-when-idle SECONDS]",
     "run the coordinator in the foreground", 0},
    {"bench ring", bench_ring_main, "[--workers 2,4] [--bytes 64M] [--iters N] [--json]",
     "host ring all-reduce benchmark", 0},
    {"bench train", bench_train_main,
     "[--sizes 784,1024,1024,10] [--batch 256] [--precision fp32|tf32|bf16]\n"
     "[--steps 100] [--repeats 5] [--graphs auto|on|off] [--data synthetic|fashion]\n"
     "[--backend auto|cpu|cuda] [--json]",
     "the training step: ms/step, samples/s, TFLOP/s", 0},
    {"bench overlap", bench_overlap_main, "[--bucket-mb 64] [--json]",
     "2 ranks on GPU 0: NCCL all-reduce hidden behind backward", 0},
    {"keys", cmd_keys, "add agent|user|admin NAME [--coordinator EP] | list | remove NAME | show",
     "who may reach this machine's coordinator (add prints a join file)", 0},
    {"settings", cmd_settings, "", "tunables and their environment variables", 0},
    {"worker", cmd_worker, NULL, NULL, 0},
    {"help", cmd_help, NULL, NULL, 0},
    {"--help", cmd_help, NULL, NULL, 0},
    {"-h", cmd_help, NULL, NULL, 0},
};

#define NCOMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))
#define HELP_COL 35

// --- The summary ---------------------------------------------------------------------------

static void print_command(FILE *out, const command_t *c) {
  const char *nl = strchr(c->args, '\n');
  int first = nl ? (int)(nl - c->args) : (int)strlen(c->args);
  char head[256];
  int n = snprintf(head, sizeof head, "%s%s%.*s", c->name, *c->args ? " " : "", first, c->args);
  if (!nl && n < HELP_COL - 2) {
    fprintf(out, "  %-*s%s\n", HELP_COL - 2, head, c->help);
    return;
  }
  fprintf(out, "  %s\n", head);
  int indent = c->col ? c->col : 2 + (int)strlen(c->name) + 1;
  for (const char *p = nl; p; p = nl) {
    p++;
    nl = strchr(p, '\n');
    fprintf(out, "%*s%.*s\n", indent, "", nl ? (int)(nl - p) : (int)strlen(p), p);
  }
  fprintf(out, "%*s%s\n", c->col ? c->col : HELP_COL, "", c->help);
}

static void usage(FILE *out) {
  fputs(
      "drover: distributed training on a laptop, attached nodes or a managed cluster\n\n"
      "usage: drover COMMAND [ARGS]\n\n",
      out);
  for (int i = 0; i < NCOMMANDS; i++)
    if (COMMANDS[i].args) print_command(out, &COMMANDS[i]);
  fputs(
      "\nThe coordinator endpoint defaults to $DROVER_COORDINATOR or tcp://127.0.0.1:7700\n"
      "(agents use that port, clients +1, events +2).\n",
      out);
}

static int cmd_help(int argc, char **argv) {
  usage(stdout);
  return 0;
}

// --- Dispatch ------------------------------------------------------------------------------

/* Length of the group word of a two-word name ("bench ring": 5), 0 for a one-word name. */
static size_t group_len(const char *name) {
  const char *sp = strchr(name, ' ');
  return sp ? (size_t)(sp - name) : 0;
}

static int is_group(const command_t *c, const char *word) {
  size_t g = group_len(c->name);
  return g && strlen(word) == g && !strncmp(c->name, word, g);
}

/* The row for argv[0] (and argv[1] for a group), or NULL; *words says how many it took. */
static const command_t *find_command(int argc, char **argv, int *words) {
  for (int i = 0; i < NCOMMANDS; i++) {
    const command_t *c = &COMMANDS[i];
    if (!c->run) continue;
    if (!group_len(c->name) && !strcmp(c->name, argv[0])) {
      *words = 1;
      return c;
    }
    if (is_group(c, argv[0]) && argc >= 2 && !strcmp(c->name + group_len(c->name) + 1, argv[1])) {
      *words = 2;
      return c;
    }
  }
  return NULL;
}

/* `drover bench` without one of its commands: "usage: drover bench ring|train|overlap
 * [options] (drover help)" on stderr, exit status 2. 0 when `group` names no group. */
static int group_usage(const char *group) {
  int any = 0;
  for (int i = 0; i < NCOMMANDS; i++) {
    const command_t *c = &COMMANDS[i];
    if (!c->run || !is_group(c, group)) continue;
    if (any)
      fputc('|', stderr);
    else
      fprintf(stderr, "usage: drover %s ", group);
    fputs(c->name + group_len(c->name) + 1, stderr);
    any = 1;
  }
  if (!any) return 0;
  fputs(" [options] (drover help)\n", stderr);
  return 2;
}

/* Open files up to the hard limit: every connection a coordinator accepts is a
 * descriptor, and at the usual soft limit (1024) 2000 idle connections left libzmq
 * failing accept() in a loop, at 80-90% CPU, and clients and agents could no longer
 * connect. drover uses poll and epoll only (never select), so descriptors above 1024 are
 * fine; children inherit the limit. */
static void open_files_raise(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  /* Linux refuses more than fs.nr_open (2^20 by default), "unlimited" included. */
  rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
  if (rl.rlim_cur >= want) return;
  rl.rlim_cur = want;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
    fprintf(stderr, "drover: cannot raise the open-file limit to %llu: %s\n",
            (unsigned long long)want, strerror(errno));
}

/* The security flags every command takes, anywhere on its line: `--join FILE` (the
 * join file `drover keys add` prints) and `--insecure` (plaintext). They become
 * DROVER_JOIN and DROVER_INSECURE=1 for this process and those it starts (agents pass
 * them to their workers that way), and are taken out of argv. */
static int security_flags(int argc, char **argv) {
  int out = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--insecure")) {
      setenv("DROVER_INSECURE", "1", 1);
    } else if (!strcmp(argv[i], "--join") && i + 1 < argc) {
      setenv("DROVER_JOIN", argv[++i], 1);
    } else if (!strncmp(argv[i], "--join=", 7)) {
      setenv("DROVER_JOIN", argv[i] + 7, 1);
    } else {
      argv[out++] = argv[i];
    }
  }
  argv[out] = NULL;
  return out;
}

int main(int argc, char **argv) {
  open_files_raise();
  /* Nothing drover makes is for other users: run directories, checkpoints, logs, the
   * state directory. Group members may read (a team's shared group), nobody else. */
  umask(027);
  argc = security_flags(argc, argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  /* A peer gone mid-write is an error to report, never a reason to die (libzmq's I/O
   * threads write without MSG_NOSIGNAL). */
  signal(SIGPIPE, SIG_IGN);
  int words = 0;
  const command_t *c = find_command(argc - 1, argv + 1, &words);
  if (c) return c->run(argc - words, argv + words);
  if (group_usage(argv[1])) return 2;
  fprintf(stderr, "drover: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
