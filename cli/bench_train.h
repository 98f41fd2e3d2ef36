/* bench_train.h: `drover bench train` (the training step, PyTorch's counterpart in
 * bench/torch_mlp.py) and `drover bench overlap` (the NCCL all-reduce hidden behind the
 * backward pass); see bench_train.c. Both take the same options. */
#ifndef DROVER_CLI_BENCH_TRAIN_H
#define DROVER_CLI_BENCH_TRAIN_H

/* `drover bench train [--sizes ...] [--batch N] [--precision P] [--steps N] [--repeats N]
 * [--warmup N] [--graphs G] [--data D] [--optimizer O] [--backend B] [--json]`. argv[0] is
 * "train". Prints to stdout; returns 0, 1 on a failure, 2 for bad usage. */
int bench_train_main(int argc, char **argv);

/* `drover bench overlap [--bucket-mb 64] [--json]`: two ranks on GPU 0. argv[0] is
 * "overlap". Same exit statuses (1 as well in a build without NCCL). */
int bench_overlap_main(int argc, char **argv);

#endif
