// The stream side of the CUDA caching allocator (core/cuda/caching_allocator.cu). CUDA-free header.
//
// Each block remembers the stream current when it was allocated. A freed block goes back to that
// stream's pool and is handed out again at once to an allocation on the same stream: the stream
// orders the new user's work after the old one's. A block never moves to another stream's pool
// while work may still use it: if other streams were declared with cuda_record_stream, freeing
// records an event on each, and the block joins its pool only when all of them have completed
// (queried, without waiting, at each allocation).
#pragma once

#include <cstddef>

#include "core/cuda/stream.h"

namespace moeforge {

// `ptr` (the start of a live block) is used by work on `stream`. No-op for memory the allocator
// did not hand out and for the block's own stream.
void cuda_record_stream(void* ptr, StreamHandle stream);

// Waits for the device, then returns every cached block to the system (cudaFree).
void cuda_empty_cache();

// Number of freed blocks waiting on another stream's events before they can be reused (tests).
size_t cuda_pending_free_blocks();

// For Stream's destructor: `stream` is going away. Waits for it, then hands its cached and live
// blocks to the compute stream, so a later stream with the same handle inherits nothing.
void cuda_allocator_stream_destroyed(StreamHandle stream);

}  // namespace moeforge
