/* cmd_jobs.c: `drover status`, `cancel`, `agents` and `settings` (cmd_jobs.h). Each asks
 * the coordinator's client port one question and prints the answer, as a table for people
 * or as JSON for programs; tests and docs/user-guide.md read both, so their columns and
 * keys are fixed. */
#include "cli/cmd_jobs.h"

#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "cli/cli.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"

/* Sends req to the coordinator's client port and waits DROVER_CLIENT_TIMEOUT_MS for the
 * reply, which the caller fini's in every case. */
static drv_result_t ask(const char *coord, const proto_msg_t *req, proto_msg_t *rep) {
  sock_ctx_t *ctx = sock_ctx_new();
  proto_msg_init(rep, PROTO_TYPE_COUNT);
  if (!ctx) return DRV_ERR_ZMQ;
  drv_result_t rc = cli_secure(ctx, "admin.secret");
  if (rc == DRV_OK)
    rc = sock_request(ctx, cli_coordinator(coord), req, rep,
                      (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS));
  sock_ctx_destroy(&ctx);
  return rc;
}

// --- status --------------------------------------------------------------------------------

static void print_time(double t, char *buf, size_t n) {
  if (t <= 0) {
    snprintf(buf, n, "-");
    return;
  }
  time_t s = (time_t)t;
  struct tm tm;
  localtime_r(&s, &tm);
  strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm);
}

/* One job as a JSON object (keys listed in docs/user-guide.md, drover status). */
static void print_job_json(const proto_job_t *j) {
  printf("{\"job\":%" PRId64 ",\"name\":", j->id);
  cli_json_str(stdout, j->name);
  fputs(",\"status\":", stdout);
  cli_json_str(stdout, j->state);
  fputs(",\"reason\":", stdout);
  cli_json_str(stdout, j->reason);
  fputs(",\"target\":", stdout);
  cli_json_str(stdout, j->target);
  printf(",\"nodes\":%u,\"epoch\":%u,\"epochs\":%u,\"step\":%" PRIu64 ",\"steps_total\":%" PRIu64,
         j->nodes, j->epoch, j->epochs, j->step, j->steps_total);
  fputs(",\"loss\":", stdout);
  cli_json_num(stdout, j->loss);
  fputs(",\"samples_per_s\":", stdout);
  cli_json_num(stdout, j->samples_per_s);
  fputs(",\"test_loss\":", stdout);
  cli_json_num(stdout, j->test_loss);
  fputs(",\"test_accuracy\":", stdout);
  cli_json_num(stdout, j->test_accuracy);
  fputs(",\"run_dir\":", stdout);
  cli_json_str(stdout, j->run_dir);
  fputs(",\"owner\":", stdout);
  cli_json_str(stdout, j->owner);
  fputs(",\"submitted_at\":", stdout);
  cli_json_num(stdout, j->submitted_at);
  fputs(",\"started_at\":", stdout);
  cli_json_num(stdout, j->started_at);
  fputs(",\"finished_at\":", stdout);
  cli_json_num(stdout, j->finished_at);
  printf(",\"ckpt_step\":%" PRIu64 ",\"ranks\":[", j->ckpt_step);
  for (uint32_t r = 0; r < j->ranks_count; r++) {
    const proto_rank_t *k = &j->ranks[r];
    printf("%s{\"rank\":%u,\"agent\":", r ? "," : "", k->rank);
    cli_json_str(stdout, k->agent);
    fputs(",\"host\":", stdout);
    cli_json_str(stdout, k->host);
    printf(
        ",\"local_rank\":%u,\"step_ms\":%.3f,\"compute_ms\":%.3f,\"wait_ms\":%.3f,"
        "\"data_ms\":%.3f,\"straggler\":%s,\"gpu\":",
        k->local_rank, k->step_ms, k->compute_ms, k->wait_ms,
        isfinite(k->data_ms) ? k->data_ms : 0, k->straggler ? "true" : "false");
    cli_json_str(stdout, k->gpu ? k->gpu : "");
    fputs("}", stdout);
  }
  fputs("]", stdout);
  fputs("}", stdout);
}

