/* auth.h: who the coordinator lets in, and what each may do.
 *
 * Every connection to the coordinator's three ports is a CurveZMQ handshake that its ZAP
 * handler judges by the client's public key (auth_decide):
 *
 *   port      admitted                                       named (sock_peer_t.user)
 *   agents    keys of role agent in the allow-list           "agent:<allowed id>"
 *             the key the coordinator gave a live worker     "worker:<64 hex digits>"
 *   clients   keys of role user or admin                     "user:<name>", "admin:<name>"
 *   events    keys of role user or admin                     likewise
 *
 * Every other key is refused (the handshake fails; a warning names the address and the
 * key, at most once a second). The allow-list is <state_dir>/keys/authorized (keys.h),
 * read again whenever it changes, so `drover keys add` and `drover keys remove` take effect
 * for the next connection without a restart.
 *
 * Then, per message: an agent may register only under an id its allow-list name admits
 * (auth_agent_id_ok); a worker's messages count only for the job and rank its key was
 * made for (job.c); a user acts on its own jobs, an admin on every job (auth_may_act).
 * A plaintext coordinator (--insecure) has no ZAP handler: everyone is admin "".
 */
#ifndef DROVER_COORDINATOR_AUTH_H
#define DROVER_COORDINATOR_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "common/keys.h"
#include "common/sock.h"

typedef enum { AUTH_NOBODY = 0, AUTH_AGENT, AUTH_WORKER, AUTH_USER, AUTH_ADMIN } auth_role_t;

typedef struct {
  int secure;          /* 0: plaintext, everyone believed */
  keys_allow_t allow;  /* the allow-list, as last loaded */
  char allow_path[1100];
  int64_t last_warn_ms; /* refusals are logged at most once a second */
  uint64_t refused;     /* handshakes refused so far */
} auth_t;

/* Secure (allow-list <state_dir>/keys/authorized) or plaintext. */
drv_result_t auth_init(auth_t *a, const char *state_dir, int secure);
void auth_fini(auth_t *a);

/* The ZAP handler's decision (sock_authorize_fn's contract); worker_key: whether `key`
 * is the key of a live worker (the job table knows). */
int auth_decide(auth_t *a, const char *domain, const char *address,
                const unsigned char key[SOCK_KEY_BYTES], int worker_key, char *user, size_t n);

/* "worker:<hex of pub>" into out (SOCK_USER_MAX): the name a worker's key gets. */
void auth_worker_name(const unsigned char pub[SOCK_KEY_BYTES], char *out, size_t n);

/* The role and the name of a peer as the ZAP handler named it; in plaintext, admin "". */
auth_role_t auth_role(const auth_t *a, const sock_peer_t *p);
const char *auth_name(const sock_peer_t *p);

/* Whether an agent named by its key may register as agent_id. */
int auth_agent_id_ok(const auth_t *a, const sock_peer_t *p, const char *agent_id);

/* Whether peer p may act on (cancel, resume, read the spec or logs of) a job of `owner`:
 * its owner, or an admin. */
int auth_may_act(const auth_t *a, const sock_peer_t *p, const char *owner);

#endif
