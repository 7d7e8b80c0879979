// Where the GPU time of a training step goes, by kind of op (the categories of op_table.h): every
// CUDA op call is bracketed by two CUDA events while profiling is on (no host synchronisation
// until the totals are read). Off by default; the benchmark turns it on for a separate, timed-apart
// step.
#pragma once

#include <array>

#include "ops/op_table.h"

namespace moeforge::ops {

void set_op_profiling(bool on);
bool op_profiling();
// Milliseconds per category since the last read (or since profiling was turned on); synchronises
// the device, then starts a new tally.
std::array<double, static_cast<size_t>(OpCategory::kCount)> read_op_profile_ms();

// Records the GPU interval of one op call, under the op's category, when profiling is on; or of a
// call that is not an op (a collective), under `category`.
class OpTimer {
 public:
  explicit OpTimer(Op op) : OpTimer(op_info(op).category) {}
  explicit OpTimer(OpCategory category);
  ~OpTimer();
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  int slot_ = -1;
};

}  // namespace moeforge::ops
