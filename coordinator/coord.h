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
 */
#ifndef DROVER_COORDINATOR_COORD_H
#define DROVER_COORDINATOR_COORD_H

#include <signal.h>

#include "common/drv.h"

typedef struct {
  const char *bind;      /* base endpoint to bind, e.g. "tcp://0.0.0.0:7700" */
  const char *advertise; /* base endpoint workers are told to connect to */
  const char *state_dir; /* SQLite database directory; one coordinator per directory */
  int exit_when_idle_s;  /* > 0: exit once jobs have run and none was active for this
                            long (a coordinator started for the local target) */
} coord_config_t;

/* Runs the coordinator until *stop becomes non-zero (or it is idle, see exit_when_idle_s).
 * Returns DRV_OK on a clean stop; an error if it could not start (sockets, store). */
drv_result_t coord_run(const coord_config_t *cfg, volatile sig_atomic_t *stop);

#endif
