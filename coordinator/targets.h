/* targets.h: the coordinator's managed compute targets, from its targets file
 * (`drover coordinator --targets FILE`), loaded through libcyaml with one schema and
 * checked like a job spec: an unknown key, a wrong type or a bad value is refused with the
 * file, the line and the key.
 *
 *   targets:
 *     - name: cpu-pool            # 1..32 of [A-Za-z0-9._-]; not local or attached
 *       launcher: command         # command | ssh | slurm
 *       min_nodes: 0              # kept up, even with nothing to do     (default 0)
 *       max_nodes: 4              # never more (at least 1)               (default 1)
 *       idle_timeout: 300         # s an idle node above min_nodes is kept (default 300)
 *       launch_timeout: 120       # s a launched node has to register     (default 120)
 *       preemptible: false        # its nodes may be taken away (spot, Slurm preemption):
 *                                 # their loss is never a job's restart  (default false)
 *       node: {cpus: 0, gpus: 0, memory_mb: 0}  # what one node has, when known: a job
 *                                 # no node could hold is refused at submission (0: unknown)
 *       drover: /usr/bin/drover   # drover on the nodes       (default: the coordinator's)
 *       join: /etc/drover/join    # the agents' join file on the nodes
 *                                 # (default: the state directory's keys/agent.secret)
 *       agent_args: [--allow-dir, /data]   # more arguments for each `drover agent`
 *       command:                  # launcher command
 *         start: "{agent}"        # sh -c; without stop: it is the node, stopped by SIGTERM
 *         stop: ""                # with it: start prints a handle, stop gets {handle}
 *       ssh:                      # launcher ssh: one node per host
 *         hosts: [gpu1, gpu2]
 *         user: ""                # (default: ssh's)
 *         port: 0                 # (default: ssh's)
 *         identity: ""            # -i
 *         known_hosts: ""         # -o UserKnownHostsFile= (StrictHostKeyChecking=yes with it)
 *         options: []             # more ssh arguments
 *       slurm:                    # launcher slurm: one node per Slurm job
 *         partition: ""
 *         account: ""
 *         time_limit: ""          # --time
 *         gres: ""                # --gres, e.g. gpu:8
 *         sbatch_args: []
 *
 * Placeholders in command templates: {node} (the node's name, `<target>-<n>`), {agent}
 * (the whole `drover agent ...` command for it), {coordinator}, {target}, {join},
 * {drover}, {handle} (stop only); each is substituted shell-quoted. */
#ifndef DROVER_COORDINATOR_TARGETS_H
#define DROVER_COORDINATOR_TARGETS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/drv.h"

#define TARGETS_MAX 32         /* targets in one file */
#define TARGETS_MAX_NODES 256  /* max_nodes of one target */

typedef enum { LAUNCHER_COMMAND = 0, LAUNCHER_SSH, LAUNCHER_SLURM } launcher_kind_t;

typedef struct {
  char *start, *stop; /* stop NULL or "": start is the node's own process */
} target_command_t;

typedef struct {
  char **hosts;
  uint32_t hosts_count;
  char *user, *identity, *known_hosts;
  uint32_t port;
  char **options;
  uint32_t options_count;
} target_ssh_t;

typedef struct {
  char *partition, *account, *time_limit, *gres;
  char **sbatch_args;
  uint32_t sbatch_args_count;
} target_slurm_t;

typedef struct {
  char *name;
  launcher_kind_t launcher;
  uint32_t min_nodes, max_nodes;
  uint32_t idle_timeout_s, launch_timeout_s;
  bool preemptible;
  struct {
    uint32_t cpus, gpus;
    uint64_t memory_mb;
  } node;
  char *drover, *join; /* NULL: the coordinator's own (targets_resolve fills them) */
  char **agent_args;
  uint32_t agent_args_count;
  target_command_t *command; /* the launcher's section: the one its kind names */
  target_ssh_t *ssh;
  target_slurm_t *slurm;
} target_t;

typedef struct {
  target_t *targets;
  uint32_t targets_count;
} targets_file_t;

/* Parses and checks a targets file's text; origin names it in errors ("targets.yaml").
 * DRV_ERR_INVALID with "origin:line: targets[1].launcher: ..." on a schema error, or
 * "origin: target cpu-pool: min_nodes 5 is more than max_nodes 4" on a value's. */
drv_result_t targets_parse(const char *yaml, size_t len, const char *origin, targets_file_t **out);

/* targets_parse of the file at path. */
drv_result_t targets_load(const char *path, targets_file_t **out);

void targets_free(targets_file_t **t);

/* The target named name, or NULL (local and attached are never in the file). */
const target_t *targets_find(const targets_file_t *t, const char *name);

/* The launcher's name: "command", "ssh", "slurm". */
const char *targets_launcher_name(launcher_kind_t k);

#endif