static void print_jobs_json(const proto_jobs_t *jobs) {
  fputs("[", stdout);
  for (uint32_t i = 0; i < jobs->jobs_count; i++) {
    if (i) fputs(",", stdout);
    print_job_json(&jobs->jobs[i]);
  }
  fputs("]\n", stdout);
}

static void print_jobs_table(const proto_jobs_t *jobs) {
  printf("%-5s %-20s %-12s %-10s %-9s %5s %13s %9s %11s  %-19s  %s\n", "JOB", "NAME", "OWNER",
         "STATE", "TARGET", "NODES", "STEP", "TEST_ACC", "SAMPLES/S", "SUBMITTED", "REASON");
  for (uint32_t i = 0; i < jobs->jobs_count; i++) {
    const proto_job_t *j = &jobs->jobs[i];
    char when[32], step[32], acc[16], sps[16];
    print_time(j->submitted_at, when, sizeof when);
    if (j->steps_total)
      snprintf(step, sizeof step, "%" PRIu64 "/%" PRIu64, j->step, j->steps_total);
    else
      snprintf(step, sizeof step, "%" PRIu64, j->step);
    if (isfinite(j->test_accuracy))
      snprintf(acc, sizeof acc, "%.4f", j->test_accuracy);
    else
      snprintf(acc, sizeof acc, "-");
    if (isfinite(j->samples_per_s) && j->samples_per_s > 0)
      snprintf(sps, sizeof sps, "%.0f", j->samples_per_s);
    else
      snprintf(sps, sizeof sps, "-");
    printf("%-5" PRId64 " %-20.20s %-12.12s %-10s %-9s %5u %13s %9s %11s  %-19s  %s\n", j->id,
           j->name, j->owner && j->owner[0] ? j->owner : "-", j->state, j->target, j->nodes, step,
           acc, sps, when, j->reason);
  }
}

/* One running job's ranks, for spotting the one the others wait for. */
static void print_ranks_table(const proto_job_t *j) {
  printf("\n%-5s %-28s %-16s %5s %-13s %10s %12s %10s %10s  %s\n", "RANK", "AGENT", "HOST",
         "LOCAL", "GPU", "STEP_MS", "COMPUTE_MS", "WAIT_MS", "DATA_MS", "");
  for (uint32_t r = 0; r < j->ranks_count; r++) {
    const proto_rank_t *k = &j->ranks[r];
    printf("%-5u %-28.28s %-16.16s %5u %-13.13s %10.2f %12.2f %10.2f %10.2f  %s\n", k->rank,
           k->agent, k->host, k->local_rank, k->gpu && *k->gpu ? k->gpu : "-", k->step_ms,
           k->compute_ms, k->wait_ms, isfinite(k->data_ms) ? k->data_ms : 0,
           k->straggler ? "straggler" : "");
  }
}

#define STATUS_USAGE                                                                     \
  "[JOB...] [--state queued|running|succeeded|failed|cancelled] [--name NAME] [--json] " \
  "[--limit N] [--coordinator EP]"
#define STATUS_MAX_IDS 64

/* A job id from a command-line word; 0 (and a message) when it is not one. */
static int64_t parse_job_id(const char *cmd, const char *word) {
  char *end;
  long long v = strtoll(word, &end, 10);
  if (*end || v <= 0 || end == word) {
    fprintf(stderr, "drover %s: '%s' is not a job id\n", cmd, word);
    return 0;
  }
  return v;
}

typedef struct {
  const char *state, *name; /* filters; NULL: any */
  uint32_t limit;
  proto_job_t *out; /* the jobs kept, shallow copies into the replies' arenas */
  uint32_t n, cap;
} status_view_t;

