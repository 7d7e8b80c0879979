// Token cross-entropy on the CPU, as F.cross_entropy(reduction="sum", ignore_index=-100) on
// float32 logits; the log-sum-exp of each row is taken in double.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {

namespace {
constexpr int64_t kIgnoreIndex = -100;
}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                 Tensor* dlogits) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const float* px = logits.data<float>();
  const int64_t* pt = targets.data<int64_t>();
  for (int64_t r = 0; r < n; ++r)
    MF_CHECK(pt[r] == kIgnoreIndex || (pt[r] >= 0 && pt[r] < vocab), kInvalidArgument,
             "cross_entropy: target ", pt[r], " at row ", r, " is outside [0, ", vocab,
             ") and is not the ignore index -100");
  CrossEntropyResult result;
  for (int64_t r = 0; r < n; ++r) {
    const float* x = px + r * vocab;
    float* dx = dlogits != nullptr ? dlogits->data<float>() + r * vocab : nullptr;
    if (pt[r] == kIgnoreIndex) {
      if (dx != nullptr) std::fill(dx, dx + vocab, 0.0f);
      continue;
    }
    const double max = *std::max_element(x, x + vocab);
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(x[j] - max);
    const double lse = max + std::log(sum);
    result.loss_sum += lse - x[pt[r]];
    ++result.count;
    if (dx == nullptr) continue;
    for (int64_t j = 0; j < vocab; ++j)
      dx[j] = static_cast<float>(std::exp(x[j] - lse) * grad_scale);
    dx[pt[r]] = static_cast<float>((std::exp(x[pt[r]] - lse) - 1.0) * grad_scale);
  }
  return result;
}

}  // namespace moeforge::ops::cpu
