// Where the GPU time of a training step goes, by kind of op: every CUDA op call made through ops.h
// is bracketed by two CUDA events while profiling is on (no host synchronisation until the
// totals are read). Off by default; the benchmark turns it on for a separate, timed-apart step.
#pragma once

#include <array>
#include <string_view>

namespace moeforge::ops {

enum class OpCategory {
  kAttention,   // attention forward/backward
  kExpertGemm,  // grouped (per-expert) products
  kDenseGemm,   // every other matrix product (projections, router, lm_head)
  kRouting,     // router softmax/top-k, permutation, permute/unpermute
  kNormRope,    // RMSNorm, RoPE
  kElementwise, // SwiGLU, residual adds, scaling, casts, embedding
  kLoss,        // cross-entropy
  kOptimizer,   // gradient norm, AdamW
  kCount
};
const char* op_category_name(OpCategory c);
OpCategory op_category_of(std::string_view op);

void set_op_profiling(bool on);
bool op_profiling();
// Milliseconds per category since the last read (or since profiling was turned on); synchronises
// the device, then starts a new tally.
std::array<double, static_cast<size_t>(OpCategory::kCount)> read_op_profile_ms();

// Records the GPU interval of one op call when profiling is on.
class OpTimer {
 public:
  explicit OpTimer(std::string_view op);
  ~OpTimer();
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  int slot_ = -1;
};

}  // namespace moeforge::ops
