/* command.c: a command job's rank (see command.h). One thread: a 50 ms loop over the
 * coordinator's socket, the program's report socket, its output pipe and waitpid. */
#include "worker/command.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/settings.h"
#include "worker/world.h"
#include "worker/worker_int.h"

extern char **environ;

#define ENV_MAX 512

typedef struct {
  worker_t *w;
  sock_ctx_t *lctx; /* plaintext, for the report socket only */
  sock_t *rep;
  char dir[64], endpoint[128];
  pid_t pid;
  int out_fd;
  char line[4096];
  size_t linelen;
  char last_line[256];
  uint64_t step, steps_total, samples;
  uint32_t epoch;
  double loss;
  int64_t last_report_ms, interval_ms, last_step_ms; /* last_report_ms 0: none yet */
  uint64_t last_step;
  uint64_t interval_step;
  int stop;         /* the coordinator asked it to stop (pause) */
  int aborted;      /* abort, or SIGTERM to the worker */
  int64_t term_ms;  /* SIGTERM sent to the program then (0: not) */
  char hung[256];   /* why it was killed as hung ("" : it was not) */
  char master[256]; /* MASTER_ADDR:MASTER_PORT */
  char pend[32768];  /* output lines not yet sent to the coordinator (drover logs) */
  size_t npend;
  uint64_t dropped;  /* bytes of output not sent: more than LOG_RATE allows */
  int64_t sent_ms;
} cmd_t;

#define LOG_FLUSH_MS 200

static volatile sig_atomic_t got_term;

static void on_term(int sig) {
  (void)sig;
  got_term = 1;
}

// --- Check-in --------------------------------------------------------------------------

/* A port of host free now, below the ephemeral range (a port in it may be taken by any
 * outgoing connection), for MASTER_PORT. */
static drv_result_t free_port(const char *host, int *port) {
  int lo = 32768, hi = 60999;
  char base[300];
  snprintf(base, sizeof base, "tcp://%s:1", host);
  sock_ports_ephemeral(base, &lo, &hi);
  int first = lo > 12000 ? 10000 : hi + 1, last = lo > 12000 ? lo - 1 : 65535;
  struct sockaddr_in a = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int tries = 0; tries < 200; tries++) {
    int p = first + (int)((unsigned)rand() % (unsigned)(last - first + 1));
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    a.sin_port = htons((uint16_t)p);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    if (ok) {
      *port = p;
      return DRV_OK;
    }
  }
  return drv_error(DRV_ERR_SYS, "no free port on %s for MASTER_PORT", host);
}

/* Checks in (rank 0 with MASTER_PORT as its address) and waits for `start`: c->master. */
static drv_result_t check_in(cmd_t *c) {
  worker_t *w = c->w;
  const proto_assign_t *a = w->cfg;
  char addr[300];
  int port = 0;
  if (w->rank == 0) DRV_CHECK(free_port(a->host, &port));
  snprintf(addr, sizeof addr, "%s:%d", a->host, port);
  proto_msg_t m;
  proto_msg_init(&m, PROTO_RENDEZVOUS);
  m.u.rendezvous = (proto_rendezvous_t){.job = a->job,
                                        .generation = w->generation,
                                        .rank = w->rank,
                                        .pid = (uint32_t)getpid(),
                                        .addr = addr};
  report_send(&w->report, &m);
  int64_t deadline = drv_now_ms() + drv_setting(DRV_SET_RENDEZVOUS_TIMEOUT_MS);
  for (;;) {
    DRV_CHECK(world_wait(w, deadline, "start", &m));
    if (m.type == PROTO_START && m.u.start.job == a->job && m.u.start.generation == w->generation)
      break;
    proto_msg_fini(&m);
  }
  drv_result_t rc = DRV_OK;
  if (m.u.start.peers_count != w->world)
    rc = drv_error(DRV_ERR_PROTO, "start names %u peers for a world of %u",
                   m.u.start.peers_count, w->world);
  else
    snprintf(c->master, sizeof c->master, "%s", m.u.start.peers[0]);
  proto_msg_fini(&m);
  return rc;
}

// --- The program -----------------------------------------------------------------------

/* envp: the worker's environment, then torchrun's, drover's and the spec's (later ones
 * win: a name is set once). Strings in buf. Returns the count. */
