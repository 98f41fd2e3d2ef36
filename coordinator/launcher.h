/* launcher.h: what starts and stops a managed target's nodes: one interface, three
 * launchers (targets.h says how each is configured).
 *
 *   command  start: `sh -c START`, placeholders substituted shell-quoted. Without a stop
 *            template the process it starts is the node (an agent as a local process):
 *            stopped by SIGTERM to its process group, gone when it exits. With one,
 *            START returns, its output's first line is the node's handle, and
 *            `sh -c STOP` (with {handle}) stops it.
 *   ssh      one node per host: `ssh HOST 'setsid AGENT >LOG 2>&1 </dev/null & echo $!'`
 *            (key-only: BatchMode=yes), the handle "HOST PID"; stopped by `ssh HOST kill
 *            PID`, checked by `kill -0 PID`.
 *   slurm    `sbatch --parsable --exclusive --job-name drover-NODE ... --wrap 'exec AGENT'`, the agent
 *            named after $SLURMD_NODENAME; the handle is the Slurm job id; stopped by
 *            `scancel ID`, checked by `squeue -j ID`.
 *
 * Every launcher command runs as a child process in a session of its own, its standard
 * output and error in <log_dir>/<node>.log (appended); the coordinator's loop never waits
 * for one: it polls (launcher_poll) and kills one past its deadline. The agents get
 * `--node NODE`, which their `hello` carries, so a registration names its node. */
#ifndef DROVER_COORDINATOR_LAUNCHER_H
#define DROVER_COORDINATOR_LAUNCHER_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/drv.h"
#include "coordinator/targets.h"

#define LAUNCHER_CMD_MS 60000      /* a launcher command running longer is killed */
#define LAUNCHER_AGENT_ORPHAN_S 600 /* a managed agent without any coordinator this long exits */

/* What the launchers need of the coordinator. Strings borrowed. */
typedef struct {
  const char *coordinator; /* the endpoint agents connect to */
  const char *drover;      /* drover on the nodes when the target does not say */
  const char *join;        /* the agents' join file when the target does not say ("": none) */
  const char *log_dir;     /* where each node's launcher output goes */
} launch_env_t;

typedef enum { LAUNCH_OP_NONE = 0, LAUNCH_OP_START, LAUNCH_OP_STOP, LAUNCH_OP_CHECK } launch_op_kind_t;

/* One launcher command running (or the node's own process: is_node). */
typedef struct {
  launch_op_kind_t kind;
  pid_t pid;           /* 0: none */
  int is_node;         /* the process is the node itself (command launcher without stop) */
  int64_t deadline_ms; /* killed past it (never for a node's own process) */
  off_t out_from;      /* where its output begins in out_path */
  char out_path[512];
} launch_op_t;

/* The whole `drover agent ...` command line for node `node` of t, shell-quoted, into buf.
 * Slurm's takes its id from $SLURMD_NODENAME. Returns DRV_ERR_INVALID when it does not fit. */
drv_result_t launcher_agent_command(const target_t *t, const launch_env_t *env, const char *node,
                                    char *buf, size_t cap);

/* Starts node `node` of t (host: the ssh host it goes to, else NULL) as op; now: the clock. */
drv_result_t launcher_start(const target_t *t, const launch_env_t *env, const char *node,
                            const char *host, int64_t now, launch_op_t *op);

/* Stops node `node` of t, known by its handle, as op. */
drv_result_t launcher_stop(const target_t *t, const launch_env_t *env, const char *node,
                           const char *handle, int64_t now, launch_op_t *op);

/* Asks whether node `node` of t (by its handle) is still there, as op: exit 0 and output
 * (squeue's state) say. The command launcher with stop has no check: DRV_ERR_INVALID. */
drv_result_t launcher_check(const target_t *t, const launch_env_t *env, const char *node,
                            const char *handle, int64_t now, launch_op_t *op);

/* Whether op has ended (1; *code its exit status, 128 + signal when killed, and out the
 * last line of what it printed; op->pid is then 0) or runs on (0). A command past its
 * deadline is killed (SIGKILL to its group): it ends with code 137. */
int launcher_poll(launch_op_t *op, int64_t now, int *code, char *out, size_t cap);

/* The node's handle in what its start printed (stdout and stderr together), into buf:
 * the line `DROVER_HANDLE=...` (ssh's; a command's start may print one too), else for
 * Slurm the job id of sbatch --parsable, for a command its first line. 0: none found. */
int launcher_handle(const target_t *t, const launch_op_t *op, char *buf, size_t cap);

/* Stops op now: SIGTERM to its process group (SIGKILL when hard). It is still polled. */
void launcher_signal(launch_op_t *op, int hard);

/* Whether process `pid` of a node's own process (the command launcher without stop) still
 * runs and is a drover agent for `node` (its command line says so). */
int launcher_pid_is_node(pid_t pid, const char *node);

#endif
