/* keys.c: key files, the allow-list and the state directory's keys (see keys.h). */
#include "common/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/log.h"

static const char *const role_names[] = {"none", "agent", "user", "admin"};

const char *keys_role_name(keys_role_t r) {
  return (unsigned)r < DRV_ARRAY_LEN(role_names) ? role_names[r] : "none";
}

int keys_role_parse(const char *s, keys_role_t *r) {
  for (unsigned i = 1; i < DRV_ARRAY_LEN(role_names); i++)
    if (strcmp(s, role_names[i]) == 0) {
      *r = (keys_role_t)i;
      return 0;
    }
  return -1;
}

int keys_name_valid(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= KEYS_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-' || c == '@' || (c == '*' && i == n - 1);
    if (!ok) return 0;
  }
  return 1;
}

int keys_name_matches(const char *pattern, const char *id) {
  size_t n = strlen(pattern);
  if (n && pattern[n - 1] == '*') return strncmp(pattern, id, n - 1) == 0;
  return strcmp(pattern, id) == 0;
}

// --- Key files -----------------------------------------------------------------------------

/* One `name = "value"` line: the name and value into k. 0, or -1 for an unknown name or
 * a bad value (why in err). */
static int key_line(keys_file_t *k, const char *name, const char *value, char *err, size_t n) {
  unsigned char key[SOCK_KEY_BYTES];
  int is_key = !strcmp(name, "public-key") || !strcmp(name, "secret-key") ||
               !strcmp(name, "coordinator-key");
  if (is_key && sock_z85_decode(value, key) != DRV_OK) {
    snprintf(err, n, "%s is not a key (40 characters of Z85)", name);
    return -1;
  }
  if (!strcmp(name, "public-key")) {
    memcpy(k->pub, key, sizeof key);
  } else if (!strcmp(name, "secret-key")) {
    memcpy(k->sec, key, sizeof key);
    k->has_sec = 1;
  } else if (!strcmp(name, "coordinator-key")) {
    memcpy(k->server, key, sizeof key);
    k->has_server = 1;
  } else if (!strcmp(name, "role")) {
    if (keys_role_parse(value, &k->role) != 0) {
      snprintf(err, n, "role '%.32s' is not agent, user or admin", value);
      return -1;
    }
  } else if (!strcmp(name, "name")) {
    if (!keys_name_valid(value)) {
      snprintf(err, n, "name '%.64s' is not 1-63 of letters, digits, '._@-'", value);
      return -1;
    }
    snprintf(k->name, sizeof k->name, "%s", value);
  } else if (!strcmp(name, "coordinator")) {
    if (strlen(value) >= sizeof k->coordinator || strncmp(value, "tcp://", 6) != 0) {
      snprintf(err, n, "coordinator '%.64s' is not a tcp:// endpoint", value);
      return -1;
    }
    snprintf(k->coordinator, sizeof k->coordinator, "%s", value);
  }
  return 0; /* other names (the certificate's metadata) are ignored */
}

/* Parses the text of a key file. */
static drv_result_t key_parse(const char *path, char *text, keys_file_t *k) {
  memset(k, 0, sizeof *k);
  int line = 0, has_pub = 0;
  for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    line++;
    while (*l == ' ' || *l == '\t') l++;
    if (!*l || *l == '#' || !strcmp(l, "curve") || !strcmp(l, "metadata")) continue;
    char name[32], value[300], err[160];
    if (sscanf(l, "%31[a-z-] = \"%299[^\"]\"", name, value) != 2)
      return drv_error(DRV_ERR_INVALID, "%s:%d: expected name = \"value\"", path, line);
    if (key_line(k, name, value, err, sizeof err) != 0)
      return drv_error(DRV_ERR_INVALID, "%s:%d: %s", path, line, err);
    has_pub |= !strcmp(name, "public-key");
  }
  if (k->has_sec) {
    unsigned char pub[SOCK_KEY_BYTES];
    sock_public_key(k->sec, pub);
    if (has_pub && memcmp(pub, k->pub, sizeof pub))
      return drv_error(DRV_ERR_INVALID, "%s: its public-key is not its secret-key's", path);
    memcpy(k->pub, pub, sizeof pub);
  } else if (!has_pub) {
    return drv_error(DRV_ERR_INVALID, "%s: no public-key or secret-key in it", path);
  }
  return DRV_OK;
}

