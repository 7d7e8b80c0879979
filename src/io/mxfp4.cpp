#include "io/mxfp4.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moeforge {

namespace {

// E2M1 by its 4-bit code: bit 3 the sign, then 2 exponent bits and 1 mantissa bit.
constexpr float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The code of the E2M1 value nearest to v (|v| <= 6), ties to the even mantissa (codes 0, 2, 4, 6).
uint8_t nearest_e2m1(float v) {
  const float a = std::fabs(v);
  uint8_t best = 0;
  for (uint8_t c = 1; c < 8; ++c) {
    const float d = std::fabs(kE2M1[c] - a), d_best = std::fabs(kE2M1[best] - a);
    if (d < d_best || (d == d_best && c % 2 == 0)) best = c;
  }
  return static_cast<uint8_t>(best | (v < 0 && best != 0 ? 8 : 0));
}

}  // namespace

Mxfp4Shapes mxfp4_shapes(const Shape& weight, const std::string& name) {
  MF_CHECK(weight.size() == 3 && weight[1] % 32 == 0, kShape, "tensor ", name, " ", shape_str(weight),
           ": MXFP4 stores [experts, in, out] weights whose `in` is a multiple of 32");
  return {{weight[0], weight[2], weight[1] / 32, 16}, {weight[0], weight[2], weight[1] / 32}};
}

Mxfp4Weight quantize_mxfp4(const Tensor& weight, const std::string& name) {
  const Mxfp4Shapes shapes = mxfp4_shapes(weight.shape(), name);
  const Tensor w = weight.to(Device::kCPU).to(DType::kF32).contiguous();
  const int64_t experts = w.size(0), in = w.size(1), rows = w.size(2), groups = in / 32;
  Mxfp4Weight q{Tensor::empty(shapes.blocks, DType::kU8), Tensor::empty(shapes.scales, DType::kU8)};
  const float* pw = w.data<float>();
  uint8_t* pb = q.blocks.data<uint8_t>();
  uint8_t* ps = q.scales.data<uint8_t>();
  for (int64_t x = 0; x < experts; ++x)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        auto at = [&](int64_t j) { return pw[(x * in + g * 32 + j) * rows + r]; };
        float amax = 0;
        for (int64_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(at(j)));
        MF_CHECK(std::isfinite(amax), kInvalidArgument, "tensor ", name, ": expert ", x, " holds a non-finite value");
        // E8M0 holds 2^-127 .. 2^127 (byte 255 is NaN); an all-zero block takes the smallest.
        const int exponent = amax > 0 ? std::clamp(static_cast<int>(std::ceil(std::log2(amax / 6.0f))), -127, 127) : -127;
        const int64_t block = (x * rows + r) * groups + g;
        ps[block] = static_cast<uint8_t>(exponent + 127);
        for (int64_t j = 0; j < 16; ++j)
          pb[block * 16 + j] = static_cast<uint8_t>(nearest_e2m1(std::ldexp(at(2 * j), -exponent)) |
                                                    (nearest_e2m1(std::ldexp(at(2 * j + 1), -exponent)) << 4));
      }
  return q;
}

Tensor dequantize_mxfp4(const Tensor& blocks, const Tensor& scales, const std::string& name) {
  MF_CHECK(blocks.dtype() == DType::kU8 && blocks.dim() == 4 && blocks.size(3) == 16, kFormat, "tensor ", name,
           "_blocks has dtype ", dtype_safetensors_name(blocks.dtype()), " and shape ", shape_str(blocks.shape()),
           "; MXFP4 blocks are U8 [experts, rows, blocks, 16]");
  const int64_t experts = blocks.size(0), rows = blocks.size(1), groups = blocks.size(2);
  MF_CHECK(scales.dtype() == DType::kU8, kFormat, "tensor ", name, "_scales has dtype ",
           dtype_safetensors_name(scales.dtype()), ", expected U8 (one power-of-two exponent per block)");
  MF_CHECK(scales.shape() == Shape({experts, rows, groups}), kShape, "tensor ", name, "_scales has shape ",
           shape_str(scales.shape()), ", expected ", shape_str({experts, rows, groups}), " for blocks ",
           shape_str(blocks.shape()));
  const Tensor q = blocks.to(Device::kCPU).contiguous(), e = scales.to(Device::kCPU).contiguous();
  const uint8_t* pq = q.data<uint8_t>();
  const uint8_t* pe = e.data<uint8_t>();
  const int64_t in = groups * 32;
  Tensor out = Tensor::empty({experts, in, rows}, DType::kF32);
  float* w = out.data<float>();
  for (int64_t x = 0; x < experts; ++x)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t block = (x * rows + r) * groups + g;
        const int exponent = static_cast<int>(pe[block]) - 127;
        for (int64_t j = 0; j < 16; ++j) {
          const uint8_t byte = pq[block * 16 + j];
          const int64_t c = g * 32 + 2 * j;  // the input column of the low nibble
          w[(x * in + c) * rows + r] = std::ldexp(kE2M1[byte & 0xF], exponent);
          w[(x * in + c + 1) * rows + r] = std::ldexp(kE2M1[byte >> 4], exponent);
        }
      }
  return out;
}

}  // namespace moeforge
