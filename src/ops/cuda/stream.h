// The stream of the CUDA ops: every kernel launch and library call is queued on the calling
// thread's current stream (core/cuda/stream.h: the device's compute stream unless a StreamGuard
// chose another). Included by CUDA and host translation units of ops/cuda.
#pragma once

#include <cuda_runtime.h>

#include "core/cuda/stream.h"

namespace moeforge::ops::cuda {

using ::moeforge::current_stream;

}  // namespace moeforge::ops::cuda
