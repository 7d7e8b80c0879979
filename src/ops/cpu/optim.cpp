#include <cmath>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {

double sum_of_squares(const Tensor& x) {
  const float* d = x.data<float>();
  double sum = 0;
  for (int64_t i = 0; i < x.numel(); ++i) sum += static_cast<double>(d[i]) * d[i];
  return sum;
}

void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h) {
  float* p = master.defined() ? master.data<float>() : params.data<float>();
  const float* g = grads.data<float>();
  float* m = exp_avg.data<float>();
  float* v = exp_avg_sq.data<float>();
  const int64_t* span = spans.data<int64_t>();
  const float decayed = 1.0f - h.lr * h.weight_decay;
  for (int64_t s = 0; s < spans.size(0); ++s) {
    const int64_t begin = span[3 * s], end = span[3 * s + 1];
    MF_CHECK(0 <= begin && begin <= end && end <= params.numel(), kInvalidArgument,
             "adamw_update: span ", s, " [", begin, ", ", end, ") is outside the ", params.numel(),
             " elements of the buffers");
    const float decay = span[3 * s + 2] != 0 ? decayed : 1.0f;
    for (int64_t j = begin; j < end; ++j) {
      const float gj = g[j] * h.grad_scale;
      p[j] *= decay;
      m[j] = h.beta1 * m[j] + (1.0f - h.beta1) * gj;
      v[j] = h.beta2 * v[j] + (1.0f - h.beta2) * gj * gj;
      p[j] -= h.step_size * m[j] / (std::sqrt(v[j]) / h.bc2_sqrt + h.eps);
    }
  }
  if (master.defined()) params.copy_from(master);
}

}  // namespace moeforge::ops::cpu
