/* agent.c: see agent.h. One thread: a poll loop over the coordinator socket, with
 * waitpid for the worker children and timers for heartbeats and reconnects. */
#include "agent/agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/paths.h"
#include "kernels/gpuinfo.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/settings.h"
#include "common/sock.h"

#define MAX_WORKERS 64 /* JOBSPEC_MAX_WORKERS_PER_NODE */
#define KILL_GRACE_MS 2000

typedef struct {
  pid_t pid; /* 0: free slot */
  int64_t job;
  uint32_t generation, rank; /* of its assign: how the coordinator names it */
  uint32_t local_rank;
  int64_t kill_deadline_ms; /* SIGKILL after this when a SIGTERM was sent; 0 none */
} child_t;

/* What a worker gets of the node, worked out before the fork. */
typedef struct {
  char visible[GPUINFO_MAX * 48]; /* CUDA_VISIBLE_DEVICES: its GPUs' UUIDs; "" for the CPU */
  char threads[16];               /* OPENBLAS_NUM_THREADS and OMP_NUM_THREADS */
  cpu_set_t cpus;                 /* its cores */
  int pin;                        /* cpus is a share of the agent's: set it */
} share_t;

typedef struct {
  const agent_config_t *cfg;
  char agent_id[128], host[256];
  sock_ctx_t *ctx;
  sock_t *sock;
  int registered;
  int64_t last_heard_ms, last_hello_ms;
  int64_t heard_ms; /* the last message from a coordinator; unlike last_heard_ms, not reset
                       by a reconnect */
  int64_t heartbeat_ms, peer_timeout_ms; /* ours until the coordinator's welcome says */
  uint64_t seq, session;
  child_t kids[MAX_WORKERS];
  int64_t last_job;          /* the job of the newest assign, its generation, how many */
  uint32_t last_generation;  /* assigns of that generation came and how many it said */
  uint32_t last_count, last_local_world; /* would (local_world): exit reports say the
                                            generation once all came */
  proto_gpu_t *gpus;         /* in PCI bus id order (gpuinfo.h) */
  uint32_t ngpus;
  cpu_set_t cpus;            /* the cores it may use (its affinity) */
  uint32_t ncpus;
  paths_roots_t roots; /* where its jobs may read and write (paths.h) */
} agent_t;

// --- Helpers -------------------------------------------------------------------------------

drv_result_t agent_route_host(const char *endpoint, char *out, size_t outsz) {
  /* "tcp://HOST:PORT" -> HOST */
  const char *h = strstr(endpoint, "://");
  h = h ? h + 3 : endpoint;
  const char *colon = strrchr(h, ':');
  char host[256];
  size_t n = colon ? (size_t)(colon - h) : strlen(h);
  if (n == 0 || n >= sizeof host) return drv_error(DRV_ERR_INVALID, "%s: no host", endpoint);
  memcpy(host, h, n);
  host[n] = '\0';
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *ai = NULL;
  int e = getaddrinfo(host, "9", &hints, &ai);
  if (e)
    return drv_error(DRV_ERR_SYS, "%s: cannot resolve %s: %s", endpoint, host, gai_strerror(e));
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  drv_result_t rc = DRV_OK;
  struct sockaddr_in local;
  socklen_t len = sizeof local;
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
      getsockname(fd, (struct sockaddr *)&local, &len) < 0 ||
      !inet_ntop(AF_INET, &local.sin_addr, out, (socklen_t)outsz))
    rc = drv_error(DRV_ERR_SYS, "%s: no route to %s: %s", endpoint, host, strerror(errno));
  if (fd >= 0) close(fd);
  freeaddrinfo(ai);
  return rc;
}

static void send_msg(agent_t *a, const proto_msg_t *m) {
  if (a->sock && sock_send(a->sock, NULL, m) != DRV_OK)
    log_debug("send %s: %s", proto_type_name(m->type), drv_last_error());
}

