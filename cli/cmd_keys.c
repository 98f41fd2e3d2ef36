/* cmd_keys.c: `drover keys` (cmd_keys.h). */
#include "cli/cmd_keys.h"

#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/keys.h"
#include "common/log.h"

#define KEYS_USAGE                                                                    \
  "add agent|user|admin NAME [--coordinator EP] [--state-dir DIR] | list [--json] | " \
  "remove NAME | show"

/* The state directory's keys, made if this is the first use (as the coordinator would). */
static int ensure(const char *state, keys_file_t *coord) {
  const struct passwd *pw = getpwuid(geteuid());
  if (keys_state_ensure(state, pw ? pw->pw_name : "admin", coord) != DRV_OK) {
    fprintf(stderr, "drover keys: %s\n", drv_last_error());
    return 1;
  }
  return 0;
}

/* `add ROLE NAME`: a new keypair admitted as ROLE NAME, printed as a join file. */
static int keys_add(const char *state, const char *coordinator, const char *role,
                    const char *name) {
  keys_file_t coord, k = {.has_sec = 1, .has_server = 1};
  if (keys_role_parse(role, &k.role) != 0 || !keys_name_valid(name) ||
      (k.role != KEYS_ROLE_AGENT && strchr(name, '*'))) {
    fprintf(stderr,
            "drover keys add: '%s %s': expected agent|user|admin and a name of 1-63 letters, "
            "digits or '._@-' (agents may end it with '*': any id with that start)\n",
            role, name);
    return 2;
  }
  if (ensure(state, &coord)) return 1;
  /* One name, one role: owners are names, so a user named like an admin would own the
   * admin's jobs. */
  char allow_path[1100];
  keys_allow_t list = {0};
  if (keys_path(state, "authorized", allow_path, sizeof allow_path) == DRV_OK &&
      keys_allow_load(&list, allow_path) == DRV_OK)
    for (uint32_t i = 0; i < list.n; i++)
      if (!strcmp(list.entries[i].name, name)) {
        fprintf(stderr,
                "drover keys add: %s is admitted already, as %s: a name has one role (drover "
                "keys remove %s first, or choose another name)\n",
                name, keys_role_name(list.entries[i].role), name);
        keys_allow_fini(&list);
        memset(&coord, 0, sizeof coord);
        return 1;
      }
  keys_allow_fini(&list);
  snprintf(k.name, sizeof k.name, "%s", name);
  snprintf(k.coordinator, sizeof k.coordinator, "%s", coordinator);
  memcpy(k.server, coord.pub, sizeof k.server);
  memset(&coord, 0, sizeof coord);
  sock_keypair(k.pub, k.sec);
  char allow[1100], text[1024];
  int rc = keys_path(state, "authorized", allow, sizeof allow) != DRV_OK ||
           keys_allow_add(allow, k.role, name, k.pub) != DRV_OK ||
           keys_format(&k, 1, text, sizeof text) != DRV_OK;
  memset(&k, 0, sizeof k);
  if (rc) {
    fprintf(stderr, "drover keys add: %s\n", drv_last_error());
    return 1;
  }
  fputs(text, stdout);
  memset(text, 0, sizeof text);
  fprintf(stderr,
          "drover keys: %s %s admitted. The text above is its join file: keep it secret, copy "
          "it to %s, and pass it with --join FILE (or DROVER_JOIN=FILE)%s.\n",
          role, name, !strcmp(role, "agent") ? "the node" : "the user's machine",
          !strcmp(role, "agent") ? " to drover agent" : " to drover commands, or save it as ~/.config/drover/join");
  return 0;
}

static int keys_list(const char *state, int json) {
  char allow[1100];
  keys_allow_t a = {0};
  if (keys_path(state, "authorized", allow, sizeof allow) != DRV_OK ||
      keys_allow_load(&a, allow) != DRV_OK) {
    fprintf(stderr, "drover keys list: %s\n", drv_last_error());
    return 1;
  }
  if (!json) printf("%-6s %-24s %s\n", "ROLE", "NAME", "PUBLIC KEY");
  if (json) printf("[");
  for (uint32_t i = 0; i < a.n; i++) {
    char z[SOCK_Z85_LEN + 1];
    sock_z85_encode(a.entries[i].pub, z);
    if (json) {
      printf("%s{\"role\":\"%s\",\"name\":", i ? "," : "", keys_role_name(a.entries[i].role));
      cli_json_str(stdout, a.entries[i].name);
      printf(",\"public_key\":");
      cli_json_str(stdout, z);
      printf("}");
    } else {
      printf("%-6s %-24s %s\n", keys_role_name(a.entries[i].role), a.entries[i].name, z);
    }
  }
  if (json) printf("]\n");
  keys_allow_fini(&a);
  return 0;
}

static int keys_remove(const char *state, const char *name) {
  char allow[1100];
  uint32_t n = 0;
  if (keys_path(state, "authorized", allow, sizeof allow) != DRV_OK ||
      keys_allow_remove(allow, name, &n) != DRV_OK) {
    fprintf(stderr, "drover keys remove: %s\n", drv_last_error());
    return 1;
  }
  if (!n) {
    fprintf(stderr, "drover keys remove: no key named %s\n", name);
    return 1;
  }
  printf("%u key(s) of %s removed: refused from their next connection\n", n, name);
  return 0;
}

int cmd_keys(int argc, char **argv) {
  const char *state = NULL, *coordinator = NULL;
  int json = 0, n = 0;
  const char *args[4] = {0};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--state-dir") && i + 1 < argc)
      state = argv[++i];
    else if (!strcmp(argv[i], "--coordinator") && i + 1 < argc)
      coordinator = argv[++i];
    else if (!strcmp(argv[i], "--json"))
      json = 1;
    else if (argv[i][0] != '-' && n < 4)
      args[n++] = argv[i];
    else
      return cli_usage_fail("keys", KEYS_USAGE);
  }
  log_init("keys");
  state = cli_state_dir(state);
  if (n == 3 && !strcmp(args[0], "add"))
    return keys_add(state, cli_coordinator(coordinator), args[1], args[2]);
  if (n == 1 && !strcmp(args[0], "list")) return keys_list(state, json);
  if (n == 2 && !strcmp(args[0], "remove")) return keys_remove(state, args[1]);
  if (n == 1 && !strcmp(args[0], "show")) {
    keys_file_t coord;
    if (ensure(state, &coord)) return 1;
    char z[SOCK_Z85_LEN + 1];
    sock_z85_encode(coord.pub, z);
    memset(&coord, 0, sizeof coord);
    printf("%s\n", z);
    return 0;
  }
  return cli_usage_fail("keys", KEYS_USAGE);
}
