#include <cmath>

#include "core/dtype.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(DType, NamesRoundTrip) {
  for (DType d : {DType::kF64, DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3,
                  DType::kF8E5M2, DType::kI64, DType::kI32, DType::kI16, DType::kI8, DType::kU8,
                  DType::kBool}) {
    EXPECT_EQ(dtype_from_safetensors_name(dtype_safetensors_name(d)), d);
    EXPECT_EQ(dtype_from_torch_name(dtype_torch_name(d)), d);
  }
  EXPECT_FALSE(dtype_from_safetensors_name("F4").has_value());
  EXPECT_EQ(dtype_from_torch_name("torch.bfloat16"), DType::kBF16);
}

// Every bf16/f16/fp8 bit pattern that is a finite number must survive decode -> encode unchanged.
TEST(DType, NarrowFormatsRoundTripEveryBitPattern) {
  for (uint32_t b = 0; b < 65536; ++b) {
    float f = bf16_to_float(static_cast<uint16_t>(b));
    if (!std::isnan(f)) {
      EXPECT_EQ(float_to_bf16(f), b) << b;
    }
    float h = f16_to_float(static_cast<uint16_t>(b));
    if (!std::isnan(h)) {
      EXPECT_EQ(float_to_f16(h), b) << b;
    }
  }
  for (uint32_t b = 0; b < 256; ++b) {
    float f = f8e4m3_to_float(static_cast<uint8_t>(b));
    if (!std::isnan(f)) {
      EXPECT_EQ(float_to_f8e4m3(f), b) << b;
    }
    float g = f8e5m2_to_float(static_cast<uint8_t>(b));
    if (!std::isnan(g)) {
      EXPECT_EQ(float_to_f8e5m2(g), b) << b;
    }
  }
}

TEST(DType, RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even one, 1.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(f8e4m3_to_float(float_to_f8e4m3(1000.0f)), 448.0f);  // saturates
  EXPECT_EQ(f8e4m3_to_float(0x01), std::ldexp(1.0f, -9));          // smallest subnormal
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

}  // namespace
}  // namespace moeforge
