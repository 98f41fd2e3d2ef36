/* cli.h: the `drover` command's subcommands and what they share. */
#ifndef DROVER_CLI_CLI_H
#define DROVER_CLI_CLI_H

#include <stdio.h>

/* The coordinator's base endpoint: --coordinator, else $DROVER_COORDINATOR, else
 * tcp://127.0.0.1:7700. */
const char *cli_coordinator(const char *flag);

/* The state directory: --state-dir, else $DROVER_STATE_DIR, else
 * $XDG_STATE_HOME/drover, else ~/.local/state/drover. Static buffer. */
const char *cli_state_dir(const char *flag);

/* Path of the running drover executable (for starting agents and workers). */
const char *cli_self_exe(void);

/* Writes s as a JSON string literal (quotes and escapes included). */
void cli_json_str(FILE *out, const char *s);

/* Writes a number, or null when it is not finite. */
void cli_json_num(FILE *out, double v);

int cmd_submit(int argc, char **argv);

#endif
