/* fuzz_jobspec.c: the job spec parser, jobspec_parse (libyaml's syntax, the libcyaml schema,
 * strict numbers, --set overrides, defaults, validation), on any text.
 *
 * Input: the YAML text, optionally followed by a NUL byte and up to FUZZ_SETS overrides
 * ("key.path=value"), each ended by a NUL byte, as `drover submit --set` passes them.
 *
 * Promises checked: text is loaded or refused (DRV_ERR_INVALID, or DRV_ERR_NOMEM), never a
 * crash, an overread or a leak, and a refusal leaves no spec; a loaded spec dumps, its dump
 * parses, and dumps again to the same text (what `drover submit` sends is what the
 * coordinator reads); after jobspec_absolutize no path of it is relative.
 *
 * Seeds: tests/fuzz/corpus/jobspec/, the specs of examples/ and a few with overrides. */
#include <string.h>

#include "common/jobspec.h"
#include "tests/fuzz/fuzz.h"

#define FUZZ_SETS 4

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_quiet();
  return 0;
}

/* A loaded spec's dump, loaded again, dumps to the same text. */
static void check_dump(const jobspec_t *spec) {
  char *a = NULL, *b = NULL;
  size_t alen = 0, blen = 0;
  FUZZ_CHECK(jobspec_dump(spec, &a, &alen) == DRV_OK);
  jobspec_t *again = NULL;
  FUZZ_CHECK(jobspec_parse(a, alen, "dump", NULL, 0, &again) == DRV_OK);
  FUZZ_CHECK(jobspec_dump(again, &b, &blen) == DRV_OK);
  FUZZ_CHECK(alen == blen && memcmp(a, b, alen) == 0);
  jobspec_destroy(&again);
  FUZZ_CHECK(again == NULL);
  free(a);
  free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nul = memchr(data, '\0', size);
  size_t ylen = nul ? (size_t)(nul - data) : size;
  /* The text in a buffer of its own length: an overread past it is caught, as it would
   * not be when a NUL and overrides follow it in data. */
  char *yaml = malloc(ylen ? ylen : 1);
  FUZZ_CHECK(yaml);
  memcpy(yaml, data, ylen);

  char *sets[FUZZ_SETS];
  int nset = 0;
  for (const uint8_t *p = nul ? nul + 1 : data + size; p < data + size && nset < FUZZ_SETS;) {
    const uint8_t *end = memchr(p, '\0', (size_t)(data + size - p));
    if (!end) break; /* an override is ended by a NUL byte */
    sets[nset] = strndup((const char *)p, (size_t)(end - p));
    FUZZ_CHECK(sets[nset]);
    nset++;
    p = end + 1;
  }

  jobspec_t *spec = (jobspec_t *)&spec; /* must be NULLed on every path */
  drv_result_t rc = jobspec_parse(yaml, ylen, "fuzz.yaml", (const char *const *)sets, nset, &spec);
  if (rc == DRV_OK) {
    FUZZ_CHECK(spec != NULL);
    check_dump(spec);
    FUZZ_CHECK(jobspec_absolutize(spec, "/fuzz/base") == DRV_OK);
    FUZZ_CHECK(jobspec_relative_path(spec) == NULL);
    jobspec_destroy(&spec);
  } else {
    FUZZ_CHECK(rc == DRV_ERR_INVALID || rc == DRV_ERR_NOMEM);
    FUZZ_CHECK(spec == NULL);
  }
  for (int i = 0; i < nset; i++) free(sets[i]);
  free(yaml);
  return 0;
}
