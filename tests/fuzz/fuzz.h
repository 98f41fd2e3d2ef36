/* fuzz.h: what the fuzz harnesses share. Each tests/fuzz/fuzz_<target>.c defines
 * LLVMFuzzerTestOneInput (and may define LLVMFuzzerInitialize); it is linked either with
 * libFuzzer (`make fuzz`, clang, -fsanitize=fuzzer,address,undefined) or with replay.c (the
 * normal build: ctest replays the committed corpus). A harness must be deterministic, keep
 * nothing from one input to the next and free what each input made.
 *
 * FUZZ_CHECK states a property the code under test promises (a decoded frame packs again,
 * a loaded spec dumps and parses back): when it fails the harness aborts, which libFuzzer
 * reports as a crash and the replay as a failed test. */
#ifndef DROVER_TESTS_FUZZ_H
#define DROVER_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/drv.h"
#include "common/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
              drv_last_error());                                                                   \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

/* Warnings about refused input are the expected outcome, millions of times: keep quiet. */
static inline void fuzz_quiet(void) {
  log_set_level(LOG_ERROR);
}

/* An anonymous in-memory file (memfd), or aborts: inputs that readers want as files stay
 * off the disk. /proc/self/fd/<fd> names it for readers that take a path. */
static inline int fuzz_memfd(const char *name) {
  int fd = memfd_create(name, MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  return fd;
}

/* Makes the memfd hold exactly data[0..size). */
static inline void fuzz_memfd_fill(int fd, const uint8_t *data, size_t size) {
  FUZZ_CHECK(ftruncate(fd, 0) == 0);
  size_t done = 0;
  while (done < size) {
    ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
    FUZZ_CHECK(w > 0);
    done += (size_t)w;
  }
}

#endif
