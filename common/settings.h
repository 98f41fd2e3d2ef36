/* settings.h: every tunable declared once (NCCL_PARAM style): its name, default, the
 * environment variable that overrides it (DROVER_<NAME>) and a line of help. `drover
 * settings` and docs/user-guide.md list them from this table. */
#ifndef DROVER_COMMON_SETTINGS_H
#define DROVER_COMMON_SETTINGS_H

#include <stdint.h>
#include <stdio.h>

/* X(NAME, default, help). All values are integers (milliseconds, bytes, counts). */
#define DRV_SETTINGS(X)                                                                         \
  X(HEARTBEAT_MS, 1000, "interval between heartbeats, both ways (ms)")                          \
  X(PEER_TIMEOUT_MS, 5000, "a peer silent this long is declared dead (ms)")                     \
  X(RECONNECT_MS, 1000, "agent: pause between reconnect attempts to the coordinator (ms)")      \
  X(MAX_MSG_BYTES, 16777216, "largest frame any socket accepts (ZMQ_MAXMSGSIZE, bytes)")        \
  X(HWM, 10000, "ZeroMQ send/receive high-water mark (messages)")                               \
  X(RING_TIMEOUT_MS, 30000,                                                                     \
    "ring all-reduce: a peer that makes no progress this long fails the step (ms)")             \
  X(RING_CONNECT_TIMEOUT_MS, 30000, "ring all-reduce: time allowed to connect the ring (ms)")   \
  X(RING_CHUNK_BYTES, 262144, "ring all-reduce: pipelining chunk (bytes)")                      \
  X(RENDEZVOUS_TIMEOUT_MS, 60000, "a job whose workers do not all check in by then fails (ms)") \
  X(PROGRESS_MS, 100, "workers coalesce progress reports to at most one per interval (ms)")     \
  X(CLIENT_TIMEOUT_MS, 5000, "CLI: how long to wait for the coordinator to answer (ms)")        \
  X(POOL_WAIT_MS, 60000, "a queued job whose agent pool has no agent for this long fails (ms)") \
  X(COOLDOWN_MS, 30000, "an agent whose worker was killed takes no work for this long (ms)")    \
  X(STRAGGLER_PCT, 150,                                                                         \
    "a rank whose compute time per step is above this % of the others' median is a straggler")

typedef enum {
#define DRV_SETTING_ENUM(name, def, help) DRV_SET_##name,
  DRV_SETTINGS(DRV_SETTING_ENUM)
#undef DRV_SETTING_ENUM
      DRV_SET_COUNT
} drv_setting_t;

/* The setting's value: DROVER_<NAME> from the environment when set and a valid integer,
 * else its default. Read once per process and cached. */
int64_t drv_setting(drv_setting_t id);

/* Prints the table (name, variable, default, current value, help) to `out`. */
void drv_settings_print(FILE *out);

#endif
