/* fuzz_checkpoint.c: the checkpoint manifest reader, through ckpt_load_latest, on any
 * manifest.json.
 *
 * At start the harness writes the fixture model (tests/fuzz/fixture.h) as a real
 * checkpoint, step-0000000007, into a fresh directory under $TMPDIR (removed at exit);
 * each input then replaces that checkpoint's manifest.json and the checkpoint is loaded.
 * The tensor files never change, so whatever the manifest says, only their true sizes and
 * CRC32s can let it through.
 *
 * The manifest checks its own CRC32, which a mutation almost never keeps right; so that
 * the checks after it are reached too, a value of "????????" for "manifest_crc32" (written
 * exactly `"manifest_crc32": "????????"`) is replaced by the CRC32 of the bytes before its
 * key, as the writer computes it. Any other value is left as it is.
 *
 * Promises checked: a manifest is accepted or refused (DRV_ERR_INVALID, DRV_ERR_NOMEM),
 * never a crash, an overread or a leak; on refusal the meta is zeroed; on success the step
 * is the directory's, the directory is the checkpoint's and every tensor holds the
 * fixture's values bit for bit.
 *
 * Seeds: tests/fuzz/corpus/checkpoint/, the fixture's manifest as ckpt_write makes it,
 * and the same with the placeholder (fuzz_seeds). */
#include <fcntl.h>
#include <ftw.h>
#include <string.h>
#include <zlib.h>

#include "tests/fuzz/fixture.h"
#include "tests/fuzz/fuzz.h"
#include "tests/tmpdir.h"

static char root[256];     /* mkdtemp'd; removed at exit */
static char step_dir[320]; /* root/step-0000000007 */
static char manifest[352]; /* step_dir/manifest.json */
static float want[FIXTURE_FLOATS];

static void cleanup(void) {
  if (root[0]) tmpdir_remove(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_quiet();
  FUZZ_CHECK(tmpdir_make(root, sizeof root, "fuzz-ckpt") == 0);
  atexit(cleanup);
  ckpt_tensor_t t[FIXTURE_TENSORS];
  fixture_tensors(t, want, 1);
  FUZZ_CHECK(ckpt_write(root, &fixture_meta, t, FIXTURE_TENSORS) == DRV_OK);
  snprintf(step_dir, sizeof step_dir, "%s/step-%010llu", root,
           (unsigned long long)fixture_meta.step);
  snprintf(manifest, sizeof manifest, "%s/manifest.json", step_dir);
  return 0;
}

/* The input with a "????????" manifest_crc32 filled in (see the top); malloc'ed. */
static uint8_t *fill_crc(const uint8_t *data, size_t size) {
  static const char key[] = "\"manifest_crc32\": \"????????\"";
  const size_t klen = sizeof key - 1, at = klen - 9; /* where the 8 characters start */
  uint8_t *out = malloc(size ? size : 1);
  FUZZ_CHECK(out);
  memcpy(out, data, size);
  for (size_t i = 0; i + klen <= size; i++) {
    if (memcmp(out + i, key, klen) != 0) continue;
    uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), out, (uInt)i);
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", crc);
    memcpy(out + i + at, hex, 8);
    break;
  }
  return out;
}

static void write_manifest(const uint8_t *data, size_t size) {
  int fd = open(manifest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FUZZ_CHECK(fd >= 0);
  size_t done = 0;
  while (done < size) {
    ssize_t w = write(fd, data + done, size - done);
    FUZZ_CHECK(w > 0);
    done += (size_t)w;
  }
  FUZZ_CHECK(close(fd) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *text = fill_crc(data, size);
  write_manifest(text, size);
  free(text);

  float got[FIXTURE_FLOATS];
  ckpt_tensor_t t[FIXTURE_TENSORS];
  fixture_tensors(t, got, 0);
  ckpt_meta_t meta;
  char found[512];
  drv_result_t rc = ckpt_load_latest(root, fixture_meta.lineage, &meta, t, FIXTURE_TENSORS,
                                     found, sizeof found);
  if (rc == DRV_OK) {
    FUZZ_CHECK(meta.step == fixture_meta.step); /* the rest is whatever the manifest says */
    FUZZ_CHECK(strcmp(found, step_dir) == 0);
    FUZZ_CHECK(memcmp(got, want, sizeof got) == 0);
  } else {
    FUZZ_CHECK(rc == DRV_ERR_INVALID || rc == DRV_ERR_NOMEM);
    FUZZ_CHECK(meta.step == 0 && meta.epoch == 0 && meta.world == 0 && meta.seed == 0 &&
               meta.job == 0 && meta.spec_sha[0] == '\0' && found[0] == '\0');
  }
  return 0;
}
