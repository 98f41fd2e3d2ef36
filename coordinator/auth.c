/* auth.c: the coordinator's ZAP decisions and role checks (see auth.h). */
#include "coordinator/auth.h"

#include <stdio.h>
#include <string.h>

#include "common/log.h"

drv_result_t auth_init(auth_t *a, const char *state_dir, int secure) {
  memset(a, 0, sizeof *a);
  a->secure = secure;
  if (!secure) return DRV_OK;
  DRV_CHECK(keys_path(state_dir, "authorized", a->allow_path, sizeof a->allow_path));
  return keys_allow_load(&a->allow, a->allow_path);
}

void auth_fini(auth_t *a) {
  keys_allow_fini(&a->allow);
}

void auth_worker_name(const unsigned char pub[SOCK_KEY_BYTES], char *out, size_t n) {
  char h[2 * SOCK_KEY_BYTES + 1];
  drv_hex(pub, SOCK_KEY_BYTES, h);
  snprintf(out, n, "worker:%s", h);
}

/* A refused handshake, logged at most once a second (a refusal costs the attacker little). */
static void refused(auth_t *a, const char *domain, const char *address,
                    const unsigned char key[SOCK_KEY_BYTES], const char *why) {
  a->refused++;
  int64_t now = drv_now_ms();
  if (now - a->last_warn_ms < 1000) return;
  a->last_warn_ms = now;
  char z[SOCK_Z85_LEN + 1];
  sock_z85_encode(key, z);
  log_warn("refused a connection to the %s port from %s: key %s %s (%llu refused so far)", domain,
           address, z, why, (unsigned long long)a->refused);
}

int auth_decide(auth_t *a, const char *domain, const char *address,
                const unsigned char key[SOCK_KEY_BYTES], int worker_key, char *user, size_t n) {
  if (keys_allow_load(&a->allow, a->allow_path) != DRV_OK) {
    /* Fail closed: a list that cannot be read admits nobody (a revocation must not be
     * lost to a permission error); live workers' keys are the coordinator's own. */
    int64_t now = drv_now_ms();
    if (now - a->last_warn_ms >= 1000) {
      a->last_warn_ms = now;
      log_last_error();
    }
    keys_allow_fini(&a->allow);
  }
  const keys_entry_t *e = keys_allow_find(&a->allow, key);
  if (!strcmp(domain, "agents")) {
    if (e && e->role == KEYS_ROLE_AGENT) {
      snprintf(user, n, "agent:%s", e->name);
      return 1;
    }
    if (worker_key) {
      auth_worker_name(key, user, n);
      return 1;
    }
    refused(a, domain, address, key, e ? "is not an agent's" : "is not in the allow-list");
    return 0;
  }
  if (!strcmp(domain, "clients") || !strcmp(domain, "events")) {
    if (e && (e->role == KEYS_ROLE_USER || e->role == KEYS_ROLE_ADMIN)) {
      snprintf(user, n, "%s:%s", keys_role_name(e->role), e->name);
      return 1;
    }
    refused(a, domain, address, key, e ? "is not a user's" : "is not in the allow-list");
    return 0;
  }
  refused(a, domain, address, key, "came to an unknown domain");
  return 0;
}

auth_role_t auth_role(const auth_t *a, const sock_peer_t *p) {
  if (!a->secure) return AUTH_ADMIN;
  static const struct {
    const char *prefix;
    auth_role_t role;
  } roles[] = {{"agent:", AUTH_AGENT}, {"worker:", AUTH_WORKER}, {"user:", AUTH_USER},
               {"admin:", AUTH_ADMIN}};
  for (size_t i = 0; i < DRV_ARRAY_LEN(roles); i++)
    if (!strncmp(p->user, roles[i].prefix, strlen(roles[i].prefix))) return roles[i].role;
  return AUTH_NOBODY;
}

const char *auth_name(const sock_peer_t *p) {
  const char *colon = strchr(p->user, ':');
  return colon ? colon + 1 : "";
}

int auth_agent_id_ok(const auth_t *a, const sock_peer_t *p, const char *agent_id) {
  if (!a->secure) return 1;
  return auth_role(a, p) == AUTH_AGENT && keys_name_matches(auth_name(p), agent_id);
}

int auth_may_act(const auth_t *a, const sock_peer_t *p, const char *owner) {
  auth_role_t r = auth_role(a, p);
  if (r == AUTH_ADMIN) return 1;
  return r == AUTH_USER && !strcmp(auth_name(p), owner ? owner : "");
}