static uint32_t live_workers(const agent_t *a) {
  uint32_t n = 0;
  for (int i = 0; i < MAX_WORKERS; i++) n += a->kids[i].pid != 0;
  return n;
}

/* Workers of `job` still running (or being stopped). */
static uint32_t job_workers(const agent_t *a, int64_t job) {
  uint32_t n = 0;
  for (int i = 0; i < MAX_WORKERS; i++) n += a->kids[i].pid && a->kids[i].job == job;
  return n;
}

/* The agent's GPU with hello index `index`, as a position in a->gpus, or -1. */
static int gpu_at(const agent_t *a, int32_t index) {
  for (uint32_t i = 0; index >= 0 && i < a->ngpus; i++)
    if (a->gpus[i].index == (uint32_t)index) return (int)i;
  return -1;
}

/* What worker `as` gets: its GPUs (device and the next devices-1, in the agent's order)
 * by UUID, and its share of the cores: `cpus` of them, else the agent's budget (its own
 * OPENBLAS_NUM_THREADS, else its cores) over local_world, the local_rank-th block of its
 * cores when there are several workers. */
static drv_result_t worker_share(const agent_t *a, const proto_assign_t *as, share_t *sh) {
  memset(sh, 0, sizeof *sh);
  uint32_t ndev = as->devices ? as->devices : 1;
  int first = gpu_at(a, as->device);
  if (as->device >= 0 && (first < 0 || (uint32_t)first + ndev > a->ngpus))
    return drv_error(DRV_ERR_INVALID, "assign: device %d (and %u after it) is not a GPU of this agent (%u GPUs)",
                     as->device, ndev - 1, a->ngpus);
  size_t n = 0;
  for (uint32_t k = 0; first >= 0 && k < ndev; k++) {
    const proto_gpu_t *g = &a->gpus[(uint32_t)first + k];
    n += (size_t)snprintf(sh->visible + n, sizeof sh->visible - n, "%s%s", k ? "," : "",
                          g->uuid && *g->uuid ? g->uuid : "");
  }
  uint32_t world = as->local_world ? as->local_world : 1;
  const char *env = getenv("OPENBLAS_NUM_THREADS");
  long budget = env && atol(env) > 0 ? atol(env) : (long)a->ncpus;
  uint32_t threads = as->cpus ? as->cpus : (uint32_t)DRV_MAX(1L, budget / (long)world);
  snprintf(sh->threads, sizeof sh->threads, "%u", threads);
  if (world > 1 && a->ncpus > 1) { /* the local_rank-th block of our cores, wrapping */
    int ids[CPU_SETSIZE], m = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &a->cpus)) ids[m++] = c;
    CPU_ZERO(&sh->cpus);
    for (uint32_t k = 0; k < threads && k < (uint32_t)m; k++)
      CPU_SET(ids[(as->local_rank * threads + k) % (uint32_t)m], &sh->cpus);
    sh->pin = 1;
  }
  return DRV_OK;
}

// --- Workers -------------------------------------------------------------------------------

/* The assignment as the worker reads it on stdin: one packed `assign`, with the address
 * its ring listens on. In a memfd, so the child reads it whole whenever it starts. */
static drv_result_t assignment_fd(const agent_t *a, const proto_assign_t *as, int *fd) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_ASSIGN);
  m.u.assign = *as;
  m.u.assign.host = a->host;
  char *buf;
  size_t len;
  DRV_CHECK(proto_pack(&m, &buf, &len));
  *fd = memfd_create("drover-assign", MFD_CLOEXEC); /* dup2 to stdin clears it there */
  drv_result_t rc = DRV_OK;
  if (*fd < 0)
    rc = drv_error(DRV_ERR_SYS, "memfd_create: %s", strerror(errno));
  else if (write(*fd, buf, len) != (ssize_t)len || lseek(*fd, 0, SEEK_SET) < 0)
    rc = drv_error(DRV_ERR_SYS, "writing the assignment for the worker: %s", strerror(errno));
  if (rc != DRV_OK && *fd >= 0) close(*fd);
  free(buf);
  return rc;
}

