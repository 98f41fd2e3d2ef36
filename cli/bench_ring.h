/* bench_ring.h: `drover bench ring`, the host ring all-reduce between local processes. */
#ifndef DROVER_CLI_BENCH_RING_H
#define DROVER_CLI_BENCH_RING_H

/* `drover bench ring [--workers 2,4] [--bytes 64M] [--iters 10] [--warmup 3] [--json]`:
 * the host ring all-reduce between local worker processes on 127.0.0.1, next to a raw
 * loopback TCP stream measured in the same run. argv[0] is the subcommand's name ("ring");
 * options follow. Prints to stdout; returns the process exit status (0 all right, 1 a
 * failure or a wrong result, 2 bad usage; --help prints the usage to stdout, 0). */
int bench_ring_main(int argc, char **argv);

#endif
