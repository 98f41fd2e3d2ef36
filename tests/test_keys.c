/* test_keys.c: key files, the allow-list, join files and the state directory's keys
 * (common/keys.c), and the coordinator's decisions on them (coordinator/auth.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/keys.h"
#include "coordinator/auth.h"
#include "tmpdir.h"

static char dir[256];

static int setup(void **state) {
  (void)state;
  return tmpdir_make(dir, sizeof dir, "keys");
}

static int teardown(void **state) {
  (void)state;
  return tmpdir_remove(dir);
}

static void path_of(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", dir, name);
}

/* A join file reads back as written; a secret file others may read, a link, and a file
 * whose public key is not its secret key's are refused, naming the file. */
static void test_key_files(void **state) {
  (void)state;
  char p[512], link[512];
  keys_file_t k = {.has_sec = 1, .has_server = 1, .role = KEYS_ROLE_USER}, back;
  snprintf(k.name, sizeof k.name, "bob");
  snprintf(k.coordinator, sizeof k.coordinator, "tcp://10.0.0.1:7700");
  sock_keypair(k.pub, k.sec);
  sock_keypair(k.server, back.sec);
  path_of(p, sizeof p, "bob.join");
  assert_int_equal(keys_write(p, &k, 1), DRV_OK);
  assert_int_equal(keys_write(p, &k, 1), DRV_ERR_SYS); /* O_EXCL: never overwritten */
  assert_int_equal(keys_read(p, &back), DRV_OK);
  assert_memory_equal(back.pub, k.pub, SOCK_KEY_BYTES);
  assert_memory_equal(back.sec, k.sec, SOCK_KEY_BYTES);
  assert_memory_equal(back.server, k.server, SOCK_KEY_BYTES);
  assert_int_equal(back.role, KEYS_ROLE_USER);
  assert_string_equal(back.name, "bob");
  assert_string_equal(back.coordinator, "tcp://10.0.0.1:7700");

  chmod(p, 0644);
  assert_int_equal(keys_read(p, &back), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "others may read it"));
  chmod(p, 0600);
  path_of(link, sizeof link, "link.join");
  assert_int_equal(symlink(p, link), 0);
  assert_int_equal(keys_read(link, &back), DRV_ERR_SYS); /* O_NOFOLLOW */

  path_of(p, sizeof p, "bad.key");
  FILE *f = fopen(p, "w");
  fprintf(f, "curve\n    public-key = \"short\"\n");
  fclose(f);
  assert_int_equal(keys_read(p, &back), DRV_ERR_INVALID);
  assert_non_null(strstr(drv_last_error(), "bad.key:2: public-key is not a key"));
}

/* The allow-list: added lines are found by key, malformed ones skipped, a change seen on
 * the next load, names removed; agent name patterns. */
static void test_allow_list(void **state) {
  (void)state;
  char p[512];
  path_of(p, sizeof p, "authorized");
  unsigned char a[SOCK_KEY_BYTES], b[SOCK_KEY_BYTES], sec[SOCK_KEY_BYTES];
  sock_keypair(a, sec);
  sock_keypair(b, sec);
  keys_allow_t list = {0};
  assert_int_equal(keys_allow_load(&list, p), DRV_OK); /* missing: empty */
  assert_int_equal(list.n, 0);
  assert_int_equal(keys_allow_add(p, KEYS_ROLE_AGENT, "gpu-*", a), DRV_OK);
  assert_int_equal(keys_allow_add(p, KEYS_ROLE_USER, "../x", b), DRV_ERR_INVALID);
  FILE *f = fopen(p, "a");
  fprintf(f, "# a comment\nuser alice not-a-key\n");
  fclose(f);
  assert_int_equal(keys_allow_add(p, KEYS_ROLE_USER, "alice", b), DRV_OK);
  assert_int_equal(keys_allow_load(&list, p), DRV_OK);
  assert_int_equal(list.n, 2);
  const keys_entry_t *e = keys_allow_find(&list, a);
  assert_non_null(e);
  assert_int_equal(e->role, KEYS_ROLE_AGENT);
  assert_true(keys_name_matches(e->name, "gpu-17"));
  assert_false(keys_name_matches(e->name, "cpu-1"));
  assert_false(keys_name_matches("n1", "n10"));
  uint32_t removed = 0;
  assert_int_equal(keys_allow_remove(p, "alice", &removed), DRV_OK);
  assert_int_equal(removed, 1);
  assert_int_equal(keys_allow_load(&list, p), DRV_OK);
  assert_int_equal(list.n, 1);
  assert_null(keys_allow_find(&list, b));
  keys_allow_fini(&list);
}