drv_result_t keys_read(const char *path, keys_file_t *k) {
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  struct stat st;
  char *text = NULL;
  drv_result_t rc = DRV_OK;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > 8192) {
    rc = drv_error(DRV_ERR_INVALID, "%s: not a key file (a regular file under 8 KiB)", path);
    goto out;
  }
  if (!(text = calloc(1, (size_t)st.st_size + 1))) {
    rc = drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
    goto out;
  }
  if (read(fd, text, (size_t)st.st_size) != st.st_size) {
    rc = drv_error(DRV_ERR_SYS, "%s: short read", path);
    goto out;
  }
  rc = key_parse(path, text, k);
  if (rc == DRV_OK && k->has_sec && (st.st_mode & 077))
    rc = drv_error(DRV_ERR_INVALID,
                   "%s: holds a secret key but others may read it (mode %03o): chmod 600 it",
                   path, (unsigned)(st.st_mode & 0777));
out:
  if (text) {
    memset(text, 0, (size_t)st.st_size);
    free(text);
  }
  close(fd);
  return rc;
}

drv_result_t keys_format(const keys_file_t *k, int with_secret, char *buf, size_t n) {
  char pub[SOCK_Z85_LEN + 1], sec[SOCK_Z85_LEN + 1], server[SOCK_Z85_LEN + 1];
  sock_z85_encode(k->pub, pub);
  sock_z85_encode(k->sec, sec);
  sock_z85_encode(k->server, server);
  size_t at = 0;
  int w = snprintf(buf, n, "# drover key%s%s%s\n", k->name[0] ? ": " : "", k->name,
                   with_secret ? " (secret: keep it so)" : "");
#define KEYS_APPEND(...)                         \
  do {                                           \
    if (w < 0 || (size_t)w >= n - at) goto full; \
    at += (size_t)w;                             \
    w = snprintf(buf + at, n - at, __VA_ARGS__); \
  } while (0)
  KEYS_APPEND("metadata\n");
  if (k->role) KEYS_APPEND("    role = \"%s\"\n", keys_role_name(k->role));
  if (k->name[0]) KEYS_APPEND("    name = \"%s\"\n", k->name);
  if (k->coordinator[0]) KEYS_APPEND("    coordinator = \"%s\"\n", k->coordinator);
  if (k->has_server) KEYS_APPEND("    coordinator-key = \"%s\"\n", server);
  KEYS_APPEND("curve\n    public-key = \"%s\"\n", pub);
  if (with_secret) KEYS_APPEND("    secret-key = \"%s\"\n", sec);
  KEYS_APPEND("%s", "");
#undef KEYS_APPEND
  memset(sec, 0, sizeof sec);
  return DRV_OK;
full:
  memset(sec, 0, sizeof sec);
  return drv_error(DRV_ERR_INVALID, "key file text longer than %zu bytes", n);
}

drv_result_t keys_write(const char *path, const keys_file_t *k, int with_secret) {
  char text[1024];
  DRV_CHECK(keys_format(k, with_secret, text, sizeof text));
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  drv_result_t rc = DRV_OK;
  if (fd < 0) {
    rc = drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  } else {
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || fsync(fd) < 0)
      rc = drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
    close(fd);
  }
  memset(text, 0, sizeof text);
  return rc;
}

// --- The allow-list ------------------------------------------------------------------------

/* One allow-list line into *e: 1 when it is one, 0 for a blank or comment line, -1 when
 * malformed. */
static int allow_line(char *l, keys_entry_t *e) {
  while (*l == ' ' || *l == '\t') l++;
  if (!*l || *l == '#') return 0;
  char role[16], name[KEYS_NAME_MAX + 1], key[SOCK_Z85_LEN + 2];
  if (sscanf(l, "%15s %64s %41s", role, name, key) != 3 || keys_role_parse(role, &e->role) ||
      !keys_name_valid(name) || sock_z85_decode(key, e->pub) != DRV_OK)
    return -1;
  snprintf(e->name, sizeof e->name, "%s", name);
  return 1;
}

drv_result_t keys_allow_load(keys_allow_t *a, const char *path) {
  struct stat st;
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0 && errno == ENOENT) { /* none: nobody but plaintext peers */
    keys_allow_fini(a);
    snprintf(a->path, sizeof a->path, "%s", path);
    return DRV_OK;
  }
  if (fd < 0 || fstat(fd, &st) < 0) {
    drv_result_t rc = drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return rc;
  }
  int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  if (!strcmp(a->path, path) && a->mtime_ns == mtime && a->size == st.st_size &&
      a->ino == st.st_ino) {
    close(fd);
    return DRV_OK; /* unchanged */
  }
  FILE *f = fdopen(fd, "r");
  keys_entry_t *entries = calloc(KEYS_ALLOW_MAX, sizeof *entries);
  if (!f || !entries || !S_ISREG(st.st_mode)) {
    free(entries);
    if (f) fclose(f); else close(fd);
    return drv_error(DRV_ERR_INVALID, "%s: cannot read the allow-list", path);
  }
  uint32_t n = 0;
  char line[512];
  for (int no = 1; fgets(line, sizeof line, f) && n < KEYS_ALLOW_MAX; no++) {
    int got = allow_line(line, &entries[n]);
    if (got < 0) log_warn("%s:%d: not \"ROLE NAME PUBLIC-KEY\": line skipped", path, no);
    n += got > 0;
  }
  fclose(f);
  keys_allow_fini(a);
  snprintf(a->path, sizeof a->path, "%s", path);
  a->entries = entries;
  a->n = n;
  a->mtime_ns = mtime;
  a->size = st.st_size;
  a->ino = st.st_ino;
  log_info("%s: %u key(s) admitted", path, n);
  return DRV_OK;
}