/* Who a worker runs as, found before the fork (the child only makes system calls). */
typedef struct {
  paths_owner_t owner; /* .set: another user than the agent's */
  char user[64];
  gid_t groups[64];
  int ngroups;
} run_as_t;

/* An agent running as root runs no worker as root: the job's owner when that names a Unix
 * user other than root, else cfg->run_as ("nobody"). Nothing to change otherwise. */
static drv_result_t pick_user(const agent_t *a, const proto_assign_t *as, run_as_t *u) {
  *u = (run_as_t){.ngroups = 0};
  if (geteuid() != 0) return DRV_OK;
  struct passwd *pw = as->owner && *as->owner ? getpwnam(as->owner) : NULL;
  if (!pw || pw->pw_uid == 0) {
    const char *name = a->cfg->run_as ? a->cfg->run_as : "nobody";
    if (!(pw = getpwnam(name)) || pw->pw_uid == 0)
      return drv_error(DRV_ERR_INVALID, "no user to run the worker as: --run-as %s %s", name,
                       pw ? "is root" : "is not a user here");
  }
  u->owner = (paths_owner_t){.set = 1, .uid = pw->pw_uid, .gid = pw->pw_gid};
  snprintf(u->user, sizeof u->user, "%s", pw->pw_name);
  u->ngroups = (int)DRV_ARRAY_LEN(u->groups);
  if (getgrouplist(u->user, u->owner.gid, u->groups, &u->ngroups) < 0) {
    u->groups[0] = u->owner.gid; /* more groups than we keep: its own only */
    u->ngroups = 1;
  }
  return DRV_OK;
}

/* Forks `drover worker` with the assignment on stdin (spec_fd) and stdout and stderr to
 * log_fd, in its own process group, as u says, dying with the agent. `name_dir` only
 * names the process for ps and pgrep. */
