// Helpers of the op tests: fixed-seed random inputs, float64 reference arithmetic and
// central-difference gradients of a scalar objective.
#pragma once

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "op_cases.h"  // random_tensor
#include "testing.h"

namespace moeforge::testing {

inline std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> f = t.to_float_vector();
  return std::vector<double>(f.begin(), f.end());
}

inline std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// sum(out * weights) in float64: the scalar objective whose gradient the backward ops compute
// when given `weights` as the output gradient.
inline double weighted_sum(const Tensor& out, const Tensor& weights) {
  const std::vector<float> o = out.to_float_vector(), w = weights.to_float_vector();
  EXPECT_EQ(o.size(), w.size());
  double s = 0;
  for (size_t i = 0; i < o.size() && i < w.size(); ++i) s += static_cast<double>(o[i]) * w[i];
  return s;
}

// d objective / d x by central differences, perturbing each element of the float32 tensor x in
// place by +-h (and restoring it).
inline std::vector<float> numeric_grad(const Tensor& x, const std::function<double()>& objective,
                                       float h) {
  float* p = x.data<float>();
  std::vector<float> grad(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float saved = p[i];
    p[i] = saved + h;
    const double plus = objective();
    p[i] = saved - h;
    const double minus = objective();
    p[i] = saved;
    grad[i] = static_cast<float>((plus - minus) / (2.0 * static_cast<double>(h)));
  }
  return grad;
}

}  // namespace moeforge::testing
