// Device memory: a caching allocator in the manner of PyTorch's, reduced to what training needs.
// Freed blocks go to a free list keyed by (device, stream, size) and are reused by later requests
// on the same stream of the same or a slightly larger size, so steady-state training does no
// cudaMalloc/cudaFree (each of which synchronises the device). Sizes round up to 512 B below 1 MiB
// and to 2 MiB above.
//
// Streams (core/cuda/caching_allocator.h): a block belongs to the stream current when it was
// allocated. Freed, it is at once reusable on that stream, whose order puts the next user's work
// after the last one's; it never goes to another stream's pool. Streams declared through
// cuda_record_stream get an event recorded when the block is freed; the block waits in `pending`
// until all of them have completed, checked without blocking at each allocation.
#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/check.h"
#include "core/cuda/device_copy.h"
#include "core/cuda/stream.h"

namespace moeforge {
namespace {

constexpr size_t kSmallLimit = 1 << 20;

size_t round_size(size_t bytes) {
  if (bytes < kSmallLimit) return (bytes + 511) / 512 * 512 + (bytes == 0 ? 512 : 0);
  constexpr size_t kLarge = 2 << 20;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

struct Block {
  size_t size = 0;
  int device = 0;
  StreamHandle stream = nullptr;      // allocated on; its pool takes the block back
  std::vector<StreamHandle> used_on;  // other streams, from cuda_record_stream
};

// A freed block whose other streams may still use it: reusable once every event has completed.
struct Pending {
  void* ptr = nullptr;
  Block block;
  std::vector<cudaEvent_t> events;
};

using PoolKey = std::tuple<int, uintptr_t, size_t>;  // device, stream, size

PoolKey pool_key(int device, StreamHandle stream, size_t size) {
  return {device, reinterpret_cast<uintptr_t>(stream), size};
}

// Sets the current device for a scope (events are recorded on their stream's device).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      cudaSetDevice(device);
      switched_ = true;
    }
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool switched_ = false;
};

struct CachingAllocator {
  std::mutex mutex;
  std::multimap<PoolKey, void*> free_blocks;
  std::unordered_map<void*, Block> live_blocks;
  std::deque<Pending> pending;
  std::map<int, std::vector<cudaEvent_t>> spare_events;  // by device
  MemoryStats stats;

  void to_pool(void* ptr, const Block& b) { free_blocks.emplace(pool_key(b.device, b.stream, b.size), ptr); }

  // Moves every pending block whose events have all completed into its stream's pool. Never waits.
  void process_pending() {
    for (auto it = pending.begin(); it != pending.end();) {
      bool done = true;
      for (cudaEvent_t e : it->events) {
        const cudaError_t err = cudaEventQuery(e);
        if (err == cudaErrorNotReady) {
          (void)cudaGetLastError();  // not an error
          done = false;
          break;
        }
        MF_CUDA_CHECK(err);
      }
      if (!done) {
        ++it;
        continue;
      }
      auto& spare = spare_events[it->block.device];
      spare.insert(spare.end(), it->events.begin(), it->events.end());
      to_pool(it->ptr, it->block);
      it = pending.erase(it);
    }
  }

  // Out of memory, or asked to: waits for the device (so every pending block is free), then
  // returns all cached blocks to the system.
  void release_cache() {
    note_cuda_host_sync();
    cudaDeviceSynchronize();
    process_pending();
    for (auto& [key, ptr] : free_blocks) {
      cudaFree(ptr);
      stats.reserved -= std::get<2>(key);
    }
    free_blocks.clear();
  }

  // Records an event on each of the block's other streams; false when that fails (the caller
  // then waits for the device instead). Runs in a destructor's path: never throws.
  bool record_uses(Pending& p) {
    DeviceScope scope(p.block.device);
    auto& spare = spare_events[p.block.device];
    for (StreamHandle s : p.block.used_on) {
      cudaEvent_t e = nullptr;
      if (!spare.empty()) {
        e = spare.back();
        spare.pop_back();
      } else if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
      }
      p.events.push_back(e);
      if (cudaEventRecord(e, s) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
      }
    }
    return true;
  }
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // never destroyed: frees after CUDA teardown would fail
  return *a;
}

}  // namespace

