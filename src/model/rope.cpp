#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moeforge {

namespace {

// YaRN's attention scale for a context extended `factor` times (1 when not extended).
double yarn_mscale(double factor, double mscale) { return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

// YaRN (Transformers' _compute_yarn_parameters): each frequency blends its interpolated value
// (divided by factor) and its original one by a linear ramp over the dimensions between the
// correction range's ends, found from beta_fast and beta_slow rotations over the original context.
// Float32 tensors there, so float32 here; the range ends are computed in double as Python does.
float yarn_inv_freq(const RopeParameters& rope, int64_t dim, float* inv) {
  const double base = rope.theta, factor = rope.factor;
  const double beta_fast = rope.beta_fast.value_or(0) != 0 ? *rope.beta_fast : 32.0;
  const double beta_slow = rope.beta_slow.value_or(0) != 0 ? *rope.beta_slow : 1.0;
  const auto correction_dim = [&](double rotations) {
    const double context = static_cast<double>(rope.original_max_position_embeddings);
    return static_cast<double>(dim) * std::log(context / (rotations * 2 * M_PI)) / (2 * std::log(base));
  };
  double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // as Transformers: no zero-width ramp
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float pos_freq = std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(dim));
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (static_cast<float>(factor) * pos_freq);
    const float ramp = std::clamp((static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low), 0.0f, 1.0f);
    const float extrapolation_share = 1.0f - ramp;
    inv[i] = interpolation * (1.0f - extrapolation_share) + extrapolation * extrapolation_share;
  }
  if (rope.attention_factor) return static_cast<float>(*rope.attention_factor);
  if (rope.mscale.value_or(0) != 0 && rope.mscale_all_dim.value_or(0) != 0)
    return static_cast<float>(yarn_mscale(factor, *rope.mscale) / yarn_mscale(factor, *rope.mscale_all_dim));
  return static_cast<float>(yarn_mscale(factor, 1.0));
}

}  // namespace

RotaryTable make_rotary_table(const RopeParameters& rope, int64_t head_dim) {
  const int64_t dim = static_cast<int64_t>(static_cast<double>(head_dim) * rope.partial_rotary_factor);
  MF_CHECK(dim > 0 && dim % 2 == 0, kInvalidArgument, "rotary dimension ", dim,
           " (head_dim x partial_rotary_factor) must be positive and even");
  RotaryTable table;
  table.inv_freq = Tensor::empty({dim / 2}, DType::kF32);
  float* inv = table.inv_freq.data<float>();
  const float base = static_cast<float>(rope.theta);
  for (int64_t i = 0; i < dim / 2; ++i) {
    // float32 throughout, like torch: base ** (arange(0, dim, 2).float() / dim)
    float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[i] = 1.0f / std::pow(base, exponent);
  }
  switch (rope.type) {
    case RopeType::kDefault: break;
    case RopeType::kLinear:
      for (int64_t i = 0; i < dim / 2; ++i) inv[i] /= static_cast<float>(rope.factor);
      break;
    case RopeType::kYarn:
      table.attention_scaling = yarn_inv_freq(rope, dim, inv);
      break;
    default:
      fail(ErrorCode::kUnsupported, "rope type '", rope_type_name(rope.type),
           "' is not implemented yet (default, linear and yarn are)");
  }
  return table;
}

}  // namespace moeforge
