/* launcher.c: see launcher.h. Commands are built whole before the fork: the child only
 * makes system calls (the coordinator has ZeroMQ's threads). */
#include "coordinator/launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"

#define ARGV_MAX 96

/* Appends s to buf (cap bytes, len used) shell-quoted: 'it'\''s'. Returns 0 when full. */
static int put_quoted(char *buf, size_t cap, size_t *len, const char *s) {
  size_t n = *len;
  if (n + 1 >= cap) return 0;
  buf[n++] = '\'';
  for (; *s; s++) {
    const char *piece = *s == '\'' ? "'\\''" : NULL;
    size_t k = piece ? 4 : 1;
    if (n + k + 2 >= cap) return 0;
    if (piece)
      memcpy(buf + n, piece, k);
    else
      buf[n] = *s;
    n += k;
  }
  buf[n++] = '\'';
  buf[n] = '\0';
  *len = n;
  return 1;
}

static int put_raw(char *buf, size_t cap, size_t *len, const char *s) {
  size_t k = strlen(s);
  if (*len + k + 1 >= cap) return 0;
  memcpy(buf + *len, s, k + 1);
  *len += k;
  return 1;
}

static const char *drover_of(const target_t *t, const launch_env_t *env) {
  return t->drover ? t->drover : env->drover;
}

static const char *join_of(const target_t *t, const launch_env_t *env) {
  return t->join ? t->join : env->join ? env->join : "";
}

drv_result_t launcher_agent_command(const target_t *t, const launch_env_t *env, const char *node,
                                    char *buf, size_t cap) {
  size_t n = 0;
  char orphan[16];
  snprintf(orphan, sizeof orphan, "%d", LAUNCHER_AGENT_ORPHAN_S);
  const char *words[] = {drover_of(t, env), "agent", "--coordinator", env->coordinator,
                         "--target", t->name, "--node", node, "--exit-without-coordinator",
                         orphan};
  int ok = 1;
  buf[0] = '\0';
  for (size_t k = 0; ok && k < DRV_ARRAY_LEN(words); k++)
    ok = (k == 0 || put_raw(buf, cap, &n, " ")) && put_quoted(buf, cap, &n, words[k]);
  if (ok && *join_of(t, env))
    ok = put_raw(buf, cap, &n, " --join ") && put_quoted(buf, cap, &n, join_of(t, env));
  if (ok && t->launcher == LAUNCHER_SLURM) /* one agent per Slurm node, named after it */
    ok = put_raw(buf, cap, &n, " --id \"${SLURMD_NODENAME:-") &&
         put_raw(buf, cap, &n, node) && put_raw(buf, cap, &n, "}\"");
  else if (ok)
    ok = put_raw(buf, cap, &n, " --id ") && put_quoted(buf, cap, &n, node);
  for (uint32_t k = 0; ok && k < t->agent_args_count; k++)
    ok = put_raw(buf, cap, &n, " ") && put_quoted(buf, cap, &n, t->agent_args[k]);
  if (!ok)
    return drv_error(DRV_ERR_INVALID, "target %s: the agent's command line is longer than %zu",
                     t->name, cap);
  return DRV_OK;
}

/* A command template with its placeholders substituted, into buf. */
static drv_result_t expand(const target_t *t, const launch_env_t *env, const char *tmpl,
                           const char *node, const char *handle, char *buf, size_t cap) {
  char agent[8192];
  DRV_CHECK(launcher_agent_command(t, env, node, agent, sizeof agent));
  const struct {
    const char *name, *value;
    int raw;
  } vars[] = {{"{agent}", agent, 1},          {"{node}", node, 0},
              {"{coordinator}", env->coordinator, 0}, {"{target}", t->name, 0},
              {"{join}", join_of(t, env), 0}, {"{drover}", drover_of(t, env), 0},
              {"{handle}", handle ? handle : "", 0}};
  size_t n = 0;
  buf[0] = '\0';
  for (const char *p = tmpl; *p;) {
    int done = 0;
    for (size_t k = 0; !done && k < DRV_ARRAY_LEN(vars); k++) {
      size_t len = strlen(vars[k].name);
      if (strncmp(p, vars[k].name, len)) continue;
      int ok = vars[k].raw ? put_raw(buf, cap, &n, vars[k].value)
                           : put_quoted(buf, cap, &n, vars[k].value);
      if (!ok) return drv_error(DRV_ERR_INVALID, "target %s: command too long", t->name);
      p += len;
      done = 1;
    }
    if (done) continue;
    if (n + 2 >= cap) return drv_error(DRV_ERR_INVALID, "target %s: command too long", t->name);
    buf[n++] = *p++;
    buf[n] = '\0';
  }
  return DRV_OK;
}

