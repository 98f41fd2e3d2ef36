/* gpuinfo.c: see gpuinfo.h. */
#include "kernels/gpuinfo.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#ifdef DROVER_HAVE_CUDA
#include <cuda_runtime_api.h>

void gpuinfo_query(proto_gpu_t **gpus, uint32_t *count) {
  *gpus = NULL;
  *count = 0;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n <= 0) {
    log_debug("no GPU: %s", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return;
  }
  proto_gpu_t *g = calloc((size_t)n, sizeof *g);
  if (!g) return;
  uint32_t k = 0;
  for (int i = 0; i < n; i++) {
    struct cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    g[k].index = (uint32_t)i;
    g[k].name = strdup(p.name);
    g[k].mem_bytes = p.totalGlobalMem;
    g[k].cc_major = (uint32_t)p.major;
    g[k].cc_minor = (uint32_t)p.minor;
    k++;
  }
  *gpus = g;
  *count = k;
}
#else
void gpuinfo_query(proto_gpu_t **gpus, uint32_t *count) {
  *gpus = NULL;
  *count = 0;
}
#endif
