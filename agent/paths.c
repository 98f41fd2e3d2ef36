/* paths.c: see paths.h. Sections: the allowed directories, vetting an assignment, the run
 * directory (walk, claim, logs). */
#include "agent/paths.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/jobspec.h"
#include "common/log.h"

#define PATHS_DIR_MODE 0750
#define PATHS_PARENT_SHARED_MODE 0711 /* parents made for another user: enter, not list */
#define PATHS_FILE_MODE 0640
#define PATHS_LINEAGE_MAX 64

// --- The allowed directories ---------------------------------------------------------------

static int resolve(const char *path, char *out, size_t cap);

/* A default directory: added unless it resolves to "/" (that would allow everything). */
static void add_default(paths_roots_t *r, const char *dir) {
  char real[PATH_MAX];
  if (!dir || !*dir || !realpath(dir, real) || !strcmp(real, "/")) return;
  if (paths_roots_add(r, real) != DRV_OK) log_warn("%s", drv_last_error());
}

void paths_roots_defaults(paths_roots_t *r) {
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof cwd)) add_default(r, cwd);
  const char *tmp = getenv("TMPDIR");
  add_default(r, tmp && *tmp ? tmp : "/tmp");
}

void paths_roots_list(const paths_roots_t *r, char *out, size_t cap) {
  size_t len = 0;
  snprintf(out, cap, "(none)");
  for (unsigned k = 0; k < r->n && len < cap; k++) {
    int w = snprintf(out + len, cap - len, "%s%s", k ? ", " : "", r->dir[k]);
    len = w < 0 ? cap : len + (size_t)w;
  }
}

void paths_roots_fini(paths_roots_t *r) {
  for (unsigned k = 0; k < r->n; k++) free(r->dir[k]);
  r->n = 0;
}

/* path resolved: realpath of its deepest existing ancestor, then the rest as written (no
 * "." or ".." in it, empty components dropped). 0, or -1 when it cannot be. */
static int resolve(const char *path, char *out, size_t cap) {
  char buf[PATH_MAX], real[PATH_MAX];
  if (!path) return -1;
  size_t n = strlen(path);
  if (path[0] != '/' || n >= sizeof buf) return -1;
  memcpy(buf, path, n + 1);
  size_t cut = n; /* buf[0..cut) is the ancestor tried; path + cut the rest */
  for (;;) {
    buf[cut] = '\0';
    if (realpath(cut ? buf : "/", real)) break;
    if (errno != ENOENT && errno != ENOTDIR) return -1;
    while (cut > 0 && buf[cut - 1] != '/') cut--; /* drop the last component */
    while (cut > 0 && buf[cut - 1] == '/') cut--;
  }
  size_t len = strlen(real);
  if (len >= cap) return -1;
  memcpy(out, real, len + 1);
  for (const char *p = path + cut; *p;) {
    while (*p == '/') p++;
    size_t k = strcspn(p, "/");
    if (!k) break;
    if ((k == 1 && p[0] == '.') || (k == 2 && p[0] == '.' && p[1] == '.')) return -1;
    bool root = len == 1;
    if (len + !root + k >= cap) return -1;
    if (!root) out[len++] = '/';
    memcpy(out + len, p, k);
    len += k;
    out[len] = '\0';
    p += k;
  }
  return 0;
}

