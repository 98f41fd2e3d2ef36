/* fleet.h: the nodes of the coordinator's managed targets: launched through their
 * launcher (launcher.h), matched to the agents that register with their name (`hello`
 * `node`), scaled as autoscale_plan says after every scheduling pass, stopped when idle
 * past idle_timeout, failed (stopped, counted, retried with back-off: 5 s doubling to 5
 * min) when they do not register within launch_timeout, and recorded in the store from
 * launch to stop, so that a restarted coordinator finds them instead of launching twice
 * or leaking them. Every scale-up, registration, scale-down, loss and launch failure is a
 * line in the log and an `ev_target` event on topic `target/<name>`.
 *
 * A node's states: STARTING (launched, not registered), UP (its agent is registered; idle
 * or busy as the agent is), STOPPING (its launcher's stop runs, or its own process is
 * being stopped). Everything runs on the coordinator's one thread; launcher commands are
 * child processes it polls. */
#ifndef DROVER_COORDINATOR_FLEET_H
#define DROVER_COORDINATOR_FLEET_H

#include <limits.h>
#include <stdint.h>

#include "common/proto.h"
#include "common/sock.h"
#include "coordinator/job.h"
#include "coordinator/launcher.h"
#include "coordinator/registry.h"
#include "coordinator/store.h"
#include "coordinator/targets.h"

#define FLEET_CHECK_MS 5000     /* a starting Slurm or ssh node's launcher is asked this often */
#define FLEET_STOP_GRACE_MS 15000 /* a node's own process gets SIGKILL this long after SIGTERM */
#define FLEET_STOP_RETRY_MS 10000 /* a stop that failed (scancel, ssh) is tried again after */

typedef enum { NODE_FREE = 0, NODE_STARTING, NODE_UP, NODE_STOPPING } fleet_state_t;

typedef struct {
  fleet_state_t state;
  char name[64];      /* "<target>-<n>" */
  char host[256];     /* ssh: the host it is on */
  char handle[128];   /* the launcher's: "pid N", "HOST PID", a Slurm job id, START's output */
  int64_t launched_ms, idle_since_ms, checked_ms, stop_ms;
  int64_t stop_retry_ms; /* STOPPING: its stop failed; tried again then (0: not failed) */
  uint32_t stop_tries;
  launch_op_t op;     /* the launcher command running for it, or its own process */
  pid_t adopted_pid;  /* its own process, found at a restart (not our child) */
} fleet_node_t;

typedef struct {
  const target_t *cfg;
  fleet_node_t nodes[TARGETS_MAX_NODES];
  uint32_t seq;            /* the next node's number */
  uint32_t failures;       /* launch failures in a row (the back-off) */
  uint32_t launched, failed; /* so far */
  int64_t retry_at_ms;     /* no launch before (0: none) */
  char last_error[256];
} fleet_target_t;

typedef struct fleet_s {
  targets_file_t *file; /* owned */
  fleet_target_t *targets; /* [ntargets], one per target of the file */
  uint32_t ntargets;
  char log_dir[PATH_MAX], join[PATH_MAX];
  launch_env_t env;
  registry_t *reg;      /* borrowed, as the rest */
  job_table_t *jobs;
  store_t *store;
  sock_t *events;
} fleet_t;

/* A fleet for the targets of `file` (owned from now on; NULL: none), launching agents that
 * connect to `advertise` with the drover at `exe`, their launcher output under
 * <state_dir>/targets; finds the nodes a previous coordinator left in the store. */
drv_result_t fleet_init(fleet_t *f, targets_file_t *file, const char *state_dir,
                        const char *advertise, const char *exe, registry_t *reg,
                        job_table_t *jobs, store_t *store, sock_t *events);

/* At a clean stop of the coordinator: stops every node (an agent drains first), waiting
 * up to FLEET_STOP_GRACE_MS for their stops. A coordinator that dies instead leaves them
 * running, and the next one finds them in the store. */
void fleet_shutdown(fleet_t *f);

/* Frees f. Its nodes keep running (a restarted coordinator finds them). */
void fleet_fini(fleet_t *f);

/* One pass: launcher commands polled, registrations matched, timeouts, the plan. */
void fleet_tick(fleet_t *f, int64_t now);

/* The managed target named name, or NULL. */
const target_t *fleet_config(const fleet_t *f, const char *name);

/* Every target (local, attached, then the managed ones), into the reply's arena. */
void fleet_list(const fleet_t *f, proto_msg_t *reply, int64_t now);

/* Why queued job j of a managed target waits, in numbers, into buf ("" when j's target
 * is not managed): "needs 2 nodes on cpu-pool: 1 idle, 1 starting (launched 12 s ago),
 * 0 more to launch". */
void fleet_reason(const fleet_t *f, const job_t *j, int64_t now, char *buf, size_t cap);

#endif
