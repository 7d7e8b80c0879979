#include "io/mxfp4.h"

#include <cmath>

#include "core/error.h"

namespace moeforge {

namespace {

// E2M1 by its 4-bit code: bit 3 the sign, then 2 exponent bits and 1 mantissa bit.
constexpr float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

}  // namespace

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
