/* tmpdir.h: a fresh temporary directory for a test, and its removal with everything in it.
 * Shared by the tests that write files (checkpoints, the store, datasets). */
#ifndef DROVER_TESTS_TMPDIR_H
#define DROVER_TESTS_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

/* Makes $TMPDIR/drover-<name>-XXXXXX (or under /tmp) into buf. 0, or -1 on failure. */
static inline int tmpdir_make(char *buf, size_t size, const char *name) {
  const char *base = getenv("TMPDIR");
  snprintf(buf, size, "%s/drover-%s-XXXXXX", base && *base ? base : "/tmp", name);
  return mkdtemp(buf) ? 0 : -1;
}

static inline int tmpdir_rm_entry(const char *path, const struct stat *sb, int flag,
                                  struct FTW *ftw) {
  return remove(path);
}

/* Removes the directory and everything below it. */
static inline int tmpdir_remove(const char *path) {
  return nftw(path, tmpdir_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