static int build_env(cmd_t *c, char **envp, char *buf, size_t cap) {
  worker_t *w = c->w;
  const proto_assign_t *a = w->cfg;
  const jobspec_t *s = w->spec;
  char *colon = strrchr(c->master, ':');
  char vars[16][600];
  int nv = 0;
#define VAR(...) snprintf(vars[nv++], sizeof vars[0], __VA_ARGS__)
  VAR("RANK=%u", w->rank);
  VAR("LOCAL_RANK=%u", a->local_rank);
  VAR("WORLD_SIZE=%u", w->world);
  VAR("LOCAL_WORLD_SIZE=%u", a->local_world ? a->local_world : 1);
  VAR("GROUP_RANK=%u", a->group_rank);
  VAR("ROLE_RANK=%u", w->rank);
  VAR("MASTER_ADDR=%.*s", colon ? (int)(colon - c->master) : 0, c->master);
  VAR("MASTER_PORT=%s", colon ? colon + 1 : "");
  VAR("TORCHELASTIC_RESTART_COUNT=%u", a->restarts);
  VAR("DROVER_JOB=%" PRId64, a->job);
  VAR("DROVER_RANK=%u", w->rank);
  VAR("DROVER_RUN_DIR=%s", a->run_dir);
  VAR("DROVER_CHECKPOINT_DIR=%s/checkpoints", a->run_dir);
  VAR("DROVER_COORDINATOR=%s", a->coordinator);
  VAR("DROVER_REPORT=%s", c->endpoint);
#undef VAR
  const char *add[16 + JOBSPEC_MAX_WORDS];
  int nadd = 0;
  for (int k = 0; k < nv; k++) add[nadd++] = vars[k];
  for (uint32_t k = 0; k < s->env_count; k++) add[nadd++] = s->env[k];
  int n = 0;
  size_t used = 0;
  for (char **e = environ; *e && n < ENV_MAX - nadd - 1; e++) {
    size_t klen = strcspn(*e, "=");
    int over = 0;
    for (int k = 0; k < nadd && !over; k++) over = !strncmp(add[k], *e, klen) && add[k][klen] == '=';
    if (!over) envp[n++] = *e;
  }
  for (int k = 0; k < nadd && n < ENV_MAX - 1; k++) {
    size_t len = strlen(add[k]) + 1;
    if (used + len > cap) break;
    memcpy(buf + used, add[k], len);
    envp[n++] = buf + used;
    used += len;
  }
  envp[n] = NULL;
  return n;
}

/* Whether the program can be run from dir: a word with a '/' is a path (from dir), a bare
 * name is looked for on PATH (envp's). A clear error otherwise. */
static drv_result_t find_program(const char *prog, const char *dir, char *const *envp) {
  char path[4096];
  if (strchr(prog, '/')) {
    if (prog[0] == '/')
      snprintf(path, sizeof path, "%s", prog);
    else
      snprintf(path, sizeof path, "%s/%s", dir, prog);
    if (access(path, X_OK) == 0) return DRV_OK;
    return drv_error(DRV_ERR_INVALID, "command %s: %s", prog,
                     errno == ENOENT ? "no such file" : strerror(errno));
  }
  const char *pathvar = "/usr/local/bin:/usr/bin:/bin";
  for (char *const *e = envp; *e; e++)
    if (!strncmp(*e, "PATH=", 5)) pathvar = *e + 5;
  for (const char *p = pathvar; *p;) {
    size_t n = strcspn(p, ":");
    snprintf(path, sizeof path, "%.*s/%s", (int)n, n ? p : ".", prog);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0) return DRV_OK;
    p += n + (p[n] == ':');
  }
  return drv_error(DRV_ERR_INVALID, "command %s: not found on PATH (%s)", prog, pathvar);
}