void keys_allow_fini(keys_allow_t *a) {
  free(a->entries);
  memset(a, 0, sizeof *a);
}

const keys_entry_t *keys_allow_find(const keys_allow_t *a, const unsigned char pub[SOCK_KEY_BYTES]) {
  for (uint32_t i = 0; i < a->n; i++)
    if (!memcmp(a->entries[i].pub, pub, SOCK_KEY_BYTES)) return &a->entries[i];
  return NULL;
}

drv_result_t keys_allow_add(const char *path, keys_role_t role, const char *name,
                            const unsigned char pub[SOCK_KEY_BYTES]) {
  if (!keys_name_valid(name))
    return drv_error(DRV_ERR_INVALID, "name '%s' is not 1-63 of letters, digits, '._@-'", name);
  char z[SOCK_Z85_LEN + 1], line[160];
  sock_z85_encode(pub, z);
  int n = snprintf(line, sizeof line, "%s %s %s\n", keys_role_name(role), name, z);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  drv_result_t rc = DRV_OK;
  if (write(fd, line, (size_t)n) != n || fsync(fd) < 0)
    rc = drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  close(fd);
  return rc;
}

drv_result_t keys_allow_remove(const char *path, const char *name, uint32_t *removed) {
  *removed = 0;
  FILE *in = fopen(path, "re");
  if (!in) return drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  char *text = calloc(1, KEYS_ALLOW_MAX * 160 + 1);
  size_t len = text ? fread(text, 1, KEYS_ALLOW_MAX * 160, in) : 0;
  fclose(in);
  if (!text) return drv_error(DRV_ERR_NOMEM, "%s: out of memory", path);
  text[len] = '\0';
  char tmp[1100];
  if (snprintf(tmp, sizeof tmp, "%s.new", path) >= (int)sizeof tmp) {
    free(text);
    return drv_error(DRV_ERR_INVALID, "%s: path too long", path);
  }
  unlink(tmp);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    free(text);
    return drv_error(DRV_ERR_SYS, "%s: %s", tmp, strerror(errno));
  }
  drv_result_t rc = DRV_OK;
  for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    keys_entry_t e;
    char copy[512];
    snprintf(copy, sizeof copy, "%s", l);
    if (allow_line(copy, &e) > 0 && !strcmp(e.name, name)) {
      (*removed)++;
      continue;
    }
    if (dprintf(fd, "%s\n", l) < 0) rc = drv_error(DRV_ERR_SYS, "%s: %s", tmp, strerror(errno));
  }
  free(text);
  if (fsync(fd) < 0 && rc == DRV_OK) rc = drv_error(DRV_ERR_SYS, "%s: %s", tmp, strerror(errno));
  close(fd);
  if (rc == DRV_OK && rename(tmp, path) < 0)
    rc = drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  if (rc != DRV_OK) unlink(tmp);
  return rc;
}

// --- The state directory -------------------------------------------------------------------

drv_result_t keys_path(const char *state_dir, const char *file, char *out, size_t n) {
  int w = snprintf(out, n, "%s/keys%s%s", state_dir, file[0] ? "/" : "", file);
  if (w < 0 || (size_t)w >= n)
    return drv_error(DRV_ERR_INVALID, "%s/keys/%s: path too long", state_dir, file);
  return DRV_OK;
}

/* Makes keys/<file> with a fresh keypair of role and name, admitted by the allow-list,
 * unless it exists. */
static drv_result_t ensure_key(const char *state_dir, const char *file, keys_role_t role,
                               const char *name) {
  char path[1100], allow[1100];
  DRV_CHECK(keys_path(state_dir, file, path, sizeof path));
  if (access(path, F_OK) == 0) return DRV_OK;
  DRV_CHECK(keys_path(state_dir, "authorized", allow, sizeof allow));
  keys_file_t k = {.has_sec = 1, .role = role};
  snprintf(k.name, sizeof k.name, "%s", name);
  sock_keypair(k.pub, k.sec);
  drv_result_t rc = keys_write(path, &k, 1);
  if (rc == DRV_OK && role != KEYS_ROLE_NONE) rc = keys_allow_add(allow, role, name, k.pub);
  memset(&k, 0, sizeof k);
  if (rc == DRV_OK) log_info("%s: new key (%s %s)", path, keys_role_name(role), name);
  return rc;
}

