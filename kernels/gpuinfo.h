/* gpuinfo.h: the GPUs this node has and how busy they are.
 *
 * The inventory comes from the CUDA runtime when drover is built with CUDA (none when
 * built without it or when no GPU answers), listed in PCI bus id order: that is the
 * order an agent hands GPUs to its workers (local rank 0 the first), whatever order CUDA
 * enumerates them in. Each GPU is named by its UUID ("GPU-..."), which CUDA_VISIBLE_DEVICES
 * takes, so a worker sees exactly its own GPUs even when the agent itself was given a
 * subset of the node's (Slurm's CUDA_VISIBLE_DEVICES).
 *
 * Use (memory in use, utilisation) comes from NVML, loaded at run time
 * (libnvidia-ml.so.1, part of the NVIDIA driver): none without it. */
#ifndef DROVER_KERNELS_GPUINFO_H
#define DROVER_KERNELS_GPUINFO_H

#include <stdint.h>

#include "common/proto.h"

#define GPUINFO_MAX 64 /* GPUs of one node that are looked at */

/* Fills *gpus (malloc'ed; gpuinfo_free it) and *count, in PCI bus id order. Never fails:
 * a CUDA error means zero GPUs (logged at debug level). */
void gpuinfo_query(proto_gpu_t **gpus, uint32_t *count);

/* n GPUs that are not there, for tests of the device assignment on machines without one
 * (DROVER_FAKE_GPUS): index i is on PCI bus n - i, so the bus id order is the
 * reverse of the index order, and its UUID is "GPU-fake-<i>". Filled as gpuinfo_query. */
void gpuinfo_fake(uint32_t n, proto_gpu_t **gpus, uint32_t *count);

/* Frees what gpuinfo_query or gpuinfo_fake filled. */
void gpuinfo_free(proto_gpu_t *gpus, uint32_t count);

/* Measures each of gpus[0..n) through NVML into out[] (room for n), by UUID or else PCI
 * bus id. Returns how many it measured (0: no NVML, or none of them found), in order. */
uint32_t gpuinfo_usage(const proto_gpu_t *gpus, uint32_t n, proto_gpu_stat_t *out);

#endif
