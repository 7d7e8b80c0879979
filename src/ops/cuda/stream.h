// The stream of the CUDA ops. Included by CUDA and host translation units alike.
#pragma once

#include <cuda_runtime.h>

namespace moeforge::ops::cuda {

// All kernels and library calls run on the legacy default stream, which orders them with
// Tensor's synchronous copies.
constexpr cudaStream_t kStream = 0;

}  // namespace moeforge::ops::cuda
