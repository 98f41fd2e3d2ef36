/* submit.c: `drover submit`: validate a job spec, make sure a coordinator answers (starting
 * one when none does), start the local agents for the local target, submit, follow the
 * job's events with a live progress line, print the result, and stop what it started. */
#include "cli/submit.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/jobspec.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"

#define MAX_SETS 64
#define MAX_LOCAL_AGENTS 64
#define SUBMIT_ATTEMPTS 6 /* times CLIENT_TIMEOUT_MS: how long submit waits for its job id */

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

typedef struct {
  const char *spec_path, *coordinator, *state_dir;
  const char *sets[MAX_SETS];
  int nsets;
  int json, detach, verbose;
  int64_t resume; /* --resume JOB, 0 when not resuming */
  /* what we started, stopped at the end */
  pid_t coord_pid;
  pid_t agents[MAX_LOCAL_AGENTS];
  int nagents;
  char logdir[PATH_MAX];
  char pool[32]; /* local target: our agents' pool, so no other submit's job lands on them */
} submit_t;

// --- Processes we start --------------------------------------------------------------------

/* Starts `drover ARGS...` with stderr/stdout to logfile (or inherited when verbose). */
static pid_t spawn(submit_t *s, const char *logname, char *const args[], const char *blas_threads) {
  char logpath[PATH_MAX + 64];
  snprintf(logpath, sizeof logpath, "%s/%s", s->logdir, logname);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (!s->verbose) {
      int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (blas_threads && !getenv("OPENBLAS_NUM_THREADS"))
      setenv("OPENBLAS_NUM_THREADS", blas_threads, 1);
    /* Own process group: a Ctrl-C at the terminal reaches us, and we stop them in order. */
    setpgid(0, 0);
    execv(cli_self_exe(), args);
    _exit(127);
  }
  return pid;
}

static void stop_child(pid_t pid, const char *what) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 100; i++) { /* up to 5 s */
    if (waitpid(pid, NULL, WNOHANG) == pid) return;
    usleep(50000);
  }
  fprintf(stderr, "drover: %s (pid %d) did not stop in 5 s: killed\n", what, (int)pid);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* Whether the coordinator has queued or running jobs other than `mine`. */
static int others_active(sock_ctx_t *ctx, const char *ep, int64_t mine) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.limit = 1000;
  int n = 0;
  if (sock_request(ctx, ep, &req, &rep, 2000) == DRV_OK && rep.type == PROTO_JOBS)
    for (uint32_t i = 0; i < rep.u.jobs.jobs_count; i++) {
      const proto_job_t *j = &rep.u.jobs.jobs[i];
      n += j->id != mine && (!strcmp(j->state, "queued") || !strcmp(j->state, "running"));
    }
  proto_msg_fini(&rep);
  return n;
}

static void stop_started(submit_t *s, sock_ctx_t *ctx, int64_t job) {
  for (int i = 0; i < s->nagents; i++) stop_child(s->agents[i], "agent");
  s->nagents = 0;
  if (s->coord_pid > 0 && others_active(ctx, s->coordinator, job)) {
    /* Another submit's job runs on it: it exits by itself once idle (--exit-when-idle). */
    fprintf(stderr,
            "drover: leaving the coordinator at %s running for the jobs of other "
            "submissions; it exits when idle\n",
            s->coordinator);
    s->coord_pid = 0;
    return;
  }
  stop_child(s->coord_pid, "coordinator");
  s->coord_pid = 0;
}

/* Asks the coordinator for one status line to learn whether it answers. */
static int coordinator_answers(sock_ctx_t *ctx, const char *ep, int timeout_ms) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.limit = 1;
  drv_result_t rc = sock_request(ctx, ep, &req, &rep, timeout_ms);
  int jobs = rep.type == PROTO_JOBS;
  proto_msg_fini(&rep);
  return rc == DRV_OK && jobs;
}

