// Where the GPU time of a training step goes, by kind of op (the categories of op_table.h) and by
// op: every CUDA op call is bracketed by two CUDA events while profiling is on (no host
// synchronisation until the totals are read). Off by default; the benchmark turns it on for a
// separate, timed-apart step.
#pragma once

#include <array>

#include "ops/op_table.h"

namespace moeforge::ops {

void set_op_profiling(bool on);
bool op_profiling();
struct OpProfile {
  std::array<double, static_cast<size_t>(OpCategory::kCount)> category_ms{};
  // Bytes moved, where the caller counts them (count_profiled_bytes): expert parallelism's rows to other ranks.
  std::array<int64_t, static_cast<size_t>(OpCategory::kCount)> category_bytes{};
  // The calls of each op (a collective timed by category alone counts under its category only).
  std::array<double, static_cast<size_t>(Op::kCount)> op_ms{};
  std::array<int64_t, static_cast<size_t>(Op::kCount)> op_calls{};
};
// The tally since the last read (or since profiling was turned on); synchronises the device, then
// starts a new tally.
OpProfile read_op_profile();
// Adds `bytes` to the category's count while profiling is on.
void count_profiled_bytes(OpCategory category, int64_t bytes);

// Records the GPU interval of one op call, under the op's category, when profiling is on; or of a
// call that is not an op (a collective), under `category`.
class OpTimer {
 public:
  explicit OpTimer(Op op) : OpTimer(op_info(op).category, static_cast<int>(op)) {}
  explicit OpTimer(OpCategory category) : OpTimer(category, -1) {}
  ~OpTimer();
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  OpTimer(OpCategory category, int op);
  int slot_ = -1;
};

}  // namespace moeforge::ops
