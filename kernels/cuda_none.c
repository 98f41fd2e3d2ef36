/* cuda_none.c: the CUDA backend's entry points in a build without the CUDA parts
 * (DROVER_CUDA=OFF, or no nvcc): no GPU can be used, and asking for one says why. */
#include "kernels/backend.h"

bool backend_cuda_available(void) {
  return false;
}

drv_result_t backend_cuda_new(int device, bool tf32, backend_t **out) {
  *out = NULL;
  return drv_error(DRV_ERR_INVALID,
                   "this drover was built without CUDA (configure with -DDROVER_CUDA=ON on a "
                   "machine with the CUDA toolkit)");
}

void backend_cuda_destroy(backend_t **be) {
  if (be) *be = NULL;
}

drv_result_t backend_cuda_pci_bus_id(const backend_t *be, char *out, size_t n) {
  if (n) *out = '\0';
  return drv_error(DRV_ERR_INVALID, "this drover was built without CUDA");
}
