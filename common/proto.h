/* proto.h: drover's wire protocol, the only place that knows about msgpack.
 *
 * Every message is one ZeroMQ frame holding the msgpack array
 *     [version, type, body]
 * version: unsigned integer, PROTO_VERSION; type: string ("hello", "submit", ...);
 * body: a map from field names (strings) to values. Unknown body keys are ignored, so a
 * newer peer may add optional fields; missing required fields, wrong types, an unknown
 * type or another version are refused with DRV_ERR_PROTO and a message naming the field.
 * Events on the PUB socket are two frames: the topic "job/<id>", then the message.
 *
 * Every job message carries `job` (the job id) and `generation` (bumped whenever a job's
 * world is re-formed), so messages from stale peers can be refused.
 *
 * Decoding is defensive: before msgpack-c builds any object, proto_validate walks the raw
 * bytes and refuses a frame larger than the limit, a count or length larger than the bytes
 * left (a "msgpack bomb" that would make the decoder allocate wildly), nesting deeper than
 * PROTO_MAX_DEPTH, a map of more than PROTO_MAX_KEYS keys, an array of more than
 * PROTO_MAX_ITEMS elements, a string longer than PROTO_MAX_STR bytes, and trailing bytes.
 * So decoding a frame costs a small multiple of its bytes (msgpack-c's one object per
 * element, each element taking at least a byte) and a bounded walk over its maps' keys,
 * however it was built. Every string field must be valid UTF-8 without NUL bytes
 * (drv_utf8_valid); a sender never sends anything else: a string of its own that is not
 * (text cut in the middle of a character by a fixed-size buffer) goes out with each
 * invalid byte replaced by U+FFFD.
 *
 * One list, PROTO_MESSAGES, names every message once: its type, its wire name, its body
 * and the sockets it may arrive at. The enum, the names, the bodies' C structs, the
 * codec's field tables and the per-socket check (sock_recv) are all generated from it and
 * from each body's field list, so a field's C type cannot disagree with its wire kind.
 * docs/protocol.md documents every message field by field (test_protocol_doc checks it).
 *
 * Ownership, one rule: a message never owns what its fields point to, except what lives in
 * its arena. A decoded message's strings and arrays are in its arena; a sender fills
 * fields with borrowed pointers (kept alive until the message is packed or sent) or with
 * copies made by proto_msg_strdup / proto_msg_alloc, which go to the arena.
 * proto_msg_fini frees the arena and nothing else, so it is safe on every message.
 */
#ifndef DROVER_COMMON_PROTO_H
#define DROVER_COMMON_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

#define PROTO_VERSION 1
#define PROTO_MAX_DEPTH 8
#define PROTO_MAX_KEYS 64       /* keys of one map: a body has at most 21 fields */
#define PROTO_MAX_ITEMS 4096    /* elements of one array: jobs (<= 1000), agents, ranks */
#define PROTO_MAX_STR (1u << 20) /* bytes of one string: a job spec is smaller */

/* Where a message may arrive: each socket accepts only the messages meant for it. */
typedef enum {
  PROTO_AT_COORD = 1 << 0,  /* the coordinator's agent and worker ROUTER (port base+0) */
  PROTO_AT_API = 1 << 1,    /* the coordinator's client ROUTER (port base+1) */
  PROTO_AT_AGENT = 1 << 2,  /* an agent's DEALER to the coordinator */
  PROTO_AT_WORKER = 1 << 3, /* a worker's DEALER to the coordinator */
  PROTO_AT_CLIENT = 1 << 4, /* a client's DEALER: replies to its requests */
  PROTO_AT_EVENTS = 1 << 5, /* a SUB socket on the coordinator's PUB (port base+2) */
  PROTO_AT_STDIN = 1 << 6,  /* a worker's standard input: its assignment */
  PROTO_AT_REPORTS = 1 << 7, /* a command job's worker, from its program (DROVER_REPORT) */
  PROTO_AT_PROGRAM = 1 << 8, /* a command job's program, from its worker */
  PROTO_AT_ANY = 0x1ff,
} proto_at_t;

/* clang-format off */