static drv_result_t fork_worker(const agent_t *a, const proto_assign_t *as, const char *name_dir,
                                const run_as_t *u, const share_t *sh, int spec_fd, int log_fd,
                                pid_t *out) {
  char job[32], rank[16];
  snprintf(job, sizeof job, "%" PRId64, as->job);
  snprintf(rank, sizeof rank, "%u", as->rank);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return drv_error(DRV_ERR_SYS, "fork: %s", strerror(errno));
  if (pid == 0) {
    /* Child: own process group (killed as one), dies with the agent. */
    setpgid(0, 0);
    dup2(spec_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    if (u->owner.set && (setgroups((size_t)u->ngroups, u->groups) < 0 || setgid(u->owner.gid) < 0 ||
                         setuid(u->owner.uid) < 0)) {
      dprintf(2, "cannot run the worker as %s: %s\n", u->user, strerror(errno));
      _exit(126);
    }
    /* Its share of the node (one thread here: setenv is safe after the fork). */
    if (sh->visible[0]) {
      setenv("CUDA_VISIBLE_DEVICES", sh->visible, 1);
      setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID", 1);
    }
    setenv("OPENBLAS_NUM_THREADS", sh->threads, 1);
    setenv("OMP_NUM_THREADS", sh->threads, 1);
    if (sh->pin) sched_setaffinity(0, sizeof sh->cpus, &sh->cpus);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* after the change of user, which clears it */
    if (getppid() != parent) _exit(127);
    /* The assignment is on stdin; the arguments only name the worker for ps and pgrep. */
    execl(a->cfg->exe, a->cfg->exe, "worker", "--job", job, "--rank", rank, "--run-dir", name_dir,
          (char *)NULL);
    dprintf(2, "exec %s: %s\n", a->cfg->exe, strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid); /* also from the parent: no race with an early kill */
  *out = pid;
  return DRV_OK;
}

/* Starts `drover worker` for an assignment once it is vetted (paths.h): the paths allowed,
 * the run directory claimed for the job's lineage, stdout and stderr appended to
 * <run_dir>/logs/rank-<r>.log; the worker reads the assignment, its paths resolved, on
 * stdin (assignment_fd). */
static drv_result_t worker_spawn(agent_t *a, const proto_assign_t *as) {
  child_t *k = NULL;
  for (int i = 0; i < MAX_WORKERS && !k; i++)
    if (!a->kids[i].pid) k = &a->kids[i];
  if (!k) return drv_error(DRV_ERR_INVALID, "already running %d workers", MAX_WORKERS);
  paths_vetted_t v;
  run_as_t u = {.ngroups = 0};
  share_t sh = {.pin = 0};
  int run_fd = -1, log_fd = -1, spec_fd = -1;
  pid_t pid = 0;
  char logpath[PATH_MAX];
  drv_result_t rc = paths_vet(&a->roots, as, &v);
  proto_assign_t given = *as;
  given.spec = v.spec;
  given.run_dir = v.run_dir;
  if (as->resume_dir && as->resume_dir[0]) given.resume_dir = v.resume_dir;
  if (rc == DRV_OK) rc = worker_share(a, as, &sh);
  /* It sees its GPUs only (CUDA_VISIBLE_DEVICES): the first of them is its device 0. */
  if (as->device >= 0 && sh.visible[0]) given.device = 0;
  if (rc == DRV_OK) rc = pick_user(a, as, &u);
  if (rc == DRV_OK) rc = paths_claim(v.run_dir, as->lineage, &u.owner, &run_fd);
  if (rc == DRV_OK)
    rc = paths_open_log(run_fd, v.run_dir, as->rank, &u.owner, &log_fd, logpath, sizeof logpath);
  if (rc == DRV_OK) rc = assignment_fd(a, &given, &spec_fd);
  if (rc == DRV_OK) rc = fork_worker(a, &given, as->run_dir, &u, &sh, spec_fd, log_fd, &pid);
  if (spec_fd >= 0) close(spec_fd);
  if (log_fd >= 0) close(log_fd);
  if (run_fd >= 0) close(run_fd);
  paths_vetted_fini(&v);
  DRV_CHECK(rc);
  *k = (child_t){.pid = pid,
                 .job = as->job,
                 .generation = as->generation,
                 .rank = as->rank,
                 .local_rank = as->local_rank};
  log_info("job %" PRId64 " rank %u/%u (local rank %u): worker pid %d started%s%s, %s%s, %s "
           "thread(s) (log %s)",
           as->job, as->rank, as->world, as->local_rank, (int)pid, u.owner.set ? " as " : "",
           u.owner.set ? u.user : "", sh.visible[0] ? "GPUs " : "the CPU", sh.visible, sh.threads,
           logpath);
  return DRV_OK;
}

static void worker_kill(child_t *k, const char *why) {
  if (!k->pid || k->kill_deadline_ms) return;
  log_info("job %" PRId64 " rank %u: stopping worker pid %d: %s", k->job, k->rank, (int)k->pid,
           why);
  kill(-k->pid, SIGTERM);
  k->kill_deadline_ms = drv_now_ms() + KILL_GRACE_MS;
}

/* Reports worker k's end (none: a kill found no such worker, k only names it). */
static void report_exit(agent_t *a, const child_t *k, int32_t code, int32_t sig, int none) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_WORKER_EXIT);
  m.u.worker_exit.job = k->job;
  m.u.worker_exit.generation = k->generation;
  m.u.worker_exit.rank = k->rank;
  m.u.worker_exit.exit_code = code;
  m.u.worker_exit.signal = sig;
  m.u.worker_exit.none = (uint32_t)none;
  m.u.worker_exit.workers = job_workers(a, k->job);
  /* The coordinator frees us on workers 0 only when no assign of its is still on the way. */
  int all = a->last_job == k->job && a->last_count >= a->last_local_world;
  m.u.worker_exit.assigned = all ? a->last_generation : 0;
  send_msg(a, &m);
}

