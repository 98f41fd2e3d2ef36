/* autoscale.c: see autoscale.h. */
#include "coordinator/autoscale.h"

#include <string.h>

#include "common/drv.h"

void autoscale_plan(const autoscale_in_t *in, int64_t now, autoscale_plan_t *out) {
  memset(out, 0, sizeof *out);
  uint32_t have = in->busy + in->idle + in->starting;
  uint64_t aim = (uint64_t)in->busy + in->demand;
  aim = DRV_MAX(aim, (uint64_t)in->min_nodes);
  aim = DRV_MIN(aim, (uint64_t)in->max_nodes);
  out->wanted = (uint32_t)aim;
  /* Room under max_nodes counts the nodes being stopped: they still run. */
  uint32_t room = in->max_nodes > have + in->stopping ? in->max_nodes - have - in->stopping : 0;
  uint32_t more = out->wanted > have ? DRV_MIN(out->wanted - have, room) : 0;
  if (in->retry_at_ms && now < in->retry_at_ms)
    out->held = more;
  else
    out->launch = more;
  if (have <= out->wanted) return;
  /* Surplus idle nodes, longest idle first, once idle for idle_timeout. */
  uint32_t surplus = DRV_MIN(have - out->wanted, in->idle);
  uint32_t n = DRV_MIN(in->idle, (uint32_t)AUTOSCALE_MAX_NODES);
  int taken[AUTOSCALE_MAX_NODES] = {0};
  while (out->nstop < surplus) {
    int best = -1;
    for (uint32_t k = 0; k < n; k++)
      if (!taken[k] && now - in->idle_since_ms[k] >= in->idle_timeout_ms &&
          (best < 0 || in->idle_since_ms[k] < in->idle_since_ms[best]))
        best = (int)k;
    if (best < 0) break;
    taken[best] = 1;
    out->stop[out->nstop++] = (uint32_t)best;
  }
}