drv_result_t keys_state_ensure(const char *state_dir, const char *owner_name, keys_file_t *coord) {
  char dir[1100], pub_path[1100];
  DRV_CHECK(keys_path(state_dir, "", dir, sizeof dir));
  DRV_CHECK(fs_mkdir_p(dir, 0700));
  if (chmod(dir, 0700) < 0) return drv_error(DRV_ERR_SYS, "%s: %s", dir, strerror(errno));
  char owner[KEYS_NAME_MAX];
  snprintf(owner, sizeof owner, "%s", keys_name_valid(owner_name) ? owner_name : "admin");
  DRV_CHECK(ensure_key(state_dir, "coordinator.secret", KEYS_ROLE_NONE, "coordinator"));
  DRV_CHECK(ensure_key(state_dir, "admin.secret", KEYS_ROLE_ADMIN, owner));
  DRV_CHECK(ensure_key(state_dir, "agent.secret", KEYS_ROLE_AGENT, "*"));
  char path[1100];
  DRV_CHECK(keys_path(state_dir, "coordinator.secret", path, sizeof path));
  DRV_CHECK(keys_read(path, coord));
  DRV_CHECK(keys_path(state_dir, "coordinator.key", pub_path, sizeof pub_path));
  if (access(pub_path, F_OK) != 0) {
    keys_file_t pub = *coord;
    pub.has_sec = 0;
    snprintf(pub.name, sizeof pub.name, "coordinator");
    drv_result_t rc = keys_write(pub_path, &pub, 0);
    memset(&pub, 0, sizeof pub);
    DRV_CHECK(rc);
    chmod(pub_path, 0644);
  }
  return DRV_OK;
}

/* Keys from the state directory: its `own` secret and the coordinator's public key. */
static drv_result_t state_keys(const char *state_dir, const char *own, sock_keys_t *out) {
  char path[1100];
  keys_file_t k, server;
  DRV_CHECK(keys_path(state_dir, own, path, sizeof path));
  if (access(path, R_OK) != 0) return drv_error(DRV_ERR_SYS, "%s: %s", path, strerror(errno));
  DRV_CHECK(keys_read(path, &k));
  DRV_CHECK(keys_path(state_dir, "coordinator.key", path, sizeof path));
  DRV_CHECK(keys_read(path, &server));
  memcpy(out->pub, k.pub, sizeof out->pub);
  memcpy(out->sec, k.sec, sizeof out->sec);
  memcpy(out->server, server.pub, sizeof out->server);
  memset(&k, 0, sizeof k);
  return DRV_OK;
}

/* Keys from a join file. */
static drv_result_t join_keys(const char *path, sock_keys_t *out, char *coordinator,
                              size_t coordsz) {
  keys_file_t k;
  DRV_CHECK(keys_read(path, &k));
  if (!k.has_sec || !k.has_server) {
    memset(&k, 0, sizeof k);
    return drv_error(DRV_ERR_INVALID, "%s: not a join file (needs secret-key and coordinator-key)",
                     path);
  }
  memcpy(out->pub, k.pub, sizeof out->pub);
  memcpy(out->sec, k.sec, sizeof out->sec);
  memcpy(out->server, k.server, sizeof out->server);
  if (coordinator && k.coordinator[0]) snprintf(coordinator, coordsz, "%s", k.coordinator);
  memset(&k, 0, sizeof k);
  return DRV_OK;
}

drv_result_t keys_for_peer(const char *join, const char *state_dir, const char *own,
                           sock_keys_t *out, char *coordinator, size_t coordsz, char *from,
                           size_t fromsz) {
  if (join && *join) {
    snprintf(from, fromsz, "%s", join);
    return join_keys(join, out, coordinator, coordsz);
  }
  char path[1100];
  if (state_dir && *state_dir && keys_path(state_dir, own, path, sizeof path) == DRV_OK &&
      access(path, R_OK) == 0) {
    snprintf(from, fromsz, "%s", path);
    return state_keys(state_dir, own, out);
  }
  const char *home = getenv("HOME");
  if (home && snprintf(path, sizeof path, "%s/.config/drover/join", home) < (int)sizeof path &&
      access(path, F_OK) == 0) {
    snprintf(from, fromsz, "%s", path);
    return join_keys(path, out, coordinator, coordsz);
  }
  return drv_error(DRV_ERR_INVALID,
                   "no key to reach the coordinator: none in %s/keys, no --join file, "
                   "DROVER_JOIN or ~/.config/drover/join (on the coordinator's machine, "
                   "`drover keys add user NAME` prints a join file)",
                   state_dir && *state_dir ? state_dir : "the state directory");
}
