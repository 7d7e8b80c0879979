#include "core/allocator.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>

#include "core/error.h"

namespace moeforge {
namespace {

std::mutex g_cpu_mutex;
MemoryStats g_cpu_stats;

}  // namespace

const char* device_name(Device device) { return device == Device::kCPU ? "cpu" : "cuda"; }

void* cpu_alloc(size_t bytes, const char* what) {
  constexpr size_t kAlign = 64;
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (rounded == 0) rounded = kAlign;
  void* ptr = std::aligned_alloc(kAlign, rounded);
  if (ptr == nullptr) {
    fail(ErrorCode::kOutOfMemory, "out of host memory allocating ", format_bytes(bytes),
         what ? str_cat(" for ", what) : std::string(), " (", format_bytes(cpu_memory_stats().in_use),
         " in use by moeforge)");
  }
  std::lock_guard<std::mutex> lock(g_cpu_mutex);
  g_cpu_stats.in_use += bytes;
  g_cpu_stats.reserved += bytes;
  g_cpu_stats.num_allocs += 1;
  if (g_cpu_stats.in_use > g_cpu_stats.peak_in_use) g_cpu_stats.peak_in_use = g_cpu_stats.in_use;
  return ptr;
}

void cpu_free(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  std::free(ptr);
  std::lock_guard<std::mutex> lock(g_cpu_mutex);
  g_cpu_stats.in_use -= bytes;
  g_cpu_stats.reserved -= bytes;
}

MemoryStats cpu_memory_stats() {
  std::lock_guard<std::mutex> lock(g_cpu_mutex);
  return g_cpu_stats;
}

void reset_cpu_peak_memory() {
  std::lock_guard<std::mutex> lock(g_cpu_mutex);
  g_cpu_stats.peak_in_use = g_cpu_stats.in_use;
}

std::string format_bytes(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

#ifndef MOEFORGE_WITH_CUDA
void* cuda_alloc(size_t, const char*) {
  fail(ErrorCode::kUnsupported, "this moeforge build has no CUDA backend (built without CUDA)");
}
void cuda_free(void*) {}
MemoryStats cuda_memory_stats() { return {}; }
void reset_cuda_peak_memory() {}
bool cuda_available() { return false; }
int select_cuda_device(int) {
  fail(ErrorCode::kUnsupported, "a CUDA device: this moeforge build has no CUDA backend (built without CUDA)");
}
#endif

}  // namespace moeforge
