/* cuda.h: what the CUDA backend shares with the other CUDA-aware parts (the NCCL
 * gradient reducer): its device and compute stream. Only for a backend made by
 * backend_cuda_new(). */
#ifndef DROVER_KERNELS_CUDA_H
#define DROVER_KERNELS_CUDA_H

#include <cuda_runtime_api.h>

#include "kernels/backend.h"

/* When the CUDA runtime call `call` fails: rc becomes an error naming the call, then goto
 * label. For constructors that unwind through one label. */
#define CUDA_CHECK_GOTO(call, rc, label)                                     \
  do {                                                                       \
    cudaError_t e_ = (call);                                                 \
    if (e_ != cudaSuccess) {                                                 \
      (rc) = drv_error(DRV_ERR_CUDA, "%s: %s", #call, cudaGetErrorString(e_)); \
      goto label;                                                            \
    }                                                                        \
  } while (0)

/* The stream every op of the backend runs on, in issue order. */
cudaStream_t backend_cuda_stream(const backend_t *be);

/* The device the backend was made for. */
int backend_cuda_device(const backend_t *be);

#endif
