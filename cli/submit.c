/* submit.c: `drover submit` (submit.h): validate a job spec, make sure a coordinator answers
 * and start the local target's agents (spawn.c), submit, follow the job's events with a
 * live progress line, print the result, and stop what it started. */
#include "cli/submit.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/spawn.h"
#include "common/fsutil.h"
#include "common/jobspec.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"

#define MAX_SETS 64
#define SUBMIT_ATTEMPTS 6 /* times CLIENT_TIMEOUT_MS: how long submit waits for its job id */
#define MAX_ALLOW 8       /* directories the local agents are allowed (run, resume, data) */

typedef struct {
  const char *spec_path, *coordinator, *state_dir; /* as given; resolved into sp */
  const char *sets[MAX_SETS];
  int nsets;
  int json, detach, verbose;
  int64_t resume;              /* --resume JOB, 0 when not resuming */
  volatile sig_atomic_t *stop; /* Ctrl-C requests (cli_stop_signals) */
  spawn_t sp;                  /* what we started, stopped at the end */
  /* The local target: the directories the job needs, which its agents allow (they are this
   * user's, as the agents are): the run directory's parent, the data files' directories,
   * the resumed job's run directory. */
  char allow[MAX_ALLOW][PATH_MAX];
  const char *allow_ptrs[MAX_ALLOW];
  int nallow;
} submit_t;

/* What we know of the job we follow. */
typedef struct {
  int64_t job;
  char state[16];
  char reason[512];
  char run_dir[1024];
  double test_loss, test_accuracy, samples_per_s;
  int tty, line_open;
  double last_plain_s;
} follow_t;

// --- Options ------------------------------------------------------------------------------

static int parse_args(submit_t *s, int argc, char **argv) {
  static const struct option opts[] = {{"target", required_argument, 0, 't'},
                                       {"nodes", required_argument, 0, 'n'},
                                       {"priority", required_argument, 0, 'p'},
                                       {"set", required_argument, 0, 's'},
                                       {"json", no_argument, 0, 'j'},
                                       {"detach", no_argument, 0, 'd'},
                                       {"coordinator", required_argument, 0, 'c'},
                                       {"state-dir", required_argument, 0, 'S'},
                                       {"verbose", no_argument, 0, 'v'},
                                       {"resume", required_argument, 0, 'r'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  static char target_set[64], nodes_set[64], priority_set[64];
  int c;
  while ((c = getopt_long(argc, argv, "t:n:p:s:jdc:S:vr:h", opts, NULL)) != -1) {
    if (s->nsets >= MAX_SETS - 3) {
      fprintf(stderr, "drover submit: at most %d --set options\n", MAX_SETS - 3);
      return -1;
    }
    switch (c) {
    case 't':
      snprintf(target_set, sizeof target_set, "target=%s", optarg);
      s->sets[s->nsets++] = target_set;
      break;
    case 'n':
      snprintf(nodes_set, sizeof nodes_set, "nodes=%s", optarg);
      s->sets[s->nsets++] = nodes_set;
      break;
    case 'p': /* --set priority=N */
      snprintf(priority_set, sizeof priority_set, "priority=%s", optarg);
      s->sets[s->nsets++] = priority_set;
      break;
    case 's': s->sets[s->nsets++] = optarg; break;
    case 'j': s->json = 1; break;
    case 'd': s->detach = 1; break;
    case 'c': s->coordinator = optarg; break;
    case 'S': s->state_dir = optarg; break;
    case 'v': s->verbose = 1; break;
    case 'r': {
      char *end;
      s->resume = strtoll(optarg, &end, 10);
      if (*end || s->resume <= 0) {
        fprintf(stderr, "drover submit: --resume %s: not a job id\n", optarg);
        return -1;
      }
      break;
    }
    default:
      fputs(
          "usage: drover submit SPEC.yaml [--target local|attached] [--nodes N] [--priority N]\n"
          "       [--set key.path=value]... [--json] [--detach] [--coordinator EP]\n"
          "       [--state-dir DIR] [--verbose] [--resume JOB]\n"
          "       drover submit --resume JOB [--set key.path=value]... (the job's own spec)\n",
          stderr);
      return -1;
    }
  }
  if (optind >= argc && !s->resume) {
    fputs("drover submit: which job spec? (e.g. examples/fashion-mnist.yaml)\n", stderr);
    return -1;
  }
  s->spec_path = optind < argc ? argv[optind] : NULL;
  return 0;
}

// --- The submission -----------------------------------------------------------------------

/* Adds dir to the local agents' allowed directories. */
static void allow_dir(submit_t *s, const char *dir) {
  if (s->nallow >= MAX_ALLOW || dir[0] != '/') return;
  if (fs_path(s->allow[s->nallow], sizeof s->allow[0], "%s", dir) != DRV_OK) return;
  s->allow_ptrs[s->nallow] = s->allow[s->nallow];
  s->nallow++;
}

/* The local target's directories from the resolved spec: its run_dir and its data files'
 * directories (of the files themselves: a data file that is a link to elsewhere is
 * allowed where it leads). */
static void allow_spec_dirs(submit_t *s, jobspec_t *spec) {
  allow_dir(s, spec->run_dir);
  const char *key;
  char **p, dir[PATH_MAX];
  for (unsigned i = 0; (p = jobspec_path_at(spec, i, &key)) || key; i++) {
    if (!p || !*p || !strcmp(key, "run_dir")) continue;
    if (!realpath(*p, dir) && fs_path(dir, sizeof dir, "%s", *p) != DRV_OK) continue;
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
    allow_dir(s, dir);
  }
}

/* --resume on the local target: the resumed job's run directory is allowed too. */
static void allow_resumed(submit_t *s, sock_ctx_t *ctx) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_GET_SPEC);
  req.u.spec.job = s->resume;
  if (sock_request(ctx, s->sp.coordinator, &req, &rep,
                   (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS)) == DRV_OK &&
      rep.type == PROTO_SPEC && rep.u.spec.run_dir)
    allow_dir(s, rep.u.spec.run_dir);
  proto_msg_fini(&rep);
}