drv_result_t paths_roots_add(paths_roots_t *r, const char *dir) {
  if (r->n >= PATHS_MAX_ROOTS)
    return drv_error(DRV_ERR_INVALID, "--allow-dir %s: at most %d directories", dir,
                     PATHS_MAX_ROOTS);
  char real[PATH_MAX], abs[PATH_MAX], cwd[PATH_MAX];
  struct stat st;
  if (dir[0] != '/' &&
      (!getcwd(cwd, sizeof cwd) || fs_path(abs, sizeof abs, "%s/%s", cwd, dir) != DRV_OK))
    return drv_error(DRV_ERR_INVALID, "--allow-dir %s: cannot be made absolute", dir);
  if (resolve(dir[0] == '/' ? dir : abs, real, sizeof real) < 0)
    return drv_error(DRV_ERR_INVALID,
                     "--allow-dir %s: does not resolve (no '.' or '..' "
                     "after its deepest existing directory)",
                     dir);
  if (stat(real, &st) == 0 && !S_ISDIR(st.st_mode))
    return drv_error(DRV_ERR_INVALID, "--allow-dir %s: not a directory", dir);
  for (unsigned k = 0; k < r->n; k++)
    if (!strcmp(r->dir[k], real)) return DRV_OK;
  if (!(r->dir[r->n] = strdup(real))) return drv_error(DRV_ERR_NOMEM, "out of memory");
  r->n++;
  return DRV_OK;
}

drv_result_t paths_allow(const paths_roots_t *r, const char *what, const char *path, char *resolved,
                         size_t cap) {
  if (resolve(path, resolved, cap) == 0)
    for (unsigned k = 0; k < r->n; k++) {
      size_t n = strlen(r->dir[k]);
      if (!strcmp(r->dir[k], "/") ||
          (!strncmp(resolved, r->dir[k], n) && (resolved[n] == '\0' || resolved[n] == '/')))
        return DRV_OK;
    }
  char list[1024];
  paths_roots_list(r, list, sizeof list);
  return drv_error(DRV_ERR_INVALID,
                   "%s %.512s is outside the directories this agent allows (%s; drover agent "
                   "--allow-dir)",
                   what, path, list);
}

// --- Vetting an assignment -----------------------------------------------------------------

/* The spec's data paths checked and replaced by their resolved forms, dumped into v. */
static drv_result_t vet_spec(const paths_roots_t *r, const proto_assign_t *as, paths_vetted_t *v) {
  jobspec_t *spec = NULL;
  DRV_CHECK(jobspec_parse(as->spec, strlen(as->spec), "assigned spec", NULL, 0, &spec));
  drv_result_t rc = DRV_OK;
  const char *key;
  char **slot, resolved[PATH_MAX];
  for (unsigned i = 0; rc == DRV_OK && ((slot = jobspec_path_at(spec, i, &key)) || key); i++) {
    if (!slot || !*slot || !strcmp(key, "run_dir")) continue; /* the run dir is the assign's */
    if ((rc = paths_allow(r, key, *slot, resolved, sizeof resolved)) != DRV_OK) break;
    char *copy = strdup(resolved);
    if (!copy) {
      rc = drv_error(DRV_ERR_NOMEM, "out of memory");
      break;
    }
    free(*slot);
    *slot = copy;
  }
  size_t len;
  if (rc == DRV_OK) rc = jobspec_dump(spec, &v->spec, &len);
  jobspec_destroy(&spec);
  return rc;
}

drv_result_t paths_vet(const paths_roots_t *r, const proto_assign_t *as, paths_vetted_t *v) {
  *v = (paths_vetted_t){.spec = NULL};
  DRV_CHECK(paths_allow(r, "run directory", as->run_dir, v->run_dir, sizeof v->run_dir));
  if (as->resume_dir && as->resume_dir[0])
    DRV_CHECK(
        paths_allow(r, "resume directory", as->resume_dir, v->resume_dir, sizeof v->resume_dir));
  return vet_spec(r, as, v);
}

void paths_vetted_fini(paths_vetted_t *v) {
  free(v->spec);
  v->spec = NULL;
}

// --- The run directory ---------------------------------------------------------------------

/* The directory `dir` (absolute, resolved) open, each component walked with O_NOFOLLOW
 * and the missing ones created (mode, then chowned as o says). -1 with errno; *nested set
 * (errno EEXIST) when one of them is a run directory already (holds a lineage file). */
