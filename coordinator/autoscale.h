/* autoscale.h: how many nodes a managed target should launch or stop now, as a pure
 * decision (no clock but the `now` it is given, no sockets): fleet.c gathers the snapshot
 * and carries the plan out.
 *
 * The rule: the target aims at its busy nodes plus what its queued jobs need (each job's
 * nodes, those that can never fit left out), within [min_nodes, max_nodes]. It launches
 * the difference to the nodes it has (idle, busy and starting; stopping ones do not count),
 * unless a launch failure's back-off runs; it stops idle nodes beyond its aim that have
 * been idle for idle_timeout, the longest idle first. A node with work is never stopped,
 * nor a starting one (it is stopped as a launch failure past launch_timeout, by fleet.c). */
#ifndef DROVER_COORDINATOR_AUTOSCALE_H
#define DROVER_COORDINATOR_AUTOSCALE_H

#include <stdint.h>

#define AUTOSCALE_MAX_NODES 256

typedef struct {
  uint32_t min_nodes, max_nodes;
  int64_t idle_timeout_ms;
  uint32_t busy, starting, stopping;
  uint32_t idle;                                /* registered nodes without work */
  int64_t idle_since_ms[AUTOSCALE_MAX_NODES];   /* of each idle node */
  uint32_t demand;                              /* nodes its queued jobs need */
  int64_t retry_at_ms;                          /* no launch before (back-off); 0: none */
} autoscale_in_t;

typedef struct {
  uint32_t wanted;   /* the nodes it aims at */
  uint32_t launch;   /* nodes to launch now */
  uint32_t held;     /* nodes it would launch but for the back-off */
  uint32_t nstop;
  uint32_t stop[AUTOSCALE_MAX_NODES]; /* idle nodes to stop: indices into idle_since_ms */
} autoscale_plan_t;

void autoscale_plan(const autoscale_in_t *in, int64_t now, autoscale_plan_t *out);

#endif