/* X(TYPE, name, body, arrives at): every message, once. */
#define PROTO_MESSAGES(X)                                                                    \
  /* agents and workers <-> coordinator (port base+0) */                                   \
  X(HELLO,       hello,       hello,       PROTO_AT_COORD)  /* agent: register, resources */ \
  X(WELCOME,     welcome,     welcome,     PROTO_AT_AGENT)  /* registered */                 \
  X(HEARTBEAT,   heartbeat,   heartbeat,   PROTO_AT_COORD | PROTO_AT_AGENT) /* both ways */  \
  X(ASSIGN,      assign,      assign,      PROTO_AT_AGENT | PROTO_AT_STDIN) /* run a rank */ \
  X(KILL,        kill,        kill,        PROTO_AT_AGENT)  /* kill a job's worker */        \
  X(WORKER_EXIT, worker_exit, worker_exit, PROTO_AT_COORD)  /* agent: a worker ended */      \
  X(RENDEZVOUS,  rendezvous,  rendezvous,  PROTO_AT_COORD)  /* worker: up, ring address */   \
  X(START,       start,       start,       PROTO_AT_WORKER) /* everyone is up: the peers */  \
  X(PROGRESS,    progress,    progress,    PROTO_AT_COORD)  /* worker: steps done */         \
  X(EVAL,        eval,        eval,        PROTO_AT_COORD)  /* rank 0: evaluation */         \
  X(DONE,        done,        done,        PROTO_AT_COORD)  /* worker: finished, metrics */  \
  X(FAILED,      failed,      failed,      PROTO_AT_COORD)  /* worker: gave up, why */       \
  X(ABORT,       abort,       abort,       PROTO_AT_WORKER) /* stop now */                   \
  X(CHECKPOINT,  checkpoint,  checkpoint,  PROTO_AT_COORD)  /* rank 0: checkpoint durable */ \
  X(LOST,        lost,        lost,        PROTO_AT_COORD)  /* worker: ring broke, waiting */\
  X(REFORM,      reform,      reform,      PROTO_AT_WORKER) /* rejoin as rank of new world */\
  X(PAUSE,       pause,       pause,       PROTO_AT_WORKER) /* stop at the next commit */    \
  X(LEAVE,       leave,       leave,       PROTO_AT_COORD)  /* agent: take my rank out */    \
  X(BYE,         bye,         bye,         PROTO_AT_COORD)  /* agent: stopping, forget me */ \
  X(LOG,         log,         log,         PROTO_AT_COORD)  /* worker: its program's output */ \
  /* clients <-> coordinator (port base+1) */                                              \
  X(SUBMIT,      submit,      submit,      PROTO_AT_API)    /* a job spec */                 \
  X(SUBMITTED,   submitted,   submitted,   PROTO_AT_CLIENT) /* reply: the job id */          \
  X(STATUS,      status,      status,      PROTO_AT_API)    /* one job or the recent ones */ \
  X(JOBS,        jobs,        jobs,        PROTO_AT_CLIENT) /* reply: job records */         \
  X(CANCEL,      cancel,      cancel,      PROTO_AT_API)    /* cancel a job */               \
  X(OK,          ok,          empty,       PROTO_AT_CLIENT) /* reply: done */                \
  X(AGENTS,      agents,      empty,       PROTO_AT_API)    /* the agent registry */         \
  X(AGENT_LIST,  agent_list,  agent_list,  PROTO_AT_CLIENT) /* reply: agents */              \
  X(GET_SPEC,    get_spec,    get_spec,    PROTO_AT_API)    /* a job's resolved spec */      \
  X(TARGETS,     targets,     empty,       PROTO_AT_API)    /* the compute targets */        \
  X(LOGS,        logs,        logs,        PROTO_AT_API)    /* a job's output, from offset */ \
  X(LOG_CHUNK,   log_chunk,   log_chunk,   PROTO_AT_CLIENT) /* reply: some of it */          \
  X(TARGET_LIST, target_list, target_list, PROTO_AT_CLIENT) /* reply: targets and nodes */   \
  X(SPEC,        spec,        spec,        PROTO_AT_CLIENT) /* reply: the spec */            \
  X(ERROR,       error,       error,       PROTO_AT_CLIENT | PROTO_AT_AGENT) /* refused */   \
  /* coordinator PUB (port base+2), topic "job/<id>" */                                    \
  X(EV_STATE,    ev_state,    ev_state,    PROTO_AT_EVENTS) /* a job changed state */        \
  X(EV_PROGRESS, ev_progress, ev_progress, PROTO_AT_EVENTS) /* aggregated progress */        \
  X(EV_EVAL,     ev_eval,     eval,        PROTO_AT_EVENTS) /* evaluation after an epoch */  \
  X(EV_TARGET,   ev_target,   ev_target,   PROTO_AT_EVENTS) /* topic target/<name>: scaling */ \
  /* a command job's program <-> its worker (DROVER_REPORT, on the node) */                \
  X(REPORT,      report,      report,      PROTO_AT_REPORTS) /* steps done, loss, metrics */ \
  X(REPORT_ACK,  report_ack,  report_ack,  PROTO_AT_PROGRAM) /* reply: stop or go on */

