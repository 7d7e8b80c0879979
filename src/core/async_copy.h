// Copies between the device and host memory that the host does not wait for: what activation
// offloading (model/activation_offload.h) moves out after a layer's forward and back before its
// backward while the device computes. CUDA-free header; in a CPU-only build the host memory is
// plain and the copies happen at once.
#pragma once

#include "core/tensor.h"

namespace moeforge {

// A CPU tensor in page-locked memory (cudaHostAlloc), which device copies read and write directly;
// plain host memory in a CPU-only build. Not counted in cpu_memory_stats.
Tensor empty_pinned(Shape shape, DType dtype, const char* what = nullptr);

// dst <- src (both contiguous, same dtype and element count) queued on the current stream without
// waiting for it: device <-> page-locked host, or within one device. The caller keeps both
// tensors' memory alive and unwritten until the stream has done the copy (events, record_stream).
// Host to host copies happen at once.
void copy_async(const Tensor& dst, const Tensor& src);

}  // namespace moeforge
