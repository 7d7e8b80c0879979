// Memory for tensors. The CPU allocator hands out 64-byte aligned blocks; the CUDA caching allocator
// (core/cuda/caching_allocator.h, CUDA builds only) keeps freed blocks for reuse. Both keep statistics
// so a run can print its peak memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moeforge {

enum class Device : uint8_t { kCPU, kCUDA };

const char* device_name(Device device);

struct MemoryStats {
  size_t in_use = 0;       // bytes held by live tensors
  size_t peak_in_use = 0;  // high-water mark of in_use since the last reset
  size_t reserved = 0;     // bytes obtained from the system (in use + cached)
  size_t num_allocs = 0;
};

// Host memory, 64-byte aligned. Thread-safe. `what` names the allocation in an out-of-memory error.
void* cpu_alloc(size_t bytes, const char* what = nullptr);
void cpu_free(void* ptr, size_t bytes);
MemoryStats cpu_memory_stats();
void reset_cpu_peak_memory();

// Device memory through the caching allocator; throws Error(kUnsupported) in a CPU-only build.
void* cuda_alloc(size_t bytes, const char* what = nullptr);
void cuda_free(void* ptr);
MemoryStats cuda_memory_stats();
void reset_cuda_peak_memory();
bool cuda_available();  // a CUDA build with at least one visible device
// Makes GPU `local_rank` modulo the visible devices this process's current device and returns its
// index (one process per GPU; where a machine has fewer GPUs than processes, as in the one-GPU
// multi-process tests, they share). Throws Error(kUnsupported) where no GPU is visible.
int select_cuda_device(int local_rank);

std::string format_bytes(size_t bytes);  // "1.50 GiB"

}  // namespace moeforge