/* Bodies: F(B, field, KIND, required) for scalars, strings and string arrays; A(B, field,
 * element body, required) for arrays of maps. KIND is I64, I32, U32, U64, F64, STR or
 * STRS; arrays come with a `<field>_count` (uint32_t). REQ: the field must be present. */

#define PROTO_FIELDS_gpu(F, A, B)                                                            \
  F(B, index,     U32, REQ)                                                                \
  F(B, name,      STR, REQ)                                                                \
  F(B, mem_bytes, U64, REQ)                                                                \
  F(B, cc_major,  U32, REQ)                                                                \
  F(B, cc_minor,  U32, REQ)                                                                \
  F(B, pci_bus_id, STR, OPT) /* "0000:17:00.0": the agent lists its GPUs in this order */  \
  F(B, uuid,      STR, OPT)  /* "GPU-..." : what the agent names it by to its workers */

#define PROTO_FIELDS_gpu_stat(F, A, B)                                                       \
  F(B, index,          U32, REQ) /* the GPU's `index` in its agent's hello */              \
  F(B, mem_used_bytes, U64, REQ) /* device memory in use, every process together */        \
  F(B, util_pct,       U32, REQ) /* % of the last sample period a kernel ran */

#define PROTO_FIELDS_hello(F, A, B)                                                          \
  F(B, agent_id,  STR, REQ) /* stable name of the agent (default: host-pid) */             \
  F(B, host,      STR, REQ) /* host name or address workers' peers can reach */            \
  F(B, target,    STR, REQ) /* "local" | "attached" | "managed": jobs it serves */         \
  F(B, pool,      STR, OPT) /* it serves only jobs submitted with this pool */             \
  F(B, node,      STR, OPT) /* the managed node it was launched as (drover agent --node) */ \
  F(B, pid,       U32, OPT)                                                                \
  F(B, session,   U64, OPT) /* new each (re)connect: a new session's workers are gone */   \
  F(B, cpus,      U32, REQ)                                                                \
  F(B, mem_bytes, U64, REQ)                                                                \
  A(B, gpus,      gpu, REQ)

#define PROTO_FIELDS_welcome(F, A, B)                                                        \
  F(B, agent_id,        STR, REQ)                                                          \
  F(B, heartbeat_ms,    U32, REQ)                                                          \
  F(B, peer_timeout_ms, U32, REQ)

#define PROTO_FIELDS_heartbeat(F, A, B)                                                      \
  F(B, seq,     U64, OPT)                                                                  \
  F(B, workers, U32, OPT) /* worker processes the sender runs (agents) */                 \
  A(B, gpus,    gpu_stat, OPT) /* agents: each GPU's use now (with NVML; absent without) */

#define PROTO_FIELDS_assign(F, A, B)                                                         \
  F(B, job,         I64, REQ)                                                              \
  F(B, generation,  U32, REQ)                                                              \
  F(B, rank,        U32, REQ)                                                              \
  F(B, world,       U32, REQ)                                                              \
  F(B, local_rank,  U32, REQ) /* rank among the job's workers on this agent */            \
  F(B, device,      I32, REQ) /* the agent's GPU (its hello's `index`); -1: the CPU */     \
  F(B, devices,     U32, OPT) /* GPUs of the worker: device and the next ones (default 1) */ \
  F(B, local_world, U32, OPT) /* the job's workers on this agent (default 1) */            \
  F(B, cpus,        U32, OPT) /* cores the worker may use; 0: the agent's / local_world */ \
  F(B, spec,        STR, REQ) /* resolved job spec, YAML */                                \
  F(B, run_dir,     STR, REQ) /* absolute run directory of the job */                      \
  F(B, coordinator, STR, REQ) /* endpoint the worker reports to */                         \
  F(B, resume_dir,  STR, OPT) /* checkpoints to start from when run_dir has none */        \
  F(B, host,        STR, OPT) /* worker's stdin only: the address its ring listens on */ \
  F(B, owner,       STR, OPT) /* the job's owner (from the submitter's key) */             \
  F(B, lineage,     STR, OPT) /* the job's lineage: checkpoints of other lineages refused */ \
  F(B, secret,      STR, OPT) /* this worker's CurveZMQ secret key, Z85 (its own, secret) */ \
  F(B, coordinator_key, STR, OPT) /* the coordinator's CurveZMQ public key, Z85: pinned */ \
  F(B, ring_key,    STR, OPT) /* the job's ring key, 64 hex digits: proves ring peers */ \
  F(B, preemptible, U32, OPT) /* 1: on a preemptible target: a lost peer is re-formed from
                                 even with max_restarts 0 (a preemption is no restart) */ \
  F(B, restarts,    U32, OPT) /* command jobs: restarts so far (TORCHELASTIC_RESTART_COUNT) */ \
  F(B, group_rank,  U32, OPT) /* command jobs: the node's index in the world (GROUP_RANK) */

