// Host/device byte copies used by Tensor; synchronous on the default stream (not a hot-path tool).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/allocator.h"

namespace moeforge {

void cuda_copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void cuda_zero_bytes(void* dst, size_t bytes);
// A device-to-host copy waits for all queued GPU work: one host synchronisation. Every such copy
// goes through here (cuda_copy_bytes too) so benchmarks can count them per step.
void cuda_copy_to_host(void* dst, const void* src, size_t bytes);
int64_t cuda_host_sync_count();

}  // namespace moeforge