/* A state directory gets its keys once (0700, secrets 0600); the coordinator's ZAP
 * decisions: by role and port, a live worker's key, refusals. */
static void test_state_and_decisions(void **state) {
  (void)state;
  char state_dir[512], p[600];
  path_of(state_dir, sizeof state_dir, "state");
  keys_file_t coord, again, admin;
  assert_int_equal(keys_state_ensure(state_dir, "carol", &coord), DRV_OK);
  assert_int_equal(keys_state_ensure(state_dir, "carol", &again), DRV_OK);
  assert_memory_equal(coord.pub, again.pub, SOCK_KEY_BYTES); /* made once */
  struct stat st;
  assert_int_equal(keys_path(state_dir, "", p, sizeof p), DRV_OK);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
  assert_int_equal(keys_path(state_dir, "admin.secret", p, sizeof p), DRV_OK);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(keys_read(p, &admin), DRV_OK);
  sock_keys_t peer;
  char from[1100];
  assert_int_equal(keys_for_peer(NULL, state_dir, "admin.secret", &peer, NULL, 0, from, sizeof from),
                   DRV_OK);
  assert_memory_equal(peer.server, coord.pub, SOCK_KEY_BYTES);

  auth_t auth;
  assert_int_equal(auth_init(&auth, state_dir, 1), DRV_OK);
  char user[SOCK_USER_MAX];
  assert_int_equal(auth_decide(&auth, "clients", "127.0.0.1", admin.pub, 0, user, sizeof user), 1);
  assert_string_equal(user, "admin:carol");
  assert_int_equal(auth_decide(&auth, "agents", "127.0.0.1", admin.pub, 0, user, sizeof user), 0);
  unsigned char stranger[SOCK_KEY_BYTES], sec[SOCK_KEY_BYTES];
  sock_keypair(stranger, sec);
  assert_int_equal(auth_decide(&auth, "clients", "127.0.0.1", stranger, 0, user, sizeof user), 0);
  assert_int_equal(auth_decide(&auth, "agents", "127.0.0.1", stranger, 1, user, sizeof user), 1);
  assert_true(!strncmp(user, "worker:", 7) && strlen(user) == 7 + 64);
  assert_int_equal(auth.refused, 2);

  sock_peer_t bob = {0}, car = {0}, agent = {0};
  snprintf(bob.user, sizeof bob.user, "user:bob");
  snprintf(car.user, sizeof car.user, "admin:carol");
  snprintf(agent.user, sizeof agent.user, "agent:gpu-*");
  assert_true(auth_may_act(&auth, &bob, "bob"));
  assert_false(auth_may_act(&auth, &bob, "alice"));
  assert_true(auth_may_act(&auth, &car, "alice"));
  assert_false(auth_may_act(&auth, &agent, "alice"));
  assert_true(auth_agent_id_ok(&auth, &agent, "gpu-3"));
  assert_false(auth_agent_id_ok(&auth, &agent, "a0"));
  assert_false(auth_agent_id_ok(&auth, &bob, "bob"));
  auth_fini(&auth);
  auth_t plain;
  assert_int_equal(auth_init(&plain, state_dir, 0), DRV_OK);
  assert_true(auth_may_act(&plain, &agent, "alice")); /* plaintext: everyone an admin */
  auth_fini(&plain);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_key_files, setup, teardown),
      cmocka_unit_test_setup_teardown(test_allow_list, setup, teardown),
      cmocka_unit_test_setup_teardown(test_state_and_decisions, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
