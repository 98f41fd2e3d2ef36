/* proto.c: message tables, a bounds-checking pre-validator, and the generic msgpack
 * encoder/decoder driven by the tables. See proto.h for the frame format. */
#include "common/proto.h"

#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* A frame of tiny values could make msgpack-c build one object per byte; cap the count. */
#define PROTO_MAX_ELEMENTS (1u << 20)

// --- Tables --------------------------------------------------------------------------------

typedef enum { F_I64, F_I32, F_U32, F_U64, F_F64, F_STR, F_STRS, F_OBJS } fkind_t;

typedef struct schema schema_t;

typedef struct {
  const char *name;
  fkind_t kind;
  uint16_t off;
  uint8_t required;
  const schema_t *sub; /* F_OBJS: element schema */
  uint16_t count_off;  /* F_STRS, F_OBJS: offset of the uint32_t count */
} field_t;

struct schema {
  const char *name;
  const field_t *fields;
  uint32_t nfields;
  size_t size; /* element size, for F_OBJS */
};

#define REQ 1
#define OPT 0
#define FLD(T, m, k, r) \
  { #m, k, (uint16_t)offsetof(T, m), r, NULL, 0 }
#define ARR(T, m, k, sub, r) \
  { #m, k, (uint16_t)offsetof(T, m), r, sub, (uint16_t)offsetof(T, m##_count) }
#define SCHEMA(var, label, T, ...)                     \
  static const field_t var##_fields[] = {__VA_ARGS__}; \
  static const schema_t var = {label, var##_fields, DRV_ARRAY_LEN(var##_fields), sizeof(T)}

SCHEMA(gpu_schema, "gpu", proto_gpu_t, FLD(proto_gpu_t, index, F_U32, REQ),
       FLD(proto_gpu_t, name, F_STR, REQ), FLD(proto_gpu_t, mem_bytes, F_U64, REQ),
       FLD(proto_gpu_t, cc_major, F_U32, REQ), FLD(proto_gpu_t, cc_minor, F_U32, REQ));

SCHEMA(hello_schema, "hello", proto_hello_t, FLD(proto_hello_t, agent_id, F_STR, REQ),
       FLD(proto_hello_t, host, F_STR, REQ), FLD(proto_hello_t, target, F_STR, REQ),
       FLD(proto_hello_t, pool, F_STR, OPT), FLD(proto_hello_t, pid, F_U32, OPT),
       FLD(proto_hello_t, session, F_U64, OPT), FLD(proto_hello_t, cpus, F_U32, REQ),
       FLD(proto_hello_t, mem_bytes, F_U64, REQ),
       ARR(proto_hello_t, gpus, F_OBJS, &gpu_schema, REQ));

SCHEMA(welcome_schema, "welcome", proto_welcome_t, FLD(proto_welcome_t, agent_id, F_STR, REQ),
       FLD(proto_welcome_t, heartbeat_ms, F_U32, REQ),
       FLD(proto_welcome_t, peer_timeout_ms, F_U32, REQ));

SCHEMA(heartbeat_schema, "heartbeat", proto_heartbeat_t, FLD(proto_heartbeat_t, seq, F_U64, OPT),
       FLD(proto_heartbeat_t, workers, F_U32, OPT));

SCHEMA(assign_schema, "assign", proto_assign_t, FLD(proto_assign_t, job, F_I64, REQ),
       FLD(proto_assign_t, generation, F_U32, REQ), FLD(proto_assign_t, rank, F_U32, REQ),
       FLD(proto_assign_t, world, F_U32, REQ), FLD(proto_assign_t, local_rank, F_U32, REQ),
       FLD(proto_assign_t, device, F_I32, REQ), FLD(proto_assign_t, spec, F_STR, REQ),
       FLD(proto_assign_t, run_dir, F_STR, REQ), FLD(proto_assign_t, coordinator, F_STR, REQ),
       FLD(proto_assign_t, resume_dir, F_STR, OPT));

SCHEMA(kill_schema, "kill", proto_kill_t, FLD(proto_kill_t, job, F_I64, REQ),
       FLD(proto_kill_t, generation, F_U32, REQ), FLD(proto_kill_t, reason, F_STR, OPT));

SCHEMA(worker_exit_schema, "worker_exit", proto_worker_exit_t,
       FLD(proto_worker_exit_t, job, F_I64, REQ), FLD(proto_worker_exit_t, generation, F_U32, REQ),
       FLD(proto_worker_exit_t, rank, F_U32, REQ), FLD(proto_worker_exit_t, exit_code, F_I32, REQ),
       FLD(proto_worker_exit_t, signal, F_I32, REQ));

SCHEMA(rendezvous_schema, "rendezvous", proto_rendezvous_t,
       FLD(proto_rendezvous_t, job, F_I64, REQ), FLD(proto_rendezvous_t, generation, F_U32, REQ),
       FLD(proto_rendezvous_t, rank, F_U32, REQ), FLD(proto_rendezvous_t, pid, F_U32, OPT),
       FLD(proto_rendezvous_t, addr, F_STR, REQ), FLD(proto_rendezvous_t, gpu, F_STR, OPT),
       FLD(proto_rendezvous_t, nccl_id, F_STR, OPT));

SCHEMA(start_schema, "start", proto_start_t, FLD(proto_start_t, job, F_I64, REQ),
       FLD(proto_start_t, generation, F_U32, REQ), FLD(proto_start_t, world, F_U32, REQ),
       ARR(proto_start_t, peers, F_STRS, NULL, REQ), ARR(proto_start_t, gpus, F_STRS, NULL, OPT),
       FLD(proto_start_t, nccl_id, F_STR, OPT));

SCHEMA(progress_schema, "progress", proto_progress_t, FLD(proto_progress_t, job, F_I64, REQ),
       FLD(proto_progress_t, generation, F_U32, REQ), FLD(proto_progress_t, rank, F_U32, REQ),
       FLD(proto_progress_t, epoch, F_U32, REQ), FLD(proto_progress_t, step, F_U64, REQ),
       FLD(proto_progress_t, steps_total, F_U64, REQ), FLD(proto_progress_t, loss, F_F64, REQ),
       FLD(proto_progress_t, lr, F_F64, OPT), FLD(proto_progress_t, samples, F_U64, REQ),
       FLD(proto_progress_t, interval_s, F_F64, REQ), FLD(proto_progress_t, step_ms, F_F64, REQ),
       FLD(proto_progress_t, wait_ms, F_F64, OPT), FLD(proto_progress_t, coll_seq, F_U64, OPT),
       FLD(proto_progress_t, data_ms, F_F64, OPT));

SCHEMA(eval_schema, "eval", proto_eval_t, FLD(proto_eval_t, job, F_I64, REQ),
       FLD(proto_eval_t, generation, F_U32, REQ), FLD(proto_eval_t, epoch, F_U32, REQ),
       FLD(proto_eval_t, test_loss, F_F64, REQ), FLD(proto_eval_t, test_accuracy, F_F64, REQ));

SCHEMA(done_schema, "done", proto_done_t, FLD(proto_done_t, job, F_I64, REQ),
       FLD(proto_done_t, generation, F_U32, REQ), FLD(proto_done_t, rank, F_U32, REQ),
       FLD(proto_done_t, steps, F_U64, REQ), FLD(proto_done_t, test_loss, F_F64, REQ),
       FLD(proto_done_t, test_accuracy, F_F64, REQ), FLD(proto_done_t, samples_per_s, F_F64, REQ),
       FLD(proto_done_t, train_s, F_F64, REQ));

SCHEMA(failed_schema, "failed", proto_failed_t, FLD(proto_failed_t, job, F_I64, REQ),
       FLD(proto_failed_t, generation, F_U32, REQ), FLD(proto_failed_t, rank, F_U32, REQ),
       FLD(proto_failed_t, reason, F_STR, REQ));

SCHEMA(submit_schema, "submit", proto_submit_t, FLD(proto_submit_t, spec, F_STR, REQ),
       FLD(proto_submit_t, pool, F_STR, OPT), FLD(proto_submit_t, resume, F_I64, OPT),
       FLD(proto_submit_t, token, F_STR, OPT));

SCHEMA(checkpoint_schema, "checkpoint", proto_checkpoint_t,
       FLD(proto_checkpoint_t, job, F_I64, REQ), FLD(proto_checkpoint_t, generation, F_U32, REQ),
       FLD(proto_checkpoint_t, step, F_U64, REQ), FLD(proto_checkpoint_t, dir, F_STR, REQ));

SCHEMA(lost_schema, "lost", proto_lost_t, FLD(proto_lost_t, job, F_I64, REQ),
       FLD(proto_lost_t, generation, F_U32, REQ), FLD(proto_lost_t, rank, F_U32, REQ),
       FLD(proto_lost_t, step, F_U64, REQ), FLD(proto_lost_t, reason, F_STR, REQ));

SCHEMA(reform_schema, "reform", proto_reform_t, FLD(proto_reform_t, job, F_I64, REQ),
       FLD(proto_reform_t, generation, F_U32, REQ), FLD(proto_reform_t, rank, F_U32, REQ),
       FLD(proto_reform_t, world, F_U32, REQ));

SCHEMA(get_spec_schema, "get_spec", proto_spec_t, FLD(proto_spec_t, job, F_I64, REQ));

SCHEMA(spec_schema, "spec", proto_spec_t, FLD(proto_spec_t, job, F_I64, REQ),
       FLD(proto_spec_t, spec, F_STR, REQ), FLD(proto_spec_t, run_dir, F_STR, REQ));

SCHEMA(bye_schema, "bye", proto_kill_t, FLD(proto_kill_t, reason, F_STR, OPT));

SCHEMA(submitted_schema, "submitted", proto_submitted_t, FLD(proto_submitted_t, job, F_I64, REQ),
       FLD(proto_submitted_t, run_dir, F_STR, REQ));

SCHEMA(status_schema, "status", proto_status_t, FLD(proto_status_t, job, F_I64, OPT),
       FLD(proto_status_t, limit, F_U32, OPT));

SCHEMA(rank_schema, "rank", proto_rank_t, FLD(proto_rank_t, rank, F_U32, REQ),
       FLD(proto_rank_t, agent, F_STR, REQ), FLD(proto_rank_t, host, F_STR, REQ),
       FLD(proto_rank_t, step_ms, F_F64, REQ), FLD(proto_rank_t, compute_ms, F_F64, REQ),
       FLD(proto_rank_t, wait_ms, F_F64, REQ), FLD(proto_rank_t, straggler, F_U32, REQ),
       FLD(proto_rank_t, data_ms, F_F64, OPT));

SCHEMA(job_schema, "job", proto_job_t, FLD(proto_job_t, id, F_I64, REQ),
       FLD(proto_job_t, name, F_STR, REQ), FLD(proto_job_t, state, F_STR, REQ),
       FLD(proto_job_t, reason, F_STR, REQ), FLD(proto_job_t, target, F_STR, REQ),
       FLD(proto_job_t, run_dir, F_STR, REQ), FLD(proto_job_t, nodes, F_U32, REQ),
       FLD(proto_job_t, epoch, F_U32, REQ), FLD(proto_job_t, epochs, F_U32, REQ),
       FLD(proto_job_t, step, F_U64, REQ), FLD(proto_job_t, steps_total, F_U64, REQ),
       FLD(proto_job_t, loss, F_F64, REQ), FLD(proto_job_t, samples_per_s, F_F64, REQ),
       FLD(proto_job_t, test_loss, F_F64, REQ), FLD(proto_job_t, test_accuracy, F_F64, REQ),
       FLD(proto_job_t, submitted_at, F_F64, REQ), FLD(proto_job_t, started_at, F_F64, REQ),
       FLD(proto_job_t, finished_at, F_F64, REQ), FLD(proto_job_t, ckpt_step, F_U64, OPT),
       ARR(proto_job_t, ranks, F_OBJS, &rank_schema, OPT));

SCHEMA(jobs_schema, "jobs", proto_jobs_t, ARR(proto_jobs_t, jobs, F_OBJS, &job_schema, REQ));

SCHEMA(cancel_schema, "cancel", proto_cancel_t, FLD(proto_cancel_t, job, F_I64, REQ));

SCHEMA(empty_schema, "empty", proto_cancel_t, );

SCHEMA(agent_schema, "agent", proto_agent_t, FLD(proto_agent_t, agent_id, F_STR, REQ),
       FLD(proto_agent_t, host, F_STR, REQ), FLD(proto_agent_t, target, F_STR, REQ),
       FLD(proto_agent_t, state, F_STR, REQ), FLD(proto_agent_t, cpus, F_U32, REQ),
       FLD(proto_agent_t, gpus, F_U32, REQ), FLD(proto_agent_t, mem_bytes, F_U64, REQ),
       FLD(proto_agent_t, job, F_I64, REQ), FLD(proto_agent_t, last_seen_s, F_F64, REQ));

SCHEMA(agent_list_schema, "agent_list", proto_agent_list_t,
       ARR(proto_agent_list_t, agents, F_OBJS, &agent_schema, REQ));

SCHEMA(error_schema, "error", proto_error_t, FLD(proto_error_t, code, F_STR, REQ),
       FLD(proto_error_t, message, F_STR, REQ));

SCHEMA(ev_state_schema, "ev_state", proto_ev_state_t, FLD(proto_ev_state_t, job, F_I64, REQ),
       FLD(proto_ev_state_t, state, F_STR, REQ), FLD(proto_ev_state_t, reason, F_STR, OPT),
       FLD(proto_ev_state_t, run_dir, F_STR, OPT), FLD(proto_ev_state_t, test_loss, F_F64, OPT),
       FLD(proto_ev_state_t, test_accuracy, F_F64, OPT),
       FLD(proto_ev_state_t, samples_per_s, F_F64, OPT));

SCHEMA(ev_progress_schema, "ev_progress", proto_ev_progress_t,
       FLD(proto_ev_progress_t, job, F_I64, REQ), FLD(proto_ev_progress_t, generation, F_U32, REQ),
       FLD(proto_ev_progress_t, epoch, F_U32, REQ), FLD(proto_ev_progress_t, epochs, F_U32, REQ),
       FLD(proto_ev_progress_t, step, F_U64, REQ),
       FLD(proto_ev_progress_t, steps_total, F_U64, REQ),
       FLD(proto_ev_progress_t, loss, F_F64, REQ), FLD(proto_ev_progress_t, lr, F_F64, REQ),
       FLD(proto_ev_progress_t, samples_per_s, F_F64, REQ),
       FLD(proto_ev_progress_t, slowest_rank, F_U32, REQ),
       FLD(proto_ev_progress_t, slowest_step_ms, F_F64, REQ),
       FLD(proto_ev_progress_t, eta_s, F_F64, REQ));

/* The wire name and body schema of each type, in proto_type_t order. */
static const struct {
  const char *name;
  const schema_t *schema;
} types[PROTO_TYPE_COUNT] = {
    [PROTO_HELLO] = {"hello", &hello_schema},
    [PROTO_WELCOME] = {"welcome", &welcome_schema},
    [PROTO_HEARTBEAT] = {"heartbeat", &heartbeat_schema},
    [PROTO_ASSIGN] = {"assign", &assign_schema},
    [PROTO_KILL] = {"kill", &kill_schema},
    [PROTO_WORKER_EXIT] = {"worker_exit", &worker_exit_schema},
    [PROTO_RENDEZVOUS] = {"rendezvous", &rendezvous_schema},
    [PROTO_START] = {"start", &start_schema},
    [PROTO_PROGRESS] = {"progress", &progress_schema},
    [PROTO_EVAL] = {"eval", &eval_schema},
    [PROTO_DONE] = {"done", &done_schema},
    [PROTO_FAILED] = {"failed", &failed_schema},
    [PROTO_ABORT] = {"abort", &kill_schema},
    [PROTO_CHECKPOINT] = {"checkpoint", &checkpoint_schema},
    [PROTO_LOST] = {"lost", &lost_schema},
    [PROTO_REFORM] = {"reform", &reform_schema},
    [PROTO_PAUSE] = {"pause", &kill_schema},
    [PROTO_LEAVE] = {"leave", &bye_schema},
    [PROTO_SUBMIT] = {"submit", &submit_schema},
    [PROTO_SUBMITTED] = {"submitted", &submitted_schema},
    [PROTO_STATUS] = {"status", &status_schema},
    [PROTO_JOBS] = {"jobs", &jobs_schema},
    [PROTO_CANCEL] = {"cancel", &cancel_schema},
    [PROTO_OK] = {"ok", &empty_schema},
    [PROTO_AGENTS] = {"agents", &empty_schema},
    [PROTO_AGENT_LIST] = {"agent_list", &agent_list_schema},
    [PROTO_GET_SPEC] = {"get_spec", &get_spec_schema},
    [PROTO_SPEC] = {"spec", &spec_schema},
    [PROTO_BYE] = {"bye", &bye_schema},
    [PROTO_ERROR] = {"error", &error_schema},
    [PROTO_EV_STATE] = {"ev_state", &ev_state_schema},
    [PROTO_EV_PROGRESS] = {"ev_progress", &ev_progress_schema},
    [PROTO_EV_EVAL] = {"ev_eval", &eval_schema},
};

const char *proto_type_name(proto_type_t type) {
  return (unsigned)type < PROTO_TYPE_COUNT ? types[type].name : NULL;
}

int proto_field_info(proto_type_t type, uint32_t i, const char **name, const char **kind,
                     int *required) {
  static const char *kinds[] = {"int", "int", "uint", "uint", "float", "string", "string[]"};
  if ((unsigned)type >= PROTO_TYPE_COUNT || i >= types[type].schema->nfields) return 0;
  const field_t *f = &types[type].schema->fields[i];
  *name = f->name;
  *required = f->required;
  if (f->kind == F_OBJS) {
    static _Thread_local char buf[32];
    snprintf(buf, sizeof buf, "%s[]", f->sub->name);
    *kind = buf;
  } else {
    *kind = kinds[f->kind];
  }
  return 1;
}

// --- Ownership -----------------------------------------------------------------------------

static void fields_free(const schema_t *s, void *base) {
  char *b = base;
  for (uint32_t i = 0; i < s->nfields; i++) {
    const field_t *f = &s->fields[i];
    void *p = b + f->off;
    if (f->kind == F_STR) {
      free(*(char **)p);
    } else if (f->kind == F_STRS) {
      char **arr = *(char ***)p;
      uint32_t n = *(uint32_t *)(b + f->count_off);
      for (uint32_t j = 0; arr && j < n; j++) free(arr[j]);
      free(arr);
    } else if (f->kind == F_OBJS) {
      char *arr = *(char **)p;
      uint32_t n = *(uint32_t *)(b + f->count_off);
      for (uint32_t j = 0; arr && j < n; j++) fields_free(f->sub, arr + j * f->sub->size);
      free(arr);
    }
  }
}

void proto_msg_init(proto_msg_t *m, proto_type_t type) {
  memset(m, 0, sizeof *m);
  m->type = type;
}

void proto_msg_fini(proto_msg_t *m) {
  if ((unsigned)m->type < PROTO_TYPE_COUNT) fields_free(types[m->type].schema, &m->u);
  memset(m, 0, sizeof *m);
}

// --- Encoding ------------------------------------------------------------------------------

static void pack_str(msgpack_packer *pk, const char *s) {
  if (!s) s = "";
  size_t n = strlen(s);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}

static void pack_fields(msgpack_packer *pk, const schema_t *s, const void *base) {
  const char *b = base;
  msgpack_pack_map(pk, s->nfields);
  for (uint32_t i = 0; i < s->nfields; i++) {
    const field_t *f = &s->fields[i];
    const void *p = b + f->off;
    pack_str(pk, f->name);
    switch (f->kind) {
    case F_I64: msgpack_pack_int64(pk, *(const int64_t *)p); break;
    case F_I32: msgpack_pack_int32(pk, *(const int32_t *)p); break;
    case F_U32: msgpack_pack_uint32(pk, *(const uint32_t *)p); break;
    case F_U64: msgpack_pack_uint64(pk, *(const uint64_t *)p); break;
    case F_F64: msgpack_pack_double(pk, *(const double *)p); break;
    case F_STR: pack_str(pk, *(char *const *)p); break;
    case F_STRS: {
      char *const *arr = *(char *const *const *)p;
      uint32_t n = *(const uint32_t *)(b + f->count_off);
      msgpack_pack_array(pk, arr ? n : 0);
      for (uint32_t j = 0; arr && j < n; j++) pack_str(pk, arr[j]);
      break;
    }
    case F_OBJS: {
      const char *arr = *(const char *const *)p;
      uint32_t n = *(const uint32_t *)(b + f->count_off);
      msgpack_pack_array(pk, arr ? n : 0);
      for (uint32_t j = 0; arr && j < n; j++) pack_fields(pk, f->sub, arr + j * f->sub->size);
      break;
    }
    }
  }
}

drv_result_t proto_pack(const proto_msg_t *m, char **buf, size_t *len) {
  *buf = NULL;
  *len = 0;
  if ((unsigned)m->type >= PROTO_TYPE_COUNT)
    return drv_error(DRV_ERR_INVALID, "proto_pack: unknown message type %d", (int)m->type);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 3);
  msgpack_pack_uint32(&pk, PROTO_VERSION);
  pack_str(&pk, types[m->type].name);
  pack_fields(&pk, types[m->type].schema, &m->u);
  if (!sb.data) return drv_error(DRV_ERR_NOMEM, "proto_pack: out of memory");
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  return DRV_OK;
}

// --- Validation of raw bytes ---------------------------------------------------------------

typedef struct {
  const uint8_t *p;
  size_t len, pos;
  size_t elements;
  const char *err;
} walker_t;

static uint64_t be_read(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/* Consumes one value at w->pos; 0 on success, -1 with w->err set. */
static int walk(walker_t *w, int depth) {
  if (depth > PROTO_MAX_DEPTH) return w->err = "nesting deeper than the limit", -1;
  if (++w->elements > PROTO_MAX_ELEMENTS) return w->err = "too many elements", -1;
  if (w->pos >= w->len) return w->err = "truncated value", -1;
  uint8_t t = w->p[w->pos++];
  size_t left = w->len - w->pos;
  uint64_t n = 0;    /* payload bytes to skip, or element count */
  int container = 0; /* 1 array, 2 map */
  int hdr = 0;       /* bytes of length field */
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return 0;
  if (t >= 0x80 && t <= 0x8f) {
    n = t & 0x0f;
    container = 2;
  } else if (t >= 0x90 && t <= 0x9f) {
    n = t & 0x0f;
    container = 1;
  } else if (t >= 0xa0 && t <= 0xbf) {
    n = t & 0x1f;
  } else {
    switch (t) {
    case 0xc4:
    case 0xd9: hdr = 1; break; /* bin8, str8 */
    case 0xc5:
    case 0xda: hdr = 2; break; /* bin16, str16 */
    case 0xc6:
    case 0xdb: hdr = 4; break; /* bin32, str32 */
    case 0xc7:
      hdr = 1;
      n = 1;
      break; /* ext8: + type byte */
    case 0xc8:
      hdr = 2;
      n = 1;
      break;
    case 0xc9:
      hdr = 4;
      n = 1;
      break;
    case 0xca: n = 4; break;
    case 0xcb: n = 8; break;
    case 0xcc:
    case 0xd0: n = 1; break;
    case 0xcd:
    case 0xd1: n = 2; break;
    case 0xce:
    case 0xd2: n = 4; break;
    case 0xcf:
    case 0xd3: n = 8; break;
    case 0xd4: n = 2; break; /* fixext: type + data */
    case 0xd5: n = 3; break;
    case 0xd6: n = 5; break;
    case 0xd7: n = 9; break;
    case 0xd8: n = 17; break;
    case 0xdc:
      hdr = 2;
      container = 1;
      break;
    case 0xdd:
      hdr = 4;
      container = 1;
      break;
    case 0xde:
      hdr = 2;
      container = 2;
      break;
    case 0xdf:
      hdr = 4;
      container = 2;
      break;
    default: return w->err = "invalid type byte 0xc1", -1;
    }
  }
  if (hdr) {
    if (left < (size_t)hdr) return w->err = "truncated length", -1;
    n += be_read(w->p + w->pos, hdr);
    w->pos += hdr;
    left -= hdr;
  }
  if (!container) {
    if (n > left) return w->err = "length larger than the bytes left", -1;
    w->pos += n;
    return 0;
  }
  uint64_t items = container == 2 ? n * 2 : n;
  if (items > left) return w->err = "count larger than the bytes left", -1;
  for (uint64_t i = 0; i < items; i++)
    if (walk(w, depth + 1) < 0) return -1;
  return 0;
}

drv_result_t proto_validate(const void *buf, size_t len, size_t max_len) {
  if (len > max_len)
    return drv_error(DRV_ERR_PROTO, "frame of %zu bytes is over the %zu-byte limit", len, max_len);
  if (len == 0) return drv_error(DRV_ERR_PROTO, "empty frame");
  walker_t w = {.p = buf, .len = len};
  if (walk(&w, 0) < 0)
    return drv_error(DRV_ERR_PROTO, "malformed msgpack at byte %zu: %s", w.pos, w.err);
  if (w.pos != len)
    return drv_error(DRV_ERR_PROTO, "%zu trailing bytes after the message", len - w.pos);
  return DRV_OK;
}

// --- Decoding ------------------------------------------------------------------------------

static const char *obj_kind(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return "nil";
  case MSGPACK_OBJECT_BOOLEAN: return "boolean";
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return "unsigned integer";
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative integer";
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return "float";
  case MSGPACK_OBJECT_STR: return "string";
  case MSGPACK_OBJECT_ARRAY: return "array";
  case MSGPACK_OBJECT_MAP: return "map";
  case MSGPACK_OBJECT_BIN: return "binary";
  default: return "extension";
  }
}

static int key_is(const msgpack_object *k, const char *name) {
  size_t n = strlen(name);
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
         memcmp(k->via.str.ptr, name, n) == 0;
}

static char *dup_str(const msgpack_object *o) {
  char *s = malloc(o->via.str.size + 1);
  if (!s) return NULL;
  memcpy(s, o->via.str.ptr, o->via.str.size);
  s[o->via.str.size] = '\0';
  return s;
}

static drv_result_t decode_fields(const schema_t *s, const msgpack_object *map, void *base,
                                  const char *path);

static drv_result_t bad_field(const char *path, const char *name, const char *want,
                              const msgpack_object *o) {
  return drv_error(DRV_ERR_PROTO, "%s: field '%s' must be %s, got %s", path, name, want,
                   obj_kind(o));
}

static drv_result_t decode_field(const field_t *f, const msgpack_object *v, char *b,
                                 const char *path) {
  void *p = b + f->off;
  switch (f->kind) {
  case F_I64:
  case F_I32: {
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
      x = (int64_t)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
      x = v->via.i64;
    else
      return bad_field(path, f->name, "an integer", v);
    if (f->kind == F_I32) {
      if (x < INT32_MIN || x > INT32_MAX)
        return drv_error(DRV_ERR_PROTO, "%s: field '%s' is out of range", path, f->name);
      *(int32_t *)p = (int32_t)x;
    } else {
      *(int64_t *)p = x;
    }
    return DRV_OK;
  }
  case F_U32:
  case F_U64:
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      return bad_field(path, f->name, "an unsigned integer", v);
    if (f->kind == F_U32) {
      if (v->via.u64 > UINT32_MAX)
        return drv_error(DRV_ERR_PROTO, "%s: field '%s' is out of range", path, f->name);
      *(uint32_t *)p = (uint32_t)v->via.u64;
    } else {
      *(uint64_t *)p = v->via.u64;
    }
    return DRV_OK;
  case F_F64:
    if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
      *(double *)p = v->via.f64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      *(double *)p = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
      *(double *)p = (double)v->via.i64;
    else
      return bad_field(path, f->name, "a number", v);
    return DRV_OK;
  case F_STR:
    if (v->type != MSGPACK_OBJECT_STR) return bad_field(path, f->name, "a string", v);
    if (!(*(char **)p = dup_str(v))) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    return DRV_OK;
  case F_STRS: {
    if (v->type != MSGPACK_OBJECT_ARRAY) return bad_field(path, f->name, "an array", v);
    uint32_t n = v->via.array.size;
    char **arr = calloc(n ? n : 1, sizeof *arr);
    if (!arr) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    *(char ***)p = arr;
    *(uint32_t *)(b + f->count_off) = n;
    for (uint32_t j = 0; j < n; j++) {
      const msgpack_object *e = &v->via.array.ptr[j];
      if (e->type != MSGPACK_OBJECT_STR) {
        char name[64];
        snprintf(name, sizeof name, "%s[%u]", f->name, j);
        return bad_field(path, name, "a string", e);
      }
      if (!(arr[j] = dup_str(e))) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    }
    return DRV_OK;
  }
  case F_OBJS: {
    if (v->type != MSGPACK_OBJECT_ARRAY) return bad_field(path, f->name, "an array", v);
    uint32_t n = v->via.array.size;
    char *arr = calloc(n ? n : 1, f->sub->size);
    if (!arr) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    *(char **)p = arr;
    *(uint32_t *)(b + f->count_off) = n;
    for (uint32_t j = 0; j < n; j++) {
      char sub[128];
      snprintf(sub, sizeof sub, "%s.%s[%u]", path, f->name, j);
      DRV_CHECK(decode_fields(f->sub, &v->via.array.ptr[j], arr + j * f->sub->size, sub));
    }
    return DRV_OK;
  }
  }
  return DRV_OK;
}

static drv_result_t decode_fields(const schema_t *s, const msgpack_object *map, void *base,
                                  const char *path) {
  if (map->type != MSGPACK_OBJECT_MAP)
    return drv_error(DRV_ERR_PROTO, "%s: body must be a map, got %s", path, obj_kind(map));
  char *b = base;
  for (uint32_t i = 0; i < s->nfields; i++) {
    const field_t *f = &s->fields[i];
    const msgpack_object *v = NULL;
    for (uint32_t k = 0; k < map->via.map.size; k++)
      if (key_is(&map->via.map.ptr[k].key, f->name)) {
        v = &map->via.map.ptr[k].val;
        break;
      }
    if (!v || (v->type == MSGPACK_OBJECT_NIL && !f->required)) {
      if (f->required) return drv_error(DRV_ERR_PROTO, "%s: missing field '%s'", path, f->name);
      if (f->kind == F_F64) *(double *)(b + f->off) = NAN;
      continue;
    }
    DRV_CHECK(decode_field(f, v, b, path));
  }
  return DRV_OK;
}

drv_result_t proto_unpack(const void *buf, size_t len, size_t max_len, proto_msg_t *m) {
  proto_msg_init(m, PROTO_TYPE_COUNT);
  DRV_CHECK(proto_validate(buf, len, max_len));

  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  size_t off = 0;
  drv_result_t rc = DRV_OK;
  if (msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    rc = drv_error(DRV_ERR_PROTO, "malformed msgpack");
    goto out;
  }
  const msgpack_object *root = &up.data;
  if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size != 3) {
    rc = drv_error(DRV_ERR_PROTO, "message must be [version, type, body], got %s of %u",
                   obj_kind(root), root->type == MSGPACK_OBJECT_ARRAY ? root->via.array.size : 0);
    goto out;
  }
  const msgpack_object *ver = &root->via.array.ptr[0], *type = &root->via.array.ptr[1];
  if (ver->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
    rc = drv_error(DRV_ERR_PROTO, "version must be an unsigned integer, got %s", obj_kind(ver));
    goto out;
  }
  if (ver->via.u64 != PROTO_VERSION) {
    rc = drv_error(DRV_ERR_PROTO, "unsupported protocol version %" PRIu64 " (this side speaks %d)",
                   ver->via.u64, PROTO_VERSION);
    goto out;
  }
  if (type->type != MSGPACK_OBJECT_STR) {
    rc = drv_error(DRV_ERR_PROTO, "type must be a string, got %s", obj_kind(type));
    goto out;
  }
  int t = -1;
  for (int i = 0; i < PROTO_TYPE_COUNT; i++)
    if (key_is(type, types[i].name)) t = i;
  if (t < 0) {
    rc = drv_error(DRV_ERR_PROTO, "unknown message type '%.*s'",
                   (int)DRV_MIN(type->via.str.size, 64), type->via.str.ptr);
    goto out;
  }
  m->type = (proto_type_t)t;
  rc = decode_fields(types[t].schema, &root->via.array.ptr[2], &m->u, types[t].name);
out:
  msgpack_unpacked_destroy(&up);
  return rc;
}
