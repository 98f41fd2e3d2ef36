/* cmd_keys.h: `drover keys`: who may reach this machine's coordinator. Run on the
 * coordinator's machine by the owner of its state directory; each works on the files of
 * <state_dir>/keys (common/keys.h) and takes effect at the next connection, no restart.
 *
 *   drover keys add agent|user|admin NAME [--coordinator EP]   prints a join file
 *   drover keys list [--json]                                 the allow-list
 *   drover keys remove NAME                                   revokes NAME's keys
 *   drover keys show                                          the coordinator's public key
 *
 * Returns the exit status: 0, 1 on failure (the error on stderr), 2 for bad usage. */
#ifndef DROVER_CLI_CMD_KEYS_H
#define DROVER_CLI_CMD_KEYS_H

int cmd_keys(int argc, char **argv);

#endif
