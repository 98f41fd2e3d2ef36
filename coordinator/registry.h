/* registry.h: the coordinator's agent registry: who is registered, what each agent has,
 * whether it is booked for a job, and when it was last heard from.
 *
 * An agent registers with `hello` and is answered with `welcome` (the heartbeat timing
 * the cluster uses); any message from it counts as a sign of life. registry_tick sends
 * the coordinator's heartbeats and names the agents silent for longer than the peer
 * timeout; the caller (coord.c) declares them lost, which is a job matter (job.h). The
 * registry decides nothing about jobs: `job` and `generation` on an agent are the job
 * table's bookings, kept here because they belong to the agent.
 *
 * Agents are addressed by their index in the table (stable while registered), which job
 * slots keep. Everything runs on the coordinator's one thread.
 */
#ifndef DROVER_COORDINATOR_REGISTRY_H
#define DROVER_COORDINATOR_REGISTRY_H

#include <stdint.h>

#include "common/drv.h"
#include "common/proto.h"
#include "common/sock.h"

#define REGISTRY_MAX_AGENTS 256
#define REGISTRY_MAX_GPUS 64 /* GPUs of one agent that are handed out (an agent lists at most 64) */

/* One GPU of an agent, as its hello listed it, and its use at the last heartbeat. */
typedef struct {
  uint32_t index;      /* the agent's name for it (assign.device) */
  char name[48], pci_bus_id[24];
  uint64_t mem_bytes;
  int measured;        /* the agent's NVML measures it: the two below are known */
  uint64_t mem_used_bytes;
  uint32_t util_pct;
} registry_gpu_t;

typedef struct {
  int used;
  sock_peer_t peer;
  char agent_id[128], host[256], target[40], pool[64];
  char node[64];            /* the managed node it was launched as ("" : none) */
  char user[SOCK_USER_MAX]; /* the name its key was admitted under ("" in plaintext) */
  uint32_t pid;             /* the agent process's, from its hello */
  uint32_t cpus, gpus;                 /* gpus: how many of gpu[] (at most REGISTRY_MAX_GPUS) */
  registry_gpu_t gpu[REGISTRY_MAX_GPUS]; /* in the agent's order: PCI bus id */
  uint32_t workers;                    /* worker processes it runs (its last heartbeat) */
  uint64_t mem_bytes, session;
  int64_t last_seen_ms;
  int64_t job;               /* 0 when idle; set from assign until its worker exits */
  uint32_t generation;       /* of the assignment it is booked for */
  int64_t cooldown_until_ms; /* its worker was killed: no new work before then */
  int leaving;               /* said `leave`: no new work */
  int preemptible;           /* a node of a preemptible target: its loss is no restart */
} agent_t;

typedef struct {
  sock_t *sock; /* borrowed: the agents' and workers' ROUTER */
  agent_t agents[REGISTRY_MAX_AGENTS];
  uint64_t hb_seq;
} registry_t;

/* An empty registry that talks to agents over `sock` (borrowed, outlives r). */
void registry_init(registry_t *r, sock_t *sock);

/* The registered agent connected as peer p (its routing id, with the key it registered
 * with), or NULL. */
agent_t *registry_by_peer(registry_t *r, const sock_peer_t *p);

/* The registered agent named agent_id, or NULL. */
agent_t *registry_by_id(registry_t *r, const char *agent_id);

/* The registered agent that hello h from `from` comes from again on a new connection (the
 * same id, key, host and process: it lost the coordinator and reconnected), or NULL. */
agent_t *registry_reconnecting(registry_t *r, const sock_peer_t *from, const proto_hello_t *h);

/* The registered agent at `index`, or NULL (out of range, or the entry is free). */
agent_t *registry_at(registry_t *r, int index);

/* The index of a in r's table (a must point into it). */
int registry_index(const registry_t *r, const agent_t *a);

/* Registers the agent of `hello` h, connected as `from`, heard from at `now`: into entry
 * `reuse` when given (the same connection with a new session), else into the first free
 * entry. Logs its resources. Returns the agent, or NULL (logged) when the table is full.
 * Sends nothing: the caller answers with registry_welcome. */
agent_t *registry_add(registry_t *r, agent_t *reuse, const sock_peer_t *from,
                      const proto_hello_t *h, int64_t now);

/* The PCI bus id of agent a's GPU `device` (its index), "" when not known, -1 or a NULL. */
const char *registry_gpu_bus_id(const agent_t *a, int device);

/* A heartbeat's news of a: its workers and its GPUs' use (each by its index). */
void registry_heartbeat(agent_t *a, const proto_heartbeat_t *hb);

/* Sends `welcome` (its id and the cluster's heartbeat timing) to a. */
void registry_welcome(registry_t *r, const agent_t *a);

/* Sends m to agent a; logs and returns the error when a is not connected any more
 * (ROUTER_MANDATORY: the send fails instead of vanishing). m stays the caller's. */
drv_result_t registry_send(registry_t *r, const agent_t *a, const proto_msg_t *m);

/* Forgets a: its entry becomes free. Whatever it was booked for is the caller's to settle
 * first (job_agent_lost). */
void registry_forget(registry_t *r, agent_t *a);

/* Sends a heartbeat to every agent heard from within timeout_ms of `now`; writes the
 * indices of the others into silent[] (room for REGISTRY_MAX_AGENTS) and returns how many
 * there are. They stay registered: the caller declares them lost. */
uint32_t registry_tick(registry_t *r, int64_t now, int64_t timeout_ms, int *silent);

/* The coordinator was not running for away_ms (coord_away_ms), up to `now`: that time is
 * not held against the agents. Every agent's last sign of life becomes `now` (a fresh
 * peer timeout) and the cool-downs it was serving end away_ms later. */
void registry_pardon(registry_t *r, int64_t now, int64_t away_ms);

#endif
