/* submit.h: `drover submit`, the command that runs a job from a spec file to its result. */
#ifndef DROVER_CLI_SUBMIT_H
#define DROVER_CLI_SUBMIT_H

/* `drover submit SPEC.yaml [--target T] [--nodes N] [--set K=V]... [--json] [--detach]
 * [--coordinator EP] [--state-dir DIR] [--verbose] [--resume JOB]`: validates the spec,
 * makes sure a coordinator answers (starting one when none does), starts the local
 * target's agents, submits, follows the job to its end and prints the result. argv[0] is
 * "submit". Returns 0 when the job succeeded (or was queued with --detach), 1 when it
 * failed, was cancelled or its outcome is unknown, 2 for bad usage, an invalid spec or a
 * refused submission. */
int cmd_submit(int argc, char **argv);

#endif
