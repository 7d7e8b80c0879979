// Device memory: a caching allocator in the manner of PyTorch's, reduced to what training needs.
// Freed blocks go to a free list keyed by size and are reused by later requests of the same or a
// slightly smaller size, so steady-state training does no cudaMalloc/cudaFree (each of which
// synchronises the device). Sizes round up to 512 B below 1 MiB and to 2 MiB above.
#include <atomic>
#include <map>
#include <mutex>
#include <unordered_map>

#include "core/allocator.h"
#include "core/cuda/check.h"
#include "core/cuda/device_copy.h"

namespace moeforge {
namespace {

constexpr size_t kSmallLimit = 1 << 20;

size_t round_size(size_t bytes) {
  if (bytes < kSmallLimit) return (bytes + 511) / 512 * 512 + (bytes == 0 ? 512 : 0);
  constexpr size_t kLarge = 2 << 20;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

struct CachingAllocator {
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;      // size -> pointer
  std::unordered_map<void*, size_t> live_blocks;  // pointer -> size
  MemoryStats stats;

  void release_cache() {
    for (auto& [size, ptr] : free_blocks) {
      cudaFree(ptr);
      stats.reserved -= size;
    }
    free_blocks.clear();
  }
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // never destroyed: frees after CUDA teardown would fail
  return *a;
}

}  // namespace

void* cuda_alloc(size_t bytes, const char* what) {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  size_t size = round_size(bytes);
  // Reuse a cached block no more than 25% larger than asked, so small requests cannot pin big blocks.
  auto it = a.free_blocks.lower_bound(size);
  void* ptr = nullptr;
  if (it != a.free_blocks.end() && it->first <= size + size / 4) {
    size = it->first;
    ptr = it->second;
    a.free_blocks.erase(it);
  } else {
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state before retrying
      a.release_cache();
      err = cudaMalloc(&ptr, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail(ErrorCode::kOutOfMemory, "CUDA out of memory allocating ", format_bytes(bytes),
           what ? str_cat(" for ", what) : std::string(), ": moeforge holds ",
           format_bytes(a.stats.in_use), " in tensors, the device has ", format_bytes(free_b),
           " free of ", format_bytes(total_b),
           ". To use less: --gradient_checkpointing full, a smaller --per_device_train_batch_size "
           "(with more --gradient_accumulation_steps), a shorter --max_seq_length, or "
           "--optimizer_precision bf16-state");
    }
    MF_CUDA_CHECK(err);
    a.stats.reserved += size;
  }
  a.live_blocks[ptr] = size;
  a.stats.in_use += size;
  a.stats.num_allocs += 1;
  if (a.stats.in_use > a.stats.peak_in_use) a.stats.peak_in_use = a.stats.in_use;
  return ptr;
}

void cuda_free(void* ptr) {
  if (ptr == nullptr) return;
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  auto it = a.live_blocks.find(ptr);
  MF_ASSERT(it != a.live_blocks.end());
  a.stats.in_use -= it->second;
  a.free_blocks.emplace(it->second, ptr);
  a.live_blocks.erase(it);
}

MemoryStats cuda_memory_stats() {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  return a.stats;
}

void reset_cuda_peak_memory() {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  a.stats.peak_in_use = a.stats.in_use;
}

bool cuda_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

namespace {
std::atomic<int64_t> g_host_syncs{0};
}  // namespace

void cuda_copy_to_host(void* dst, const void* src, size_t bytes) {
  g_host_syncs.fetch_add(1, std::memory_order_relaxed);
  MF_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

int64_t cuda_host_sync_count() { return g_host_syncs.load(std::memory_order_relaxed); }

void cuda_copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (dst_device == Device::kCPU && src_device == Device::kCUDA) return cuda_copy_to_host(dst, src, bytes);
  cudaMemcpyKind kind = dst_device == Device::kCUDA
                            ? (src_device == Device::kCUDA ? cudaMemcpyDeviceToDevice
                                                           : cudaMemcpyHostToDevice)
                            : (src_device == Device::kCUDA ? cudaMemcpyDeviceToHost
                                                           : cudaMemcpyHostToHost);
  MF_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

void cuda_zero_bytes(void* dst, size_t bytes) { MF_CUDA_CHECK(cudaMemset(dst, 0, bytes)); }

}  // namespace moeforge