/* Keeps the jobs of reply rep that pass v's filters, up to v->limit. */
static void keep_jobs(status_view_t *v, const proto_jobs_t *rep) {
  for (uint32_t i = 0; i < rep->jobs_count && v->n < v->cap && v->n < v->limit; i++) {
    const proto_job_t *j = &rep->jobs[i];
    if ((v->state && strcmp(j->state, v->state)) || (v->name && strcmp(j->name, v->name)))
      continue;
    v->out[v->n++] = *j;
  }
}

/* Asks for one job (id > 0) or the recent ones into *rep; 0, or 1 with the error printed
 * (an unknown id among several is reported and the others still shown). */
static int status_ask(const char *coord, int64_t id, uint32_t limit, proto_msg_t *rep) {
  proto_msg_t req;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.job = id;
  req.u.status.limit = limit;
  if (ask(coord, &req, rep) != DRV_OK) {
    fprintf(stderr, "drover status: %s\n", drv_last_error());
    return 1;
  }
  if (rep->type != PROTO_JOBS) {
    fprintf(stderr, "drover status: unexpected reply '%s'\n", proto_type_name(rep->type));
    return 1;
  }
  return 0;
}

int cmd_status(int argc, char **argv) {
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                       {"json", no_argument, 0, 'j'},
                                       {"limit", required_argument, 0, 'n'},
                                       {"state", required_argument, 0, 's'},
                                       {"name", required_argument, 0, 'N'},
                                       {0, 0, 0, 0}};
  const char *coord = NULL;
  int json = 0, c;
  status_view_t v = {.limit = 20};
  while ((c = getopt_long(argc, argv, "c:jn:s:N:", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else if (c == 'j')
      json = 1;
    else if (c == 'n')
      v.limit = (uint32_t)strtoul(optarg, NULL, 10);
    else if (c == 's')
      v.state = optarg;
    else if (c == 'N')
      v.name = optarg;
    else
      return cli_usage_fail("status", STATUS_USAGE);
  }
  int64_t ids[STATUS_MAX_IDS];
  int nids = 0, ret = 0;
  for (int k = optind; k < argc; k++) {
    if (nids == STATUS_MAX_IDS) return cli_usage_fail("status", STATUS_USAGE);
    if (!(ids[nids++] = parse_job_id("status", argv[k]))) return 2;
  }
  /* With a filter, look through the most the coordinator gives, then keep --limit. */
  uint32_t ask_limit = v.state || v.name ? 1000 : v.limit;
  proto_msg_t reps[STATUS_MAX_IDS];
  int nreps = nids ? nids : 1;
  if (!v.limit) v.limit = 20;
  if (nids) v.limit = STATUS_MAX_IDS; /* every job asked for */
  v.cap = nids ? (uint32_t)nids : v.limit;
  proto_job_t kept[1000];
  v.out = kept;
  v.cap = DRV_MIN(v.cap, (uint32_t)DRV_ARRAY_LEN(kept));
  for (int k = 0; k < nreps; k++) {
    proto_msg_init(&reps[k], PROTO_TYPE_COUNT);
    if (status_ask(coord, nids ? ids[k] : 0, ask_limit, &reps[k]) != 0) {
      ret = 1;
      if (!nids) break;
      continue;
    }
    keep_jobs(&v, &reps[k].u.jobs);
  }
  proto_jobs_t shown = {.jobs = v.out, .jobs_count = v.n};
  if (json && (v.n || !ret)) {
    print_jobs_json(&shown);
  } else if (!json && (v.n || !ret)) {
    print_jobs_table(&shown);
    if (nids == 1 && v.n == 1 && v.out[0].ranks_count) print_ranks_table(&v.out[0]);
  }
  for (int k = 0; k < nreps; k++) proto_msg_fini(&reps[k]);
  return ret;
}

// --- cancel, agents, settings --------------------------------------------------------------

int cmd_cancel(int argc, char **argv) {
  const char *coord = NULL;
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else
      return cli_usage_fail("cancel", "JOB... [--coordinator EP]");
  }
  if (optind >= argc) return cli_usage_fail("cancel", "JOB... [--coordinator EP]");
  /* Each id on its own: one that is not a job, or cannot be cancelled, is reported and
   * the others still are; the exit status says whether all were. */
  int ret = 0;
  for (int k = optind; k < argc; k++) {
    int64_t id = parse_job_id("cancel", argv[k]);
    if (!id) {
      ret = 1;
      continue;
    }
    proto_msg_t req, rep;
    proto_msg_init(&req, PROTO_CANCEL);
    req.u.cancel.job = id;
    drv_result_t rc = ask(coord, &req, &rep);
    if (rc == DRV_OK)
      printf("job %" PRId64 " cancelled\n", id);
    else
      fprintf(stderr, "drover cancel: %s\n", drv_last_error());
    ret |= rc != DRV_OK;
    proto_msg_fini(&rep);
  }
  return ret;
}