/* Spawns argv in a session of its own, output appended to op->out_path. */
static drv_result_t spawn(char *const argv[], int64_t now, launch_op_kind_t kind, int is_node,
                          launch_op_t *op) {
  int fd = open(op->out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "%s: %s", op->out_path, strerror(errno));
  struct stat st;
  op->out_from = fstat(fd, &st) == 0 ? st.st_size : 0;
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    if (null >= 0) close(null);
    return drv_error(DRV_ERR_SYS, "fork: %s", strerror(errno));
  }
  if (pid == 0) {
    setsid();
    if (null >= 0) dup2(null, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* the coordinator ignores it; its commands must not */
    execvp(argv[0], argv);
    static const char msg[] = "launcher: exec failed\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(127);
  }
  close(fd);
  if (null >= 0) close(null);
  op->kind = kind;
  op->pid = pid;
  op->is_node = is_node;
  op->deadline_ms = is_node ? 0 : now + LAUNCHER_CMD_MS;
  return DRV_OK;
}

static drv_result_t sh(const char *cmd, int64_t now, launch_op_kind_t kind, int is_node,
                       launch_op_t *op) {
  char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
  return spawn(argv, now, kind, is_node, op);
}

/* ssh's argv for host, the remote command last; *argc its length. */
static void ssh_argv(const target_ssh_t *s, const char *host, const char *remote, char *port,
                     char *kh, char **argv, int *argc) {
  int n = 0;
  argv[n++] = "ssh";
  argv[n++] = "-o";
  argv[n++] = "BatchMode=yes";
  argv[n++] = "-o";
  argv[n++] = "ConnectTimeout=10";
  if (s->port) {
    snprintf(port, 16, "%u", s->port);
    argv[n++] = "-p";
    argv[n++] = port;
  }
  if (s->identity && *s->identity) {
    argv[n++] = "-i";
    argv[n++] = s->identity;
  }
  if (s->user && *s->user) {
    argv[n++] = "-l";
    argv[n++] = s->user;
  }
  if (s->known_hosts && *s->known_hosts) {
    snprintf(kh, PATH_MAX + 32, "UserKnownHostsFile=%s", s->known_hosts);
    argv[n++] = "-o";
    argv[n++] = kh;
    argv[n++] = "-o";
    argv[n++] = "StrictHostKeyChecking=yes";
  }
  for (uint32_t k = 0; k < s->options_count && n < ARGV_MAX - 4; k++) argv[n++] = s->options[k];
  argv[n++] = "--";
  argv[n++] = (char *)host;
  argv[n++] = (char *)remote;
  argv[n] = NULL;
  *argc = n;
}

static drv_result_t ssh_run(const target_t *t, const char *host, const char *remote, int64_t now,
                            launch_op_kind_t kind, launch_op_t *op) {
  char *argv[ARGV_MAX], port[16], kh[PATH_MAX + 32];
  int argc;
  ssh_argv(t->ssh, host, remote, port, kh, argv, &argc);
  return spawn(argv, now, kind, 0, op);
}

/* "HOST PID" into host and pid. */
static drv_result_t split_handle(const target_t *t, const char *handle, char *host, size_t hcap,
                                 long *pid) {
  const char *sp = handle ? strchr(handle, ' ') : NULL;
  char *end;
  *pid = sp ? strtol(sp + 1, &end, 10) : 0;
  if (!sp || *pid <= 0 || (size_t)(sp - handle) >= hcap)
    return drv_error(DRV_ERR_INVALID, "target %s: bad ssh handle '%s'", t->name,
                     handle ? handle : "");
  snprintf(host, hcap, "%.*s", (int)(sp - handle), handle);
  return DRV_OK;
}

static void set_out(const launch_env_t *env, const char *node, launch_op_t *op) {
  snprintf(op->out_path, sizeof op->out_path, "%s/%s.log", env->log_dir, node);
}

