/* bench.h: the `drover bench ...` subcommands. Each measures one piece of the system on
 * this machine, checks the result of what it timed (#wrong), and prints a table with the
 * median over repeated runs after warm-up (nccl-tests style), plus one JSON line on --json.
 */
#ifndef DROVER_CLI_BENCH_H
#define DROVER_CLI_BENCH_H

/* `drover bench ring [--workers 2,4] [--bytes 64M] [--iters 10] [--warmup 3] [--json]`:
 * the host ring all-reduce between local worker processes on 127.0.0.1, next to a raw
 * loopback TCP stream measured in the same run. argv[0] is the subcommand's name ("ring");
 * options follow. Prints to stdout; returns the process exit status (0 all right, 1 a
 * failure or a wrong result, 2 bad usage). */
int bench_ring_main(int argc, char **argv);

/* `drover bench train ...` (the training step, PyTorch's counterpart in bench/torch_mlp.py)
 * and `drover bench overlap ...` (the NCCL all-reduce hidden behind the backward pass):
 * see bench_train.c. argv[0] is "train" or "overlap". Same exit statuses. */
int bench_train_main(int argc, char **argv);

#endif