static void reap_workers(agent_t *a) {
  int64_t now = drv_now_ms();
  for (int i = 0; i < MAX_WORKERS; i++) {
    child_t *k = &a->kids[i];
    if (!k->pid) continue;
    int st;
    pid_t r = waitpid(k->pid, &st, WNOHANG);
    if (r == k->pid) {
      int32_t code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      int32_t sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
      log_info("job %" PRId64 " rank %u: worker pid %d %s %d", k->job, k->rank, (int)k->pid,
               sig ? "killed by signal" : "exited with code", sig ? sig : code);
      kill(-k->pid, SIGKILL); /* anything it left in its group */
      child_t gone = *k;
      memset(k, 0, sizeof *k); /* first: the report counts the job's workers left */
      report_exit(a, &gone, code, sig, 0);
    } else if (k->kill_deadline_ms && now > k->kill_deadline_ms) {
      kill(-k->pid, SIGKILL);
    }
  }
}

static void kill_all(agent_t *a, const char *why) {
  for (int i = 0; i < MAX_WORKERS; i++) worker_kill(&a->kids[i], why);
}

/* Why the agent must stop now although nobody asked it to, written to why; 0 when it
 * need not: its parent (cfg->parent) is gone, or no coordinator has been heard from for
 * cfg->exit_without_coordinator_s. */
static int orphaned(const agent_t *a, int64_t now, char *why, size_t whysz) {
  const agent_config_t *cfg = a->cfg;
  if (cfg->parent > 0 && getppid() != cfg->parent) {
    /* Reparented: the process that started us (submit) has exited, however it went. */
    snprintf(why, whysz, "its parent (pid %d) is gone", (int)cfg->parent);
    return 1;
  }
  if (cfg->exit_without_coordinator_s > 0 &&
      now - a->heard_ms > (int64_t)cfg->exit_without_coordinator_s * 1000) {
    snprintf(why, whysz, "no coordinator heard from for %" PRId64 " s (limit %d s)",
             (now - a->heard_ms) / 1000, cfg->exit_without_coordinator_s);
    return 1;
  }
  return 0;
}

// --- Coordinator link ----------------------------------------------------------------------

/* Its cores (its affinity: a cpuset, taskset or Slurm allocation narrows it) and GPUs. */
static void find_resources(agent_t *a) {
  CPU_ZERO(&a->cpus);
  if (sched_getaffinity(0, sizeof a->cpus, &a->cpus) < 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < n && c < CPU_SETSIZE; c++) CPU_SET((int)c, &a->cpus);
  }
  a->ncpus = (uint32_t)DRV_MAX(1, CPU_COUNT(&a->cpus));
  int64_t fake = drv_setting(DRV_SET_FAKE_GPUS);
  if (fake > 0) {
    log_warn("DROVER_FAKE_GPUS=%" PRId64 ": reporting GPUs that are not there (tests only)", fake);
    gpuinfo_fake((uint32_t)DRV_MIN(fake, GPUINFO_MAX), &a->gpus, &a->ngpus);
    return;
  }
  /* CUDA numbers devices as nvidia-smi does; workers get them by UUID anyway. */
  setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID", 0);
  gpuinfo_query(&a->gpus, &a->ngpus);
}

/* The heartbeat: its workers, and each GPU's use when NVML measures it. */
static void send_heartbeat(agent_t *a) {
  proto_msg_t h;
  proto_msg_init(&h, PROTO_HEARTBEAT);
  proto_gpu_stat_t stats[GPUINFO_MAX];
  h.u.heartbeat.seq = ++a->seq;
  h.u.heartbeat.workers = live_workers(a);
  if (drv_setting(DRV_SET_FAKE_GPUS) <= 0) {
    h.u.heartbeat.gpus_count = gpuinfo_usage(a->gpus, a->ngpus, stats);
    h.u.heartbeat.gpus = stats;
  }
  send_msg(a, &h);
}

