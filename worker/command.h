/* command.h: a command job's rank: the user's own program, run by its worker.
 *
 * The worker checks in (`rendezvous`; rank 0 gives a free port of its host, below the
 * ephemeral range, as MASTER_PORT), waits for `start`, then runs the spec's `command` in
 * its `workdir` with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
 * LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_RANK, MASTER_ADDR, MASTER_PORT,
 * TORCHELASTIC_RESTART_COUNT) and drover's (DROVER_JOB, DROVER_RANK, DROVER_RUN_DIR,
 * DROVER_CHECKPOINT_DIR, DROVER_COORDINATOR, DROVER_REPORT), plus the spec's `env`. The
 * program runs in a process group of its own; its output goes to the rank's log, each line
 * stamped with the time.
 *
 * While it runs the worker relays the program's `report`s (over DROVER_REPORT: a private
 * ipc socket of the worker's) to the coordinator as `progress`, answering each with
 * `report_ack` (stop 1 once the job asked it to stop), and watches it:
 *   - it exits 0: `done` with its last step;
 *   - it exits non-zero or is killed: `failed`, naming the rank, the code or signal, the
 *     last step reported and the last line it printed;
 *   - it reported once and then nothing for `hang_timeout` s: killed, `failed` as hung;
 *   - `abort` from the coordinator, or SIGTERM to the worker: SIGTERM to the program's
 *     group, SIGKILL after a grace;
 *   - `pause` (its node is being preempted, or the job re-forms): stop 1 in the next
 *     acks and SIGTERM to the program, which checkpoints and exits; the worker reports
 *     `lost` with its last step, and the coordinator restarts the job without counting it. */
#ifndef DROVER_WORKER_COMMAND_H
#define DROVER_WORKER_COMMAND_H

#include "common/drv.h"
#include "common/proto.h"

struct worker;

#define COMMAND_STOP_GRACE_MS 10000 /* SIGTERM to the program, then SIGKILL this much later */

/* Runs rank w's program to its end; *done filled when it exited 0. Returns DRV_OK then,
 * DRV_ERR_CANCELLED when it was stopped (aborted, or paused and reported `lost`), or the
 * error (drv_last_error names the rank's failure; the caller reports it as `failed`). */
drv_result_t command_run(struct worker *w, proto_done_t *done);

#endif