static void print_agents_json(const proto_agent_list_t *l) {
  fputs("[", stdout);
  for (uint32_t i = 0; i < l->agents_count; i++) {
    const proto_agent_t *a = &l->agents[i];
    fputs(i ? ",{\"agent\":" : "{\"agent\":", stdout);
    cli_json_str(stdout, a->agent_id);
    fputs(",\"host\":", stdout);
    cli_json_str(stdout, a->host);
    fputs(",\"target\":", stdout);
    cli_json_str(stdout, a->target);
    fputs(",\"state\":", stdout);
    cli_json_str(stdout, a->state);
    printf(",\"cpus\":%u,\"gpus\":%u,\"mem_bytes\":%" PRIu64 ",\"job\":%" PRId64
           ",\"last_seen_s\":%.3f,\"workers\":%u,\"devices\":[",
           a->cpus, a->gpus, a->mem_bytes, a->job, a->last_seen_s, a->workers);
    for (uint32_t g = 0; g < a->devices_count; g++) {
      const proto_agent_gpu_t *d = &a->devices[g];
      printf("%s{\"index\":%u,\"name\":", g ? "," : "", d->index);
      cli_json_str(stdout, d->name);
      fputs(",\"pci_bus_id\":", stdout);
      cli_json_str(stdout, d->pci_bus_id ? d->pci_bus_id : "");
      printf(",\"mem_bytes\":%" PRIu64, d->mem_bytes);
      if (d->measured)
        printf(",\"mem_used_bytes\":%" PRIu64 ",\"util_pct\":%u", d->mem_used_bytes,
               d->util_pct);
      fputs("}", stdout);
    }
    fputs("]}", stdout);
  }
  fputs("]\n", stdout);
}

/* Under an agent's line, one per GPU: "  gpu 0  0000:17:00.0  NVIDIA H200  12.3/139.8 GiB  97%". */
static void print_agent_gpus(const proto_agent_t *a) {
  for (uint32_t g = 0; g < a->devices_count; g++) {
    const proto_agent_gpu_t *d = &a->devices[g];
    char use[64] = "use not measured";
    if (d->measured)
      snprintf(use, sizeof use, "%.1f/%.1f GiB used, %u%% busy",
               (double)d->mem_used_bytes / (1 << 30), (double)d->mem_bytes / (1 << 30),
               d->util_pct);
    printf("  gpu %-2u %-13s %-28.28s %s\n", d->index, d->pci_bus_id ? d->pci_bus_id : "",
           d->name, use);
  }
}

