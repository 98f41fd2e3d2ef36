/* spawn.h: the processes `drover submit` starts, and stops again when it is done: a
 * coordinator when none answers at the configured endpoint (a child for the local target,
 * a detached daemon for the others), and the local target's agents. Each child is
 * `drover <command>` (cli_self_exe) in its own process group, logging to a file in the
 * state directory unless verbose.
 */
#ifndef DROVER_CLI_SPAWN_H
#define DROVER_CLI_SPAWN_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/sock.h"

#define SPAWN_MAX_AGENTS 64

/* What one submit started (embedded; spawn_init fills it in, spawn_stop empties it). */
typedef struct {
  const char *coordinator, *state_dir; /* base endpoint; state directory */
  int verbose;                         /* children log to this terminal instead of files */
  char logdir[PATH_MAX];               /* <state dir>/local-<pid>: the local target's logs */
  char pool[32];   /* local target: our agents' pool, so no other submit's job lands on them */
  pid_t coord_pid; /* the coordinator started as our child, 0 when none */
  pid_t agents[SPAWN_MAX_AGENTS];
  int nagents;
} spawn_t;

/* Fills in *s for this process: nothing started yet; logdir and pool named after our pid.
 * The strings are borrowed and must outlive *s. DRV_ERR_INVALID when the log directory's
 * path would not fit (it is never cut). */
drv_result_t spawn_init(spawn_t *s, const char *coordinator, const char *state_dir, int verbose);

/* Makes sure a coordinator answers at s->coordinator: when none answers within 1 s, starts
 * one bound there (local: our child, logging into logdir, exiting by itself 10 s after its
 * last job; otherwise: detached, logging into the state dir, left running for the agents,
 * and says so on stderr) and waits up to ~10 s for it to answer. Returns 0, or -1 with the
 * reason printed. */
int spawn_coordinator(spawn_t *s, sock_ctx_t *ctx, int local);

/* Whether the coordinator started as our child has exited (then s->coord_pid becomes 0). */
int spawn_coordinator_exited(spawn_t *s);

/* Starts n local agents in our pool (OPENBLAS_NUM_THREADS = CPUs / n unless set), each
 * allowing the ndirs directories dirs (`--allow-dir`: the job's, which this user named;
 * none: the agents' defaults). They stop by themselves, workers and all, when this process
 * is gone however it went (`--parent`), or 15 s after their coordinator is
 * (`--exit-without-coordinator`). Returns 0, or -1 with the reason printed. */
int spawn_local_agents(spawn_t *s, uint32_t n, const char *const *dirs, int ndirs);

/* Local target: waits up to 5 s until our agents are idle. An agent is busy until its
 * worker has exited; stopping it earlier would kill a worker still flushing its files. */
void spawn_wait_agents_idle(const spawn_t *s, sock_ctx_t *ctx);

/* Stops what was started: each agent (SIGTERM, SIGKILL after 5 s), then our coordinator
 * the same way, unless jobs of other submissions (not `job`) are queued or running on it:
 * then it is left to exit when idle, and stderr says so. */
void spawn_stop(spawn_t *s, sock_ctx_t *ctx, int64_t job);

#endif
