#include "model/rope.h"

#include <cmath>

#include "core/error.h"

namespace moeforge {

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
    default:
      fail(ErrorCode::kUnsupported, "rope type '", rope_type_name(rope.type),
           "' is not implemented yet (default and linear are)");
  }
  return table;
}

}  // namespace moeforge