/* The resolved spec to submit, as YAML: from the file (paths made absolute against the
 * current directory), or for --resume without a file, the stored spec of the job resumed;
 * --set overrides apply to either. *local and *nodes say where it runs. Returns 0, or the
 * exit status (2 for an invalid spec, 1 when its paths cannot be resolved), the reason
 * printed. */
static int resolve_spec(submit_t *s, sock_ctx_t *ctx, char **yaml, int *local, uint32_t *nodes) {
  jobspec_t *spec = NULL;
  drv_result_t rc;
  if (s->spec_path) {
    rc = jobspec_load(s->spec_path, s->sets, s->nsets, &spec);
  } else {
    proto_msg_t req, rep;
    proto_msg_init(&req, PROTO_GET_SPEC);
    req.u.spec.job = s->resume;
    rc = sock_request(ctx, s->sp.coordinator, &req, &rep,
                      (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS));
    if (rc == DRV_OK && rep.type == PROTO_SPEC) {
      char origin[64];
      snprintf(origin, sizeof origin, "spec of job %" PRId64, s->resume);
      rc =
          jobspec_parse(rep.u.spec.spec, strlen(rep.u.spec.spec), origin, s->sets, s->nsets, &spec);
    } else if (rc == DRV_OK) {
      rc = drv_error(DRV_ERR_PROTO, "unexpected reply '%s'", proto_type_name(rep.type));
    }
    proto_msg_fini(&rep);
  }
  if (rc != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    return 2;
  }
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd) || jobspec_absolutize(spec, cwd) != DRV_OK) {
    fprintf(stderr, "drover submit: cannot resolve paths: %s\n", strerror(errno));
    jobspec_destroy(&spec);
    return 1;
  }
  /* The coordinator's limits, as this environment sets them, before anything starts. */
  if (jobspec_check_limits(spec, s->spec_path ? s->spec_path : "the resumed job's spec") !=
      DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    jobspec_destroy(&spec);
    return 2;
  }
  size_t ylen;
  if (jobspec_dump(spec, yaml, &ylen) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    jobspec_destroy(&spec);
    return 1;
  }
  *local = !strcmp(spec->target, "local");
  *nodes = spec->nodes;
  if (*local) allow_spec_dirs(s, spec);
  jobspec_destroy(&spec);
  return 0;
}

/* Everything before the submission: the spec resolved (for --resume without a file, from
 * the coordinator, which must then be up first: started as for the local target when none
 * answers), a coordinator that answers, the local target's agents. Returns 0, or the exit
 * status (the reason printed). */
