/* agent.h: the per-node daemon. It registers its CPU cores, memory and GPUs with the
 * coordinator, heartbeats both ways, runs one worker child process per assignment (the
 * `drover worker` command, in its own process group, dying with the agent), reports how
 * each worker ended, kills them on `kill` or when it loses the coordinator, and reconnects
 * to a restarted coordinator by itself.
 *
 * Before it starts a worker it vets the assignment (agent/paths.h): every path under its
 * allowed directories, the run directory claimed for the job's lineage. An assignment it
 * refuses fails its job with the reason (`failed`, then `worker_exit` 127); the agent
 * goes on serving. An agent running as root never runs a worker as root: it runs it as
 * the job's owner when that names a Unix user other than root, else as `run_as`. */
#ifndef DROVER_AGENT_AGENT_H
#define DROVER_AGENT_AGENT_H

#include <signal.h>
#include <sys/types.h>

#include "common/drv.h"
#include "common/sock.h"

typedef struct {
  const char *coordinator;        /* base endpoint, "tcp://HEAD:7700" */
  const char *agent_id;           /* NULL: "<hostname>-<pid>" */
  const char *target;             /* "attached" (default) or "local" */
  const char *host;               /* address peers reach this node at; NULL: found from the route
                                     to the coordinator */
  const char *exe;                /* the drover executable to run workers with */
  const char *pool;               /* NULL, or the pool it serves (jobs submitted with that pool) */
  const char *node;               /* NULL, or the managed node it was launched as (--node) */
  pid_t parent;                   /* > 0: stop at once when our parent is no longer this process
                                     (`drover submit` of the local target, killed or gone) */
  int exit_without_coordinator_s; /* > 0: stop at once after hearing nothing from any
                                     coordinator for this long (s); 0: reconnect forever */
  const sock_keys_t *keys;        /* its key and the coordinator's (pinned); NULL: plaintext */
  const char *const *allow_dirs;  /* directories its jobs may use (paths.h); none: defaults */
  int nallow_dirs;
  const char *run_as; /* an agent running as root: the user workers run as when the job's
                         owner is not a Unix user (NULL: "nobody") */
} agent_config_t;

/* Runs until *stop is set, or until its parent or its coordinator is gone as cfg->parent
 * and cfg->exit_without_coordinator_s say (then it logs why, stops its workers, says
 * `bye` when it can and returns DRV_OK, as on *stop >= 2). On the first stop request an agent whose
 * worker runs sends `leave`: the coordinator takes the rank out at the job's next commit (the job
 * goes on without it, no step lost), kills the worker, and the agent then says `bye` and returns.
 * It waits at most DROVER_RING_TIMEOUT_MS + 5 s for that; *stop >= 2 stops at once.
 * Returns DRV_OK on a clean stop. */
drv_result_t agent_run(const agent_config_t *cfg, volatile sig_atomic_t *stop);

/* The local address that routes to `endpoint`'s host (a UDP connect + getsockname),
 * written to out; "127.0.0.1" for a loopback coordinator. */
drv_result_t agent_route_host(const char *endpoint, char *out, size_t outsz);

#endif
