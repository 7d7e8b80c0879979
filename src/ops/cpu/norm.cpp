// RMSNorm on the CPU, as Qwen3MoeRMSNorm in float32: y = w * (x * rsqrt(mean(x^2) + eps)); the
// residual adds around it are the separate ops, in turn.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {

void rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const int64_t rows = x.size(0), d = x.size(1);
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  float* py = y.data<float>();
  float* pr = rstd.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = px + r * d;
    double sum_sq = 0;
    for (int64_t j = 0; j < d; ++j) sum_sq += static_cast<double>(xr[j]) * xr[j];
    const float mean_sq = static_cast<float>(sum_sq / static_cast<double>(d));
    const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(mean_sq) + eps));
    pr[r] = inv;
    float* yr = py + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = pw[j] * (xr[j] * inv);
  }
}

// With n = x * r and r = (mean(x^2) + eps)^-1/2:
//   dx = r * (w*dy) - x * r^3 * sum(w*dy*x) / D,   dw += sum over rows of dy * n.
void add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& y,
                      Tensor& rstd) {
  add_inplace(x, residual);
  rms_norm_fwd(x, w, eps, y, rstd);
}

void rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                  const Tensor& dx_residual, Tensor& dx, Tensor& grad_w) {
  const int64_t rows = x.size(0), d = x.size(1);
  const float* pdy = dy.data<float>();
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const float* pr = rstd.data<float>();
  float* pdx = dx.data<float>();
  float* pgw = grad_w.data<float>();
  std::vector<double> dw(static_cast<size_t>(d), 0.0);  // summed over all rows in double
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = px + r * d;
    const float* gr = pdy + r * d;
    const double inv = pr[r];
    double dot = 0;  // sum_j w_j dy_j x_j
    for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(pw[j]) * gr[j] * xr[j];
    const double coef = inv * inv * inv * dot / static_cast<double>(d);
    float* dxr = pdx + r * d;
    for (int64_t j = 0; j < d; ++j) {
      dxr[j] = static_cast<float>(inv * pw[j] * gr[j] - coef * xr[j]);
      dw[j] += static_cast<double>(gr[j]) * xr[j] * inv;
    }
  }
  for (int64_t j = 0; j < d; ++j) pgw[j] += static_cast<float>(dw[j]);
  if (dx_residual.defined()) add_inplace(dx, dx_residual);
}

}  // namespace moeforge::ops::cpu
