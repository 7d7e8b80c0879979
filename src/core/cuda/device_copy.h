// Host/device byte copies used by Tensor, all on the calling thread's current stream
// (core/cuda/stream.h). CUDA-free header.
//  - host -> device returns without waiting for the device. Up to kStagedCopyLimit bytes go through
//    a cached pinned buffer (the source is copied into it at once, so the caller may reuse its
//    memory on return; the buffer is reused only after an event says its copy is done); larger
//    ones are cudaMemcpyAsync from pageable memory, which also has read the source on return.
//  - device -> host waits for the current stream: one host synchronisation, counted.
//  - device -> device is queued on the current stream.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/allocator.h"

namespace moeforge {

constexpr size_t kStagedCopyLimit = size_t{8} << 20;

void cuda_copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void cuda_zero_bytes(void* dst, size_t bytes);  // queued on the current stream
// A device-to-host copy waits for the current stream's queued work: one host synchronisation. Every
// such copy goes through here (cuda_copy_bytes too) so benchmarks can count them per step.
void cuda_copy_to_host(void* dst, const void* src, size_t bytes);
void cuda_copy_to_device(void* dst, const void* src, size_t bytes);  // see above: never waits
// Host synchronisations so far: device-to-host copies, Stream/Event synchronize, the allocator's
// out-of-memory retry. note_cuda_host_sync() counts one more.
int64_t cuda_host_sync_count();
void note_cuda_host_sync();
// Pinned staging buffers held (bytes), for tests.
size_t cuda_staging_bytes();

// Page-locked host memory, which copies to and from the device can use without the host waiting
// (core/async_copy.h). Freeing waits for the device: a host synchronisation, counted.
void* cuda_pinned_alloc(size_t bytes, const char* what);
void cuda_pinned_free(void* ptr);
// `bytes` from src to dst queued on the current stream, any direction (unified addressing); never
// waits, so host memory on either side must be page-locked and stay valid until the stream has
// done the copy.
void cuda_copy_async(void* dst, const void* src, size_t bytes);

}  // namespace moeforge
