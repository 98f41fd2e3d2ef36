/* fuzz_proto.c: the wire decoder, proto_unpack, on any bytes, at the size limit every socket
 * uses (DROVER_MAX_MSG_BYTES).
 *
 * Promises checked: a frame is decoded or refused with DRV_ERR_PROTO (or DRV_ERR_NOMEM),
 * never a crash, an overread or a leak; a decoded message has a known type and packs
 * again, and what it packs to decodes to a message that packs to the same bytes (the
 * codec's fixed point); the same frame with a limit one byte below its length is refused
 * before it is looked at.
 *
 * Seeds: tests/fuzz/corpus/proto/, frames made by proto_pack (fuzz_seeds). */
#include <string.h>

#include "common/proto.h"
#include "common/settings.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fuzz_quiet();
  return 0;
}

/* m packed, then decoded and packed again: both encodings equal. */
static void check_repack(const proto_msg_t *m) {
  char *a = NULL, *b = NULL;
  size_t alen = 0, blen = 0;
  FUZZ_CHECK(proto_pack(m, &a, &alen) == DRV_OK);
  proto_msg_t again;
  /* What it packs to may be longer than the frame (absent optional fields go out). */
  FUZZ_CHECK(proto_unpack(a, alen, SIZE_MAX, &again) == DRV_OK);
  FUZZ_CHECK(again.type == m->type);
  FUZZ_CHECK(proto_pack(&again, &b, &blen) == DRV_OK);
  FUZZ_CHECK(alen == blen && memcmp(a, b, alen) == 0);
  proto_msg_fini(&again);
  free(a);
  free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t limit = (size_t)drv_setting(DRV_SET_MAX_MSG_BYTES);
  proto_msg_t m;
  drv_result_t rc = proto_unpack(data, size, limit, &m);
  if (rc == DRV_OK) {
    FUZZ_CHECK((unsigned)m.type < PROTO_TYPE_COUNT);
    FUZZ_CHECK(proto_arrives_at(m.type, PROTO_AT_ANY));
    FUZZ_CHECK(proto_validate(data, size, limit) == DRV_OK);
    check_repack(&m);
  } else {
    FUZZ_CHECK(rc == DRV_ERR_PROTO || rc == DRV_ERR_NOMEM);
  }
  proto_msg_fini(&m);

  if (size > 0) {
    rc = proto_unpack(data, size, size - 1, &m);
    FUZZ_CHECK(rc == DRV_ERR_PROTO && strstr(drv_last_error(), "limit"));
    proto_msg_fini(&m);
  }
  return 0;
}