/* Starts the program: its own process group, output into a pipe, in its workdir. */
static drv_result_t spawn(cmd_t *c) {
  const jobspec_t *s = c->w->spec;
  static char *envp[ENV_MAX];
  static char envbuf[1 << 16];
  build_env(c, envp, envbuf, sizeof envbuf);
  char *argv[JOBSPEC_MAX_WORDS + 1];
  for (uint32_t k = 0; k < s->command_count; k++) argv[k] = s->command[k];
  argv[s->command_count] = NULL;
  const char *dir = s->workdir ? s->workdir : c->w->cfg->run_dir;
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return drv_error(DRV_ERR_INVALID, "workdir %s: %s", dir,
                     errno ? strerror(errno) : "not a directory");
  DRV_CHECK(find_program(argv[0], dir, envp));
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return drv_error(DRV_ERR_SYS, "pipe: %s", strerror(errno));
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    return drv_error(DRV_ERR_SYS, "fork: %s", strerror(errno));
  }
  if (pid == 0) {
    setpgid(0, 0);
    /* It dies with its worker, whatever kills the worker (the agent's SIGKILL, the OOM
     * killer): a program never outlives the rank that watches it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(p[1], 1);
    dup2(p[1], 2);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) dup2(null, 0);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    environ = envp; /* execvp looks for the program on the program's PATH */
    if (chdir(dir) == 0) execvp(argv[0], argv);
    int e = errno;
    static const char msg[] = "drover: the command could not be started: ";
    const char *why = e == ENOENT ? ": no such file or command\n"
                      : e == EACCES ? ": permission denied\n"
                                    : ": cannot run it\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    r = write(2, argv[0], strlen(argv[0]));
    r = write(2, why, strlen(why));
    (void)r;
    _exit(127);
  }
  setpgid(pid, pid);
  close(p[1]);
  c->pid = pid;
  c->out_fd = p[0];
  fcntl(c->out_fd, F_SETFL, O_NONBLOCK);
  log_info("rank %u: started %s (pid %d) in %s, MASTER %s", c->w->rank, argv[0], (int)pid, dir,
           c->master);
  return DRV_OK;
}

/* Its output, line by line, into the rank's log with the time; the last line kept. */
static void drain_output(cmd_t *c) {
  char buf[4096];
  for (int reads = 0; reads < 16; reads++) { /* a chatty program does not starve the rest */
    ssize_t n = c->out_fd >= 0 ? read(c->out_fd, buf, sizeof buf) : 0;
    if (n <= 0) {
      if (n == 0 && c->out_fd >= 0) { /* its end: the rest as a last line */
        close(c->out_fd);
        c->out_fd = -1;
        if (c->linelen) buf[0] = '\n', n = 1;
        else return;
      } else {
        return;
      }
    }
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] != '\n' && c->linelen < sizeof c->line - 1) {
        c->line[c->linelen++] = buf[i];
        continue;
      }
      if (buf[i] != '\n') continue;
      c->line[c->linelen] = '\0';
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      struct tm tm;
      localtime_r(&ts.tv_sec, &tm);
      char stamp[16];
      snprintf(stamp, sizeof stamp, "%02d:%02d:%02d.%03ld", tm.tm_hour, tm.tm_min, tm.tm_sec,
               ts.tv_nsec / 1000000);
      printf("%s [rank %u] %s\n", stamp, c->w->rank, c->line);
      size_t need = strlen(stamp) + c->linelen + 2;
      if (c->npend + need < sizeof c->pend)
        c->npend += (size_t)snprintf(c->pend + c->npend, sizeof c->pend - c->npend, "%s %s\n",
                                     stamp, c->line);
      else
        c->dropped += need;
      if (c->linelen) snprintf(c->last_line, sizeof c->last_line, "%s", c->line);
      c->linelen = 0;
    }
    fflush(stdout);
  }
}

/* The output gathered since the last `log` goes to the coordinator (every LOG_FLUSH_MS,
 * at most sizeof pend a time: more is counted as dropped and said so). */
static void send_logs(cmd_t *c, int64_t now, int force) {
  if (!c->npend && !c->dropped) return;
  if (!force && now - c->sent_ms < LOG_FLUSH_MS) return;
  if (c->dropped) {
    char note[160];
    int n = snprintf(note, sizeof note, "--:--:--.--- [drover: %" PRIu64 " bytes of output not "
                     "sent: too much at once; the rank's log has them]\n", c->dropped);
    n = DRV_MIN(n, (int)sizeof note - 1);
    if (c->npend + (size_t)n < sizeof c->pend) {
      memcpy(c->pend + c->npend, note, (size_t)n);
      c->npend += (size_t)n;
      c->dropped = 0;
    }
  }
  c->pend[c->npend] = '\0';
  proto_msg_t m;
  proto_msg_init(&m, PROTO_LOG);
  m.u.log = (proto_log_t){
      .job = c->w->cfg->job, .generation = c->w->generation, .rank = c->w->rank, .text = c->pend};
  report_send(&c->w->report, &m);
  c->npend = 0;
  c->sent_ms = now;
}

static void terminate(cmd_t *c, int64_t now) {
  if (c->pid > 0 && !c->term_ms) {
    kill(-c->pid, SIGTERM);
    c->term_ms = now;
  }
}

