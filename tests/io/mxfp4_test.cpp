// MXFP4 (GPT-OSS's release format) against its definition: each value is E2M1 code x 2^(scale - 127),
// the even element of a byte in its low nibble, the weight transposed to [E, in, out] (the
// fixture gpt_oss_mxfp4_tied checks the same against Transformers); quantising a weight that is
// already such values gives them back.
#include "io/mxfp4.h"

#include <cmath>

#include "core/error.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(Mxfp4, DequantisesByTheDefinitionAndQuantisesBack) {
  const int64_t experts = 2, rows = 3, groups = 2;
  Tensor blocks = Tensor::empty({experts, rows, groups, 16}, DType::kU8);
  Tensor scales = Tensor::empty({experts, rows, groups}, DType::kU8);
  for (int64_t i = 0; i < blocks.numel(); ++i) blocks.data<uint8_t>()[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  for (int64_t i = 0; i < scales.numel(); ++i) scales.data<uint8_t>()[i] = static_cast<uint8_t>(120 + i % 9);
  const Tensor w = dequantize_mxfp4(blocks, scales, "w");
  ASSERT_EQ(w.shape(), (Shape{experts, groups * 32, rows}));
  const float e2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (int64_t x = 0; x < experts; ++x)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < groups * 32; ++c) {
        const int64_t block = (x * rows + r) * groups + c / 32;
        const uint8_t byte = blocks.data<uint8_t>()[block * 16 + (c % 32) / 2];
        const float want = std::ldexp(e2m1[c % 2 == 0 ? byte & 0xF : byte >> 4], scales.data<uint8_t>()[block] - 127);
        ASSERT_EQ(w.data<float>()[(x * groups * 32 + c) * rows + r], want) << x << ", " << r << ", " << c;
      }
  const Mxfp4Weight q = quantize_mxfp4(w, "w");
  EXPECT_EQ(q.blocks.shape(), blocks.shape());
  EXPECT_EQ(q.scales.shape(), scales.shape());
  EXPECT_EQ(dequantize_mxfp4(q.blocks, q.scales, "w").to_float_vector(), w.to_float_vector());
}

TEST(Mxfp4, QuantisingRoundsToTheNearestCodeTiesToEven) {
  // One block of 32 inputs: its largest magnitude 6 keeps the scale at 2^0; 2.5 lies between 2
  // (code 4, even) and 3 (code 5), 0.25 between 0 and 0.5, -5 between -4 and -6 (code 14, even).
  std::vector<float> v(32, 0.0f);
  v[0] = 6.0f;
  v[1] = 2.5f;
  v[2] = 0.25f;
  v[3] = -5.0f;
  v[4] = 1.2f;
  const Mxfp4Weight q = quantize_mxfp4(Tensor::from_vector(v, {1, 32, 1}), "w");
  EXPECT_EQ(q.scales.data<uint8_t>()[0], 127);
  const std::vector<float> back = dequantize_mxfp4(q.blocks, q.scales, "w").to_float_vector();
  EXPECT_EQ(back[0], 6.0f);
  EXPECT_EQ(back[1], 2.0f);
  EXPECT_EQ(back[2], 0.0f);
  EXPECT_EQ(back[3], -4.0f);
  EXPECT_EQ(back[4], 1.0f);
}

TEST(Mxfp4, ErrorsNameTheTensor) {
  try {
    quantize_mxfp4(Tensor::zeros({1, 40, 2}, DType::kF32), "model.layers.0.mlp.experts.down_proj");
    FAIL() << "40 inputs were cut into blocks of 32";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.experts.down_proj [1, 40, 2]"), std::string::npos) << e.what();
  }
  try {
    dequantize_mxfp4(Tensor::zeros({1, 2, 1, 16}, DType::kU8), Tensor::zeros({1, 2, 2}, DType::kU8),
                     "model.layers.0.mlp.experts.gate_up_proj");
    FAIL() << "scales of another shape were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.experts.gate_up_proj_scales has shape [1, 2, 2], expected [1, 2, 1]"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moeforge
