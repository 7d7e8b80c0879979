// The one family of CUDA-side error checks. Each throws moeforge::Error(kBackend) naming the call,
// the library's own error string and the source line. Include only in CUDA translation units.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define MF_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    cudaError_t mf_err_ = (expr);                                                        \
    if (mf_err_ != cudaSuccess)                                                          \
      ::moeforge::fail(::moeforge::ErrorCode::kBackend, "CUDA error ",                   \
                       cudaGetErrorName(mf_err_), " (", cudaGetErrorString(mf_err_),     \
                       ") in ", #expr, " at ", __FILE__, ":", __LINE__);                 \
  } while (0)

// After a kernel launch: catches bad launch configurations at the launch site.
#define MF_CUDA_CHECK_LAUNCH() MF_CUDA_CHECK(cudaGetLastError())

#define MF_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                   \
    cublasStatus_t mf_st_ = (expr);                                                      \
    if (mf_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::moeforge::fail(::moeforge::ErrorCode::kBackend, "cuBLAS error ",                 \
                       cublasGetStatusName(mf_st_), " (", cublasGetStatusString(mf_st_), \
                       ") in ", #expr, " at ", __FILE__, ":", __LINE__);                 \
  } while (0)

// NCCL's check lives with the communicator code (src/dist) so that nccl.h stays out of other units;
// it follows the same shape: MF_NCCL_CHECK(expr).