#define PROTO_FIELDS_kill(F, A, B)                                                           \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ) /* with rank: its assign's */                                 \
  F(B, reason,     STR, OPT)                                                               \
  F(B, single,     U32, OPT) /* 1: only the worker of the assign (generation, rank) */    \
  F(B, rank,       U32, OPT) /* single: that assign's rank */

#define PROTO_FIELDS_worker_exit(F, A, B)                                                    \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, rank,       U32, REQ)                                                               \
  F(B, exit_code,  I32, REQ) /* -1 when killed by a signal */                              \
  F(B, signal,     I32, REQ) /* 0 when it exited */                                        \
  F(B, workers,    U32, OPT) /* the job's workers the agent still runs */                  \
  F(B, assigned,   U32, OPT) /* newest generation of the job all its assigns came for */ \
  F(B, none,       U32, OPT) /* 1: a kill's answer: no such worker was running */

#define PROTO_FIELDS_rendezvous(F, A, B)                                                     \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, rank,       U32, REQ)                                                               \
  F(B, pid,        U32, OPT)                                                               \
  F(B, addr,       STR, REQ) /* "HOST:PORT" of its ring listener */                        \
  F(B, gpu,        STR, OPT) /* "HOST/PCI bus id" of its GPU; absent or "": the CPU */     \
  F(B, nccl_id,    STR, OPT) /* rank 0 of a GPU world: NCCL unique id, 256 hex digits */

#define PROTO_FIELDS_start(F, A, B)                                                          \
  F(B, job,        I64,  REQ)                                                              \
  F(B, generation, U32,  REQ)                                                              \
  F(B, world,      U32,  REQ)                                                              \
  F(B, peers,      STRS, REQ) /* ring addresses by rank */                                 \
  F(B, gpus,       STRS, OPT) /* each rank's rendezvous `gpu` ("" for the CPU), by rank */ \
  F(B, nccl_id,    STR,  OPT) /* rank 0's NCCL id, relayed */

#define PROTO_FIELDS_progress(F, A, B)                                                       \
  F(B, job,         I64, REQ)                                                              \
  F(B, generation,  U32, REQ)                                                              \
  F(B, rank,        U32, REQ)                                                              \
  F(B, epoch,       U32, REQ) /* 0-based */                                                \
  F(B, step,        U64, REQ) /* global steps done */                                      \
  F(B, steps_total, U64, REQ)                                                              \
  F(B, loss,        F64, REQ) /* mean training loss of the last global batch */            \
  F(B, lr,          F64, OPT)                                                              \
  F(B, samples,     U64, REQ) /* samples this rank processed since its last report */      \
  F(B, interval_s,  F64, REQ) /* seconds those samples took */                             \
  F(B, step_ms,     F64, REQ) /* this rank's mean step time over the interval */           \
  F(B, wait_ms,     F64, OPT) /* of which spent in all-reduces (waiting for the others) */ \
  F(B, coll_seq,    U64, OPT) /* collectives completed on its ring so far */               \
  F(B, data_ms,     F64, OPT) /* mean ms per step the device waited for input data */

#define PROTO_FIELDS_eval(F, A, B)                                                           \
  F(B, job,           I64, REQ)                                                            \
  F(B, generation,    U32, REQ)                                                            \
  F(B, epoch,         U32, REQ)                                                            \
  F(B, test_loss,     F64, REQ)                                                            \
  F(B, test_accuracy, F64, REQ)

