/* nccl_none.c: the NCCL reducer's entry points in a build without NCCL (no CUDA, or no
 * nccl.h and libnccl found): there is no reducer to make, and asking for one says why.
 * collective/CMakeLists.txt builds this file or nccl_reducer.c, never both. */
#include "collective/nccl_reducer.h"

#define NO_NCCL "this drover was built without NCCL"

struct nccl_reducer {
  int unused;
};

bool nccl_reducer_available(void) {
  return false;
}

drv_result_t nccl_reducer_new_id(char *id_hex) {
  return drv_error(DRV_ERR_INVALID, NO_NCCL);
}

void nccl_reducer_share_device(const char *tag, bool loopback) {}

drv_result_t nccl_reducer_new(const nccl_config_t *cfg, nccl_reducer_t **out) {
  *out = NULL;
  return drv_error(DRV_ERR_INVALID, NO_NCCL);
}

drv_result_t nccl_reducer_rebucket(nccl_reducer_t *r, size_t bucket_bytes) {
  return drv_error(DRV_ERR_INVALID, NO_NCCL);
}

const trainer_reducer_t *nccl_reducer_hooks(nccl_reducer_t *r) {
  return NULL;
}

uint64_t nccl_reducer_seq(const nccl_reducer_t *r) {
  return 0;
}

double nccl_reducer_wait_ms(const nccl_reducer_t *r) {
  return 0;
}

drv_result_t nccl_reducer_sum(nccl_reducer_t *r, float *d_data, size_t count) {
  return drv_error(DRV_ERR_INVALID, NO_NCCL);
}

drv_result_t nccl_reducer_broadcast(nccl_reducer_t *r, float *d_data, size_t count) {
  return drv_error(DRV_ERR_INVALID, NO_NCCL);
}

void nccl_reducer_abort(nccl_reducer_t *r) {}

void nccl_reducer_destroy(nccl_reducer_t **r) {
  if (r) *r = NULL;
}