drv_result_t launcher_start(const target_t *t, const launch_env_t *env, const char *node,
                            const char *host, int64_t now, launch_op_t *op) {
  set_out(env, node, op);
  char cmd[16384], agent[8192];
  switch (t->launcher) {
  case LAUNCHER_COMMAND: {
    int is_node = !t->command->stop || !*t->command->stop;
    DRV_CHECK(expand(t, env, t->command->start, node, NULL, cmd, sizeof cmd));
    return sh(cmd, now, LAUNCH_OP_START, is_node, op);
  }
  case LAUNCHER_SSH: {
    DRV_CHECK(launcher_agent_command(t, env, node, agent, sizeof agent));
    size_t n = 0;
    cmd[0] = '\0';
    int ok = put_raw(cmd, sizeof cmd, &n, "setsid ") && put_raw(cmd, sizeof cmd, &n, agent) &&
             put_raw(cmd, sizeof cmd, &n, " > /tmp/drover-agent-") &&
             put_raw(cmd, sizeof cmd, &n, node) &&
             put_raw(cmd, sizeof cmd, &n, ".log 2>&1 < /dev/null & echo DROVER_HANDLE=$!");
    if (!ok) return drv_error(DRV_ERR_INVALID, "target %s: command too long", t->name);
    return ssh_run(t, host, cmd, now, LAUNCH_OP_START, op);
  }
  case LAUNCHER_SLURM: {
    DRV_CHECK(launcher_agent_command(t, env, node, agent, sizeof agent));
    char name[96], wrap[8300];
    snprintf(name, sizeof name, "--job-name=drover-%s", node);
    snprintf(wrap, sizeof wrap, "exec %s", agent);
    const target_slurm_t *s = t->slurm;
    char opt[4][320];
    char *argv[ARGV_MAX];
    int n = 0;
    argv[n++] = "sbatch";
    argv[n++] = "--parsable";
    argv[n++] = "--exclusive"; /* a node is a machine: one agent on it, named after it */
    argv[n++] = name;
    const struct {
      const char *flag, *value;
    } kv[] = {{"--partition=", s->partition}, {"--account=", s->account},
              {"--time=", s->time_limit},     {"--gres=", s->gres}};
    for (int k = 0; k < 4; k++)
      if (kv[k].value && *kv[k].value) {
        snprintf(opt[k], sizeof opt[k], "%s%s", kv[k].flag, kv[k].value);
        argv[n++] = opt[k];
      }
    char out[PATH_MAX + 16];
    snprintf(out, sizeof out, "--output=%s", op->out_path);
    argv[n++] = out;
    for (uint32_t k = 0; k < s->sbatch_args_count && n < ARGV_MAX - 4; k++)
      argv[n++] = s->sbatch_args[k];
    argv[n++] = "--wrap";
    argv[n++] = wrap;
    argv[n] = NULL;
    /* sbatch's own output (the job id) goes to a log of its own: the job's is --output. */
    snprintf(op->out_path, sizeof op->out_path, "%s/%s.sbatch", env->log_dir, node);
    return spawn(argv, now, LAUNCH_OP_START, 0, op);
  }
  }
  return drv_error(DRV_ERR_INVALID, "target %s: unknown launcher", t->name);
}

/* The remote command that stops PID (stop) or succeeds while it runs (check), only while
 * PID is still node's agent (its words hold "--node NODE"): a pid reused by another
 * process is left alone, and a stop of an agent already gone succeeds. */
static void node_test(long pid, const char *node, int stop, char *cmd, size_t cap) {
  char test[256];
  snprintf(test, sizeof test,
           "tr '\\000' ' ' < /proc/%ld/cmdline 2>/dev/null | grep -q -- ' --node %s '", pid, node);
  if (stop)
    snprintf(cmd, cap, "if %s; then kill %ld; fi", test, pid);
  else
    snprintf(cmd, cap, "%s", test);
}

drv_result_t launcher_stop(const target_t *t, const launch_env_t *env, const char *node,
                           const char *handle, int64_t now, launch_op_t *op) {
  set_out(env, node, op);
  char cmd[16384], host[256];
  long pid;
  switch (t->launcher) {
  case LAUNCHER_COMMAND:
    if (!t->command->stop || !*t->command->stop)
      return drv_error(DRV_ERR_INVALID, "target %s: node %s is its own process", t->name, node);
    DRV_CHECK(expand(t, env, t->command->stop, node, handle, cmd, sizeof cmd));
    return sh(cmd, now, LAUNCH_OP_STOP, 0, op);
  case LAUNCHER_SSH:
    DRV_CHECK(split_handle(t, handle, host, sizeof host, &pid));
    node_test(pid, node, 1, cmd, sizeof cmd);
    return ssh_run(t, host, cmd, now, LAUNCH_OP_STOP, op);
  case LAUNCHER_SLURM: {
    char *argv[] = {"scancel", (char *)handle, NULL};
    return spawn(argv, now, LAUNCH_OP_STOP, 0, op);
  }
  }
  return drv_error(DRV_ERR_INVALID, "target %s: unknown launcher", t->name);
}

