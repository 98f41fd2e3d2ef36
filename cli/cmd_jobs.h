/* cmd_jobs.h: the commands that ask the coordinator about jobs and agents, or print this
 * process's settings: `drover status`, `cancel`, `agents` and `settings`. Each takes the
 * arguments after `drover` (argv[0] is the command's name), prints to stdout (errors to
 * stderr) and returns the exit status: 0, 1 when the coordinator does not answer or
 * refuses, 2 for bad usage. */
#ifndef DROVER_CLI_CMD_JOBS_H
#define DROVER_CLI_CMD_JOBS_H

/* `drover status [JOB] [--json] [--limit N] [--coordinator EP]`: the jobs as a table (and
 * for one job, its ranks), or as one JSON array. */
int cmd_status(int argc, char **argv);

/* `drover cancel JOB [--coordinator EP]`: prints "job N cancelled". */
int cmd_cancel(int argc, char **argv);

/* `drover agents [--json] [--coordinator EP]`: the agent registry, a table or JSON. */
int cmd_agents(int argc, char **argv);

/* drover targets [--json]: local, attached and the coordinator's managed targets, with
 * their nodes idle, busy, starting and stopping, and launch failures. */
int cmd_targets(int argc, char **argv);

/* drover logs JOB [-f] [--rank N]: a command job's output, each line "rank R AGENT | TIME
 * TEXT", from the coordinator (while it runs, and after); -f follows it to its end. */
int cmd_logs(int argc, char **argv);

/* `drover settings`: every tunable with its variable, default and value in effect. */
int cmd_settings(int argc, char **argv);

#endif
