/* checks.h: the CUDA, cuBLAS and NCCL check macros (NCCL's checks.h), of one family with
 * common/drv.h's DRV_CHECK: a failed call becomes a drv_result_t, the last-error message
 * names the call and what went wrong ("cudaStreamSynchronize(s): an illegal memory access
 * was encountered"), and the location (drv_last_error_where) is the check's file:line.
 *
 *   CUDA_CHECK(call)                    cudaError_t: returns DRV_ERR_CUDA
 *   CUDA_CHECK_GOTO(call, rc, label)    cudaError_t: rc = DRV_ERR_CUDA, goto label
 *   CUDA_LAUNCH_CHECK(name)             after a <<<>>> launch: cudaGetLastError(), which
 *                                       shows a bad launch at once (a fault in the kernel
 *                                       shows at the next synchronize)
 *   CUBLAS_CHECK(call)                  cublasStatus_t: returns DRV_ERR_CUDA
 *   CUBLAS_CHECK_GOTO(call, rc, label)  cublasStatus_t: rc = DRV_ERR_CUDA, goto label
 *   NCCL_CHECK(call)                    ncclResult_t: returns drv_nccl_result()
 *   NCCL_CHECK_GOTO(call, rc, label)    ncclResult_t: rc = drv_nccl_result(), goto label
 *
 * The cuBLAS macros exist where cublas_api.h (or cublas_v2.h, cublasLt.h) was included
 * before this header, the NCCL ones where nccl.h was: this header needs only the CUDA
 * runtime, so it compiles in every part that has CUDA. The _GOTO forms are for functions
 * that release what they made under one cleanup label.
 */
#ifndef DROVER_KERNELS_CUDA_CHECKS_H
#define DROVER_KERNELS_CUDA_CHECKS_H

#include <cuda_runtime_api.h>

#include "common/drv.h"

#define CUDA_CHECK(call)                                                            \
  do {                                                                              \
    cudaError_t cuda_e_ = (call);                                                   \
    if (cuda_e_ != cudaSuccess)                                                     \
      return drv_error(DRV_ERR_CUDA, "%s: %s", #call, cudaGetErrorString(cuda_e_)); \
  } while (0)

#define CUDA_CHECK_GOTO(call, rc, label)                                            \
  do {                                                                              \
    cudaError_t cuda_e_ = (call);                                                   \
    if (cuda_e_ != cudaSuccess) {                                                   \
      (rc) = drv_error(DRV_ERR_CUDA, "%s: %s", #call, cudaGetErrorString(cuda_e_)); \
      goto label;                                                                   \
    }                                                                               \
  } while (0)

#define CUDA_LAUNCH_CHECK(name)                                                                \
  do {                                                                                         \
    cudaError_t cuda_e_ = cudaGetLastError();                                                  \
    if (cuda_e_ != cudaSuccess)                                                                \
      return drv_error(DRV_ERR_CUDA, "launch of %s: %s", (name), cudaGetErrorString(cuda_e_)); \
  } while (0)

#ifdef CUBLAS_VER_MAJOR
#define CUBLAS_CHECK(call)                                                               \
  do {                                                                                   \
    cublasStatus_t cublas_s_ = (call);                                                   \
    if (cublas_s_ != CUBLAS_STATUS_SUCCESS)                                              \
      return drv_error(DRV_ERR_CUDA, "%s: %s", #call, cublasGetStatusString(cublas_s_)); \
  } while (0)

#define CUBLAS_CHECK_GOTO(call, rc, label)                                               \
  do {                                                                                   \
    cublasStatus_t cublas_s_ = (call);                                                   \
    if (cublas_s_ != CUBLAS_STATUS_SUCCESS) {                                            \
      (rc) = drv_error(DRV_ERR_CUDA, "%s: %s", #call, cublasGetStatusString(cublas_s_)); \
      goto label;                                                                        \
    }                                                                                    \
  } while (0)
#endif

#ifdef NCCL_MAJOR
/* The drv_result_t of a failed NCCL call: a misuse (invalid usage, invalid argument: a
 * duplicate GPU, a bad count) fails alike in every world, so it is bad input that no
 * re-formation mends (DRV_ERR_INVALID); anything else is DRV_ERR_NCCL. */
static inline drv_result_t drv_nccl_result(ncclResult_t n) {
  return n == ncclInvalidUsage || n == ncclInvalidArgument ? DRV_ERR_INVALID : DRV_ERR_NCCL;
}

#define NCCL_CHECK(call)                                                                        \
  do {                                                                                          \
    ncclResult_t nccl_n_ = (call);                                                              \
    if (nccl_n_ != ncclSuccess)                                                                 \
      return drv_error(drv_nccl_result(nccl_n_), "%s: %s", #call, ncclGetErrorString(nccl_n_)); \
  } while (0)

#define NCCL_CHECK_GOTO(call, rc, label)                                                        \
  do {                                                                                          \
    ncclResult_t nccl_n_ = (call);                                                              \
    if (nccl_n_ != ncclSuccess) {                                                               \
      (rc) = drv_error(drv_nccl_result(nccl_n_), "%s: %s", #call, ncclGetErrorString(nccl_n_)); \
      goto label;                                                                               \
    }                                                                                           \
  } while (0)
#endif

#endif
