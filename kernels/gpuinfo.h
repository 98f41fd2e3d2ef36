/* gpuinfo.h: the GPUs this node has, through the CUDA runtime when drover is built with
 * CUDA; none when built without it or when no GPU answers. */
#ifndef DROVER_KERNELS_GPUINFO_H
#define DROVER_KERNELS_GPUINFO_H

#include <stdint.h>

#include "common/proto.h"

/* Fills *gpus (malloc'ed, caller frees each name and the array) and *count. Never fails:
 * a CUDA error means zero GPUs (logged at debug level). */
void gpuinfo_query(proto_gpu_t **gpus, uint32_t *count);

#endif