#define PROTO_FIELDS_done(F, A, B)                                                           \
  F(B, job,           I64, REQ)                                                            \
  F(B, generation,    U32, REQ)                                                            \
  F(B, rank,          U32, REQ)                                                            \
  F(B, steps,         U64, REQ)                                                            \
  F(B, test_loss,     F64, REQ)                                                            \
  F(B, test_accuracy, F64, REQ)                                                            \
  F(B, samples_per_s, F64, REQ) /* global training throughput seen by this rank */         \
  F(B, train_s,       F64, REQ)

#define PROTO_FIELDS_failed(F, A, B)                                                         \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, rank,       U32, REQ)                                                               \
  F(B, reason,     STR, REQ)

#define PROTO_FIELDS_abort(F, A, B)                                                          \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, reason,     STR, OPT)

#define PROTO_FIELDS_checkpoint(F, A, B)                                                     \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, step,       U64, REQ) /* global steps done when it was taken */                     \
  F(B, dir,        STR, REQ) /* its directory */

#define PROTO_FIELDS_lost(F, A, B)                                                           \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ) /* the one it had when its ring broke */                      \
  F(B, rank,       U32, REQ) /* likewise */                                                \
  F(B, step,       U64, REQ) /* its last commit: where it rolled back to */                \
  F(B, reason,     STR, REQ) /* what broke, naming the peer */

#define PROTO_FIELDS_reform(F, A, B)                                                         \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ) /* the new one */                                             \
  F(B, rank,       U32, REQ)                                                               \
  F(B, world,      U32, REQ)

#define PROTO_FIELDS_pause(F, A, B)                                                          \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, reason,     STR, OPT) /* why: growth, an agent leaving */

#define PROTO_FIELDS_leave(F, A, B)                                                          \
  F(B, reason, STR, OPT)

#define PROTO_FIELDS_bye(F, A, B)                                                            \
  F(B, reason, STR, OPT)

#define PROTO_FIELDS_submit(F, A, B)                                                         \
  F(B, spec,   STR, REQ) /* YAML text of the job spec (resolved by the client) */          \
  F(B, pool,   STR, OPT) /* place the job only on agents of this pool */                   \
  F(B, resume, I64, OPT) /* continue from this job's last checkpoint (0: none) */          \
  F(B, token,  STR, OPT) /* client's name for it: a retry gets the first one's job */

#define PROTO_FIELDS_submitted(F, A, B)                                                      \
  F(B, job,     I64, REQ)                                                                  \
  F(B, run_dir, STR, REQ)

#define PROTO_FIELDS_status(F, A, B)                                                         \
  F(B, job,   I64, OPT) /* 0: the most recent jobs */                                      \
  F(B, limit, U32, OPT) /* 0: default (20) */

#define PROTO_FIELDS_rank(F, A, B)                                                           \
  F(B, rank,       U32, REQ)                                                               \
  F(B, agent,      STR, REQ)                                                               \
  F(B, host,       STR, REQ)                                                               \
  F(B, step_ms,    F64, REQ) /* smoothed step time */                                      \
  F(B, compute_ms, F64, REQ) /* step time less the time waiting in all-reduces */          \
  F(B, wait_ms,    F64, REQ) /* smoothed time in all-reduces per step */                   \
  F(B, straggler,  U32, REQ) /* 1: compute above DROVER_STRAGGLER_PCT % of the median */   \
  F(B, data_ms,    F64, OPT) /* smoothed time per step the device waited for data */       \
  F(B, local_rank, U32, OPT) /* among its agent's workers of the job */                   \
  F(B, gpu,        STR, OPT) /* its GPU's PCI bus id ("" : the CPU) */

#define PROTO_FIELDS_job(F, A, B)                                                            \
  F(B, id,            I64, REQ)                                                            \
  F(B, name,          STR, REQ)                                                            \
  F(B, state,         STR, REQ)                                                            \
  F(B, reason,        STR, REQ)                                                            \
  F(B, target,        STR, REQ)                                                            \
  F(B, run_dir,       STR, REQ)                                                            \
  F(B, nodes,         U32, REQ)                                                            \
  F(B, epoch,         U32, REQ)                                                            \
  F(B, epochs,        U32, REQ)                                                            \
  F(B, step,          U64, REQ)                                                            \
  F(B, steps_total,   U64, REQ)                                                            \
  F(B, loss,          F64, REQ)                                                            \
  F(B, samples_per_s, F64, REQ)                                                            \
  F(B, test_loss,     F64, REQ)                                                            \
  F(B, test_accuracy, F64, REQ)                                                            \
  F(B, submitted_at,  F64, REQ) /* wall seconds; 0 = not yet */                            \
  F(B, started_at,    F64, REQ)                                                            \
  F(B, finished_at,   F64, REQ)                                                            \
  F(B, ckpt_step,     U64, OPT) /* last durable checkpoint, 0 = none */                    \
  F(B, owner,         STR, OPT) /* who submitted it (the name bound to their key) */       \
  A(B, ranks,         rank, OPT) /* live jobs: one per rank */

