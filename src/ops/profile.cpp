#include "ops/profile.h"

#include <utility>
#include <vector>

#include "core/error.h"

#ifdef MOEFORGE_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda/check.h"
#include "core/cuda/stream.h"
#endif

namespace moeforge::ops {

namespace {

struct Interval {
#ifdef MOEFORGE_WITH_CUDA
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaStream_t stream = nullptr;  // the op's: the stream current when it started
#endif
  OpCategory category = OpCategory::kElementwise;
  int op = -1;  // an Op, or -1 for a call timed by category alone
};

// Single-threaded by design: intervals are timed on the stream current at each op.
struct Profiler {
  bool on = false;
  std::vector<Interval> pool;
  size_t used = 0;
  std::array<int64_t, static_cast<size_t>(OpCategory::kCount)> bytes{};
};

Profiler& profiler() {
  static Profiler p;
  return p;
}

}  // namespace

void set_op_profiling(bool on) { profiler().on = on; }
bool op_profiling() { return profiler().on; }

void count_profiled_bytes(OpCategory category, int64_t bytes) {
  Profiler& p = profiler();
  if (p.on) p.bytes[static_cast<size_t>(category)] += bytes;
}

OpTimer::OpTimer(OpCategory category, int op) {
#ifdef MOEFORGE_WITH_CUDA
  Profiler& p = profiler();
  if (!p.on) return;
  if (p.used == p.pool.size()) {
    Interval iv;
    MF_CUDA_CHECK(cudaEventCreate(&iv.start));
    MF_CUDA_CHECK(cudaEventCreate(&iv.stop));
    p.pool.push_back(iv);
  }
  slot_ = static_cast<int>(p.used++);
  p.pool[slot_].category = category;
  p.pool[slot_].op = op;
  p.pool[slot_].stream = current_stream();
  MF_CUDA_CHECK(cudaEventRecord(p.pool[slot_].start, p.pool[slot_].stream));
#else
  (void)category;
  (void)op;
#endif
}

OpTimer::~OpTimer() {
#ifdef MOEFORGE_WITH_CUDA
  // On the op's stream: an event on the legacy stream would order every blocking stream with it.
  if (slot_ >= 0) {
    const Interval& iv = profiler().pool[slot_];
    cudaEventRecord(iv.stop, iv.stream);  // a destructor does not throw
  }
#endif
}

OpProfile read_op_profile() {
  OpProfile profile;
  profile.category_bytes = std::exchange(profiler().bytes, {});
#ifdef MOEFORGE_WITH_CUDA
  Profiler& p = profiler();
  MF_CUDA_CHECK(cudaDeviceSynchronize());
  for (size_t i = 0; i < p.used; ++i) {
    float t = 0;
    MF_CUDA_CHECK(cudaEventElapsedTime(&t, p.pool[i].start, p.pool[i].stop));
    profile.category_ms[static_cast<size_t>(p.pool[i].category)] += t;
    if (p.pool[i].op < 0) continue;
    profile.op_ms[static_cast<size_t>(p.pool[i].op)] += t;
    ++profile.op_calls[static_cast<size_t>(p.pool[i].op)];
  }
  p.used = 0;
#endif
  return profile;
}

}  // namespace moeforge::ops
