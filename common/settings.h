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
  X(INSECURE, 0,                                                                                \
    "1: plaintext: no CurveZMQ, and rings joined by the public tag (whoever reaches the ports " \
    "controls every job)")                                                                      \
  X(MAX_USER_PRIORITY, 0, "highest job priority a user (not an admin) may ask for")          \
  X(MAX_QUEUED_PER_USER, 100, "active (queued or running) jobs one user may have at once")   \
  X(MAX_CONN_PER_ADDR, 256, "coordinator: TCP connections one IP address may hold per port")  \
  X(MAX_CONN, 4096, "coordinator: TCP connections per port, from everyone together")          \
  X(HANDSHAKE_MS, 5000, "a connection not authenticated within this is closed (ms)")          \
  X(MAX_MSG_BYTES, 16777216, "largest frame any socket accepts (ZMQ_MAXMSGSIZE, bytes)")        \
  X(HWM, 10000, "ZeroMQ send/receive high-water mark (messages)")                               \
  X(RING_TIMEOUT_MS, 30000,                                                                     \
    "ring all-reduce: a peer that makes no progress this long fails the step (ms)")             \
  X(RING_CONNECT_TIMEOUT_MS, 30000, "ring all-reduce: time allowed to connect the ring (ms)")   \
  X(RING_CHUNK_BYTES, 262144, "ring all-reduce: pipelining chunk (bytes)")                      \
  X(RING_HANDSHAKE_MS, 5000,                                                                    \
    "ring: a link whose handshake (the ring key's proofs) is not over by then is closed (ms)")  \
  X(RENDEZVOUS_TIMEOUT_MS, 60000, "a job whose workers do not all check in by then fails (ms)") \
  X(PROGRESS_MS, 100, "workers coalesce progress reports to at most one per interval (ms)")     \
  X(CLIENT_TIMEOUT_MS, 5000, "CLI: how long to wait for the coordinator to answer (ms)")        \
  X(POOL_WAIT_MS, 60000, "a queued job whose agent pool has no agent for this long fails (ms)") \
  X(FAIL_HOLD_MS, 200,                                                                          \
    "a rank's `failed` is held this long for a better cause from the others (0: none) (ms)")    \
  X(COOLDOWN_MS, 30000,                                                                         \
    "an agent whose worker was killed or hung takes no work for this long (ms)")                \
  X(STRAGGLER_PCT, 150,                                                                         \
    "a rank whose compute time per step is above this % of the others' median is a straggler")  \
  X(LOOP_BUDGET_MS, 5,                                                                          \
    "coordinator: longest it reads messages before its timers run (ms; 0: one per socket)")     \
  X(HISTORY_DAYS, 30, "coordinator: finished jobs older than this are forgotten (days; 0: never)") \
  X(MAX_SPEC_BYTES, 65536, "largest job spec text (bytes, at most 1048576)")                    \
  X(MAX_PATH_BYTES, 1024, "longest path in a job spec: run_dir, data files (bytes, at most 1024)") \
  X(MAX_NODES, 256, "most workers a job may ask for: nodes, max_nodes (0: no limit)")           \
  X(MAX_EPOCHS, 10000, "most epochs a job may ask for (0: no limit)")                           \
  X(MAX_BATCH, 65536, "largest train.global_batch (samples; 0: no limit)")                      \
  X(MAX_MODEL_BYTES, 4294967296,                                                                \
    "largest model a job may ask for: its parameters x 4 bytes (0: no limit)")                  \
  X(MAX_DATA_BYTES, 4294967296,                                                                 \
    "largest synthetic data a job may ask for: samples x features x 4 bytes (0: no limit)")

/* X(NAME, help): fault injection for tests and drills, integers like the above, 0 = off.
 * Listed apart by `drover settings`; a process logs a warning when one is on. */
#define DRV_FAULTS(X)                                                                    \
  X(FAULT_SLOW_MS, "worker: every training step sleeps this long, a straggler (ms)")     \
  X(FAULT_SLOW_SUBMIT_MS, "coordinator: each new submission is answered this late (ms)") \
  X(FAULT_KILL_AFTER_EVAL,                                                               \
    "worker: SIGKILLs itself right after the evaluation of this epoch (1-based)")        \
  X(FAULT_KILL_BEFORE_START,                                                             \
    "worker: 1 = SIGKILLs itself after loading its data, before it "                     \
    "checks in")                                                                         \
  X(FAULT_FAIL_AT_STEP,                                                                  \
    "worker: after this step closes its ring, waits 100 ms and fails with an error of "  \
    "its own (its peers' reports of the broken ring reach the coordinator first)")       \
  X(FAULT_RING_WAIT_MS,                                                                  \
    "worker: waits this long after `start` before it connects its ring, its ring port "  \
    "open meanwhile (ms)")                                                             \
  X(FAKE_GPUS,                                                                           \
    "agent: reports this many GPUs that are not there, in reverse PCI order (tests of "  \
    "the device assignment; the jobs must train on the CPU)")

typedef enum {
#define DRV_SETTING_ENUM(name, def, help) DRV_SET_##name,
#define DRV_FAULT_ENUM(name, help) DRV_SET_##name,
  DRV_SETTINGS(DRV_SETTING_ENUM) DRV_FAULTS(DRV_FAULT_ENUM)
#undef DRV_SETTING_ENUM
#undef DRV_FAULT_ENUM
      DRV_SET_COUNT
} drv_setting_t;

/* X(NAME, default, help): settings whose values are text. */
#define DRV_TEXT_SETTINGS(X)                                                                   \
  X(COORDINATOR, "tcp://127.0.0.1:7700", "the coordinator's base endpoint, for every command") \
  X(STATE_DIR, "",                                                                             \
    "coordinator state directory (empty: $XDG_STATE_HOME/drover, else ~/.local/state/drover)") \
  X(AUDIT_DIR, "", "workers append each step's sample ids to audit-<pid>.txt here (tests)") \
  X(JOIN, "", "join file: this user's or agent's key and the coordinator's (drover keys add)")

typedef enum {
#define DRV_TEXT_ENUM(name, def, help) DRV_TEXT_##name,
  DRV_TEXT_SETTINGS(DRV_TEXT_ENUM)
#undef DRV_TEXT_ENUM
      DRV_TEXT_COUNT
} drv_text_setting_t;

/* The text setting's value: DROVER_<NAME> from the environment when set and not empty,
 * else its default. Read once per process and cached; never NULL. */
const char *drv_setting_text(drv_text_setting_t id);

/* The setting's value: DROVER_<NAME> from the environment when set and a valid integer,
 * else its default. Read once per process and cached. */
int64_t drv_setting(drv_setting_t id);

/* Prints the table (name, variable, default, current value, help) to `out`. */
void drv_settings_print(FILE *out);

#endif
