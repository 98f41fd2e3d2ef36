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
 * PROTO_MAX_DEPTH, and trailing bytes. docs/protocol.md documents every message below,
 * field by field; the tables in proto.c are the single description both use.
 */
#ifndef DROVER_COMMON_PROTO_H
#define DROVER_COMMON_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

#define PROTO_VERSION 1
#define PROTO_MAX_DEPTH 8

typedef enum {
  /* agents and workers -> coordinator ROUTER (port base+0) */
  PROTO_HELLO = 0,   /* agent: register, with its resources */
  PROTO_WELCOME,     /* coordinator -> agent: registered */
  PROTO_HEARTBEAT,   /* both ways between agent and coordinator */
  PROTO_ASSIGN,      /* coordinator -> agent: start a worker for a job */
  PROTO_KILL,        /* coordinator -> agent: kill a job's worker */
  PROTO_WORKER_EXIT, /* agent -> coordinator: a worker process ended */
  PROTO_RENDEZVOUS,  /* worker -> coordinator: I am up, here is my ring address */
  PROTO_START,       /* coordinator -> worker: everyone is up, here are the peers */
  PROTO_PROGRESS,    /* worker -> coordinator: steps done */
  PROTO_EVAL,        /* worker (rank 0) -> coordinator: evaluation after an epoch */
  PROTO_DONE,        /* worker -> coordinator: finished, final metrics */
  PROTO_FAILED,
  /* worker -> coordinator: gave up, with the reason */ PROTO_ABORT,
  /* coordinator -> worker: stop
     now */
  PROTO_CHECKPOINT, /* worker (rank 0) -> coordinator: a checkpoint is durable */
  PROTO_LOST,
  /* worker -> coordinator: my ring broke; rolled back, waiting */ PROTO_REFORM, /* coordinator ->
                                                                                    worker: rejoin
                                                                                    as this rank of
                                                                                    a new world */
  PROTO_PAUSE, /* coordinator -> worker: stop at the next commit, report lost */
  PROTO_LEAVE, /* agent -> coordinator: stopping; take my worker out at a commit */
  /* clients -> coordinator ROUTER (port base+1) */
  PROTO_SUBMIT,    /* submit a job spec */
  PROTO_SUBMITTED, /* reply: the job id */
  PROTO_STATUS,    /* ask for one job or the recent ones */
  PROTO_JOBS,      /* reply: job records */
  PROTO_CANCEL,    /* cancel a job */
  PROTO_OK,        /* reply: done, nothing to say */
  PROTO_AGENTS,
  /* ask for the agent registry */ PROTO_AGENT_LIST, /* reply: agents */
  PROTO_GET_SPEC,                                    /* ask for a job's resolved spec */
  PROTO_SPEC,                                        /* reply: the spec */
  PROTO_BYE,   /* agent -> coordinator: stopping, forget me (its job fails) */
  PROTO_ERROR, /* reply to anything refused */
  /* coordinator PUB (port base+2), topic "job/<id>" */
  PROTO_EV_STATE,    /* a job changed state */
  PROTO_EV_PROGRESS, /* aggregated progress */
  PROTO_EV_EVAL,     /* evaluation after an epoch */
  PROTO_TYPE_COUNT
} proto_type_t;

/* ---- Bodies ---------------------------------------------------------------------------
 * Strings are heap-owned NUL-terminated copies (NULL when an optional one is absent);
 * arrays are heap arrays with a count. proto_msg_fini frees them all. */

typedef struct {
  uint32_t index;
  char *name;
  uint64_t mem_bytes;
  uint32_t cc_major, cc_minor;
} proto_gpu_t;

typedef struct {
  char *agent_id; /* stable name of the agent (default: host-pid) */
  char *host;     /* host name or address workers' peers can reach */
  char *target;   /* "local" | "attached" | "managed": which jobs it serves */
  char *pool;     /* optional: it serves only jobs submitted with this pool */
  uint32_t pid;
  uint64_t session; /* new each time the agent (re)connects: a repeated hello of one
                       session is harmless, a new session means its workers are gone */
  uint32_t cpus;
  uint64_t mem_bytes;
  proto_gpu_t *gpus;
  uint32_t gpus_count;
} proto_hello_t;

typedef struct {
  char *agent_id;
  uint32_t heartbeat_ms, peer_timeout_ms;
} proto_welcome_t;

typedef struct {
  uint64_t seq;
  uint32_t workers; /* worker processes the sender runs (agents) */
} proto_heartbeat_t;

