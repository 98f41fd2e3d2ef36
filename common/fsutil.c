/* fsutil.c: see fsutil.h. */
#include "common/fsutil.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

drv_result_t fs_mkdir_p(const char *path) {
  char tmp[4096];
  size_t n = strlen(path);
  if (n >= sizeof tmp) return drv_error(DRV_ERR_INVALID, "%.64s...: path too long", path);
  memcpy(tmp, path, n + 1);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
      return drv_error(DRV_ERR_SYS, "mkdir %s: %s", tmp, strerror(errno));
    *p = '/';
  }
  if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
    return drv_error(DRV_ERR_SYS, "mkdir %s: %s", tmp, strerror(errno));
  return DRV_OK;
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

int fs_host_little_endian(void) {
  const uint16_t one = 1;
  return *(const uint8_t *)&one == 1;
}
