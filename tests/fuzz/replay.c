/* replay.c: runs a fuzz harness's LLVMFuzzerTestOneInput over files, without libFuzzer, so
 * that the normal (gcc) build replays every committed corpus in ctest and a regression is
 * caught without clang.
 *
 *   fuzz_replay_<target> DIR_OR_FILE...
 *
 * Each directory's regular files are run in name order (not recursively). Exit status 0
 * when every input ran (a harness that finds a broken promise aborts), 1 when an argument
 * cannot be read or a directory holds no input: an empty corpus replays nothing. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

/* A harness may define it (libFuzzer calls it once before the first input). */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Reads the whole file into *buf (malloc'ed, exactly *len bytes, so that an overread is
 * caught by a sanitizer as it would be under libFuzzer). 0, or -1 with a message. */
static int read_file(const char *path, uint8_t **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  if (!f || fstat(fileno(f), &st) < 0) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    if (f) fclose(f);
    return -1;
  }
  size_t n = (size_t)st.st_size;
  uint8_t *b = malloc(n ? n : 1);
  int ok = b && fread(b, 1, n, f) == n;
  fclose(f);
  if (!ok) {
    fprintf(stderr, "%s: read failed\n", path);
    free(b);
    return -1;
  }
  *buf = b;
  *len = n;
  return 0;
}

static int run_file(const char *path) {
  uint8_t *buf;
  size_t len;
  if (read_file(path, &buf, &len) < 0) return -1;
  LLVMFuzzerTestOneInput(buf, len);
  free(buf);
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of dir, in name order; how many ran, or -1. */
static long run_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "%s: %s\n", dir, strerror(errno));
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **p = realloc(names, cap * sizeof *names);
      if (!p) break;
      names = p;
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_names);
  long ran = 0;
  for (size_t i = 0; i < n; i++) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
      if (run_file(path) < 0) ran = -1;
      if (ran >= 0) ran++;
    }
    free(names[i]);
  }
  free(names);
  return ran;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  int rc = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) < 0) {
      fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
      rc = 1;
    } else if (S_ISDIR(st.st_mode)) {
      long ran = run_dir(argv[i]);
      if (ran <= 0) {
        fprintf(stderr, "%s: %s\n", argv[i], ran == 0 ? "no inputs" : "some inputs unreadable");
        rc = 1;
      } else {
        printf("%s: %ld inputs replayed\n", argv[i], ran);
      }
    } else if (run_file(argv[i]) < 0) {
      rc = 1;
    } else {
      printf("%s: replayed\n", argv[i]);
    }
  }
  return rc;
}