static int prepare(submit_t *s, sock_ctx_t *ctx, char **yaml, int *local) {
  spawn_t *sp = &s->sp;
  uint32_t nodes = 1;
  if (!s->spec_path &&
      (fs_mkdir_p(sp->logdir, 0750) != DRV_OK || spawn_coordinator(sp, ctx, 1) < 0))
    return 1;
  int rc = resolve_spec(s, ctx, yaml, local, &nodes);
  if (rc != 0) return rc;
  if (*local && fs_mkdir_p(sp->logdir, 0750) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    return 1;
  }
  if (s->spec_path && spawn_coordinator(sp, ctx, *local) < 0) return 1;
  if (*local && s->resume) allow_resumed(s, ctx);
  if (*local && spawn_local_agents(sp, nodes, s->allow_ptrs, s->nallow) < 0) return 1;
  return 0;
}

/* A SUB socket on the coordinator's events, connected before submitting so that no event
 * of the job is missed; NULL with the reason printed. */
static sock_t *subscribe(const submit_t *s, sock_ctx_t *ctx) {
  char ev[256];
  sock_endpoint(s->sp.coordinator, SOCK_EVENTS, ev, sizeof ev);
  sock_t *sub = sock_new(ctx, SOCK_SUB, PROTO_AT_EVENTS, NULL);
  if (!sub || sock_subscribe(sub, ev, "job/", 1000) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    sock_destroy(&sub);
  }
  return sub;
}

/* A random name for this submission: 128 bits in hex. */
static void make_token(char out[33]) {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
    uint64_t x = (uint64_t)getpid() << 32 ^ (uint64_t)(drv_now_s() * 1e9);
    memcpy(b, &x, sizeof x);
    memcpy(b + 8, &x, sizeof x);
  }
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Sends the submission, asking again with the same token while the coordinator does not
 * answer in time (a slow disk, a loaded machine): the coordinator answers a repeated
 * token with the job the first request made, so a late answer never makes two jobs. */
static drv_result_t send_submission(submit_t *s, sock_ctx_t *ctx, const proto_msg_t *req,
                                    proto_msg_t *rep) {
  int timeout_ms = (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS);
  for (int attempt = 1;; attempt++) {
    drv_result_t rc = sock_request(ctx, s->sp.coordinator, req, rep, timeout_ms);
    if (rc != DRV_ERR_TIMEOUT || attempt == SUBMIT_ATTEMPTS || *s->stop) return rc;
    if (spawn_coordinator_exited(&s->sp))
      return drv_error(DRV_ERR_CANCELLED, "the coordinator this command started exited");
    proto_msg_fini(rep);
    fprintf(stderr,
            "drover submit: no answer from %s in %d ms; asking again (same submission: it "
            "is not queued twice)\n",
            s->sp.coordinator, timeout_ms);
  }
}

/* Submits the resolved spec under a fresh token; the job's id and run directory go into
 * *f. Returns 0, or 2 (refused or unanswered, the reason printed). */
static int submit_spec(submit_t *s, sock_ctx_t *ctx, char *yaml, int local, follow_t *f) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_SUBMIT);
  req.u.submit.spec = yaml;
  req.u.submit.pool = local ? s->sp.pool : NULL;
  req.u.submit.resume = s->resume;
  char token[33];
  make_token(token);
  req.u.submit.token = token;
  if (send_submission(s, ctx, &req, &rep) != DRV_OK || rep.type != PROTO_SUBMITTED) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    proto_msg_fini(&rep);
    return 2;
  }
  f->job = rep.u.submitted.job;
  snprintf(f->run_dir, sizeof f->run_dir, "%s", rep.u.submitted.run_dir);
  proto_msg_fini(&rep);
  return 0;
}

// --- Following the job --------------------------------------------------------------------