// --- Reports ---------------------------------------------------------------------------

/* A report: remembered, answered, relayed as `progress` (at most every DROVER_PROGRESS_MS). */
static void on_report(cmd_t *c, const sock_peer_t *from, const proto_report_t *r, int64_t now) {
  worker_t *w = c->w;
  c->last_report_ms = now;
  c->step = r->step;
  if (r->steps_total) c->steps_total = r->steps_total;
  c->epoch = r->epoch;
  if (!isnan(r->loss)) c->loss = r->loss;
  c->samples += r->samples;
  /* Rank 0 keeps metrics.jsonl: a step record per report with a loss (lr and batch 0: the
   * program's own business). */
  double since = c->last_step_ms ? (double)(now - c->last_step_ms) / 1000.0 : 0;
  uint64_t done = r->step > c->last_step ? r->step - c->last_step : 0;
  report_rec_step_t rec = {.step = r->step,
                           .epoch = r->epoch,
                           .loss = r->loss,
                           .lr = 0, /* not known: the program's own */
                           .batch = 0,
                           .step_s = done ? since / (double)done : 0,
                           .samples_per_s = since > 0 ? (double)r->samples / since : 0,
                           .data_wait_ms = 0};
  if (isfinite(rec.loss)) report_rec_step(&w->report, &rec); /* JSON has no NaN */
  c->last_step = r->step;
  c->last_step_ms = now;
  proto_msg_t ack;
  proto_msg_init(&ack, PROTO_REPORT_ACK);
  ack.u.report_ack.stop = (uint32_t)(c->stop || c->aborted);
  sock_send(c->rep, from, &ack);
  int64_t every = drv_setting(DRV_SET_PROGRESS_MS);
  if (now - c->interval_ms < every && (!c->steps_total || c->step < c->steps_total)) return;
  double interval = (double)(now - c->interval_ms) / 1000.0;
  uint64_t steps = c->step > c->interval_step ? c->step - c->interval_step : 0;
  proto_msg_t m;
  proto_msg_init(&m, PROTO_PROGRESS);
  m.u.progress = (proto_progress_t){.job = w->cfg->job,
                                    .generation = w->generation,
                                    .rank = w->rank,
                                    .epoch = c->epoch,
                                    .step = c->step,
                                    .steps_total = c->steps_total,
                                    .loss = c->loss,
                                    .lr = NAN,
                                    .samples = c->samples,
                                    .interval_s = interval,
                                    .step_ms = steps ? interval * 1000.0 / (double)steps : 0};
  report_send(&w->report, &m);
  c->samples = 0;
  c->interval_ms = now;
  c->interval_step = c->step;
}

/* What arrived on the report socket and from the coordinator. */
static void serve(cmd_t *c, int64_t now) {
  worker_t *w = c->w;
  sock_t *socks[2] = {w->sock, c->rep};
  int ready[2] = {0, 0};
  if (sock_poll(socks, 2, 50, ready) != DRV_OK) return;
  proto_msg_t m;
  sock_peer_t from;
  for (int k = 0; k < 64 && ready[1] && sock_recv(c->rep, &from, &m, 0) == DRV_OK; k++) {
    if (m.type == PROTO_REPORT) on_report(c, &from, &m.u.report, now);
    proto_msg_fini(&m);
  }
  for (int k = 0; k < 64 && ready[0] && sock_recv(w->sock, NULL, &m, 0) == DRV_OK; k++) {
    if (m.type == PROTO_ABORT && m.u.abort.job == w->cfg->job) {
      log_warn("rank %u: aborted: %s", w->rank, m.u.abort.reason ? m.u.abort.reason : "");
      c->aborted = 1;
      terminate(c, now);
    } else if (m.type == PROTO_PAUSE && m.u.pause.job == w->cfg->job && !c->stop) {
      log_info("rank %u: asked to stop (%s): SIGTERM to the program", w->rank,
               m.u.pause.reason ? m.u.pause.reason : "");
      c->stop = 1;
      terminate(c, now);
    }
    proto_msg_fini(&m);
  }
}

// --- The run ---------------------------------------------------------------------------

