/* fsutil.c: see fsutil.h. */
#include "common/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

drv_result_t fs_path(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(out, cap, fmt, ap);
  va_end(ap);
  if (w >= 0 && (size_t)w < cap) return DRV_OK;
  return drv_error(DRV_ERR_INVALID, "path too long (%d bytes, at most %zu): %.200s...", w,
                   cap ? cap - 1 : 0, cap ? out : "");
}

drv_result_t fs_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "%s: open directory: %s", dir, strerror(errno));
  drv_result_t rc = DRV_OK;
  if (fsync(fd) < 0 && errno != EINVAL)
    rc = drv_error(DRV_ERR_SYS, "%s: fsync directory: %s", dir, strerror(errno));
  close(fd);
  return rc;
}

/* fsyncs the directory holding path (a new entry in it). */
static drv_result_t fsync_parent(const char *path) {
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", path);
  char *slash = strrchr(parent, '/');
  if (slash == parent)
    parent[1] = '\0';
  else if (slash)
    *slash = '\0';
  else
    strcpy(parent, ".");
  return fs_fsync_dir(parent);
}

/* mkdir -p, each new directory made durable in its parent when `durable`. */
static drv_result_t mkdir_parents(const char *path, mode_t mode, bool durable) {
  char buf[PATH_MAX];
  size_t len = strlen(path);
  if (len >= sizeof buf) return drv_error(DRV_ERR_INVALID, "path too long: %.200s...", path);
  memcpy(buf, path, len + 1);
  while (len > 1 && buf[len - 1] == '/') buf[--len] = '\0';
  for (size_t i = 1; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char save = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, mode) == 0) {
      if (durable) DRV_CHECK(fsync_parent(buf));
    } else if (errno != EEXIST) {
      return drv_error(DRV_ERR_SYS, "%s: mkdir: %s", buf, strerror(errno));
    }
    buf[i] = save;
  }
  /* EEXIST above also covers a file of that name. */
  struct stat st;
  if (stat(path, &st) < 0) return drv_error(DRV_ERR_SYS, "%s: stat: %s", path, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(ENOTDIR));
  return DRV_OK;
}

drv_result_t fs_mkdir_p(const char *path, mode_t mode) {
  return mkdir_parents(path, mode, false);
}

drv_result_t fs_mkdir_p_durable(const char *path, mode_t mode) {
  return mkdir_parents(path, mode, true);
}

/* The error of a failed open of `what` without O_NOFOLLOW's confusing wording. */
static drv_result_t open_failed(const char *what) {
  int e = errno;
  drv_result_t rc;
  if (e == ELOOP)
    rc = drv_error(DRV_ERR_INVALID, "%s: is a symbolic link (refused)", what);
  else if (e == ENXIO)
    rc = drv_error(DRV_ERR_INVALID, "%s: not a regular file", what);
  else
    rc = drv_error(DRV_ERR_SYS, "%s: cannot open: %s", what, strerror(e));
  errno = e; /* the caller may tell a missing file from the rest */
  return rc;
}

/* The descriptor of a file just opened with O_NONBLOCK: a regular file (with one link
 * when `single`), blocking from now on; closed on failure. */
static drv_result_t check_regular(int fd, const char *what, bool single) {
  struct stat st;
  drv_result_t rc = DRV_OK;
  int fl;
  if (fstat(fd, &st) < 0)
    rc = drv_error(DRV_ERR_SYS, "%s: fstat: %s", what, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    rc = drv_error(DRV_ERR_INVALID, "%s: not a regular file", what);
  else if (single && st.st_nlink != 1)
    rc = drv_error(DRV_ERR_INVALID, "%s: has %ju links (refused: a hard link to another file?)",
                   what, (uintmax_t)st.st_nlink);
  else if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
    rc = drv_error(DRV_ERR_SYS, "%s: fcntl: %s", what, strerror(errno));
  if (rc != DRV_OK) {
    close(fd);
    errno = EINVAL;
  }
  return rc;
}

drv_result_t fs_open_read(int dirfd, const char *name, const char *what, int *fd) {
  *fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (*fd < 0) return open_failed(what);
  drv_result_t rc = check_regular(*fd, what, false);
  if (rc != DRV_OK) *fd = -1;
  return rc;
}

drv_result_t fs_open_append(int dirfd, const char *name, const char *what, mode_t mode, int *fd) {
  *fd =
      openat(dirfd, name,
             O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, mode);
  if (*fd < 0) return open_failed(what);
  drv_result_t rc = check_regular(*fd, what, true);
  if (rc != DRV_OK) *fd = -1;
  return rc;
}

drv_result_t fs_write_all(int fd, const void *buf, size_t len, const char *path) {
  const char *p = buf;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return drv_error(DRV_ERR_SYS, "%s: write: %s", path, strerror(errno));
    }
    p += w;
    len -= (size_t)w;
  }
  return DRV_OK;
}

drv_result_t fs_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *what) {
  char *p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return drv_error(DRV_ERR_SYS, "%s: read: %s", what, strerror(errno));
    }
    if (r == 0) return drv_error(DRV_ERR_INVALID, "%s: truncated at byte %" PRIu64, what, off);
    p += r;
    off += (uint64_t)r;
    len -= (size_t)r;
  }
  return DRV_OK;
}

int fs_host_little_endian(void) {
  const uint16_t one = 1;
  return *(const uint8_t *)&one == 1;
}
