// MF_HOST_DEVICE marks a function compiled for the host and, under nvcc, for the device too, so the
// CPU backend and a CUDA kernel share one definition (ops/dropout_mask.h, ops/normal_hash.h).
#pragma once

#if defined(__CUDACC__)
#define MF_HOST_DEVICE __host__ __device__
#else
#define MF_HOST_DEVICE
#endif
