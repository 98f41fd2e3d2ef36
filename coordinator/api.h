/* api.h: the coordinator's client API, on its client ROUTER (port base+1): submit,
 * status, cancel, agents and get_spec requests, each answered with one reply built from
 * the store's records and the live state of the job table and the registry.
 *
 * A submission is validated (the spec parsed again, paths absolute, a job to resume from
 * finished with a durable checkpoint), recorded in one transaction and queued; one whose
 * token the store already has is answered with the job it made, so a client that asks
 * again after a late answer does not queue a job twice. Errors go back as `error {code,
 * message}`: invalid, not_found, busy, forbidden, quota, internal, proto.
 *
 * Ownership: a job belongs to the name bound to its submitter's key (auth.h), recorded
 * with it; cancel, get_spec and resume are its owner's or an admin's (`forbidden`
 * otherwise, naming the owner); status shows every job with its owner. Quota: a user has
 * at most DROVER_MAX_QUEUED_PER_USER jobs active (queued or running) at once.
 */
#ifndef DROVER_COORDINATOR_API_H
#define DROVER_COORDINATOR_API_H

#include <stdint.h>

#include "common/proto.h"
#include "common/sock.h"
#include "coordinator/auth.h"
#include "coordinator/job.h"
#include "coordinator/registry.h"
#include "coordinator/store.h"

typedef struct {
  sock_t *clients;   /* borrowed: the client ROUTER the replies go out on */
  store_t *store;    /* borrowed */
  job_table_t *jobs; /* borrowed */
  registry_t *reg;   /* borrowed */
  const auth_t *auth; /* borrowed: who each client is and what it may do */
  const struct fleet_s *fleet; /* borrowed: the managed targets (their reasons, refusals) */
  /* DROVER_FAULT_SLOW_SUBMIT_MS: a new submission is answered this late (tests, drills) */
  int64_t fault_slow_submit_ms;
} api_t;

/* `logs`: a command job's output from offset (log_chunk), the owner's or an admin's. */
void api_logs(api_t *api, const sock_peer_t *from, const proto_logs_t *l);

/* `targets`: every compute target and its nodes (target_list). */
void api_targets(api_t *api, const sock_peer_t *from);

/* An API answering on `clients` from the borrowed store, jobs and registry. */
void api_init(api_t *api, sock_t *clients, store_t *store, job_table_t *jobs, registry_t *reg,
              const auth_t *auth, int64_t fault_slow_submit_ms);

/* `submit`: records and queues the job (answering `submitted {job, run_dir}`), or answers
 * the job an earlier submission with the same token made, or an error. */
void api_submit(api_t *api, const sock_peer_t *from, const proto_submit_t *sub);

/* `status`: one job (st->job > 0) or the newest st->limit ones (default 20, at most 1000),
 * with the live progress and ranks of active ones, as `jobs`. */
void api_status(api_t *api, const sock_peer_t *from, const proto_status_t *st);

/* `cancel`: cancels active job `id` (answering `ok`), or says why not. */
void api_cancel(api_t *api, const sock_peer_t *from, int64_t id);

/* `agents`: the registered agents, as `agent_list`. */
void api_agents(api_t *api, const sock_peer_t *from);

/* `get_spec`: job `id`'s stored spec and run directory, as `spec`. */
void api_get_spec(api_t *api, const sock_peer_t *from, int64_t id);

/* Answers `error {code, message}` (for requests the coordinator refuses outright). */
void api_reply_error(api_t *api, const sock_peer_t *to, const char *code, const char *message);

#endif