#define PROTO_FIELDS_jobs(F, A, B)                                                           \
  A(B, jobs, job, REQ)

#define PROTO_FIELDS_cancel(F, A, B)                                                         \
  F(B, job, I64, REQ)

#define PROTO_FIELDS_empty(F, A, B)

#define PROTO_FIELDS_agent_gpu(F, A, B)                                                      \
  F(B, index,          U32, REQ) /* as its agent's hello numbered it */                    \
  F(B, name,           STR, REQ)                                                           \
  F(B, pci_bus_id,     STR, OPT)                                                           \
  F(B, mem_bytes,      U64, REQ)                                                           \
  F(B, mem_used_bytes, U64, OPT) /* at its agent's last heartbeat (absent: not measured) */ \
  F(B, util_pct,       U32, OPT)                                                           \
  F(B, measured,       U32, OPT) /* 1: the two above are measured (NVML) */

#define PROTO_FIELDS_agent(F, A, B)                                                          \
  F(B, agent_id,    STR, REQ)                                                              \
  F(B, host,        STR, REQ)                                                              \
  F(B, target,      STR, REQ)                                                              \
  F(B, state,       STR, REQ) /* "idle" | "busy" */                                        \
  F(B, cpus,        U32, REQ)                                                              \
  F(B, gpus,        U32, REQ)                                                              \
  F(B, mem_bytes,   U64, REQ)                                                              \
  F(B, job,         I64, REQ) /* 0 when idle */                                            \
  F(B, last_seen_s, F64, REQ) /* seconds since its last message */                        \
  F(B, workers,     U32, OPT) /* worker processes it runs (its last heartbeat) */          \
  A(B, devices,     agent_gpu, OPT) /* its GPUs, in its order (PCI bus id) */

#define PROTO_FIELDS_agent_list(F, A, B)                                                     \
  A(B, agents, agent, REQ)

#define PROTO_FIELDS_log(F, A, B)                                                            \
  F(B, job,        I64, REQ)                                                               \
  F(B, generation, U32, REQ)                                                               \
  F(B, rank,       U32, REQ)                                                               \
  F(B, text,       STR, REQ) /* whole lines, each "HH:MM:SS.mmm TEXT\n" */

#define PROTO_FIELDS_logs(F, A, B)                                                           \
  F(B, job,    I64, REQ)                                                                   \
  F(B, offset, U64, OPT) /* where to go on from (the last chunk's offset); 0: the start */

#define PROTO_FIELDS_log_chunk(F, A, B)                                                      \
  F(B, job,    I64, REQ)                                                                   \
  F(B, offset, U64, REQ) /* where the next chunk starts */                                 \
  F(B, text,   STR, REQ) /* lines "rank R AGENT | HH:MM:SS.mmm TEXT" ("" : none new) */    \
  F(B, ended,  U32, REQ) /* 1: the job is over: no more will come after this */

#define PROTO_FIELDS_report(F, A, B)                                                         \
  F(B, step,        U64, REQ) /* global steps done */                                      \
  F(B, loss,        F64, OPT)                                                              \
  F(B, epoch,       U32, OPT) /* 0-based */                                                \
  F(B, steps_total, U64, OPT)                                                              \
  F(B, samples,     U64, OPT) /* samples this rank processed since its previous report */  \
  F(B, metrics,     STR, OPT) /* a JSON object of the program's other figures */

#define PROTO_FIELDS_report_ack(F, A, B)                                                     \
  F(B, stop, U32, REQ) /* 1: checkpoint and exit 0 (a preemption notice, or the job stops) */

