// Block-FP8 dequantisation in DeepSeek's layout, partial edge blocks included (the fixture
// deepseek_v3_fp8_blocks checks whole blocks against Transformers; its dequantisation refuses
// partial ones, so these are checked against the definition: weight = fp8 * its block's scale).
#include "io/block_fp8.h"

#include "core/error.h"
#include "testing.h"

namespace moeforge {
namespace {

Tensor fp8_matrix(int64_t rows, int64_t cols) {
  Tensor t = Tensor::empty({rows, cols}, DType::kF8E4M3);
  for (int64_t i = 0; i < rows * cols; ++i)
    t.data<uint8_t>()[i] = float_to_f8e4m3(static_cast<float>(i % 13) * 0.25f - 1.5f);
  return t;
}

TEST(BlockFp8, PartialEdgeBlocksTakeTheirOwnScale) {
  const int64_t rows = 5, cols = 7, br = 2, bc = 3;  // a 3 x 3 grid, the last row and column partial
  const Tensor q = fp8_matrix(rows, cols);
  std::vector<float> scales(9);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = 0.5f + static_cast<float>(i);
  const Tensor w = dequantize_block_fp8(q, Tensor::from_vector(scales, {3, 3}), br, bc, "w");
  ASSERT_EQ(w.shape(), (Shape{rows, cols}));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      EXPECT_EQ(w.data<float>()[r * cols + c],
                f8e4m3_to_float(q.data<uint8_t>()[r * cols + c]) * scales[(r / br) * 3 + c / bc])
          << r << ", " << c;
}

TEST(BlockFp8, ErrorsNameTheTensor) {
  const Tensor q = fp8_matrix(4, 4);
  try {
    dequantize_block_fp8(q, Tensor::zeros({1, 1}, DType::kF32), 2, 2, "model.layers.0.self_attn.o_proj.weight");
    FAIL() << "a 1 x 1 scale grid for 2 x 2 blocks of a 4 x 4 weight was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("model.layers.0.self_attn.o_proj.weight_scale_inv has shape [1, 1], expected [2, 2]"),
              std::string::npos) << what;
  }
  EXPECT_THROW(dequantize_block_fp8(Tensor::zeros({4, 4}, DType::kF32), Tensor::zeros({2, 2}, DType::kF32), 2, 2, "w"),
               Error);
}

}  // namespace
}  // namespace moeforge
