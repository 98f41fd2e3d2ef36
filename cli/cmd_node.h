/* cmd_node.h: the commands that run one of drover's long-lived processes in the
 * foreground: `drover coordinator`, `drover agent` and `drover worker`. Each takes the
 * arguments after `drover` (argv[0] is the command's name) and returns the process exit
 * status. */
#ifndef DROVER_CLI_CMD_NODE_H
#define DROVER_CLI_CMD_NODE_H

/* `drover coordinator [--bind EP] [--advertise EP] [--state-dir DIR] [--exit-when-idle S]`:
 * runs the coordinator until SIGINT/SIGTERM (or idle). 0 on a clean stop, 1 when it could
 * not run, 2 for bad usage. */
int cmd_coordinator(int argc, char **argv);

/* `drover agent [--coordinator EP] [--id NAME] [--target T] [--host ADDR] [--pool NAME]`:
 * the node daemon; drains on the first SIGINT/SIGTERM, stops on the second. 0 on a clean
 * stop, 1 on failure, 2 for bad usage. */
int cmd_agent(int argc, char **argv);

/* `drover worker ...`, started by an agent with the assignment on stdin (worker.h): one
 * rank. 0 when done, 3 when aborted by the coordinator, 1 on failure, 2 for bad usage or a
 * bad assignment. */
int cmd_worker(int argc, char **argv);

#endif
