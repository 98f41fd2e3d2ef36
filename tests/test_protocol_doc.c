/* test_protocol_doc.c: docs/protocol.md documents every message of common/proto.c, field
 * by field: for each type a "### `name`" section with a row "| `field` | type | yes/no |"
 * per field. Adding a field without documenting it fails here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/proto.h"

static char *doc;

static int setup(void **state) {
  (void)state;
  FILE *f = fopen(DROVER_SOURCE_DIR "/docs/protocol.md", "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  doc = calloc(1, (size_t)n + 1);
  if (!doc || fread(doc, 1, (size_t)n, f) != (size_t)n) return -1;
  fclose(f);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  free(doc);
  return 0;
}

static void test_every_field_documented(void **state) {
  (void)state;
  for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
    char heading[96];
    snprintf(heading, sizeof heading, "\n### `%s`\n", proto_type_name((proto_type_t)t));
    char *sec = strstr(doc, heading);
    if (!sec) fail_msg("docs/protocol.md has no section %s", heading + 1);
    sec += strlen(heading);
    char *end = strstr(sec, "\n### ");
    size_t len = end ? (size_t)(end - sec) : strlen(sec);
    char *body = strndup(sec, len);
    const char *name, *kind;
    int req;
    for (uint32_t i = 0; proto_field_info((proto_type_t)t, i, &name, &kind, &req); i++) {
      char row[160];
      snprintf(row, sizeof row, "| `%s` | %s | %s |", name, kind, req ? "yes" : "no");
      if (!strstr(body, row))
        fail_msg("docs/protocol.md, section `%s`: no row starting \"%s\"",
                 proto_type_name((proto_type_t)t), row);
    }
    free(body);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_field_documented)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
