/* paths.h: where an agent lets a job's worker read and write, and the run directory it
 * gives the worker. Private to agent/.
 *
 * Allowed directories. An agent serves an assignment only when its run directory, its
 * resume directory and every data file of its spec lie under one of the agent's allowed
 * directories (`drover agent --allow-dir DIR`, repeatable; without any: the agent's
 * working directory and the system's temporary directory, $TMPDIR or /tmp, never "/"
 * unless named). A path is resolved before it is checked: its deepest existing ancestor
 * through realpath (every symbolic link followed), the rest appended as written, which
 * may hold no "." or ".." component; so no link leads out of the allowed directories. A
 * refusal names the path as the job gave it and the allowed directories, and says the
 * same whether or not the path exists. The worker is handed the resolved paths (its
 * spec's data paths rewritten), so what it opens is what was checked.
 *
 * The run directory. The first agent of a job creates it exclusively: a fresh directory
 * holding a `lineage` file (the job's lineage, created O_EXCL) is renamed into place
 * with RENAME_NOREPLACE, so the run directory exists with its lineage or not at all. An
 * existing run directory is accepted only when its `lineage` file names the assignment's
 * lineage (another rank of the job, the job placed again); anything else, a directory of
 * another job, one without a lineage file, a symlink or a file, fails the job ("run
 * directory X belongs to another job"), and so does a run directory inside another (an
 * ancestor holding a lineage file). Every directory on the way is walked with
 * O_NOFOLLOW, and created with mode 0750 (0711 for the parents an agent running workers
 * as another user makes, so that user can reach its run directory and nobody can list
 * them); logs/ and logs/rank-<r>.log (appended, never through a symlink) are the job's.
 */
#ifndef DROVER_AGENT_PATHS_H
#define DROVER_AGENT_PATHS_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/drv.h"
#include "common/proto.h"

#define PATHS_MAX_ROOTS 16
#define PATHS_LINEAGE_FILE "lineage"

/* The allowed directories, resolved (realpath). */
typedef struct {
  char *dir[PATHS_MAX_ROOTS]; /* owned */
  unsigned n;
} paths_roots_t;

/* Adds dir, resolved like any path (its deepest existing ancestor through realpath: it
 * need not exist yet), to r. DRV_ERR_INVALID when it is relative, names something other
 * than a directory, or r is full. */
drv_result_t paths_roots_add(paths_roots_t *r, const char *dir);

/* Adds the defaults: the working directory unless it is "/", and $TMPDIR (or /tmp) unless
 * it is "/" or missing. */
void paths_roots_defaults(paths_roots_t *r);

/* "/a, /b" into out (cap bytes), "(none)" when r is empty. */
void paths_roots_list(const paths_roots_t *r, char *out, size_t cap);

void paths_roots_fini(paths_roots_t *r);

/* Resolves path as the top of this file says and checks it is under one of r's
 * directories; the resolved path into resolved[cap]. DRV_ERR_INVALID "<what> <path> is
 * outside the directories this agent allows (<list>)" otherwise, whatever the reason
 * (missing, a link out, not absolute, too long). */
drv_result_t paths_allow(const paths_roots_t *r, const char *what, const char *path, char *resolved,
                         size_t cap);

/* Who owns what the agent makes for a worker: `set` when the worker runs as another user
 * (uid, gid) than the agent. */
typedef struct {
  int set;
  uid_t uid;
  gid_t gid;
} paths_owner_t;

/* An assignment's paths as its worker gets them. */
typedef struct {
  char run_dir[PATH_MAX], resume_dir[PATH_MAX]; /* resolved; resume_dir "" when none */
  char *spec; /* the assignment's spec, its data paths resolved (malloc'ed YAML) */
} paths_vetted_t;

/* Checks every path of the assignment (run directory, resume directory, the spec's data
 * paths) against r with paths_allow and fills *v (paths_vetted_fini frees it). */
drv_result_t paths_vet(const paths_roots_t *r, const proto_assign_t *as, paths_vetted_t *v);

void paths_vetted_fini(paths_vetted_t *v);

/* Claims the resolved run directory for `lineage` (1..64 hex digits) as the top of this
 * file says: creates it or accepts it, owned as o says. *run_fd: the directory, open
 * (O_DIRECTORY | O_NOFOLLOW), the caller closes it. DRV_ERR_INVALID "run directory X
 * belongs to another job" when it is another's, DRV_ERR_SYS when the disk refuses. */
drv_result_t paths_claim(const char *run_dir, const char *lineage, const paths_owner_t *o,
                         int *run_fd);

/* Opens <run dir>/logs/rank-<rank>.log for appending (creating logs/ and the file, 0750
 * and 0640, owned as o says) into *log_fd; its path into path[cap]. */
drv_result_t paths_open_log(int run_fd, const char *run_dir, uint32_t rank, const paths_owner_t *o,
                            int *log_fd, char *path, size_t cap);

#endif