static int ensure_coordinator(submit_t *s, sock_ctx_t *ctx, int local) {
  if (coordinator_answers(ctx, s->coordinator, 1000)) return 0;
  char *args[] = {"drover",
                  "coordinator",
                  "--bind",
                  (char *)s->coordinator,
                  "--state-dir",
                  (char *)s->state_dir,
                  local ? "--exit-when-idle" : NULL,
                  "10",
                  NULL};
  if (local) {
    s->coord_pid = spawn(s, "coordinator.log", args, NULL);
  } else {
    /* For attached and managed targets the coordinator outlives this command: agents on
     * other nodes register with it. Start it detached, logging into the state dir. */
    pid_t pid = fork();
    if (pid == 0) {
      setsid();
      pid_t g = fork();
      if (g != 0) _exit(g < 0);
      char logpath[PATH_MAX + 32];
      snprintf(logpath, sizeof logpath, "%s/coordinator.log", s->state_dir);
      int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execv(cli_self_exe(), args);
      _exit(127);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
    fprintf(stderr,
            "drover: started a coordinator at %s (log %s/coordinator.log); it keeps "
            "running for the agents\n",
            s->coordinator, s->state_dir);
  }
  for (int i = 0; i < 100; i++) { /* up to ~10 s */
    if (coordinator_answers(ctx, s->coordinator, 200)) return 0;
    if (s->coord_pid > 0 && waitpid(s->coord_pid, NULL, WNOHANG) == s->coord_pid) {
      s->coord_pid = 0;
      break;
    }
    usleep(100000);
  }
  fprintf(stderr, "drover submit: could not start a coordinator at %s (see %s/coordinator.log)\n",
          s->coordinator, local ? s->logdir : s->state_dir);
  return -1;
}

static int start_local_agents(submit_t *s, uint32_t n) {
  if (n > MAX_LOCAL_AGENTS) {
    fprintf(stderr, "drover submit: the local target runs at most %d agents\n", MAX_LOCAL_AGENTS);
    return -1;
  }
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  char threads[16];
  snprintf(threads, sizeof threads, "%ld", cpus / (long)n > 0 ? cpus / (long)n : 1);
  for (uint32_t i = 0; i < n; i++) {
    char id[64], log[64];
    snprintf(id, sizeof id, "%s-%u", s->pool, i);
    snprintf(log, sizeof log, "agent-%u.log", i);
    char *args[] = {"drover",   "agent",     "--coordinator", (char *)s->coordinator,
                    "--target", "local",     "--id",          id,
                    "--host",   "127.0.0.1", "--pool",        s->pool,
                    NULL};
    pid_t pid = spawn(s, log, args, threads);
    if (pid < 0) {
      fprintf(stderr, "drover submit: fork: %s\n", strerror(errno));
      return -1;
    }
    s->agents[s->nagents++] = pid;
  }
  return 0;
}

// --- Following a job -----------------------------------------------------------------------

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

typedef struct {
  int64_t job;
  char state[16];
  char reason[512];
  char run_dir[1024];
  double test_loss, test_accuracy, samples_per_s;
  int tty, line_open;
  double last_plain_s;
} follow_t;

static int terminal_state(const char *st) {
  return !strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled");
}

static void end_line(follow_t *f) {
  if (f->line_open) fputs("\n", stderr);
  f->line_open = 0;
}

static void on_progress_event(follow_t *f, const proto_ev_progress_t *p) {
  char eta[32];
  fmt_eta(p->eta_s, eta, sizeof eta);
  if (f->tty) {
    fprintf(stderr,
            "\r\033[K  epoch %u/%u  step %" PRIu64 "/%" PRIu64
            "  loss %.4f  %.0f samples/s"
            "  slowest rank %u (%.1f ms/step)  ETA %s",
            p->epoch + 1, p->epochs, p->step, p->steps_total, p->loss, p->samples_per_s,
            p->slowest_rank, p->slowest_step_ms, eta);
    f->line_open = 1;
  } else if (drv_now_s() - f->last_plain_s >= 2.0 || p->step == p->steps_total) {
    f->last_plain_s = drv_now_s();
    fprintf(stderr,
            "  epoch %u/%u  step %" PRIu64 "/%" PRIu64 "  loss %.4f  %.0f samples/s  ETA %s\n",
            p->epoch + 1, p->epochs, p->step, p->steps_total, p->loss, p->samples_per_s, eta);
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

/* Local target: agents are busy until their workers have exited; stopping them earlier
 * would kill a worker that is still flushing its files. Waits up to 5 s. */
static void wait_agents_idle(sock_ctx_t *ctx, const char *ep) {
  char mine[40];
  snprintf(mine, sizeof mine, "local-%d-", (int)getpid()); /* our pool's agent ids */
  for (double end = drv_now_s() + 5.0; drv_now_s() < end;) {
    proto_msg_t req, rep;
    proto_msg_init(&req, PROTO_AGENTS);
    int busy = 1;
    if (sock_request(ctx, ep, &req, &rep, 1000) == DRV_OK && rep.type == PROTO_AGENT_LIST) {
      busy = 0;
      for (uint32_t k = 0; k < rep.u.agent_list.agents_count; k++)
        busy |= !strncmp(rep.u.agent_list.agents[k].agent_id, mine, strlen(mine)) &&
                rep.u.agent_list.agents[k].job != 0;
    }
    proto_msg_fini(&rep);
    if (!busy) return;
    usleep(100000);
  }
}

static void cancel_job(sock_ctx_t *ctx, const char *ep, int64_t job) {
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_CANCEL);
  req.u.cancel.job = job;
  sock_request(ctx, ep, &req, &rep, 2000);
  proto_msg_fini(&rep);
}

// --- The command ---------------------------------------------------------------------------

static int parse_args(submit_t *s, int argc, char **argv) {
  static const struct option opts[] = {{"target", required_argument, 0, 't'},
                                       {"nodes", required_argument, 0, 'n'},
                                       {"set", required_argument, 0, 's'},
                                       {"json", no_argument, 0, 'j'},
                                       {"detach", no_argument, 0, 'd'},
                                       {"coordinator", required_argument, 0, 'c'},
                                       {"state-dir", required_argument, 0, 'S'},
                                       {"verbose", no_argument, 0, 'v'},
                                       {"resume", required_argument, 0, 'r'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  static char target_set[64], nodes_set[64];
  int c;
  while ((c = getopt_long(argc, argv, "t:n:s:jdc:S:vr:h", opts, NULL)) != -1) {
    if (s->nsets >= MAX_SETS - 2) {
      fprintf(stderr, "drover submit: at most %d --set options\n", MAX_SETS - 2);
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
          "usage: drover submit SPEC.yaml [--target local|attached] [--nodes N]\n"
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

/* Sends the submission, asking again with the same token while the coordinator does not
 * answer in time (a slow disk, a loaded machine): the coordinator answers a repeated
 * token with the job the first request made, so a late answer never makes two jobs. */
static drv_result_t send_submission(submit_t *s, sock_ctx_t *ctx, const proto_msg_t *req,
                                    proto_msg_t *rep) {
  int timeout_ms = (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS);
  for (int attempt = 1;; attempt++) {
    drv_result_t rc = sock_request(ctx, s->coordinator, req, rep, timeout_ms);
    if (rc != DRV_ERR_TIMEOUT || attempt == SUBMIT_ATTEMPTS || interrupted) return rc;
    if (s->coord_pid > 0 && waitpid(s->coord_pid, NULL, WNOHANG) == s->coord_pid) {
      s->coord_pid = 0;
      return drv_error(DRV_ERR_CANCELLED, "the coordinator this command started exited");
    }
    proto_msg_fini(rep);
    fprintf(stderr,
            "drover submit: no answer from %s in %d ms; asking again (same submission: it "
            "is not queued twice)\n",
            s->coordinator, timeout_ms);
  }
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

/* The resolved spec to submit, as YAML: from the file (paths made absolute against the
 * current directory), or for --resume without a file, the stored spec of the job resumed;
 * --set overrides apply to either. */
static int resolve_spec(submit_t *s, sock_ctx_t *ctx, char **yaml, int *local, uint32_t *nodes) {
  jobspec_t *spec = NULL;
  drv_result_t rc;
  if (s->spec_path) {
    rc = jobspec_load(s->spec_path, s->sets, s->nsets, &spec);
  } else {
    proto_msg_t req, rep;
    proto_msg_init(&req, PROTO_GET_SPEC);
    req.u.spec.job = s->resume;
    rc = sock_request(ctx, s->coordinator, &req, &rep, (int)drv_setting(DRV_SET_CLIENT_TIMEOUT_MS));
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
  size_t ylen;
  if (jobspec_dump(spec, yaml, &ylen) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    jobspec_destroy(&spec);
    return 1;
  }
  *local = spec->target == SPEC_TARGET_LOCAL;
  *nodes = spec->nodes;
  jobspec_destroy(&spec);
  return 0;
}

int cmd_submit(int argc, char **argv) {
  submit_t s = {0};
  if (parse_args(&s, argc, argv) < 0) return 2;
  s.coordinator = cli_coordinator(s.coordinator);
  s.state_dir = cli_state_dir(s.state_dir);
  snprintf(s.logdir, sizeof s.logdir, "%s/local-%d", s.state_dir, (int)getpid());
  snprintf(s.pool, sizeof s.pool, "local-%d", (int)getpid());
  if (fs_mkdir_p(s.state_dir) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    return 1;
  }
  struct sigaction sa = {.sa_handler = on_interrupt};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  sock_ctx_t *ctx = sock_ctx_new();
  int ret = 1, local = 1;
  uint32_t nodes = 1;
  char *yaml = NULL;
  sock_t *sub = NULL;
  follow_t f = {.tty = isatty(2), .test_loss = NAN, .test_accuracy = NAN, .samples_per_s = NAN};
  /* Resuming without a spec file: the stored spec comes from the coordinator, so it must
   * be up first (started as for the local target when none answers). */
  if (!s.spec_path && (fs_mkdir_p(s.logdir) != DRV_OK || ensure_coordinator(&s, ctx, 1) < 0))
    goto out;
  if ((ret = resolve_spec(&s, ctx, &yaml, &local, &nodes)) != 0) goto out;
  ret = 1;
  if (local && fs_mkdir_p(s.logdir) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    goto out;
  }
  if (s.spec_path && ensure_coordinator(&s, ctx, local) < 0) goto out;
  if (local && start_local_agents(&s, nodes) < 0) goto out;

  /* Subscribe before submitting so no event of the job is missed. */
  char ev[256];
  sock_endpoint(s.coordinator, SOCK_EVENTS, ev, sizeof ev);
  if (!(sub = sock_new(ctx, SOCK_SUB, PROTO_AT_EVENTS, NULL)) ||
      sock_subscribe(sub, ev, "job/", 1000) != DRV_OK) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    goto out;
  }

  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_SUBMIT);
  req.u.submit.spec = yaml;
  req.u.submit.pool = local ? s.pool : NULL;
  req.u.submit.resume = s.resume;
  char token[33];
  make_token(token);
  req.u.submit.token = token;
  if (send_submission(&s, ctx, &req, &rep) != DRV_OK || rep.type != PROTO_SUBMITTED) {
    fprintf(stderr, "drover submit: %s\n", drv_last_error());
    proto_msg_fini(&rep);
    ret = 2;
    goto out;
  }
  f.job = rep.u.submitted.job;
  snprintf(f.run_dir, sizeof f.run_dir, "%s", rep.u.submitted.run_dir);
  proto_msg_fini(&rep);
  if (!s.json) fprintf(stderr, "job %" PRId64 " submitted (run directory %s)\n", f.job, f.run_dir);
  if (s.detach && local)
    fprintf(stderr,
            "drover submit: --detach has no effect on the local target: its agents "
            "stop with this command\n");
  if (s.detach && !local) {
    if (s.json) printf("{\"job\":%" PRId64 ",\"status\":\"queued\"}\n", f.job);
    ret = 0;
    goto out;
  }

  double last_status = drv_now_s(), last_answer = drv_now_s();
  double give_up_s = 6.0 * (double)drv_setting(DRV_SET_PEER_TIMEOUT_MS) / 1000.0;
  int cancelled = 0;
  while (!terminal_state(f.state)) {
    if (interrupted && !cancelled) {
      end_line(&f);
      fprintf(stderr, "interrupted: cancelling job %" PRId64 " (Ctrl-C again to stop waiting)\n",
              f.job);
      cancel_job(ctx, s.coordinator, f.job);
      cancelled = 1;
      interrupted = 0;
    } else if (interrupted) {
      snprintf(f.state, sizeof f.state, "unknown");
      snprintf(f.reason, sizeof f.reason, "stopped waiting for the job after a second interrupt");
      break;
    }
    proto_msg_t m;
    if (sock_recv(sub, NULL, &m, 250) == DRV_OK) on_event(&f, &m);
    proto_msg_fini(&m);
    if (drv_now_s() - last_status > 2.0) {
      last_status = drv_now_s();
      if (poll_status(ctx, s.coordinator, &f)) {
        last_answer = drv_now_s();
      } else if (drv_now_s() - last_answer > give_up_s) {
        snprintf(f.state, sizeof f.state, "unknown");
        snprintf(f.reason, sizeof f.reason, "the coordinator at %s has not answered for %.0f s",
                 s.coordinator, drv_now_s() - last_answer);
        break;
      }
      if (local && s.coord_pid > 0 && waitpid(s.coord_pid, NULL, WNOHANG) == s.coord_pid) {
        s.coord_pid = 0;
        snprintf(f.state, sizeof f.state, "failed");
        snprintf(f.reason, sizeof f.reason, "the coordinator exited (see %s/coordinator.log)",
                 s.logdir);
      }
    }
  }
  end_line(&f);
  if (local && terminal_state(f.state)) wait_agents_idle(ctx, s.coordinator);
  print_result(&s, &f);
  ret = !strcmp(f.state, "succeeded") ? 0 : 1;
  if (ret && local && !s.verbose)
    fprintf(stderr, "logs: %s (coordinator, agents) and %s/logs (workers)\n", s.logdir, f.run_dir);
out:
  sock_destroy(&sub);
  stop_started(&s, ctx, f.job);
  sock_ctx_destroy(&ctx);
  free(yaml);
  return ret;
}
