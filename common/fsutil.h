/* fsutil.h: small file-system helpers shared by the agent, the worker, the CLI and the
 * checkpoint writer: paths that are never cut, mkdir -p, opens that follow no symlink and
 * never block, writes and reads that finish, and the directory fsync that makes a new or
 * renamed entry survive a crash.
 *
 * Every file drover opens by a name it did not create itself goes through fs_open_read or
 * fs_open_append: O_NOFOLLOW (a symlink in the last component is refused, so a link
 * planted in a run directory cannot redirect a write), O_CLOEXEC, O_NONBLOCK while opening
 * (a FIFO or a device never blocks the process), and the file type checked on the open
 * descriptor (a regular file, and for appends one with a single link). */
#ifndef DROVER_COMMON_FSUTIL_H
#define DROVER_COMMON_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/drv.h"

/* snprintf into a path buffer of cap bytes. DRV_ERR_INVALID ("path too long (N bytes, at
 * most M): <its start>...") when the whole path does not fit: a path is never cut. */
drv_result_t fs_path(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* mkdir -p: creates path and its missing parents with `mode` (less the umask); a path that
 * exists already must be a directory. DRV_ERR_SYS naming the directory that could not be
 * made (a path that names a file: "Not a directory"), DRV_ERR_INVALID when the path is
 * too long. */
drv_result_t fs_mkdir_p(const char *path, mode_t mode);

/* fs_mkdir_p for a path that must survive a crash once something inside it is reported
 * durable: also fsyncs the parent of each directory it creates. */
drv_result_t fs_mkdir_p_durable(const char *path, mode_t mode);

/* Opens `name` relative to dirfd (AT_FDCWD: the working directory) for reading, as the top
 * of this file says, into *fd (blocking again once open). `what` names the file in errors
 * ("data.train.images /x"); they say what is wrong with it (missing, a symbolic link, not a
 * regular file, the system's reason), never anything read from it. On failure errno is
 * the open's (ENOENT: missing), or EINVAL when the file was refused for its type. */
drv_result_t fs_open_read(int dirfd, const char *name, const char *what, int *fd);

/* Opens `name` relative to dirfd for appending, creating it with `mode` when absent: never
 * through a symlink, and an existing entry must be a regular file with one link (a hard
 * link to another file is refused). *fd on DRV_OK. */
drv_result_t fs_open_append(int dirfd, const char *name, const char *what, mode_t mode, int *fd);

/* fsync of the directory dir: the entries created, renamed or removed in it are on disk
 * when it returns. A filesystem that cannot fsync a directory (EINVAL) counts as done.
 * DRV_ERR_SYS naming dir. */
drv_result_t fs_fsync_dir(const char *dir);

/* Writes all len bytes to fd, retrying short writes and EINTR; path names the file in
 * errors. */
drv_result_t fs_write_all(int fd, const void *buf, size_t len, const char *path);

/* Reads exactly len bytes at offset off of fd, retrying short reads and EINTR; what names
 * the file in errors. A file that ends first is DRV_ERR_INVALID ("truncated at byte N"),
 * a failed read DRV_ERR_SYS. */
drv_result_t fs_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *what);

/* 1 on a little-endian host (every file format drover writes is little-endian). */
int fs_host_little_endian(void);

#endif