typedef struct {
  int64_t job;
  uint32_t generation;
  uint32_t rank, world, local_rank;
  int32_t device;    /* GPU index, -1 for a CPU worker */
  char *spec;        /* resolved job spec, YAML */
  char *run_dir;     /* absolute run directory of the job */
  char *coordinator; /* endpoint the worker reports to */
  char *resume_dir;  /* optional: checkpoints to start from when run_dir has none */
} proto_assign_t;

typedef struct {
  int64_t job;
  uint32_t generation;
  char *reason;
} proto_kill_t; /* also the body of PROTO_ABORT */

typedef struct {
  int64_t job;
  uint32_t generation, rank;
  int32_t exit_code; /* -1 when killed by a signal */
  int32_t signal;    /* 0 when it exited */
} proto_worker_exit_t;

typedef struct {
  int64_t job;
  uint32_t generation, rank;
  uint32_t pid;
  char *addr;    /* "HOST:PORT" of its ring listener */
  char *gpu;     /* optional: "HOST/PCI bus id" of its GPU; absent or "": the CPU */
  char *nccl_id; /* optional, rank 0 of a GPU world: the NCCL unique id, 256 hex digits */
} proto_rendezvous_t;

typedef struct {
  int64_t job;
  uint32_t generation, world;
  char **peers; /* ring addresses by rank */
  uint32_t peers_count;
  char **gpus; /* optional: each rank's rendezvous `gpu` ("" for the CPU), by rank */
  uint32_t gpus_count;
  char *nccl_id; /* optional: rank 0's NCCL id, relayed */
} proto_start_t;

typedef struct {
  int64_t job;
  uint32_t generation, rank;
  uint32_t epoch; /* 0-based */
  uint64_t step;  /* global steps done */
  uint64_t steps_total;
  double loss; /* mean training loss of the last global batch */
  double lr;
  uint64_t samples;  /* samples this rank processed since its last report */
  double interval_s; /* seconds those samples took */
  double step_ms;    /* this rank's mean step time over the interval */
  double wait_ms;    /* of which spent in all-reduces (waiting for the others) */
  uint64_t coll_seq; /* collectives completed on its ring so far */
  double data_ms;    /* optional: mean ms per step the device sat waiting for input data */
} proto_progress_t;

typedef struct {
  int64_t job;
  uint32_t generation;
  uint32_t epoch;
  double test_loss, test_accuracy;
} proto_eval_t;

typedef struct {
  int64_t job;
  uint32_t generation, rank;
  uint64_t steps;
  double test_loss, test_accuracy;
  double samples_per_s; /* global training throughput seen by this rank */
  double train_s;
} proto_done_t;

typedef struct {
  int64_t job;
  uint32_t generation, rank;
  char *reason;
} proto_failed_t;

typedef struct {
  char *spec;     /* YAML text of the job spec (resolved by the client) */
  char *pool;     /* optional: place the job only on agents of this pool */
  int64_t resume; /* optional: continue from this job's last checkpoint (0: none) */
  char *token;    /* optional: the client's name for this submission; a retry with the same
                     token gets the job the first one made instead of a second job */
} proto_submit_t;

typedef struct {
  int64_t job;
  uint32_t generation;
  uint64_t step; /* global steps done when it was taken */
  char *dir;     /* its directory */
} proto_checkpoint_t;

typedef struct {
  int64_t job;
  uint32_t generation, rank; /* the ones it had when its ring broke */
  uint64_t step;             /* its last commit: where it rolled back to */
  char *reason;              /* what broke, naming the peer */
} proto_lost_t;

typedef struct {
  int64_t job;
  uint32_t generation, rank, world; /* the new ones */
} proto_reform_t;

typedef struct {
  int64_t job;
  char *spec;
  char *run_dir;
} proto_spec_t; /* PROTO_SPEC; PROTO_GET_SPEC uses only `job` */

typedef struct {
  int64_t job;
  char *run_dir;
} proto_submitted_t;

typedef struct {
  int64_t job;    /* 0: the most recent jobs */
  uint32_t limit; /* 0: default (20) */
} proto_status_t;

typedef struct {
  uint32_t rank;
  char *agent, *host;
  double step_ms;     /* smoothed step time */
  double compute_ms;  /* step time less the time waiting in all-reduces */
  double wait_ms;     /* smoothed time in all-reduces per step */
  double data_ms;     /* smoothed time per step the device waited for input data */
  uint32_t straggler; /* 1: compute time above DROVER_STRAGGLER_PCT % of the others' median */
} proto_rank_t;