static void send_hello(agent_t *a) {
  proto_msg_t m;
  proto_msg_init(&m, PROTO_HELLO);
  proto_hello_t *h = &m.u.hello;
  h->agent_id = a->agent_id;
  h->host = a->host;
  h->target = a->cfg->target ? a->cfg->target : "attached";
  h->pool = a->cfg->pool;
  h->node = a->cfg->node;
  h->pid = (uint32_t)getpid();
  h->session = a->session;
  h->cpus = a->ncpus;
  h->mem_bytes = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
  h->gpus = a->gpus;
  h->gpus_count = a->ngpus;
  send_msg(a, &m);
  a->last_hello_ms = drv_now_ms();
}

static drv_result_t link_open(agent_t *a) {
  sock_destroy(&a->sock);
  /* Queue nothing while the coordinator is away: stale hellos and heartbeats would all
   * arrive at once when it comes back. */
  /* A routing id of its own, random and new for each connection: the coordinator's
   * ROUTER uses whatever id a peer announces, so one nobody can guess is one nobody can
   * claim after this connection is gone (libzmq's own ids are a counter). */
  char rid[40] = "a-";
  drv_random_hex(rid + 2, 16);
  a->sock = sock_new(a->ctx, SOCK_DEALER, PROTO_AT_AGENT,
                     &(sock_opts_t){.identity = rid, .no_linger = 1, .immediate = 1});
  if (!a->sock) return DRV_ERR_ZMQ;
  /* A new session: the coordinator learns that whatever the old one ran is gone. */
  a->session = ((uint64_t)(uint32_t)getpid() << 32) ^ (uint64_t)drv_now_ms() ^
               ((uint64_t)(uintptr_t)a->sock << 16);
  char ep[256];
  DRV_CHECK(sock_endpoint(a->cfg->coordinator, SOCK_AGENTS, ep, sizeof ep));
  DRV_CHECK(sock_connect(a->sock, ep));
  a->registered = 0;
  a->last_heard_ms = drv_now_ms();
  send_hello(a);
  return DRV_OK;
}

/* An assignment that cannot be run (drv_last_error says why): its job fails with the
 * reason, which the agent sends as the rank's `failed`, then the exit of the worker that
 * never ran. The agent goes on serving. */
static void refuse(agent_t *a, const proto_assign_t *as) {
  char why[DRV_ERROR_MAX];
  snprintf(why, sizeof why, "%s", drv_last_error());
  log_error("job %" PRId64 " rank %u: cannot start worker: %s", as->job, as->rank, why);
  proto_msg_t f;
  proto_msg_init(&f, PROTO_FAILED);
  f.u.failed = (proto_failed_t){
      .job = as->job, .generation = as->generation, .rank = as->rank, .reason = why};
  send_msg(a, &f);
  child_t k = {.job = as->job, .generation = as->generation, .rank = as->rank};
  report_exit(a, &k, 127, 0, 0);
}