#define PROTO_FIELDS_target_info(F, A, B)                                                    \
  F(B, name,        STR, REQ)                                                              \
  F(B, kind,        STR, REQ) /* "local" | "attached" | "managed" */                       \
  F(B, launcher,    STR, REQ) /* managed: "command" | "ssh" | "slurm"; else "" */           \
  F(B, min_nodes,   U32, REQ)                                                              \
  F(B, max_nodes,   U32, REQ) /* 0: no bound (local, attached) */                          \
  F(B, idle,        U32, REQ) /* registered agents of it, idle */                          \
  F(B, busy,        U32, REQ) /* registered agents of it with a job */                     \
  F(B, starting,    U32, REQ) /* launched, not registered yet */                           \
  F(B, stopping,    U32, REQ) /* being stopped */                                          \
  F(B, failed,      U32, REQ) /* launch failures so far */                                 \
  F(B, launched,    U32, OPT) /* nodes launched so far */                                  \
  F(B, preemptible, U32, OPT)                                                              \
  F(B, idle_timeout_s, U32, OPT)                                                           \
  F(B, launch_timeout_s, U32, OPT)                                                         \
  F(B, retry_in_s,  F64, OPT) /* after launch failures: seconds until it launches again */  \
  F(B, last_error,  STR, OPT) /* the last launch failure */

#define PROTO_FIELDS_target_list(F, A, B)                                                    \
  A(B, targets, target_info, REQ)

#define PROTO_FIELDS_ev_target(F, A, B)                                                      \
  F(B, target, STR, REQ)                                                                   \
  F(B, event,  STR, REQ) /* scale_up | node_up | scale_down | node_gone | launch_failed */ \
  F(B, node,   STR, REQ)                                                                   \
  F(B, reason, STR, REQ)                                                                   \
  F(B, nodes,  U32, REQ) /* the target's nodes after it (starting, up, stopping) */

#define PROTO_FIELDS_get_spec(F, A, B)                                                       \
  F(B, job, I64, REQ)

#define PROTO_FIELDS_spec(F, A, B)                                                           \
  F(B, job,     I64, REQ)                                                                  \
  F(B, spec,    STR, REQ)                                                                  \
  F(B, run_dir, STR, REQ)

#define PROTO_FIELDS_error(F, A, B)                                                          \
  F(B, code,    STR, REQ) /* "invalid" | "proto" | "not_found" | "busy" | ... */           \
  F(B, message, STR, REQ) /* human-readable, names what and where */

#define PROTO_FIELDS_ev_state(F, A, B)                                                       \
  F(B, job,           I64, REQ)                                                            \
  F(B, state,         STR, REQ) /* "queued" | "running" | "succeeded" | ... */             \
  F(B, reason,        STR, OPT) /* why it failed or was cancelled, "" otherwise */         \
  F(B, run_dir,       STR, OPT)                                                            \
  F(B, test_loss,     F64, OPT) /* final metrics on success */                             \
  F(B, test_accuracy, F64, OPT)                                                            \
  F(B, samples_per_s, F64, OPT)

#define PROTO_FIELDS_ev_progress(F, A, B)                                                    \
  F(B, job,             I64, REQ)                                                          \
  F(B, generation,      U32, REQ)                                                          \
  F(B, epoch,           U32, REQ)                                                          \
  F(B, epochs,          U32, REQ)                                                          \
  F(B, step,            U64, REQ)                                                          \
  F(B, steps_total,     U64, REQ)                                                          \
  F(B, loss,            F64, REQ)                                                          \
  F(B, lr,              F64, REQ)                                                          \
  F(B, samples_per_s,   F64, REQ) /* summed over ranks */                                  \
  F(B, slowest_rank,    U32, REQ)                                                          \
  F(B, slowest_step_ms, F64, REQ) /* that rank's mean step time */                         \
  F(B, eta_s,           F64, REQ)

/* Every body, element bodies (gpu, rank, job, agent) before the bodies that hold them. */
#define PROTO_BODIES(X)                                                                      \
  X(gpu) X(gpu_stat) X(hello) X(welcome) X(heartbeat) X(assign) X(kill) X(worker_exit) X(rendezvous)   \
  X(start) X(progress) X(eval) X(done) X(failed) X(abort) X(checkpoint) X(lost) X(reform)  \
  X(pause) X(leave) X(bye) X(submit) X(submitted) X(status) X(rank) X(job) X(jobs)         \
  X(cancel) X(empty) X(agent_gpu) X(agent) X(agent_list) X(target_info) X(target_list)      \
  X(ev_target) X(report) X(report_ack) X(log) X(logs) X(log_chunk) X(get_spec) X(spec) X(error) X(ev_state)       \
  X(ev_progress)

/* clang-format on */

// --- Generated: the enum and the C structs ---------------------------------------------

