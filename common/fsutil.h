/* fsutil.h: small file-system helpers shared by the agent, the worker and the CLI. */
#ifndef DROVER_COMMON_FSUTIL_H
#define DROVER_COMMON_FSUTIL_H

#include <stddef.h>

#include "common/drv.h"

/* mkdir -p: creates path and its missing parents (mode 0755). DRV_ERR_SYS naming the
 * directory that could not be made. */
drv_result_t fs_mkdir_p(const char *path);

/* Writes all len bytes to fd, retrying short writes and EINTR; path names the file in
 * errors. */
drv_result_t fs_write_all(int fd, const void *buf, size_t len, const char *path);

/* 1 on a little-endian host (every file format drover writes is little-endian). */
int fs_host_little_endian(void);

#endif