drv_result_t launcher_check(const target_t *t, const launch_env_t *env, const char *node,
                            const char *handle, int64_t now, launch_op_t *op) {
  set_out(env, node, op);
  char cmd[512], host[256];
  long pid;
  switch (t->launcher) {
  case LAUNCHER_SSH:
    DRV_CHECK(split_handle(t, handle, host, sizeof host, &pid));
    node_test(pid, node, 0, cmd, sizeof cmd);
    return ssh_run(t, host, cmd, now, LAUNCH_OP_CHECK, op);
  case LAUNCHER_SLURM: {
    char *argv[] = {"squeue", "-h", "-j", (char *)handle, "-o", "%T", NULL};
    snprintf(op->out_path, sizeof op->out_path, "%s/%s.squeue", env->log_dir, node);
    unlink(op->out_path); /* its state is the only line in it */
    return spawn(argv, now, LAUNCH_OP_CHECK, 0, op);
  }
  case LAUNCHER_COMMAND: break;
  }
  return drv_error(DRV_ERR_INVALID, "target %s: no check for launcher %s", t->name,
                   targets_launcher_name(t->launcher));
}

/* The last line op printed from out_from on, into last ("" when none). */
static void last_line(const launch_op_t *op, char *last, size_t cap) {
  char buf[4096];
  last[0] = '\0';
  int fd = open(op->out_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return;
  struct stat st;
  off_t from = op->out_from, size = fstat(fd, &st) == 0 ? st.st_size : 0;
  off_t tail = size - (off_t)sizeof buf + 1 > from ? size - (off_t)sizeof buf + 1 : from;
  ssize_t n = size > from ? pread(fd, buf, sizeof buf - 1, tail) : 0;
  close(fd);
  if (n <= 0) return;
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
  char *nl = strrchr(buf, '\n');
  snprintf(last, cap, "%s", nl ? nl + 1 : buf);
}

int launcher_handle(const target_t *t, const launch_op_t *op, char *buf, size_t cap) {
  char text[4096];
  buf[0] = '\0';
  int fd = open(op->out_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  ssize_t n = fd >= 0 ? pread(fd, text, sizeof text - 1, op->out_from) : -1;
  if (fd >= 0) close(fd);
  if (n <= 0) return 0;
  text[n] = '\0';
  int first = 1;
  for (char *save = NULL, *l = strtok_r(text, "\r\n", &save); l; l = strtok_r(NULL, "\r\n", &save)) {
    if (!strncmp(l, "DROVER_HANDLE=", 14) && l[14]) { /* ssh's, and a command's that says */
      snprintf(buf, cap, "%s", l + 14);
      return 1;
    }
    if (t->launcher == LAUNCHER_SLURM) { /* sbatch --parsable: "ID" or "ID;CLUSTER" */
      size_t d = strspn(l, "0123456789");
      if (d && (!l[d] || l[d] == ';')) {
        snprintf(buf, cap, "%.*s", (int)d, l);
        return 1;
      }
    }
    if (t->launcher == LAUNCHER_COMMAND && first) snprintf(buf, cap, "%s", l);
    first = 0;
  }
  return t->launcher == LAUNCHER_COMMAND && buf[0];
}

int launcher_poll(launch_op_t *op, int64_t now, int *code, char *out, size_t cap) {
  if (!op->pid) return 0;
  int st;
  pid_t r = waitpid(op->pid, &st, WNOHANG);
  if (r == 0) {
    if (op->deadline_ms && now > op->deadline_ms) {
      kill(-op->pid, SIGKILL); /* reaped at a next poll, with code 137 */
      op->deadline_ms = 0;
      log_warn("launcher command pid %d (%s) ran past %d s: killed", (int)op->pid, op->out_path,
               LAUNCHER_CMD_MS / 1000);
    }
    return 0;
  }
  *code = r < 0 ? 127 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  if (out && cap) last_line(op, out, cap);
  /* What a stop or a check left in its session; a start's may be its node (detached). */
  if (!op->is_node && op->kind != LAUNCH_OP_START && op->pid) kill(-op->pid, SIGKILL);
  op->pid = 0;
  return 1;
}

void launcher_signal(launch_op_t *op, int hard) {
  if (op->pid) kill(-op->pid, hard ? SIGKILL : SIGTERM);
}

int launcher_pid_is_node(pid_t pid, const char *node) {
  char path[64], cmd[4096];
  snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, cmd, sizeof cmd - 1);
  close(fd);
  if (n <= 0) return 0;
  /* Its words (or the one word of `sh -c '...'`) name an agent and the node. */
  cmd[n] = '\0';
  /* As words (the agent itself), or inside the one word of `sh -c '... --node NODE ...'`. */
  char want[96];
  snprintf(want, sizeof want, "'--node' '%s'", node);
  int prev_node = 0;
  for (ssize_t i = 0; i < n; i += (ssize_t)strlen(cmd + i) + 1) {
    if (prev_node && !strcmp(cmd + i, node)) return 1;
    prev_node = !strcmp(cmd + i, "--node");
    if (strstr(cmd + i, want)) return 1;
  }
  return 0;
}
