// gemm, linear, in-place updates and the embedding, against float64 recomputations.
#include <cmath>
#include <limits>

#include "ops/dense.h"
#include "ops/embedding.h"
#include "ops_test_util.h"

namespace moeforge::testing {
namespace {

// Forward results of float32 ops against float64 references: relative L2 below this.
constexpr double kForwardTol = 1e-5;

// C = alpha * op(A) op(B) + beta * C0 in float64.
std::vector<double> reference_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb,
                                   const Tensor& c0, double alpha, double beta) {
  const int64_t m = c0.size(0), n = c0.size(1), k = ta ? a.size(0) : a.size(1);
  const std::vector<double> av = to_double(a), bv = to_double(b), cv = to_double(c0);
  std::vector<double> out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double x = ta ? av[p * a.size(1) + i] : av[i * a.size(1) + p];
        const double y = tb ? bv[j * b.size(1) + p] : bv[p * b.size(1) + j];
        s += x * y;
      }
      out[i * n + j] = alpha * s + (beta == 0 ? 0.0 : beta * cv[i * n + j]);
    }
  return out;
}

TEST(Gemm, AllTransposeCombinationsWithBeta) {
  std::mt19937 rng(1);
  const int64_t m = 13, n = 7, k = 29;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 1.0f, -0.5f}) {
        SCOPED_TRACE(::testing::Message() << "ta=" << ta << " tb=" << tb << " beta=" << beta);
        const Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}, rng);
        const Tensor b = random_tensor(tb ? Shape{n, k} : Shape{k, n}, rng);
        const Tensor c0 = random_tensor({m, n}, rng);
        Tensor c = c0.clone();
        ops::gemm(a, ta, b, tb, c, 0.75f, beta);
        EXPECT_LT(rel_l2(c.to_float_vector(), to_float(reference_gemm(a, ta, b, tb, c0, 0.75, beta))),
                  kForwardTol);
      }
}

TEST(Gemm, BetaZeroIgnoresNaNInOutput) {
  std::mt19937 rng(2);
  const Tensor a = random_tensor({4, 5}, rng), b = random_tensor({5, 3}, rng);
  Tensor c = Tensor::from_vector(std::vector<float>(12, std::numeric_limits<float>::quiet_NaN()), {4, 3});
  ops::gemm(a, false, b, false, c);
  for (float v : c.to_float_vector()) EXPECT_TRUE(std::isfinite(v));
  EXPECT_LT(rel_l2(c.to_float_vector(), to_float(reference_gemm(a, false, b, false, c, 1, 0))),
            kForwardTol);
}

TEST(Gemm, EmptyInnerDimensionScalesC) {
  const Tensor a = Tensor::empty({3, 0}, DType::kF32), b = Tensor::empty({0, 2}, DType::kF32);
  Tensor c = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2});
  ops::gemm(a, false, b, false, c, 1.0f, 2.0f);
  EXPECT_EQ(c.to_float_vector(), (std::vector<float>{2, 4, 6, 8, 10, 12}));
}

TEST(Gemm, ShapeErrorsNameBothShapes) {
  std::mt19937 rng(3);
  const Tensor a = random_tensor({4, 5}, rng), b = random_tensor({6, 3}, rng);
  Tensor c = Tensor::zeros({4, 3}, DType::kF32);
  expect_error([&] { ops::gemm(a, false, b, false, c); }, {"gemm", "[4, 5]", "[6, 3]"});
  Tensor wrong_c = Tensor::zeros({4, 4}, DType::kF32);
  const Tensor b2 = random_tensor({5, 3}, rng);
  expect_error([&] { ops::gemm(a, false, b2, false, wrong_c); }, {"c", "[4, 4]", "[4, 3]"});
  const Tensor a_bf16 = a.to(DType::kBF16);
  expect_error([&] { ops::gemm(a_bf16, false, b2, false, c); }, {"bfloat16", "float32"});
  expect_error([&] { ops::gemm(a.transpose(0, 1), true, b2, false, c); }, {"not contiguous"});
}

TEST(Linear, MatchesXTimesWTransposed) {
  std::mt19937 rng(4);
  const Tensor x = random_tensor({9, 16}, rng), w = random_tensor({11, 16}, rng);
  const Tensor y = ops::linear(x, w);
  ASSERT_EQ(y.shape(), (Shape{9, 11}));
  const Tensor zero = Tensor::zeros({9, 11}, DType::kF32);
  EXPECT_LT(rel_l2(y.to_float_vector(), to_float(reference_gemm(x, false, w, true, zero, 1, 0))),
            kForwardTol);
}