static void print_agents_table(const proto_agent_list_t *l) {
  printf("%-28s %-16s %-9s %-5s %5s %5s %9s %6s %7s %10s\n", "AGENT", "HOST", "TARGET", "STATE",
         "CPUS", "GPUS", "MEM_GIB", "JOB", "WORKERS", "LAST_SEEN");
  for (uint32_t i = 0; i < l->agents_count; i++) {
    const proto_agent_t *a = &l->agents[i];
    char job[24] = "-";
    if (a->job) snprintf(job, sizeof job, "%" PRId64, a->job);
    printf("%-28.28s %-16.16s %-9s %-5s %5u %5u %9.1f %6s %7u %9.1fs\n", a->agent_id, a->host,
           a->target, a->state, a->cpus, a->gpus, (double)a->mem_bytes / (1 << 30), job,
           a->workers, a->last_seen_s);
    print_agent_gpus(a);
  }
}

/* A listing command: `drover NAME [--json] [--coordinator EP]` asks `req`, expects `want`
 * and prints the reply as JSON or a table. */
static int listing(int argc, char **argv, const char *name, proto_type_t req_type,
                   proto_type_t want, void (*json_fn)(const proto_msg_t *),
                   void (*table_fn)(const proto_msg_t *)) {
  const char *coord = NULL;
  int json = 0, c;
  static const struct option opts[] = {
      {"coordinator", required_argument, 0, 'c'}, {"json", no_argument, 0, 'j'}, {0, 0, 0, 0}};
  while ((c = getopt_long(argc, argv, "c:j", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else if (c == 'j')
      json = 1;
    else
      return cli_usage_fail(name, "[--json] [--coordinator EP]");
  }
  proto_msg_t req, rep;
  proto_msg_init(&req, req_type);
  drv_result_t rc = ask(coord, &req, &rep);
  int ret = 0;
  if (rc != DRV_OK || rep.type != want) {
    fprintf(stderr, "drover %s: %s\n", name, rc != DRV_OK ? drv_last_error() : "unexpected reply");
    ret = 1;
  } else {
    (json ? json_fn : table_fn)(&rep);
  }
  proto_msg_fini(&rep);
  return ret;
}

static void agents_json(const proto_msg_t *m) {
  print_agents_json(&m->u.agent_list);
}

static void agents_table(const proto_msg_t *m) {
  print_agents_table(&m->u.agent_list);
}

int cmd_agents(int argc, char **argv) {
  return listing(argc, argv, "agents", PROTO_AGENTS, PROTO_AGENT_LIST, agents_json, agents_table);
}

static void print_targets_json(const proto_target_list_t *l) {
  fputs("[", stdout);
  for (uint32_t i = 0; i < l->targets_count; i++) {
    const proto_target_info_t *t = &l->targets[i];
    fputs(i ? ",{\"name\":" : "{\"name\":", stdout);
    cli_json_str(stdout, t->name);
    fputs(",\"kind\":", stdout);
    cli_json_str(stdout, t->kind);
    fputs(",\"launcher\":", stdout);
    cli_json_str(stdout, t->launcher);
    printf(",\"min_nodes\":%u,\"max_nodes\":%u,\"idle\":%u,\"busy\":%u,\"starting\":%u,"
           "\"stopping\":%u,\"failed\":%u,\"launched\":%u,\"preemptible\":%s,"
           "\"idle_timeout_s\":%u,\"launch_timeout_s\":%u,\"retry_in_s\":%.1f,\"last_error\":",
           t->min_nodes, t->max_nodes, t->idle, t->busy, t->starting, t->stopping, t->failed,
           t->launched, t->preemptible ? "true" : "false", t->idle_timeout_s, t->launch_timeout_s,
           t->retry_in_s);
    cli_json_str(stdout, t->last_error ? t->last_error : "");
    fputs("}", stdout);
  }
  fputs("]\n", stdout);
}

static void print_targets_table(const proto_target_list_t *l) {
  printf("%-20s %-9s %-8s %5s %5s %5s %5s %8s %8s %6s  %s\n", "TARGET", "KIND", "LAUNCHER",
         "MIN", "MAX", "IDLE", "BUSY", "STARTING", "STOPPING", "FAILED", "LAST_ERROR");
  for (uint32_t i = 0; i < l->targets_count; i++) {
    const proto_target_info_t *t = &l->targets[i];
    char max[16] = "-";
    if (t->max_nodes) snprintf(max, sizeof max, "%u", t->max_nodes);
    printf("%-20.20s %-9s %-8s %5u %5s %5u %5u %8u %8u %6u  %s\n", t->name, t->kind,
           t->launcher[0] ? t->launcher : "-", t->min_nodes, max, t->idle, t->busy, t->starting,
           t->stopping, t->failed, t->last_error && *t->last_error ? t->last_error : "");
  }
}

static void targets_json(const proto_msg_t *m) {
  print_targets_json(&m->u.target_list);
}

static void targets_table(const proto_msg_t *m) {
  print_targets_table(&m->u.target_list);
}

int cmd_targets(int argc, char **argv) {
  return listing(argc, argv, "targets", PROTO_TARGETS, PROTO_TARGET_LIST, targets_json,
                 targets_table);
}

/* Prints the lines of text (rank < 0: all; else only that rank's), returns how many. */
static int print_lines(const char *text, int rank) {
  char want[32];
  snprintf(want, sizeof want, "rank %d ", rank);
  int n = 0;
  for (const char *p = text; *p;) {
    size_t len = strcspn(p, "\n");
    if (rank < 0 || !strncmp(p, want, strlen(want))) {
      fwrite(p, 1, len, stdout);
      fputc('\n', stdout);
      n++;
    }
    p += len + (p[len] == '\n');
  }
  fflush(stdout);
  return n;
}

int cmd_logs(int argc, char **argv) {
  const char *coord = NULL;
  int follow = 0, rank = -1, c;
  static const struct option opts[] = {{"coordinator", required_argument, 0, 'c'},
                                       {"follow", no_argument, 0, 'f'},
                                       {"rank", required_argument, 0, 'r'},
                                       {0, 0, 0, 0}};
  while ((c = getopt_long(argc, argv, "c:fr:", opts, NULL)) != -1) {
    if (c == 'c')
      coord = optarg;
    else if (c == 'f')
      follow = 1;
    else if (c == 'r') {
      char *end;
      unsigned long v = strtoul(optarg, &end, 10);
      if (*optarg < '0' || *optarg > '9' || *end || v > 1u << 20)
        return cli_usage_fail("logs", "JOB [-f] [--rank N] [--coordinator EP]");
      rank = (int)v;
    }
    else
      return cli_usage_fail("logs", "JOB [-f] [--rank N] [--coordinator EP]");
  }
  if (optind != argc - 1) return cli_usage_fail("logs", "JOB [-f] [--rank N] [--coordinator EP]");
  int64_t id = parse_job_id("logs", argv[optind]);
  if (!id) return 2;
  uint64_t offset = 0;
  volatile sig_atomic_t *stop = cli_stop_signals();
  for (;;) {
    proto_msg_t req, rep;
    proto_msg_init(&req, PROTO_LOGS);
    req.u.logs = (proto_logs_t){.job = id, .offset = offset};
    drv_result_t rc = ask(coord, &req, &rep);
    if (rc != DRV_OK || rep.type != PROTO_LOG_CHUNK) {
      fprintf(stderr, "drover logs: %s\n",
              rc != DRV_OK ? drv_last_error()
              : rep.type == PROTO_ERROR && rep.u.error.message ? rep.u.error.message
                                                              : "unexpected reply");
      proto_msg_fini(&rep);
      return 1;
    }
    int got = rep.u.log_chunk.offset > offset;
    print_lines(rep.u.log_chunk.text, rank);
    offset = rep.u.log_chunk.offset;
    int ended = rep.u.log_chunk.ended;
    proto_msg_fini(&rep);
    if (got) continue; /* more may be there at once */
    if (!follow || ended || *stop) return 0;
    usleep(500000);
  }
}

int cmd_settings(int argc, char **argv) {
  drv_settings_print(stdout);
  return 0;
}
