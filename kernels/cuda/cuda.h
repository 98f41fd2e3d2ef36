/* cuda.h: what the CUDA backend shares with the other CUDA-aware parts (the NCCL
 * gradient reducer): its device and compute stream. Only for a backend made by
 * backend_cuda_new(). */
#ifndef DROVER_KERNELS_CUDA_H
#define DROVER_KERNELS_CUDA_H

#include <cuda_runtime_api.h>

#include "kernels/backend.h"

/* The stream every op of the backend runs on, in issue order. */
cudaStream_t backend_cuda_stream(const backend_t *be);

/* The device the backend was made for. */
int backend_cuda_device(const backend_t *be);

#endif
