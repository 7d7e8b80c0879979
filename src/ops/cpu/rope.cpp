// Rotary position embedding on the CPU in the rotate_half (NeoX) form of Transformers:
// y = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[half:], x[:half]).
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {

// rotate_half is a linear map R with R^T = -R, so the backward of the rotation is the same formula
// with sin negated: dx = dy * cos + R^T(dy * sin) = dy * cos + rotate_half(dy) * (-sin).
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling, float sin_sign, Tensor& y) {
  const int64_t n = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  const float* px = x.data<float>();
  const int64_t* ppos = positions.data<int64_t>();
  const float* pf = inv_freq.data<float>();
  float* py = y.data<float>();
  std::vector<float> cos_half(half), sin_half(half);
  for (int64_t t = 0; t < n; ++t) {
    // The angle is rounded to float32 as in Transformers (position * inv_freq in fp32); cos and
    // sin of that angle are then evaluated exactly.
    const float pos = static_cast<float>(ppos[t]);
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos * pf[i]);
      cos_half[i] = static_cast<float>(std::cos(angle)) * attention_scaling;
      sin_half[i] = static_cast<float>(std::sin(angle)) * attention_scaling * sin_sign;
    }
    for (int64_t h = 0; h < heads; ++h) {
      const float* xr = px + (t * heads + h) * d;
      float* yr = py + (t * heads + h) * d;
      for (int64_t i = 0; i < half; ++i) {
        const float lo = xr[i], hi = xr[i + half];
        yr[i] = lo * cos_half[i] + (-hi) * sin_half[i];
        yr[i + half] = hi * cos_half[i] + lo * sin_half[i];
      }
    }
  }
}

// The reference composition of the two ops, in float32 throughout.
void qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                      const Tensor& inv_freq, float attention_scaling, Tensor& y, Tensor& rstd) {
  const int64_t rows = x.size(0) * x.size(1), d = x.size(2);
  Tensor normed = Tensor::empty(x.shape(), DType::kF32);
  Tensor normed_rows = normed.view({rows, d});
  rms_norm_fwd(x.view({rows, d}), w, eps, normed_rows, rstd);
  rope_apply(normed, positions, inv_freq, attention_scaling, 1.0f, y);
}

void qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                      Tensor& dx, Tensor& grad_w) {
  const int64_t rows = x.size(0) * x.size(1), d = x.size(2);
  Tensor d_normed = Tensor::empty(x.shape(), DType::kF32);
  rope_apply(dy, positions, inv_freq, attention_scaling, -1.0f, d_normed);
  Tensor dx_rows = dx.view({rows, d});
  rms_norm_bwd(d_normed.view({rows, d}), x.view({rows, d}), w, rstd, Tensor(), dx_rows, grad_w);
}

}  // namespace moeforge::ops::cpu