static void fmt_eta(double s, char *buf, size_t n) {
  if (!isfinite(s) || s <= 0) {
    snprintf(buf, n, "--:--");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static int terminal_state(const char *st) {
  return !strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled");
}

static void end_line(follow_t *f) {
  if (f->line_open) fputs("\n", stderr);
  f->line_open = 0;
}

static void on_progress_event(follow_t *f, const proto_ev_progress_t *p) {
  char eta[32], epoch[32];
  fmt_eta(p->eta_s, eta, sizeof eta);
  if (p->epochs) /* a command job's program may not say how many */
    snprintf(epoch, sizeof epoch, "epoch %u/%u", p->epoch + 1, p->epochs);
  else
    snprintf(epoch, sizeof epoch, "epoch %u", p->epoch + 1);
  if (f->tty) {
    fprintf(stderr,
            "\r\033[K  %s  step %" PRIu64 "/%" PRIu64
            "  loss %.4f  %.0f samples/s"
            "  slowest rank %u (%.1f ms/step)  ETA %s",
            epoch, p->step, p->steps_total, p->loss, p->samples_per_s, p->slowest_rank,
            p->slowest_step_ms, eta);
    f->line_open = 1;
  } else if (drv_now_s() - f->last_plain_s >= 2.0 || p->step == p->steps_total) {
    f->last_plain_s = drv_now_s();
    fprintf(stderr, "  %s  step %" PRIu64 "/%" PRIu64 "  loss %.4f  %.0f samples/s  ETA %s\n",
            epoch, p->step, p->steps_total, p->loss, p->samples_per_s, eta);
  }
  fflush(stderr);
}

static void on_event(follow_t *f, const proto_msg_t *m) {
  switch (m->type) {
  case PROTO_EV_PROGRESS:
    if (m->u.ev_progress.job == f->job) on_progress_event(f, &m->u.ev_progress);
    break;
  case PROTO_EV_EVAL:
    if (m->u.eval.job != f->job) break;
    end_line(f);
    fprintf(stderr, "  epoch %u: test loss %.4f, test accuracy %.4f\n", m->u.eval.epoch + 1,
            m->u.eval.test_loss, m->u.eval.test_accuracy);
    break;
  case PROTO_EV_STATE:
    if (m->u.ev_state.job != f->job) break;
    snprintf(f->state, sizeof f->state, "%s", m->u.ev_state.state);
    if (!strcmp(f->state, "running")) {
      end_line(f);
      fprintf(stderr, "job %" PRId64 " running\n", f->job);
    }
    if (terminal_state(f->state)) {
      snprintf(f->reason, sizeof f->reason, "%s", m->u.ev_state.reason ? m->u.ev_state.reason : "");
      f->test_loss = m->u.ev_state.test_loss;
      f->test_accuracy = m->u.ev_state.test_accuracy;
      f->samples_per_s = m->u.ev_state.samples_per_s;
    }
    break;
  default: break;
  }
}

/* Reads the job's record: the authority when an event was missed. */
static int poll_status(sock_ctx_t *ctx, const char *ep, follow_t *f) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.job = f->job;
  int answered = 0;
  if (sock_request(ctx, ep, &req, &rep, 2000) == DRV_OK && rep.type == PROTO_JOBS &&
      rep.u.jobs.jobs_count == 1) {
    answered = 1;
    proto_job_t *j = &rep.u.jobs.jobs[0];
    if (terminal_state(j->state)) {
      snprintf(f->state, sizeof f->state, "%s", j->state);
      snprintf(f->reason, sizeof f->reason, "%s", j->reason);
      f->test_loss = j->test_loss;
      f->test_accuracy = j->test_accuracy;
      f->samples_per_s = j->samples_per_s;
    }
  }
  proto_msg_fini(&rep);
  return answered;
}

static void cancel_job(sock_ctx_t *ctx, const char *ep, int64_t job) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_CANCEL);
  req.u.cancel.job = job;
  sock_request(ctx, ep, &req, &rep, 2000);
  proto_msg_fini(&rep);
}

static void print_result(const submit_t *s, const follow_t *f) {
  if (s->json) {
    printf("{\"job\":%" PRId64 ",\"status\":", f->job);
    cli_json_str(stdout, f->state);
    fputs(",\"test_accuracy\":", stdout);
    cli_json_num(stdout, f->test_accuracy);
    fputs(",\"test_loss\":", stdout);
    cli_json_num(stdout, f->test_loss);
    fputs(",\"run_dir\":", stdout);
    cli_json_str(stdout, f->run_dir);
    fputs(",\"samples_per_s\":", stdout);
    cli_json_num(stdout, f->samples_per_s);
    fputs(",\"reason\":", stdout);
    cli_json_str(stdout, f->reason);
    fputs("}\n", stdout);
    return;
  }
  if (!strcmp(f->state, "succeeded"))
    printf("job %" PRId64
           " succeeded: test accuracy %.4f, test loss %.4f, %.0f samples/s\n"
           "run directory: %s\n",
           f->job, f->test_accuracy, f->test_loss, f->samples_per_s, f->run_dir);
  else
    printf("job %" PRId64 " %s: %s\nrun directory: %s\n", f->job, f->state, f->reason, f->run_dir);
}

/* One Ctrl-C cancels the job (and following goes on until it is cancelled); a second one
 * stops waiting. Returns 1 when following should stop. */