static drv_result_t open_reports(cmd_t *c) {
  snprintf(c->dir, sizeof c->dir, "/tmp/drover-report-XXXXXX");
  if (!mkdtemp(c->dir)) return drv_error(DRV_ERR_SYS, "mkdtemp: %s", strerror(errno));
  snprintf(c->endpoint, sizeof c->endpoint, "ipc://%s/r.sock", c->dir);
  if (!(c->lctx = sock_ctx_new())) return DRV_ERR_ZMQ; /* no keys: ipc:// only (sock.c) */
  c->rep = sock_new(c->lctx, SOCK_ROUTER, PROTO_AT_REPORTS, &(sock_opts_t){.no_linger = 1});
  if (!c->rep) return DRV_ERR_ZMQ;
  return sock_bind(c->rep, c->endpoint);
}

static void close_reports(cmd_t *c) {
  sock_destroy(&c->rep);
  sock_ctx_destroy(&c->lctx);
  char path[128];
  snprintf(path, sizeof path, "%s/r.sock", c->dir);
  unlink(path);
  if (c->dir[0]) rmdir(c->dir);
}

/* Until the program has ended; its wait status into *st. */
static void supervise(cmd_t *c, int *st) {
  worker_t *w = c->w;
  int64_t hang_ms = (int64_t)w->spec->hang_timeout_s * 1000;
  c->interval_ms = drv_now_ms();
  for (;;) {
    int64_t now = drv_now_ms();
    serve(c, now);
    drain_output(c);
    send_logs(c, now, 0);
    if (got_term && !c->aborted) {
      log_warn("rank %u: SIGTERM: passing it to the program", w->rank);
      c->aborted = 1;
      terminate(c, now);
    }
    if (hang_ms && c->last_report_ms && !c->term_ms && now - c->last_report_ms > hang_ms) {
      snprintf(c->hung, sizeof c->hung,
               "its program stopped reporting after step %" PRIu64 " for %" PRId64
               " s (hang_timeout %u s): killed",
               c->step, (now - c->last_report_ms) / 1000, w->spec->hang_timeout_s);
      log_warn("%s", c->hung);
      kill(-c->pid, SIGKILL);
      c->term_ms = now;
    }
    if (c->term_ms && now - c->term_ms > COMMAND_STOP_GRACE_MS) kill(-c->pid, SIGKILL);
    if (waitpid(c->pid, st, WNOHANG) == c->pid) break;
  }
  kill(-c->pid, SIGKILL); /* whatever it left in its group */
  drain_output(c);
  send_logs(c, drv_now_ms(), 1);
}

drv_result_t command_run(worker_t *w, proto_done_t *done) {
  cmd_t c = {.w = w, .out_fd = -1, .loss = NAN};
  got_term = 0;
  struct sigaction sa = {.sa_handler = on_term};
  sigaction(SIGTERM, &sa, NULL);
  drv_result_t rc = open_reports(&c);
  if (rc == DRV_OK) rc = check_in(&c);
  if (rc == DRV_OK) rc = spawn(&c);
  if (rc != DRV_OK) {
    close_reports(&c);
    return rc;
  }
  int st = 0;
  supervise(&c, &st);
  close_reports(&c);
  int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1, sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
  log_info("rank %u: the program ended (%s %d) after step %" PRIu64, w->rank,
           sig ? "signal" : "exit code", sig ? sig : code, c.step);
  if (c.hung[0]) return drv_error(DRV_ERR_TIMEOUT, "%s", c.hung);
  if (c.aborted) return drv_error(DRV_ERR_CANCELLED, "rank %u stopped: aborted", w->rank);
  if (c.stop) { /* asked to stop (its node preempted): it ended at its checkpoint */
    proto_msg_t m;
    proto_msg_init(&m, PROTO_LOST);
    m.u.lost = (proto_lost_t){.job = w->cfg->job,
                              .generation = w->generation,
                              .rank = w->rank,
                              .step = c.step,
                              .reason = "stopped when asked (a preemption or a re-formation)"};
    report_send(&w->report, &m);
    return drv_error(DRV_ERR_CANCELLED, "rank %u stopped when asked", w->rank);
  }
  const char *sep = c.last_line[0] ? "; last output: " : "";
  if (sig)
    return drv_error(DRV_ERR_SYS, "its program was killed by signal %d after step %" PRIu64 "%s%s",
                     sig, c.step, sep, c.last_line);
  if (code)
    return drv_error(DRV_ERR_SYS, "its program exited with code %d after step %" PRIu64 "%s%s",
                     code, c.step, sep, c.last_line);
  *done = (proto_done_t){.steps = c.step,
                         .test_loss = NAN,
                         .test_accuracy = NAN,
                         .samples_per_s = NAN,
                         .train_s = 0};
  return DRV_OK;
}
