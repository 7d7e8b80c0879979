// Token cross-entropy on the CPU, as F.cross_entropy(reduction="sum", ignore_index=-100) on
// float32 logits; the sum of each row's log-sum-exp is accumulated in double.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {

namespace {
constexpr int64_t kIgnoreIndex = -100;
}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                 Tensor* dlogits, int64_t first_row) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const float* px = logits.data<float>();
  const int64_t* pt = targets.data<int64_t>();
  for (int64_t r = 0; r < n; ++r)
    MF_CHECK(pt[r] == kIgnoreIndex || (pt[r] >= 0 && pt[r] < vocab), kInvalidArgument,
             "cross_entropy: target ", pt[r], " at row ", first_row + r, " is outside [0, ", vocab,
             ") and is not the ignore index -100");
  CrossEntropyResult result;
  for (int64_t r = 0; r < n; ++r) {
    const float* x = px + r * vocab;
    float* dx = dlogits != nullptr ? dlogits->data<float>() + r * vocab : nullptr;
    if (pt[r] == kIgnoreIndex) {
      if (dx != nullptr) std::fill(dx, dx + vocab, 0.0f);
      continue;
    }
    // Read everything needed from x before dx is written: dx may be the logits themselves.
    const float max = *std::max_element(x, x + vocab);
    const float target_logit = x[pt[r]];
    // exp(x - max) goes through dx when there is one, so each element costs one exp.
    double sum = 0;
    if (dx != nullptr) {
      for (int64_t j = 0; j < vocab; ++j) sum += dx[j] = std::exp(x[j] - max);
    } else {
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(x[j] - max);
    }
    result.loss_sum += static_cast<double>(max) + std::log(sum) - target_logit;
    ++result.count;
    if (dx == nullptr) continue;
    const double scale = grad_scale / sum;  // softmax = exp(x - max) / sum
    for (int64_t j = 0; j < vocab; ++j) dx[j] = static_cast<float>(dx[j] * scale);
    dx[pt[r]] -= grad_scale;
  }
  return result;
}

}  // namespace moeforge::ops::cpu
