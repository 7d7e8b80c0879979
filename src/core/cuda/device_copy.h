// Host/device byte copies used by Tensor; synchronous on the default stream (not a hot-path tool).
#pragma once

#include <cstddef>

#include "core/allocator.h"

namespace moeforge {

void cuda_copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void cuda_zero_bytes(void* dst, size_t bytes);

}  // namespace moeforge
