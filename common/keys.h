/* keys.h: who may talk to a coordinator, and how each process proves who it is.
 *
 * Every process holds a CurveZMQ keypair (sock.h). The coordinator's lives in its state
 * directory, with the allow-list of the keys it admits and the role of each:
 *
 *   <state_dir>/keys/            0700
 *     coordinator.key            the coordinator's public key (shareable)
 *     coordinator.secret         its secret key (0600)
 *     admin.secret               the key of the state directory's owner: role admin
 *     agent.secret               the key of agents started on this machine (local target)
 *     authorized                 the allow-list: one "ROLE NAME PUBLIC-KEY" per line
 *
 * Roles: `agent` (NAME is the agent id it may register as; a trailing '*' matches any
 * ending), `user` (NAME owns the jobs it submits), `admin` (a user who may act on every
 * job). Key files are text, one "name = \"value\"" per line (the ZeroMQ certificate
 * layout, so that pyzmq's zmq.auth.load_certificate reads them too):
 *
 *   public-key = "<40 characters of Z85>"
 *   secret-key = "<...>"              (secret files only)
 *   role = "user"                     (join files)
 *   name = "bob"
 *   coordinator = "tcp://10.0.0.1:7700"
 *   coordinator-key = "<Z85>"
 *
 * A join file (what `drover keys add` prints) is a key file with all of these: one file
 * gives an agent or a user on another machine its key, its name, the coordinator's
 * endpoint and the coordinator's public key to pin. Secret files are refused when other
 * users may read them, and are created with O_EXCL and O_NOFOLLOW, mode 0600.
 */
#ifndef DROVER_COMMON_KEYS_H
#define DROVER_COMMON_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/drv.h"
#include "common/sock.h"

#define KEYS_NAME_MAX 64
#define KEYS_ALLOW_MAX 4096

typedef enum { KEYS_ROLE_NONE = 0, KEYS_ROLE_AGENT, KEYS_ROLE_USER, KEYS_ROLE_ADMIN } keys_role_t;

/* A key file's contents. */
typedef struct {
  unsigned char pub[SOCK_KEY_BYTES], sec[SOCK_KEY_BYTES];
  int has_sec;
  keys_role_t role;
  char name[KEYS_NAME_MAX];
  char coordinator[256];                /* join files: the coordinator's endpoint, or "" */
  unsigned char server[SOCK_KEY_BYTES]; /* join files: the coordinator's public key */
  int has_server;
} keys_file_t;

/* One allow-list line. */
typedef struct {
  keys_role_t role;
  char name[KEYS_NAME_MAX];
  unsigned char pub[SOCK_KEY_BYTES];
} keys_entry_t;

/* The allow-list as loaded, and the file's identity to notice a change. */
typedef struct {
  char path[1024];
  keys_entry_t *entries;
  uint32_t n;
  int64_t mtime_ns;
  off_t size;
  ino_t ino;
} keys_allow_t;

/* "agent", "user", "admin" ("none" otherwise); parse: 0 on success. */
const char *keys_role_name(keys_role_t r);
int keys_role_parse(const char *s, keys_role_t *r);

/* Whether NAME is acceptable in a key file or allow-list: 1..63 of [A-Za-z0-9._@-], and
 * for agents a trailing '*'. */
int keys_name_valid(const char *name);

/* Whether agent id `id` is what allow-list name `pattern` admits ("n1", or "gpu-*"). */
int keys_name_matches(const char *pattern, const char *id);

/* Reads key file path into *k. DRV_ERR_INVALID naming the file and line for anything
 * malformed, or a secret file that others than its owner may read or that is a link. */
drv_result_t keys_read(const char *path, keys_file_t *k);

/* Writes k to a new file path (O_EXCL, O_NOFOLLOW, 0600), its secret when with_secret. */
drv_result_t keys_write(const char *path, const keys_file_t *k, int with_secret);

/* k as the text of a key file (what keys_write writes) into buf. */
drv_result_t keys_format(const keys_file_t *k, int with_secret, char *buf, size_t n);

/* (Re)loads the allow-list at path when the file changed since the last load (a missing
 * file is an empty list). A malformed line is skipped with a warning naming it. */
drv_result_t keys_allow_load(keys_allow_t *a, const char *path);
void keys_allow_fini(keys_allow_t *a);

/* The allow-list entry of public key pub, or NULL. */
const keys_entry_t *keys_allow_find(const keys_allow_t *a, const unsigned char pub[SOCK_KEY_BYTES]);

/* Appends a line to the allow-list at path (created 0600). */
drv_result_t keys_allow_add(const char *path, keys_role_t role, const char *name,
                            const unsigned char pub[SOCK_KEY_BYTES]);

/* Removes every line naming `name` from the allow-list; *removed says how many. */
drv_result_t keys_allow_remove(const char *path, const char *name, uint32_t *removed);

/* <state_dir>/keys/<file> into out; DRV_ERR_INVALID when it does not fit. */
drv_result_t keys_path(const char *state_dir, const char *file, char *out, size_t n);

/* The coordinator's start: makes <state_dir>/keys (0700) with the coordinator's keypair,
 * the owner's admin key (named owner_name) and the local agents' key, each admitted by the
 * allow-list, when missing; then reads the coordinator's secret key into *coord. */
drv_result_t keys_state_ensure(const char *state_dir, const char *owner_name, keys_file_t *coord);

/* The keys a client or agent uses to reach its coordinator, into *out, and where they came
 * from into `from` (for messages): join file `join` when not NULL or empty; else the state
 * directory's `own` secret ("admin.secret" or "agent.secret") with its coordinator.key when
 * readable; else ~/.config/drover/join. The join file's coordinator endpoint, if any, goes
 * into coordinator (may be NULL). DRV_ERR_INVALID saying what to do when none is found. */
drv_result_t keys_for_peer(const char *join, const char *state_dir, const char *own,
                           sock_keys_t *out, char *coordinator, size_t coordsz, char *from,
                           size_t fromsz);

#endif
