/* coord_int.h: the coordinator's state, shared by its own files (coord.c: the event loop,
 * registry, scheduler and message handlers; recovery.c: re-forming a job's world). Not a
 * public interface: only coordinator/ includes it. Everything runs on one thread. */
#ifndef DROVER_COORDINATOR_COORD_INT_H
#define DROVER_COORDINATOR_COORD_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"
#include "common/sock.h"
#include "coordinator/coord.h"
#include "coordinator/store.h"

#define MAX_AGENTS 256
#define MAX_JOBS 1024
#define EXIT_GRACE_MS 3000    /* a worker that exited 0 has this long for its `done` to arrive */
#define RECOVER_GRACE_MS 3000 /* survivors of a broken ring report `lost` within this */

typedef struct {
  int used;
  sock_peer_t peer;
  char agent_id[128], host[256], target[16], pool[64];
  uint32_t cpus, gpus;
  uint64_t mem_bytes, session;
  int64_t last_seen_ms;
  int64_t job;               /* 0 when idle; set from assign until its worker exits */
  uint32_t generation;       /* of the assignment it is booked for */
  int64_t cooldown_until_ms; /* its worker was killed: no new work before then */
  int leaving;               /* said `leave`: no new work */
} agent_t;

typedef struct {
  int agent;         /* index into agents[] */
  int rendezvoused;  /* rendezvous received for this generation */
  char addr[256];    /* ring address */
  char gpu[128];     /* its rendezvous `gpu`: "" for the CPU */
  char nccl_id[260]; /* rank 0's rendezvous `nccl_id` */
  sock_peer_t peer;  /* its worker, once it checked in */
  int done, exited;
  int32_t exit_code;   /* when exited: its code (0: clean, waiting for `done`) */
  int64_t exit_ms;     /* when its agent reported an exit without `done` or `failed` yet */
  uint32_t assign_gen; /* generation of its agent's assignment (its process's birth) */
  int dead;            /* lost for good: excluded from the next world */
  int lost;            /* reported `lost` during a re-formation: alive, rolled back */
  int leaving;         /* its agent is stopping: left out at the next re-formation */
  /* last progress report, and smoothed step and all-reduce times */
  uint64_t step;
  double samples_per_s, step_ms, ewma_step_ms, ewma_wait_ms, ewma_data_ms;
  uint64_t coll_seq; /* collectives it had completed at its last report */
  int straggler;
} slot_t;

typedef struct {
  int used;
  int64_t id;
  job_state_t state;
  char name[128];
  char target[16];
  char pool[64]; /* "" or the pool of agents it must run on */
  uint32_t nodes, epochs;
  uint32_t generation;
  char *spec_yaml;
  char run_dir[1024];
  char resume_dir[1024]; /* checkpoints to start from when run_dir has none; "" */
  uint64_t ckpt_step;    /* last durable checkpoint */
  int64_t pool_seen_ms;  /* last time an agent of its pool was registered */
  slot_t *slots;         /* nodes of them while running */
  uint32_t min_nodes, max_nodes, max_restarts, restarts;
  int recovering;              /* collecting survivors to re-form the world */
  uint32_t recover_gen;        /* the generation whose world broke */
  int64_t recover_deadline_ms; /* survivors that have not reported by then are left out */
  char first_reason[512];      /* the first failure the job recovered from, for max_restarts */
  char cur_reason[512];        /* the failure being recovered from now */
  int cur_is_symptom;          /* cur_reason is a survivor's broken ring, not the cause */
  int planned;                 /* the re-formation was asked for (growth, a leaving agent) */
  int waiting_for_agents;      /* below min_nodes, waiting up to rejoin_timeout */
  uint32_t rejoin_timeout_s;
  char plan_reason[256];
  uint32_t commit_every; /* planned re-formations need commits */
  int started;           /* `start` sent */
  int64_t rendezvous_deadline_ms;
  /* aggregated progress */
  uint32_t epoch;
  uint64_t step, steps_total;
  double loss, lr, samples_per_s;
  int64_t last_publish_ms;
  /* final metrics from rank 0 */
  double test_loss, test_accuracy, final_samples_per_s;
} job_t;

typedef struct {
  const coord_config_t *cfg;
  sock_ctx_t *ctx;
  sock_t *workers, *clients, *events;
  store_t *store;
  agent_t agents[MAX_AGENTS];
  job_t jobs[MAX_JOBS]; /* active jobs: queued or running */
  uint64_t hb_seq;
  int64_t last_active_ms; /* last time a job was queued or running; 0 before the first */
  /* DROVER_FAULT_SLOW_SUBMIT_MS: a new submission is answered this late (tests, drills) */
  int64_t fault_slow_submit_ms;
} coord_t;

// --- coord.c -------------------------------------------------------------------------------

/* Publishes ev_state of j on its topic, with `reason` (may be NULL). */
void coord_publish_state(coord_t *c, const job_t *j, const char *reason);

/* Sends m to an agent; logs and returns the error when it is not connected. */
drv_result_t coord_send_to_agent(coord_t *c, const agent_t *a, const proto_msg_t *m);

/* Fails j with a printf-style reason: record, event, workers stopped, j released (do not
 * touch j afterwards). */
void coord_job_fail(coord_t *c, job_t *j, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Whether agent a is free to take a rank of j now (queue, pool, cool-down, leaving). */
int coord_agent_fits(const agent_t *a, const job_t *j);

/* Sorts agent indices by agent id: the order ranks are given in. */
void coord_sort_agents(coord_t *c, int *idx, int n);

// --- recovery.c ----------------------------------------------------------------------------

/* The rank of j whose agent is agents[ai], or -1. */
int recovery_slot_of_agent(const job_t *j, int ai);

/* Something went wrong in running job j: rank `dead` (-1: none known) is gone. Starts or
 * continues a re-formation when j may keep min_nodes and has restarts left, else fails it
 * (j may be released on return). */
void recovery_trouble(coord_t *c, job_t *j, int dead, const char *reason);

/* Re-forms j when every rank has reported `lost` or is dead, or its deadline passed (j may
 * be released on return). */
void recovery_check(coord_t *c, job_t *j);

/* Asks healthy job j to re-form at its next commit; 0 when it cannot now. */
int recovery_plan(coord_t *c, job_t *j, const char *why);

#endif