static int walk_dirs(const char *dir, mode_t mode, const paths_owner_t *o, int *nested) {
  *nested = 0;
  int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  for (const char *p = dir; fd >= 0 && *p;) {
    while (*p == '/') p++;
    size_t k = strcspn(p, "/");
    if (!k) break;
    char name[NAME_MAX + 1];
    if (k > NAME_MAX) {
      close(fd);
      errno = ENAMETOOLONG;
      return -1;
    }
    memcpy(name, p, k);
    name[k] = '\0';
    p += k;
    int made = mkdirat(fd, name, mode) == 0;
    if (!made && errno != EEXIST) {
      int e = errno;
      close(fd);
      errno = e;
      return -1;
    }
    int next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(fd);
    fd = next;
    errno = e;
    if (fd >= 0 && made && (fchmod(fd, mode) < 0 || (o->set && fchown(fd, o->uid, o->gid) < 0)))
      log_warn("%s: chmod/chown of %s: %s", dir, name, strerror(errno));
    struct stat st;
    if (fd >= 0 && !made && fstatat(fd, PATHS_LINEAGE_FILE, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      close(fd);
      *nested = 1;
      errno = EEXIST;
      return -1;
    }
  }
  return fd;
}

/* The lineage of the run directory open as fd, into out ("" when it has no readable one). */
static void read_lineage(int fd, char out[PATHS_LINEAGE_MAX + 2]) {
  out[0] = '\0';
  int lfd;
  if (fs_open_read(fd, PATHS_LINEAGE_FILE, PATHS_LINEAGE_FILE, &lfd) != DRV_OK) return;
  ssize_t n = read(lfd, out, PATHS_LINEAGE_MAX + 1);
  close(lfd);
  out[n > 0 ? n : 0] = '\0';
  if (n > 0 && out[n - 1] == '\n') out[n - 1] = '\0';
}

/* A new run directory `name` in parent pfd holding the lineage file, renamed into place
 * only if nothing has that name (RENAME_NOREPLACE). 0 when it is in place, 1 when
 * another got there first (our copy removed), -1 with errno. */
static int create_run_dir(int pfd, const char *name, const char *lineage, const paths_owner_t *o) {
  char tmp[NAME_MAX + 1];
  if (snprintf(tmp, sizeof tmp, ".claim-%d-%.200s", (int)getpid(), name) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  if (mkdirat(pfd, tmp, PATHS_DIR_MODE) < 0) return -1;
  int ret = -1, tfd = openat(pfd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), e;
  int lfd = tfd < 0 ? -1
                    : openat(tfd, PATHS_LINEAGE_FILE,
                             O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, PATHS_FILE_MODE);
  char text[PATHS_LINEAGE_MAX + 2];
  int len = snprintf(text, sizeof text, "%s\n", lineage);
  if (lfd >= 0 && write(lfd, text, (size_t)len) == len && fsync(lfd) == 0 &&
      fchmod(tfd, PATHS_DIR_MODE) == 0 && (!o->set || fchown(tfd, o->uid, o->gid) == 0) &&
      fsync(tfd) == 0) {
    if (renameat2(pfd, tmp, pfd, name, RENAME_NOREPLACE) == 0)
      ret = 0;
    else if (errno == EEXIST)
      ret = 1;
    else if ((errno == EINVAL || errno == ENOSYS) && renameat(pfd, tmp, pfd, name) == 0)
      ret = 0; /* no RENAME_NOREPLACE here: a non-empty directory is still never replaced */
    else if (errno == ENOTEMPTY || errno == EEXIST)
      ret = 1;
  }
  e = errno;
  if (lfd >= 0) close(lfd);
  if (tfd >= 0) close(tfd);
  if (ret != 0) {          /* ours alone: remove it */
    unlinkat(pfd, tmp, 0); /* (a no-op when tmp is a directory) */
    int dfd = openat(pfd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd >= 0) {
      unlinkat(dfd, PATHS_LINEAGE_FILE, 0);
      close(dfd);
    }
    unlinkat(pfd, tmp, AT_REMOVEDIR);
  }
  errno = e;
  return ret;
}

drv_result_t paths_claim(const char *run_dir, const char *lineage, const paths_owner_t *o,
                         int *run_fd) {
  *run_fd = -1;
  const char *slash = strrchr(run_dir, '/');
  if (!lineage || !*lineage || strlen(lineage) > PATHS_LINEAGE_MAX || strchr(lineage, '/') ||
      strchr(lineage, '\n'))
    return drv_error(DRV_ERR_INVALID, "run directory %s: the assignment carries no lineage",
                     run_dir);
  if (!slash || !slash[1]) return drv_error(DRV_ERR_INVALID, "run directory %s: no name", run_dir);
  char parent[PATH_MAX];
  DRV_CHECK(fs_path(parent, sizeof parent, "%.*s", (int)(slash - run_dir), run_dir));
  int nested;
  int pfd = walk_dirs(parent[0] ? parent : "/", o->set ? PATHS_PARENT_SHARED_MODE : PATHS_DIR_MODE,
                      o, &nested);
  if (pfd < 0 && nested)
    return drv_error(DRV_ERR_INVALID,
                     "run directory %s is inside another job's run directory (refused)", run_dir);
  if (pfd < 0)
    return drv_error(DRV_ERR_SYS, "run directory %s: its parent: %s", run_dir, strerror(errno));
  const char *name = slash + 1;
  drv_result_t rc = DRV_OK;
  for (int tries = 0; tries < 2; tries++) {
    int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      int made = create_run_dir(pfd, name, lineage, o);
      if (made < 0) {
        rc = drv_error(DRV_ERR_SYS, "run directory %s: create: %s", run_dir, strerror(errno));
        break;
      }
      if (made == 0) fs_fsync_dir(parent[0] ? parent : "/");
      continue; /* open it (ours, or the one that got there first) */
    }
    char found[PATHS_LINEAGE_MAX + 2] = "";
    if (fd >= 0) read_lineage(fd, found);
    if (fd < 0 || strcmp(found, lineage) != 0) {
      if (fd >= 0) close(fd);
      rc = drv_error(DRV_ERR_INVALID, "run directory %s belongs to another job%s", run_dir,
                     fd < 0 ? " (not a directory of drover's)" : "");
      break;
    }
    if (o->set && fchown(fd, o->uid, o->gid) < 0)
      log_warn("run directory %s: chown: %s", run_dir, strerror(errno));
    *run_fd = fd;
    break;
  }
  if (*run_fd < 0 && rc == DRV_OK)
    rc = drv_error(DRV_ERR_SYS, "run directory %s: could not be claimed", run_dir);
  close(pfd);
  return rc;
}

drv_result_t paths_open_log(int run_fd, const char *run_dir, uint32_t rank, const paths_owner_t *o,
                            int *log_fd, char *path, size_t cap) {
  *log_fd = -1;
  DRV_CHECK(fs_path(path, cap, "%s/logs/rank-%u.log", run_dir, rank));
  if (mkdirat(run_fd, "logs", PATHS_DIR_MODE) < 0 && errno != EEXIST)
    return drv_error(DRV_ERR_SYS, "%s/logs: mkdir: %s", run_dir, strerror(errno));
  int dfd = openat(run_fd, "logs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) return drv_error(DRV_ERR_SYS, "%s/logs: open: %s", run_dir, strerror(errno));
  char name[32];
  snprintf(name, sizeof name, "rank-%u.log", rank);
  drv_result_t rc = fs_open_append(dfd, name, path, PATHS_FILE_MODE, log_fd);
  if (rc == DRV_OK && o->set &&
      (fchown(dfd, o->uid, o->gid) < 0 || fchown(*log_fd, o->uid, o->gid) < 0))
    log_warn("%s: chown: %s", path, strerror(errno));
  close(dfd);
  return rc;
}