typedef struct {
  int64_t id;
  char *name, *state, *reason, *target, *run_dir;
  uint32_t nodes, epoch, epochs;
  uint64_t step, steps_total;
  double loss, samples_per_s, test_loss, test_accuracy;
  double submitted_at, started_at, finished_at; /* wall seconds; 0 = not yet */
  uint64_t ckpt_step;                           /* last durable checkpoint, 0 = none */
  proto_rank_t *ranks;                          /* live jobs: one per rank */
  uint32_t ranks_count;
} proto_job_t;

typedef struct {
  proto_job_t *jobs;
  uint32_t jobs_count;
} proto_jobs_t;

typedef struct {
  int64_t job;
} proto_cancel_t;

typedef struct {
  char *agent_id, *host, *target, *state; /* state: "idle" | "busy" */
  uint32_t cpus, gpus;
  uint64_t mem_bytes;
  int64_t job;        /* 0 when idle */
  double last_seen_s; /* seconds since its last message */
} proto_agent_t;

typedef struct {
  proto_agent_t *agents;
  uint32_t agents_count;
} proto_agent_list_t;

typedef struct {
  char *code;    /* "invalid" | "proto" | "not_found" | "busy" | ... */
  char *message; /* human-readable, names what and where */
} proto_error_t;

typedef struct {
  int64_t job;
  char *state;  /* "queued" | "running" | "succeeded" | "failed" | "cancelled" */
  char *reason; /* why it failed or was cancelled, "" otherwise */
  char *run_dir;
  double test_loss, test_accuracy, samples_per_s; /* final metrics on success */
} proto_ev_state_t;

typedef struct {
  int64_t job;
  uint32_t generation, epoch, epochs;
  uint64_t step, steps_total;
  double loss, lr;
  double samples_per_s; /* summed over ranks */
  uint32_t slowest_rank;
  double slowest_step_ms; /* that rank's mean step time */
  double eta_s;
} proto_ev_progress_t;

typedef struct {
  proto_type_t type;
  union {
    proto_hello_t hello;
    proto_welcome_t welcome;
    proto_heartbeat_t heartbeat;
    proto_assign_t assign;
    proto_kill_t kill; /* PROTO_KILL, PROTO_ABORT, PROTO_PAUSE; PROTO_BYE, PROTO_LEAVE (reason) */
    proto_worker_exit_t worker_exit;
    proto_rendezvous_t rendezvous;
    proto_start_t start;
    proto_progress_t progress;
    proto_eval_t eval; /* PROTO_EVAL and PROTO_EV_EVAL */
    proto_done_t done;
    proto_failed_t failed;
    proto_submit_t submit;
    proto_checkpoint_t checkpoint;
    proto_lost_t lost;
    proto_reform_t reform;
    proto_spec_t spec; /* PROTO_GET_SPEC and PROTO_SPEC */
    proto_submitted_t submitted;
    proto_status_t status;
    proto_jobs_t jobs;
    proto_cancel_t cancel;
    proto_agent_list_t agent_list;
    proto_error_t error;
    proto_ev_state_t ev_state;
    proto_ev_progress_t ev_progress;
  } u;
} proto_msg_t;

/* The type's wire name ("hello"), or NULL when out of range. */
const char *proto_type_name(proto_type_t type);

/* Zeroes a message and sets its type, ready to fill. */
void proto_msg_init(proto_msg_t *m, proto_type_t type);

/* Frees what a message owns (strings, arrays) and zeroes it. Safe on a zeroed message. */
void proto_msg_fini(proto_msg_t *m);

/* Encodes m. *buf is malloc'ed and owned by the caller; NULL strings go out as "". */
drv_result_t proto_pack(const proto_msg_t *m, char **buf, size_t *len);

/* Checks raw bytes without building objects: at most max_len bytes, one msgpack value
 * exactly, no count or length beyond the bytes left, depth <= PROTO_MAX_DEPTH. */
drv_result_t proto_validate(const void *buf, size_t len, size_t max_len);

/* Validates and decodes one frame into m (initialised here; proto_msg_fini it even on
 * failure). DRV_ERR_PROTO with a message such as "progress: field 'loss' must be a
 * number, got string" on anything wrong. */
drv_result_t proto_unpack(const void *buf, size_t len, size_t max_len, proto_msg_t *m);

/* For docs and tests: the field table of a type, one call per field index until it
 * returns 0. *kind is a short type name ("int", "uint", "float", "string", "string[]",
 * "gpu[]", "job[]", "agent[]"); *required is 1 for required fields. */
int proto_field_info(proto_type_t type, uint32_t i, const char **name, const char **kind,
                     int *required);

#endif
