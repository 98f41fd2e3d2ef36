/* fsutil.h: small file-system helpers shared by the agent, the worker, the CLI and the
 * checkpoint writer: mkdir -p, writes and reads that finish, and the directory fsync that
 * makes a new or renamed entry survive a crash. */
#ifndef DROVER_COMMON_FSUTIL_H
#define DROVER_COMMON_FSUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "common/drv.h"

/* mkdir -p: creates path and its missing parents (mode 0755); a path that exists already
 * must be a directory. DRV_ERR_SYS naming the directory that could not be made (a path
 * that names a file: "Not a directory"), DRV_ERR_INVALID when the path is too long. */
drv_result_t fs_mkdir_p(const char *path);

/* fs_mkdir_p for a path that must survive a crash once something inside it is reported
 * durable: also fsyncs the parent of each directory it creates. */
drv_result_t fs_mkdir_p_durable(const char *path);

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