static void on_message(agent_t *a, proto_msg_t *m) {
  a->last_heard_ms = a->heard_ms = drv_now_ms();
  switch (m->type) {
  case PROTO_WELCOME:
    if (!a->registered)
      log_info("registered with the coordinator as %s (heartbeat %u ms, timeout %u ms)",
               m->u.welcome.agent_id, m->u.welcome.heartbeat_ms, m->u.welcome.peer_timeout_ms);
    a->registered = 1;
    /* One cluster, one clock: follow the coordinator's heartbeat settings. */
    if (m->u.welcome.heartbeat_ms) a->heartbeat_ms = m->u.welcome.heartbeat_ms;
    if (m->u.welcome.peer_timeout_ms) a->peer_timeout_ms = m->u.welcome.peer_timeout_ms;
    break;
  case PROTO_HEARTBEAT: break;
  case PROTO_ERROR:
    if (m->u.error.code && !strcmp(m->u.error.code, "not_registered")) {
      if (a->registered) {
        /* The coordinator restarted: whatever we ran belongs to a job it has failed. */
        log_warn("coordinator does not know this agent: registering again");
        kill_all(a, "coordinator restarted");
        a->registered = 0;
      }
      send_hello(a);
    } else {
      log_warn("coordinator error: %s", m->u.error.message);
      /* A refused hello (an id in use, or not this key's): ask again, but calmly. */
      if (!a->registered) a->last_hello_ms = drv_now_ms() + 1000;
    }
    break;
  case PROTO_ASSIGN:
    if (a->last_job != m->u.assign.job || a->last_generation != m->u.assign.generation)
      a->last_count = 0;
    a->last_job = m->u.assign.job;
    a->last_generation = m->u.assign.generation;
    a->last_count++;
    a->last_local_world = m->u.assign.local_world ? m->u.assign.local_world : 1;
    if (worker_spawn(a, &m->u.assign) != DRV_OK) refuse(a, &m->u.assign);
    break;
  case PROTO_KILL: {
    int found = 0;
    const proto_kill_t *kl = &m->u.kill;
    for (int i = 0; i < MAX_WORKERS; i++) {
      const child_t *k = &a->kids[i];
      if (!k->pid || k->job != kl->job) continue;
      /* With a rank: that assign's worker only (one rank left out of a re-formed world). */
      if (kl->single && (k->rank != kl->rank || k->generation != kl->generation)) continue;
      worker_kill(&a->kids[i], kl->reason ? kl->reason : "killed");
      found = 1;
    }
    if (!found) {
      /* Its assignment never arrived, or the worker is already reaped: say so, or the
       * coordinator keeps this agent booked. */
      log_debug("kill for job %" PRId64 ": no worker of it here", m->u.kill.job);
      child_t k = {.job = kl->job, .generation = kl->generation, .rank = kl->rank};
      report_exit(a, &k, -1, 0, 1);
    }
    break;
  }
  default:
    log_warn("unexpected '%s' from the coordinator dropped", proto_type_name(m->type));
    break;
  }
}

