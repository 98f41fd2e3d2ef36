/* cli.h: what the `drover` command's subcommands share: where the coordinator and the
 * state directory are, the path of this executable, JSON output, the usage failure and
 * the stop signals. Every command file uses these; nothing here knows any command.
 */
#ifndef DROVER_CLI_CLI_H
#define DROVER_CLI_CLI_H

#include <signal.h>
#include <stdio.h>

#include "common/drv.h"
#include "common/sock.h"

/* The coordinator's base endpoint: --coordinator, else $DROVER_COORDINATOR, else the
 * join file's (--join, DROVER_JOIN), else tcp://127.0.0.1:7700. */
const char *cli_coordinator(const char *flag);

/* Gives ctx the keys this process reaches its coordinator with (keys.h keys_for_peer:
 * --join / DROVER_JOIN, else the state directory's `own` key, "admin.secret" for
 * commands and "agent.secret" for agents, else ~/.config/drover/join), or makes it
 * plaintext under --insecure / DROVER_INSECURE=1. The error says what to do. */
drv_result_t cli_secure(sock_ctx_t *ctx, const char *own);

/* The same keys into *keys for a process that makes its own context (an agent); *plaintext
 * is 1 under --insecure. */
drv_result_t cli_peer_keys(const char *own, sock_keys_t *keys, int *plaintext);

/* The state directory: --state-dir, else $DROVER_STATE_DIR, else
 * $XDG_STATE_HOME/drover, else ~/.local/state/drover. Static buffer. */
const char *cli_state_dir(const char *flag);

/* Path of the running drover executable (for starting agents and workers). Static buffer;
 * "drover" when /proc/self/exe cannot be read. */
const char *cli_self_exe(void);

/* Writes s as a JSON string literal (quotes and escapes included); NULL writes "". */
void cli_json_str(FILE *out, const char *s);

/* Writes a number (%.10g), or null when it is not finite. */
void cli_json_num(FILE *out, double v);

/* Prints "usage: drover CMD USAGE" to stderr and returns 2, the exit status of bad usage:
 * `return cli_usage_fail("cancel", "JOB [--coordinator EP]");`. */
int cli_usage_fail(const char *cmd, const char *usage);

/* Installs the stop handlers: SIGINT and SIGTERM count stop requests (1, then 2, where the
 * count stays) into the returned flag, and SIGPIPE is ignored. A daemon drains on the first
 * request and stops at once on the second; a command may set the flag back to 0 once it
 * has acted on a request. The flag is process-wide, the same on every call. */
volatile sig_atomic_t *cli_stop_signals(void);

#endif
