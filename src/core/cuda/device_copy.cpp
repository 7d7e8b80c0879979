// Host/device copies on the current stream (core/cuda/device_copy.h), with the pinned staging
// buffers of small host-to-device copies. Host code, CUDA builds.
#include "core/cuda/device_copy.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/cuda/check.h"
#include "core/cuda/stream.h"

namespace moeforge {
namespace {

std::atomic<int64_t> g_host_syncs{0};

// Pinned buffers for host-to-device copies of at most kStagedCopyLimit bytes, in power-of-two
// sizes from 4 KiB. Each remembers, as an event, the copy that last read it; a buffer is written
// again only once that event has completed (queried without waiting). Per-step inputs (token ids,
// positions, labels, masks) are a handful of such copies, so a few buffers serve a whole run.
constexpr size_t kStagingCapBytes = size_t{256} << 20;

struct StagingBuffer {
  void* ptr = nullptr;
  size_t size = 0;
  int device = 0;
  cudaEvent_t last_copy = nullptr;
};

struct Staging {
  std::mutex mutex;
  std::vector<StagingBuffer> buffers;  // never freed: cudaFreeHost would wait for the device
  size_t bytes = 0;
};

Staging& staging() {
  static auto* s = new Staging();  // never destroyed: pinned memory outlives static destructors
  return *s;
}

size_t staging_size(size_t bytes) {
  size_t size = 4096;
  while (size < bytes) size <<= 1;
  return size;
}

// A buffer of `size` bytes on `device` whose last copy is done, else a new one; -1 when the cap
// is reached or pinned memory cannot be had.
int free_staging_buffer(Staging& st, size_t size, int device) {
  for (size_t i = 0; i < st.buffers.size(); ++i) {
    const StagingBuffer& b = st.buffers[i];
    if (b.size != size || b.device != device) continue;
    const cudaError_t err = cudaEventQuery(b.last_copy);
    if (err == cudaSuccess) return static_cast<int>(i);
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();
      continue;
    }
    MF_CUDA_CHECK(err);
  }
  if (st.bytes + size > kStagingCapBytes) return -1;
  StagingBuffer b;
  b.size = size;
  b.device = device;
  if (cudaHostAlloc(&b.ptr, size, cudaHostAllocDefault) != cudaSuccess) {
    (void)cudaGetLastError();  // no pinned memory: the pageable path still works
    return -1;
  }
  MF_CUDA_CHECK(cudaEventCreateWithFlags(&b.last_copy, cudaEventDisableTiming));
  st.buffers.push_back(b);
  st.bytes += size;
  return static_cast<int>(st.buffers.size() - 1);
}

}  // namespace

void note_cuda_host_sync() { g_host_syncs.fetch_add(1, std::memory_order_relaxed); }
int64_t cuda_host_sync_count() { return g_host_syncs.load(std::memory_order_relaxed); }

size_t cuda_staging_bytes() {
  Staging& st = staging();
  std::lock_guard<std::mutex> lock(st.mutex);
  return st.bytes;
}

void cuda_copy_to_host(void* dst, const void* src, size_t bytes) {
  note_cuda_host_sync();
  if (bytes == 0) return;
  cudaStream_t stream = current_stream();
  MF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  // A pageable destination is already written on return; a pinned one is not until this.
  MF_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void cuda_copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t stream = current_stream();
  if (bytes <= kStagedCopyLimit) {
    int device = 0;
    MF_CUDA_CHECK(cudaGetDevice(&device));
    Staging& st = staging();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int i = free_staging_buffer(st, staging_size(bytes), device);
    if (i >= 0) {
      StagingBuffer& b = st.buffers[static_cast<size_t>(i)];
      std::memcpy(b.ptr, src, bytes);
      MF_CUDA_CHECK(cudaMemcpyAsync(dst, b.ptr, bytes, cudaMemcpyHostToDevice, stream));
      MF_CUDA_CHECK(cudaEventRecord(b.last_copy, stream));
      return;
    }
  }
  // From pageable memory the call returns once the source has been read (into the driver's own
  // staging), so the caller may reuse it; the device side stays ordered on `stream`.
  MF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
}

void cuda_copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (dst_device == Device::kCPU && src_device == Device::kCUDA) return cuda_copy_to_host(dst, src, bytes);
  if (dst_device == Device::kCUDA && src_device == Device::kCPU) return cuda_copy_to_device(dst, src, bytes);
  if (bytes == 0) return;
  if (dst_device == Device::kCPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
  MF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream()));
}

void* cuda_pinned_alloc(size_t bytes, const char* what) {
  void* ptr = nullptr;
  const cudaError_t err = cudaHostAlloc(&ptr, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(ErrorCode::kOutOfMemory, "out of page-locked host memory allocating ", format_bytes(bytes),
         what ? str_cat(" for ", what) : std::string(), ": ", cudaGetErrorString(err));
  }
  return ptr;
}

void cuda_pinned_free(void* ptr) {
  if (ptr == nullptr) return;
  note_cuda_host_sync();
  cudaFreeHost(ptr);  // runs in destructors: an error here is not thrown
}

void cuda_copy_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  MF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, current_stream()));
}

void cuda_zero_bytes(void* dst, size_t bytes) {
  if (bytes == 0) return;
  MF_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, current_stream()));
}

}  // namespace moeforge