static int on_stop_request(submit_t *s, sock_ctx_t *ctx, follow_t *f, int *cancelled) {
  if (!*s->stop) return 0;
  if (*cancelled) {
    snprintf(f->state, sizeof f->state, "unknown");
    snprintf(f->reason, sizeof f->reason, "stopped waiting for the job after a second interrupt");
    return 1;
  }
  end_line(f);
  fprintf(stderr, "interrupted: cancelling job %" PRId64 " (Ctrl-C again to stop waiting)\n",
          f->job);
  cancel_job(ctx, s->sp.coordinator, f->job);
  *cancelled = 1;
  *s->stop = 0;
  return 0;
}

/* Follows the job until it ends, the coordinator stops answering for 6 x
 * DROVER_PEER_TIMEOUT_MS, or a second Ctrl-C; events drive the progress line, and every
 * 2 s the job's record is read in case an event was missed. Then prints the result and
 * returns the exit status (0 only when the job succeeded). */
static int follow_job(submit_t *s, sock_ctx_t *ctx, sock_t *sub, follow_t *f, int local) {
  double last_status = drv_now_s(), last_answer = drv_now_s();
  double give_up_s = 6.0 * (double)drv_setting(DRV_SET_PEER_TIMEOUT_MS) / 1000.0;
  int cancelled = 0;
  while (!terminal_state(f->state)) {
    if (on_stop_request(s, ctx, f, &cancelled)) break;
    proto_msg_t m;
    if (sock_recv(sub, NULL, &m, 250) == DRV_OK) on_event(f, &m);
    proto_msg_fini(&m);
    if (drv_now_s() - last_status > 2.0) {
      last_status = drv_now_s();
      if (poll_status(ctx, s->sp.coordinator, f)) {
        last_answer = drv_now_s();
      } else if (drv_now_s() - last_answer > give_up_s) {
        snprintf(f->state, sizeof f->state, "unknown");
        snprintf(f->reason, sizeof f->reason, "the coordinator at %s has not answered for %.0f s",
                 s->sp.coordinator, drv_now_s() - last_answer);
        break;
      }
      if (local && spawn_coordinator_exited(&s->sp)) {
        snprintf(f->state, sizeof f->state, "failed");
        snprintf(f->reason, sizeof f->reason, "the coordinator exited (see %s/coordinator.log)",
                 s->sp.logdir);
      }
    }
  }
  end_line(f);
  if (local && terminal_state(f->state)) spawn_wait_agents_idle(&s->sp, ctx);
  print_result(s, f);
  int ret = !strcmp(f->state, "succeeded") ? 0 : 1;
  if (ret && local && !s->verbose)
    fprintf(stderr, "logs: %s (coordinator, agents) and %s/logs (workers)\n", s->sp.logdir,
            f->run_dir);
  return ret;
}

// --- The command --------------------------------------------------------------------------

int cmd_submit(int argc, char **argv) {
  submit_t s = {0};
  if (parse_args(&s, argc, argv) < 0) return 2;
  if (spawn_init(&s.sp, cli_coordinator(s.coordinator), cli_state_dir(s.state_dir), s.verbose) !=
          DRV_OK ||
      fs_mkdir_p(s.sp.state_dir, 0700) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    return 1;
  }
  s.stop = cli_stop_signals();

  sock_ctx_t *ctx = sock_ctx_new();
  cli_secure(ctx, "admin.secret"); /* no keys yet: made by the coordinator it starts */
  int ret, local = 1;
  char *yaml = NULL;
  sock_t *sub = NULL;
  follow_t f = {.tty = isatty(2), .test_loss = NAN, .test_accuracy = NAN, .samples_per_s = NAN};
  if ((ret = prepare(&s, ctx, &yaml, &local)) != 0) goto out;
  ret = 1;
  if (!(sub = subscribe(&s, ctx))) goto out;
  if ((ret = submit_spec(&s, ctx, yaml, local, &f)) != 0) goto out;
  if (!s.json) fprintf(stderr, "job %" PRId64 " submitted (run directory %s)\n", f.job, f.run_dir);
  if (s.detach && local)
    fprintf(stderr,
            "drover submit: --detach has no effect on the local target: its agents "
            "stop with this command\n");
  if (s.detach && !local) {
    if (s.json) printf("{\"job\":%" PRId64 ",\"status\":\"queued\"}\n", f.job);
    goto out; /* ret is 0 */
  }
  ret = follow_job(&s, ctx, sub, &f, local);
out:
  sock_destroy(&sub);
  spawn_stop(&s.sp, ctx, f.job);
  sock_ctx_destroy(&ctx);
  free(yaml);
  return ret;
}