TEST(Linear, BiasIsAddedToEveryRowAndItsGradientIsTheColumnSums) {
  std::mt19937 rng(9);
  const Tensor x = random_tensor({9, 16}, rng), w = random_tensor({11, 16}, rng);
  const Tensor bias = random_tensor({11}, rng);
  const Tensor y = ops::linear(x, w, bias);
  std::vector<double> expected =
      reference_gemm(x, false, w, true, Tensor::zeros({9, 11}, DType::kF32), 1, 0);
  const std::vector<double> b = to_double(bias);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += b[i % 11];
  EXPECT_LT(rel_l2(y.to_float_vector(), to_float(expected)), kForwardTol);

  const Tensor dy = random_tensor({9, 11}, rng);
  Tensor grad_bias = random_tensor({11}, rng);  // accumulated into
  std::vector<double> want = to_double(grad_bias);
  const std::vector<double> d = to_double(dy);
  for (size_t i = 0; i < d.size(); ++i) want[i % 11] += d[i];
  ops::linear_bias_bwd(dy, grad_bias);
  EXPECT_LT(rel_l2(grad_bias.to_float_vector(), to_float(want)), 1e-6);
}

TEST(InPlace, AddAndScale) {
  std::mt19937 rng(5);
  Tensor a = random_tensor({3, 4}, rng);
  const Tensor b = random_tensor({3, 4}, rng);
  const std::vector<float> av = a.to_float_vector(), bv = b.to_float_vector();
  ops::add_inplace(a, b);
  ops::scale_inplace(a, -1.5f);
  const std::vector<float> got = a.to_float_vector();
  for (size_t i = 0; i < av.size(); ++i) EXPECT_EQ(got[i], (av[i] + bv[i]) * -1.5f);
  expect_error([&] { ops::add_inplace(a, random_tensor({4, 3}, rng)); }, {"[4, 3]", "[3, 4]"});
}

TEST(Embedding, ForwardGathersRows) {
  std::mt19937 rng(6);
  const Tensor weight = random_tensor({10, 6}, rng);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 0, 9, 3, 7}, {5});
  const Tensor out = ops::embedding_fwd(weight, ids);
  ASSERT_EQ(out.shape(), (Shape{5, 6}));
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 6; ++j)
      EXPECT_EQ(out.item_float(i * 6 + j), weight.item_float(ids.data<int64_t>()[i] * 6 + j));
}

// embedding_bwd of ids {3, 0, 9, 3, 7} into a random [10, 6] gradient against a double-precision
// scatter-add; rows with id padding_idx (as torch.nn.Embedding's) get nothing.
void check_embedding_bwd(int64_t padding_idx) {
  std::mt19937 rng(7);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 0, 9, 3, 7}, {5});
  const Tensor grad_out = random_tensor({5, 6}, rng);
  Tensor grad_weight = random_tensor({10, 6}, rng);
  std::vector<double> expected = to_double(grad_weight);
  const std::vector<double> g = to_double(grad_out);
  for (int64_t i = 0; i < 5; ++i)
    if (ids.data<int64_t>()[i] != padding_idx)
      for (int64_t j = 0; j < 6; ++j) expected[ids.data<int64_t>()[i] * 6 + j] += g[i * 6 + j];
  ops::embedding_bwd(grad_out, ids, grad_weight, padding_idx);
  EXPECT_LT(rel_l2(grad_weight.to_float_vector(), to_float(expected)), 1e-6);
}

TEST(Embedding, BackwardAccumulatesRepeatedIds) { check_embedding_bwd(-1); }
TEST(Embedding, BackwardSkipsThePaddingRow) { check_embedding_bwd(3); }

TEST(Embedding, OutOfRangeIdNamesIdAndVocabulary) {
  std::mt19937 rng(8);
  const Tensor weight = random_tensor({10, 6}, rng);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 10}, {2});
  expect_error([&] { ops::embedding_fwd(weight, ids); }, {"token id 10", "[0, 10)"});
  const Tensor negative = Tensor::from_vector(std::vector<int64_t>{-1}, {1});
  expect_error([&] { ops::embedding_fwd(weight, negative); }, {"token id -1", "[0, 10)"});
  Tensor grad_weight = Tensor::zeros({10, 6}, DType::kF32);
  const Tensor grad_out = random_tensor({2, 6}, rng);
  expect_error([&] { ops::embedding_bwd(grad_out, ids, grad_weight); }, {"token id 10", "[0, 10)"});
  for (float v : grad_weight.to_float_vector()) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace moeforge::testing