typedef enum {
#define PROTO_ENUM_(T, name, body, at) PROTO_##T,
  PROTO_MESSAGES(PROTO_ENUM_)
#undef PROTO_ENUM_
      PROTO_TYPE_COUNT
} proto_type_t;

#define PROTO_CTYPE_I64 int64_t
#define PROTO_CTYPE_I32 int32_t
#define PROTO_CTYPE_U32 uint32_t
#define PROTO_CTYPE_U64 uint64_t
#define PROTO_CTYPE_F64 double
#define PROTO_CTYPE_STR const char *
#define PROTO_CTYPE_STRS const char **
#define PROTO_COUNT_I64(f)
#define PROTO_COUNT_I32(f)
#define PROTO_COUNT_U32(f)
#define PROTO_COUNT_U64(f)
#define PROTO_COUNT_F64(f)
#define PROTO_COUNT_STR(f)
#define PROTO_COUNT_STRS(f) uint32_t f##_count;
#define PROTO_DECL_F_(B, f, K, req) PROTO_CTYPE_##K f; PROTO_COUNT_##K(f)
#define PROTO_DECL_A_(B, f, sub, req) struct proto_##sub *f; uint32_t f##_count;
#define PROTO_STRUCT_(b) \
  typedef struct proto_##b { PROTO_FIELDS_##b(PROTO_DECL_F_, PROTO_DECL_A_, b) } proto_##b##_t;
PROTO_BODIES(PROTO_STRUCT_)
#undef PROTO_STRUCT_

typedef struct proto_block proto_block_t; /* the arena: what the message owns */

typedef struct {
  proto_type_t type;
  proto_block_t *arena;
  union {
#define PROTO_UNION_(T, name, body, at) proto_##body##_t name;
    PROTO_MESSAGES(PROTO_UNION_)
#undef PROTO_UNION_
  } u;
} proto_msg_t;

// --- Functions -------------------------------------------------------------------------

/* The type's wire name ("hello"), or NULL when out of range. */
const char *proto_type_name(proto_type_t type);

/* Whether a message of `type` may arrive at the socket `at` (proto_at_t). */
int proto_arrives_at(proto_type_t type, proto_at_t at);

/* Why a message of `type` is refused at `at`, e.g. "'ok' is not a request clients may
 * send", into buf. */
void proto_refusal(proto_type_t type, proto_at_t at, char *buf, size_t n);

/* Zeroes a message and sets its type, ready to fill. */
void proto_msg_init(proto_msg_t *m, proto_type_t type);

/* Frees the message's arena and zeroes it. Safe on every initialised message. */
void proto_msg_fini(proto_msg_t *m);

/* n zeroed bytes in m's arena (freed by proto_msg_fini), or NULL when out of memory. */
void *proto_msg_alloc(proto_msg_t *m, size_t n);

/* A copy of s (NULL: "") in m's arena, or NULL when out of memory. */
const char *proto_msg_strdup(proto_msg_t *m, const char *s);

/* Encodes m. *buf is malloc'ed and owned by the caller; NULL strings go out as "". */
drv_result_t proto_pack(const proto_msg_t *m, char **buf, size_t *len);

/* Checks raw bytes without building objects: at most max_len bytes, one msgpack value
 * exactly, no count or length beyond the bytes left, depth <= PROTO_MAX_DEPTH, maps of at
 * most PROTO_MAX_KEYS keys, arrays of at most PROTO_MAX_ITEMS elements, strings of at
 * most PROTO_MAX_STR bytes. Stops at the first header over a limit: a refusal costs no
 * more than the bytes before it. */
drv_result_t proto_validate(const void *buf, size_t len, size_t max_len);

/* Validates and decodes one frame into m (initialised here; proto_msg_fini it even on
 * failure). DRV_ERR_PROTO with a message such as "progress: field 'loss' must be a
 * number, got string" or "submit: field 'spec' is not valid UTF-8 (byte 12)" on anything
 * wrong. */
drv_result_t proto_unpack(const void *buf, size_t len, size_t max_len, proto_msg_t *m);

/* For docs and tests: the field table of a type, one call per field index until it
 * returns 0. *kind is a short type name ("int", "uint", "float", "string", "string[]",
 * "gpu[]", "job[]", "agent[]"); *required is 1 for required fields. */
int proto_field_info(proto_type_t type, uint32_t i, const char **name, const char **kind,
                     int *required);

#endif