drv_result_t agent_run(const agent_config_t *cfg, volatile sig_atomic_t *stop) {
  agent_t *a = calloc(1, sizeof *a);
  if (!a) return drv_error(DRV_ERR_NOMEM, "agent: out of memory");
  a->cfg = cfg;
  drv_result_t rc = DRV_OK;
  for (int i = 0; i < cfg->nallow_dirs; i++)
    DRV_CHECK_GOTO(paths_roots_add(&a->roots, cfg->allow_dirs[i]), rc, out);
  if (!cfg->nallow_dirs) paths_roots_defaults(&a->roots);
  char roots[1024];
  paths_roots_list(&a->roots, roots, sizeof roots);
  log_info("jobs may use the directories %s%s", roots, cfg->nallow_dirs ? "" : " (the defaults)");
  if (cfg->run_as && geteuid() != 0)
    log_warn("--run-as %s: ignored, the agent is not root (workers run as its own user)",
             cfg->run_as);
  if (cfg->agent_id) {
    snprintf(a->agent_id, sizeof a->agent_id, "%s", cfg->agent_id);
  } else {
    char hn[64] = "host";
    gethostname(hn, sizeof hn - 1);
    snprintf(a->agent_id, sizeof a->agent_id, "%s-%d", hn, (int)getpid());
  }
  if (cfg->host)
    snprintf(a->host, sizeof a->host, "%s", cfg->host);
  else
    DRV_CHECK_GOTO(agent_route_host(cfg->coordinator, a->host, sizeof a->host), rc, out);
  find_resources(a);
  if (!(a->ctx = sock_ctx_new())) {
    rc = DRV_ERR_ZMQ;
    goto out;
  }
  if (cfg->keys)
    sock_ctx_secure(a->ctx, cfg->keys); /* the coordinator's key is pinned: no other one */
  else
    sock_ctx_plaintext(a->ctx);
  DRV_CHECK_GOTO(link_open(a), rc, out);
  log_info("agent %s (host %s, target %s, %u GPU(s)) connecting to %s", a->agent_id, a->host,
           cfg->target ? cfg->target : "attached", a->ngpus, cfg->coordinator);

  a->heartbeat_ms = drv_setting(DRV_SET_HEARTBEAT_MS);
  a->peer_timeout_ms = drv_setting(DRV_SET_PEER_TIMEOUT_MS);
  int64_t next_hb = drv_now_ms() + a->heartbeat_ms;
  int64_t leave_deadline = 0;
  a->heard_ms = drv_now_ms();
  char gone[160] = "";
  while (*stop < 2) {
    if (*stop && !leave_deadline) {
      if (!a->registered || !live_workers(a)) break;
      /* Drain: let the coordinator take our rank out at its job's next commit. */
      proto_msg_t lv;
      proto_msg_init(&lv, PROTO_LEAVE);
      lv.u.leave.reason = "agent stopping (SIGTERM)";
      send_msg(a, &lv);
      leave_deadline = drv_now_ms() + drv_setting(DRV_SET_RING_TIMEOUT_MS) + 5000;
      log_info("stopping: asked the coordinator to take our worker out at the next commit");
    }
    if (leave_deadline && (!live_workers(a) || drv_now_ms() > leave_deadline)) break;
    proto_msg_t m;
    drv_result_t r = sock_recv(a->sock, NULL, &m, 100);
    if (r == DRV_OK)
      on_message(a, &m);
    else if (r != DRV_ERR_TIMEOUT)
      log_warn("dropped a frame from the coordinator: %s", drv_last_error());
    proto_msg_fini(&m);
    reap_workers(a);
    int64_t now = drv_now_ms();
    if (orphaned(a, now, gone, sizeof gone)) break; /* no drain: nobody waits for us */
    if (now - a->last_heard_ms > a->peer_timeout_ms) {
      log_warn("coordinator silent for %" PRId64 " ms: reconnecting", now - a->last_heard_ms);
      kill_all(a, "lost the coordinator");
      if (link_open(a) != DRV_OK) log_warn("%s", drv_last_error());
      usleep((useconds_t)drv_setting(DRV_SET_RECONNECT_MS) * 1000);
      continue;
    }
    /* Until welcomed, hello often: with ZMQ_IMMEDIATE nothing waits in a queue, so a
     * hello sent before the connection is up is simply dropped. */
    if (!a->registered && now - a->last_hello_ms > 200) send_hello(a);
    if (a->registered && now >= next_hb) {
      send_heartbeat(a);
      next_hb = now + a->heartbeat_ms;
    }
  }
  if (gone[0]) {
    log_warn("%s: stopping its workers and exiting", gone);
    kill_all(a, gone);
  }
  log_info("agent stopping");
  kill_all(a, "agent stopping");
  if (a->registered) { /* forget me now rather than after the heartbeat timeout */
    proto_msg_t bye;
    proto_msg_init(&bye, PROTO_BYE);
    bye.u.bye.reason = "agent stopping";
    sock_set_linger(a->sock, 500);
    send_msg(a, &bye);
  }
  for (int w = 0; w < 50 && live_workers(a); w++) {
    usleep(50000);
    reap_workers(a);
  }
  for (int i = 0; i < MAX_WORKERS; i++)
    if (a->kids[i].pid) kill(-a->kids[i].pid, SIGKILL);
  reap_workers(a);
out:
  sock_destroy(&a->sock);
  sock_ctx_destroy(&a->ctx);
  gpuinfo_free(a->gpus, a->ngpus);
  paths_roots_fini(&a->roots);
  free(a);
  return rc;
}
