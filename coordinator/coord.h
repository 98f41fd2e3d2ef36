/* coord.h: the coordinator: one event loop over three ZeroMQ sockets.
 *
 *   ROUTER base+0  agents and workers: hello, heartbeat, bye, leave, worker_exit,
 *                  rendezvous, progress, eval, checkpoint, lost, done, failed in;
 *                  welcome, heartbeat, assign, kill, start, reform, pause, abort out
 *   ROUTER base+1  clients: submit, status, cancel, agents, get_spec in; replies out
 *   PUB    base+2  events on topic "job/<id>": ev_state, ev_progress, ev_eval
 *
 * The loop (coord.c) only dispatches: agents' messages to the registry (registry.h) and the
 * job table (job.h), workers' messages to the job table, clients' requests to the API
 * (api.h); timers for heartbeats and job deadlines; the scheduler after every pass. The
 * job table keeps each job's state machine and carries out the plans of the scheduler
 * (sched.h: gang placement, a FIFO queue per target and pool) and of recovery (recovery.h:
 * re-forming a world after a failure or as planned). Durable job records, and the state
 * directory's lock (one coordinator per directory), are the store's (store.h).
 *
 * Security: the sockets are CurveZMQ servers with the coordinator's key from
 * <state_dir>/keys (made at the first start, keys.h), and the loop answers the ZAP
 * handler's questions itself (auth.h decides), so who is admitted never races with
 * the job table's state (a worker's key is admitted while its job has it).
 */
#ifndef DROVER_COORDINATOR_COORD_H
#define DROVER_COORDINATOR_COORD_H

#include <signal.h>
#include <stdint.h>

#include "common/drv.h"

typedef struct {
  const char *bind;      /* base endpoint to bind, e.g. "tcp://0.0.0.0:7700" */
  const char *advertise; /* base endpoint workers are told to connect to */
  const char *state_dir; /* SQLite database directory; one coordinator per directory */
  int exit_when_idle_s;  /* > 0: exit once jobs have run and none was active for this
                            long (a coordinator started for the local target) */
  int insecure;          /* plaintext: no keys, no ZAP, everyone admin (--insecure) */
  const char *targets;   /* the targets file (targets.h), or NULL: local and attached only */
  const char *exe;       /* the drover executable managed nodes run when their target does
                            not say */
} coord_config_t;

/* How long the coordinator itself was not running between two wakes of its loop: the
 * time from the previous wake (last_wake_ms) to this one (now_ms) beyond the poll's
 * timeout (wait_ms) it asked for, when that exceeds limit_ms; 0 otherwise (the loop
 * merely busy, or woken early by a message). CLOCK_MONOTONIC runs on while a process is
 * stopped (SIGSTOP), stalled or its VM suspended, so a gap well beyond the heartbeat is
 * the coordinator's own absence, not its peers' silence. Pure. */
int64_t coord_away_ms(int64_t last_wake_ms, int64_t wait_ms, int64_t now_ms, int64_t limit_ms);

/* Runs the coordinator until *stop becomes non-zero (or it is idle, see exit_when_idle_s).
 * Returns DRV_OK on a clean stop; an error if it could not start (sockets, store). */
drv_result_t coord_run(const coord_config_t *cfg, volatile sig_atomic_t *stop);

#endif
