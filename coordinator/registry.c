/* registry.c: the agent registry (see registry.h). */
#include "coordinator/registry.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/settings.h"

void registry_init(registry_t *r, sock_t *sock) {
  memset(r, 0, sizeof *r);
  r->sock = sock;
}

agent_t *registry_by_peer(registry_t *r, const sock_peer_t *p) {
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    agent_t *a = &r->agents[i];
    /* The same routing id and the same key: a routing id alone is what a peer says. */
    if (a->used && a->peer.len == p->len && !memcmp(a->peer.id, p->id, p->len) &&
        !strcmp(a->user, p->user))
      return a;
  }
  return NULL;
}

agent_t *registry_by_id(registry_t *r, const char *agent_id) {
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++)
    if (r->agents[i].used && !strcmp(r->agents[i].agent_id, agent_id)) return &r->agents[i];
  return NULL;
}

agent_t *registry_reconnecting(registry_t *r, const sock_peer_t *from, const proto_hello_t *h) {
  agent_t *a = registry_by_id(r, h->agent_id);
  if (!a || !h->pid || a->pid != h->pid || strcmp(a->host, h->host) || strcmp(a->user, from->user))
    return NULL;
  return a;
}

agent_t *registry_at(registry_t *r, int index) {
  if (index < 0 || index >= REGISTRY_MAX_AGENTS || !r->agents[index].used) return NULL;
  return &r->agents[index];
}

int registry_index(const registry_t *r, const agent_t *a) {
  return (int)(a - r->agents);
}

agent_t *registry_add(registry_t *r, agent_t *reuse, const sock_peer_t *from,
                      const proto_hello_t *h, int64_t now) {
  agent_t *a = reuse;
  for (int i = 0; i < REGISTRY_MAX_AGENTS && !a; i++)
    if (!r->agents[i].used) a = &r->agents[i];
  if (!a) {
    log_error("agent registry full (%d): %s refused", REGISTRY_MAX_AGENTS, h->agent_id);
    return NULL;
  }
  memset(a, 0, sizeof *a);
  a->used = 1;
  a->peer = *from;
  snprintf(a->user, sizeof a->user, "%s", from->user);
  a->pid = h->pid;
  snprintf(a->agent_id, sizeof a->agent_id, "%s", h->agent_id);
  snprintf(a->host, sizeof a->host, "%s", h->host);
  snprintf(a->target, sizeof a->target, "%s", h->target);
  snprintf(a->pool, sizeof a->pool, "%s", h->pool ? h->pool : "");
  snprintf(a->node, sizeof a->node, "%s", h->node ? h->node : "");
  a->cpus = h->cpus;
  a->gpus = 0;
  for (uint32_t g = 0; g < h->gpus_count && a->gpus < REGISTRY_MAX_GPUS; g++) {
    registry_gpu_t *rg = &a->gpu[a->gpus++];
    *rg = (registry_gpu_t){.index = h->gpus[g].index, .mem_bytes = h->gpus[g].mem_bytes};
    snprintf(rg->name, sizeof rg->name, "%s", h->gpus[g].name);
    snprintf(rg->pci_bus_id, sizeof rg->pci_bus_id, "%s",
             h->gpus[g].pci_bus_id ? h->gpus[g].pci_bus_id : "");
  }
  a->mem_bytes = h->mem_bytes;
  a->session = h->session;
  a->last_seen_ms = now;
  log_info("agent %s registered: host %s, target %s, %u cpus, %.1f GiB, %u gpus", a->agent_id,
           a->host, a->target, a->cpus, (double)a->mem_bytes / (1 << 30), a->gpus);
  for (uint32_t g = 0; g < h->gpus_count && g < REGISTRY_MAX_GPUS; g++)
    log_info("agent %s gpu %u: %s, %.1f GiB, sm_%u%u, PCI %s", a->agent_id, h->gpus[g].index,
             h->gpus[g].name, (double)h->gpus[g].mem_bytes / (1 << 30), h->gpus[g].cc_major,
             h->gpus[g].cc_minor, h->gpus[g].pci_bus_id ? h->gpus[g].pci_bus_id : "?");
  return a;
}

drv_result_t registry_send(registry_t *r, const agent_t *a, const proto_msg_t *m) {
  drv_result_t rc = sock_send(r->sock, &a->peer, m);
  if (rc != DRV_OK) log_warn("to agent %s: %s", a->agent_id, drv_last_error());
  return rc;
}

const char *registry_gpu_bus_id(const agent_t *a, int device) {
  for (uint32_t g = 0; a && device >= 0 && g < a->gpus; g++)
    if (a->gpu[g].index == (uint32_t)device) return a->gpu[g].pci_bus_id;
  return "";
}

void registry_heartbeat(agent_t *a, const proto_heartbeat_t *hb) {
  a->workers = hb->workers;
  for (uint32_t k = 0; k < hb->gpus_count; k++)
    for (uint32_t g = 0; g < a->gpus; g++)
      if (a->gpu[g].index == hb->gpus[k].index) {
        a->gpu[g].measured = 1;
        a->gpu[g].mem_used_bytes = hb->gpus[k].mem_used_bytes;
        a->gpu[g].util_pct = DRV_MIN(hb->gpus[k].util_pct, 100u);
      }
}

void registry_welcome(registry_t *r, const agent_t *a) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_WELCOME);
  m.u.welcome.agent_id = a->agent_id;
  m.u.welcome.heartbeat_ms = (uint32_t)drv_setting(DRV_SET_HEARTBEAT_MS);
  m.u.welcome.peer_timeout_ms = (uint32_t)drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  registry_send(r, a, &m);
}

void registry_forget(registry_t *r, agent_t *a) {
  memset(a, 0, sizeof *a);
}

uint32_t registry_tick(registry_t *r, int64_t now, int64_t timeout_ms, int *silent) {
  proto_msg_t hb;
  proto_msg_init(&hb, PROTO_HEARTBEAT);
  hb.u.heartbeat.seq = ++r->hb_seq;
  uint32_t n = 0;
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    agent_t *a = &r->agents[i];
    if (!a->used) continue;
    if (now - a->last_seen_ms > timeout_ms)
      silent[n++] = i;
    else
      sock_send(r->sock, &a->peer, &hb);
  }
  return n;
}

void registry_pardon(registry_t *r, int64_t now, int64_t away_ms) {
  for (int i = 0; i < REGISTRY_MAX_AGENTS; i++) {
    agent_t *a = &r->agents[i];
    if (!a->used) continue;
    a->last_seen_ms = now;
    if (a->cooldown_until_ms) a->cooldown_until_ms += away_ms;
  }
}
