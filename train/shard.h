/* shard.h: the data order every rank agrees on, computed locally without talking.
 *
 * For epoch e the samples are visited in the order P = shard_permutation(seed, e). Global
 * step s of the epoch takes the global batch P[s*B : min((s+1)*B, n)], and rank r of W
 * takes a contiguous slice of it. So every sample is seen exactly once per epoch, whatever
 * W is; re-sharding after a failure is only a change of W; and the loss curve depends on W
 * only through float summation order. Everything here is integer arithmetic on
 * common/rng.h, hence identical on every rank and machine.
 */
#ifndef DROVER_TRAIN_SHARD_H
#define DROVER_TRAIN_SHARD_H

#include <stdint.h>

/* Fills perm[0..n) (caller-owned) with the permutation of 0..n-1 for epoch `epoch` of
 * `seed`: Fisher-Yates driven by rng_init(seed, epoch). */
void shard_permutation(uint64_t seed, uint32_t epoch, uint32_t n, uint32_t *perm);

/* Steps per epoch for n samples and global batch B: ceil(n / B), the last global batch
 * being the smaller one. 0 when n or B is 0. */
uint32_t shard_steps_per_epoch(uint32_t n, uint32_t B);

/* For step `step` of an epoch of n samples with global batch B: *batch is the size of the
 * global batch perm[step*B : min((step+1)*B, n)] (0 past the end of the epoch), and rank
 * `rank` of `world` takes perm[*begin : *begin + *count], the first (batch % world) ranks
 * taking one sample more than the rest. The slices of ranks 0..world-1 tile the global
 * batch in rank order; a rank gets count 0 when batch < world (or rank >= world). */
void shard_slice(uint32_t n, uint32_t B, uint32_t step, uint32_t rank, uint32_t world,
                 uint32_t *begin, uint32_t *count, uint32_t *batch);

#endif