void* cuda_alloc(size_t bytes, const char* what) {
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  const StreamHandle stream = current_stream();
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  if (!a.pending.empty()) a.process_pending();
  size_t size = round_size(bytes);
  // Reuse a cached block of this stream no more than 25% larger than asked, so small requests
  // cannot pin big blocks.
  auto it = a.free_blocks.lower_bound(pool_key(device, stream, size));
  void* ptr = nullptr;
  if (it != a.free_blocks.end() && std::get<0>(it->first) == device && std::get<1>(it->first) == reinterpret_cast<uintptr_t>(stream) &&
      std::get<2>(it->first) <= size + size / 4) {
    size = std::get<2>(it->first);
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
  Block& b = a.live_blocks[ptr];
  b.size = size;
  b.device = device;
  b.stream = stream;
  b.used_on.clear();
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
  a.stats.in_use -= it->second.size;
  if (it->second.used_on.empty()) {
    a.to_pool(ptr, it->second);
  } else {
    Pending p{ptr, std::move(it->second), {}};
    if (a.record_uses(p)) {
      a.pending.push_back(std::move(p));
    } else {  // no event: wait for the device instead, then the block is free for any use
      note_cuda_host_sync();
      cudaDeviceSynchronize();
      auto& spare = a.spare_events[p.block.device];
      spare.insert(spare.end(), p.events.begin(), p.events.end());
      a.to_pool(ptr, p.block);
    }
  }
  a.live_blocks.erase(it);
}

void cuda_record_stream(void* ptr, StreamHandle stream) {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  auto it = a.live_blocks.find(ptr);
  if (it == a.live_blocks.end() || it->second.stream == stream) return;
  for (StreamHandle s : it->second.used_on)
    if (s == stream) return;
  it->second.used_on.push_back(stream);
}

void cuda_empty_cache() {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  a.release_cache();
}

size_t cuda_pending_free_blocks() {
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  return a.pending.size();
}

void cuda_allocator_stream_destroyed(StreamHandle stream) {
  if (stream == nullptr) return;
  // After this wait nothing queued on `stream` is outstanding, so its blocks can go to the
  // compute stream (queried first: it may make the stream, which takes no allocator lock).
  note_cuda_host_sync();
  cudaStreamSynchronize(stream);
  StreamHandle compute = nullptr;
  try {
    compute = compute_stream();
  } catch (...) {
    return;  // no device to speak of: nothing to hand over
  }
  CachingAllocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mutex);
  try {
    a.process_pending();
  } catch (...) {
  }
  std::vector<std::pair<PoolKey, void*>> moved;
  for (auto it = a.free_blocks.begin(); it != a.free_blocks.end();) {
    if (std::get<1>(it->first) == reinterpret_cast<uintptr_t>(stream)) {
      moved.emplace_back(pool_key(std::get<0>(it->first), compute, std::get<2>(it->first)), it->second);
      it = a.free_blocks.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [key, ptr] : moved) a.free_blocks.emplace(key, ptr);
  for (auto& [ptr, b] : a.live_blocks)
    if (b.stream == stream) b.stream = compute;
  for (Pending& p : a.pending)
    if (p.block.stream == stream) p.block.stream = compute;
  // Other streams' records of `stream` are moot now that it has finished.
  for (auto& [ptr, b] : a.live_blocks) std::erase(b.used_on, stream);
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

int select_cuda_device(int local_rank) {
  int n = 0;
  MF_CHECK(cudaGetDeviceCount(&n) == cudaSuccess && n > 0, kUnsupported, "no CUDA device is visible to this process");
  const int device = local_rank % n;
  MF_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

}  // namespace moeforge
