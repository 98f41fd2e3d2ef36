/* spawn.c: the coordinator and local agents `drover submit` starts and stops (spawn.h). */
#include "cli/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/proto.h"
#include "kernels/gpuinfo.h"

/* Seconds a local agent waits without any coordinator before it exits by itself. */
#define SPAWN_AGENT_ORPHAN_S "15"

drv_result_t spawn_init(spawn_t *s, const char *coordinator, const char *state_dir, int verbose) {
  *s = (spawn_t){.coordinator = coordinator, .state_dir = state_dir, .verbose = verbose};
  snprintf(s->pool, sizeof s->pool, "local-%d", (int)getpid());
  return fs_path(s->logdir, sizeof s->logdir, "%s/local-%d", state_dir, (int)getpid());
}

// --- Children ------------------------------------------------------------------------------

/* Starts `drover ARGS...` with stderr/stdout to logfile (or inherited when verbose), with
 * OPENBLAS_NUM_THREADS blas_threads unless set, and CUDA_VISIBLE_DEVICES gpus (NULL: as
 * it is). */
static pid_t spawn_child(const spawn_t *s, const char *logname, char *const args[],
                         const char *blas_threads, const char *gpus) {
  char logpath[PATH_MAX + 64];
  int have_log = fs_path(logpath, sizeof logpath, "%s/%s", s->logdir, logname) == DRV_OK;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (!s->verbose && have_log) {
      int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0640);
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
    if (gpus) setenv("CUDA_VISIBLE_DEVICES", gpus, 1);
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

// --- The coordinator -----------------------------------------------------------------------

/* Asks the coordinator for one status line to learn whether it answers. */
static int coordinator_answers(sock_ctx_t *ctx, const char *ep, int timeout_ms) {
  /* The keys may be new: a coordinator just started makes them at its first start. */
  if (!sock_ctx_is_secure(ctx) && cli_secure(ctx, "admin.secret") != DRV_OK) {
    usleep((useconds_t)timeout_ms * 1000 / 4);
    return 0;
  }
  proto_msg_t req, rep;
  proto_msg_init(&req, PROTO_STATUS);
  req.u.status.limit = 1;
  drv_result_t rc = sock_request(ctx, ep, &req, &rep, timeout_ms);
  int jobs = rep.type == PROTO_JOBS;
  proto_msg_fini(&rep);
  return rc == DRV_OK && jobs;
}

/* For attached and managed targets the coordinator outlives this command: agents on other
 * nodes register with it. Starts it detached (its own session, reparented to init),
 * logging into the state dir. */
static void start_detached(const spawn_t *s, char *const args[]) {
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    pid_t g = fork();
    if (g != 0) _exit(g < 0);
    char logpath[PATH_MAX + 32];
    int fd = fs_path(logpath, sizeof logpath, "%s/coordinator.log", s->state_dir) != DRV_OK
                 ? -1
                 : open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0640);
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

int spawn_coordinator(spawn_t *s, sock_ctx_t *ctx, int local) {
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
  if (local)
    s->coord_pid = spawn_child(s, "coordinator.log", args, NULL, NULL);
  else
    start_detached(s, args);
  for (int i = 0; i < 100; i++) { /* up to ~10 s */
    if (coordinator_answers(ctx, s->coordinator, 200)) return 0;
    if (spawn_coordinator_exited(s)) break;
    usleep(100000);
  }
  fprintf(stderr, "drover submit: could not start a coordinator at %s (see %s/coordinator.log)\n",
          s->coordinator, local ? s->logdir : s->state_dir);
  return -1;
}

int spawn_coordinator_exited(spawn_t *s) {
  if (s->coord_pid > 0 && waitpid(s->coord_pid, NULL, WNOHANG) == s->coord_pid) {
    s->coord_pid = 0;
    return 1;
  }
  return 0;
}

// --- Local agents --------------------------------------------------------------------------

#define SPAWN_MAX_ALLOW 16

/* With at least n GPUs here, agent i of n gets its own share of them (by UUID, in PCI bus
 * id order), so that `nodes: 2` on an 8-GPU machine is 2 nodes of 4, not 2 of the same 8;
 * with fewer, every agent sees them all (2 workers sharing one GPU). out[i] is the
 * CUDA_VISIBLE_DEVICES of agent i, or "" to leave it as it is. */
static void share_gpus(uint32_t n, char (*out)[GPUINFO_MAX * 48]) {
  proto_gpu_t *g;
  uint32_t count;
  for (uint32_t i = 0; i < n; i++) out[i][0] = '\0';
  gpuinfo_query(&g, &count);
  for (uint32_t i = 0; count >= n && i < n; i++) {
    size_t len = 0;
    for (uint32_t k = i * count / n; k < (i + 1) * count / n && g[k].uuid; k++)
      len += (size_t)snprintf(out[i] + len, sizeof out[i] - len, "%s%s", len ? "," : "",
                              g[k].uuid);
  }
  gpuinfo_free(g, count);
}

int spawn_local_agents(spawn_t *s, uint32_t n, const char *const *dirs, int ndirs) {
  if (ndirs > SPAWN_MAX_ALLOW) ndirs = SPAWN_MAX_ALLOW;
  if (n > SPAWN_MAX_AGENTS) {
    fprintf(stderr, "drover submit: the local target runs at most %d agents\n", SPAWN_MAX_AGENTS);
    return -1;
  }
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  char threads[16];
  snprintf(threads, sizeof threads, "%ld", cpus / (long)n > 0 ? cpus / (long)n : 1);
  char parent[16];
  snprintf(parent, sizeof parent, "%d", (int)getpid());
  static char gpus[SPAWN_MAX_AGENTS][GPUINFO_MAX * 48];
  share_gpus(n, gpus);
  for (uint32_t i = 0; i < n; i++) {
    char id[64], log[64];
    snprintf(id, sizeof id, "%s-%u", s->pool, i);
    snprintf(log, sizeof log, "agent-%u.log", i);
    /* --parent: an agent whose submit is gone, even SIGKILLed, stops with its workers.
     * --exit-without-coordinator: so does one whose coordinator has exited (it exits
     * when idle) while this submit cannot stop it, e.g. stopped (SIGSTOP). */
    char *base[] = {"drover",
                    "agent",
                    "--coordinator",
                    (char *)s->coordinator,
                    "--target",
                    "local",
                    "--id",
                    id,
                    "--host",
                    "127.0.0.1",
                    "--pool",
                    s->pool,
                    "--parent",
                    parent,
                    "--exit-without-coordinator",
                    SPAWN_AGENT_ORPHAN_S};
    char *args[DRV_ARRAY_LEN(base) + 2 * SPAWN_MAX_ALLOW + 1];
    size_t argc = 0;
    for (size_t k = 0; k < DRV_ARRAY_LEN(base); k++) args[argc++] = base[k];
    for (int d = 0; d < ndirs; d++) { /* the job's directories, which this user named */
      args[argc++] = "--allow-dir";
      args[argc++] = (char *)dirs[d];
    }
    args[argc] = NULL;
    pid_t pid = spawn_child(s, log, args, threads, gpus[i][0] ? gpus[i] : NULL);
    if (pid < 0) {
      fprintf(stderr, "drover submit: fork: %s\n", strerror(errno));
      return -1;
    }
    s->agents[s->nagents++] = pid;
  }
  return 0;
}

void spawn_wait_agents_idle(const spawn_t *s, sock_ctx_t *ctx) {
  char mine[40];
  snprintf(mine, sizeof mine, "%s-", s->pool); /* our pool's agent ids */
  for (double end = drv_now_s() + 5.0; drv_now_s() < end;) {
    proto_msg_t req, rep;
    proto_msg_init(&req, PROTO_AGENTS);
    int busy = 1;
    if (sock_request(ctx, s->coordinator, &req, &rep, 1000) == DRV_OK &&
        rep.type == PROTO_AGENT_LIST) {
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

// --- Stopping ------------------------------------------------------------------------------

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

void spawn_stop(spawn_t *s, sock_ctx_t *ctx, int64_t job) {
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
