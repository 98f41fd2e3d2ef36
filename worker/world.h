/* world.h: the world a rank trains in, and how it is formed again. Private to worker/.
 *
 * Forming: the rank opens its ring port, checks in with the coordinator (`rendezvous`:
 * this generation and rank, its ring address, its GPU, rank 0's NCCL id), waits for
 * `start` with every rank's ring address, connects the ring and joins the world's
 * gradient sums: the host ring on CPUs, an NCCL communicator on GPUs (the ring then stays
 * as the control plane, watched while NCCL waits). Then every rank agrees on the state to
 * go on from (world_sync_state): rank 0's, sent through the ring.
 *
 * Every train.commit_every steps the state is kept aside (the commit). When the ring
 * breaks (a peer died, hung, or closed its links after its own ring broke), the rank
 * closes its ring, which breaks its other neighbour's link in turn so every survivor
 * learns within moments, rolls back to its commit, reports `lost`, and waits for the
 * coordinator: `reform` (a new rank and world, a new generation: rendezvous again and go
 * on from rank 0's commit) or `abort`. A planned re-formation (`pause`: agents joining or
 * leaving) goes the same way from a commit every rank agreed on.
 *
 * The functions act on the rank's state (worker_int.h): its identity (rank, world,
 * generation), ring, NCCL reducer, commit and the report's sender, which they keep in
 * step. A failed ring operation sets w->ring_broken: the ring is gone and world_recover
 * is the way on.
 */
#ifndef DROVER_WORKER_WORLD_H
#define DROVER_WORKER_WORLD_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"
#include "common/proto.h"

typedef struct worker worker_t;

/* Checks in with the coordinator (this generation, this rank), connects the ring to every
 * rank's address from `start`, and joins the world's gradient sums (the trainer's
 * reducer). A `reform` that comes before `start` (a rank lost before everyone checked in)
 * makes this rank one of the new world and checks in again. A ring that could not connect
 * (or NCCL that could not join) leaves w->ring_broken set. */
drv_result_t world_rendezvous(worker_t *w);

/* The next message from the coordinator by deadline_ms (what names it in errors): an
 * `abort` ends the wait with DRV_ERR_CANCELLED, its reason in the error; frames that do
 * not decode are logged and dropped. m is the caller's to fini on DRV_OK. */
drv_result_t world_wait(worker_t *w, int64_t deadline_ms, const char *what, proto_msg_t *m);

/* Every rank agrees on the state to go on from, which rank 0 provides: after a
 * re-formation (after_failure) its commit, already rolled back into its trainer; at a
 * first start the newest usable checkpoint (state.h), or nothing (the seeded init is the
 * same on every rank). Also agrees on whether that step was evaluated. *step receives
 * the steps already done. */
drv_result_t world_sync_state(worker_t *w, int after_failure, uint64_t *step);

/* Keeps the state after `step` steps aside (device memory), to roll back to. */
drv_result_t world_commit(worker_t *w, uint64_t step);

/* At a commit at `step`, made by every rank: the ranks agree whether any of them was asked
 * for a planned re-formation (`pause`). DRV_OK when none was; else DRV_ERR_CANCELLED
 * ("planned re-formation at step ...") with the ring given up and the re-formation marked
 * planned, for world_recover. */
drv_result_t world_pause_if_asked(worker_t *w, uint64_t step);

/* The ring broke: closes it (its other neighbour learns at once), rolls back to the
 * commit, reports `lost`, and waits for the coordinator's `reform` (or `abort`), then
 * forms the new world (world_rendezvous, world_sync_state, world_commit) and records the
 * re-formation in metrics.jsonl. On DRV_OK the worker is a rank of the new world, in step
 * with it at *step; an error with w->ring_broken set is worth another try. */
drv_result_t world_recover(worker_t *w, uint64_t *step);

/* A sum of data[count] (host memory) over the ranks on the ring, in place. */
drv_result_t world_sum(worker_t *w, float *data, size_t count);

/* Non-blocking look at the coordinator's messages: `abort` ends the worker
 * (DRV_ERR_CANCELLED, its reason), `pause` asks for a planned re-formation at the next
 * commit (world_pause_if_asked). DRV_OK otherwise. */
drv_result_t world_check_abort(worker_t *w);

/* A training step failed with rc: an NCCL failure (the communicator is aborted by then) is
 * a lost peer, as a broken ring is. Returns rc. */
drv_result_t world_step_failed(worker_t *w, drv_result_t rc);

#endif
