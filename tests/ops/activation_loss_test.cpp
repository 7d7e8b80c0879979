// SwiGLU, softmax, sigmoid and cross-entropy: forward against float64, backward against central
// differences.
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "ops/activation.h"
#include "ops/loss.h"
#include "ops_test_util.h"

namespace moeforge::testing {
namespace {

constexpr double kForwardTol = 1e-5;
// Backward against central differences (step kStep) of the float32 forward: relative L2 bound.
constexpr float kStep = 1e-2f;
constexpr double kGradTol = 1e-3;

TEST(SwiGlu, ForwardMatchesFloat64WithAndWithoutRowScale) {
  std::mt19937 rng(31);
  const int64_t m = 6, inter = 10;
  const Tensor gate_up = random_tensor({m, 2 * inter}, rng, -4.0f, 4.0f);
  const Tensor row_scale = random_tensor({m}, rng, 0.1f, 1.0f);
  const std::vector<double> gu = to_double(gate_up), scale = to_double(row_scale);
  for (bool scaled : {false, true}) {
    const Tensor h = scaled ? ops::swiglu_fwd(gate_up, row_scale) : ops::swiglu_fwd(gate_up);
    ASSERT_EQ(h.shape(), (Shape{m, inter}));
    std::vector<double> expected(m * inter);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < inter; ++j) {
        const double g = gu[r * 2 * inter + j], u = gu[r * 2 * inter + inter + j];
        expected[r * inter + j] = (scaled ? scale[r] : 1.0) * g / (1.0 + std::exp(-g)) * u;
      }
    EXPECT_LT(rel_l2(h.to_float_vector(), to_float(expected)), kForwardTol) << "scaled " << scaled;
  }
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(32);
  const Tensor gate_up = random_tensor({5, 14}, rng, -4.0f, 4.0f);
  const Tensor dh = random_tensor({5, 7}, rng);
  auto objective = [&] { return weighted_sum(ops::swiglu_fwd(gate_up), dh); };
  const ops::SwigluGrads g = ops::swiglu_bwd(dh, gate_up);
  EXPECT_LT(rel_l2(g.d_gate_up.to_float_vector(), numeric_grad(gate_up, objective, kStep)), kGradTol);
  EXPECT_FALSE(g.d_row_scale.defined());
}

TEST(SwiGlu, ScaledBackwardMatchesFiniteDifferencesForInputAndScale) {
  std::mt19937 rng(35);
  const Tensor gate_up = random_tensor({5, 14}, rng, -4.0f, 4.0f);
  const Tensor row_scale = random_tensor({5}, rng, 0.1f, 1.0f);
  const Tensor dh = random_tensor({5, 7}, rng);
  auto objective = [&] { return weighted_sum(ops::swiglu_fwd(gate_up, row_scale), dh); };
  const ops::SwigluGrads g = ops::swiglu_bwd(dh, gate_up, row_scale);
  EXPECT_LT(rel_l2(g.d_gate_up.to_float_vector(), numeric_grad(gate_up, objective, kStep)), kGradTol);
  EXPECT_LT(rel_l2(g.d_row_scale.to_float_vector(), numeric_grad(row_scale, objective, kStep)), kGradTol);
}

TEST(SwiGlu, RowScaleOfTheWrongShapeIsAnError) {
  std::mt19937 rng(36);
  const Tensor gate_up = random_tensor({5, 14}, rng);
  const Tensor row_scale = random_tensor({4}, rng);
  expect_error([&] { ops::swiglu_fwd(gate_up, row_scale); }, {"swiglu_fwd", "row_scale", "[5]"});
}

TEST(Softmax, ForwardMatchesFloat64) {
  std::mt19937 rng(33);
  const int64_t rows = 4, cols = 33;
  const Tensor x = random_tensor({rows, cols}, rng, -8.0f, 8.0f);
  const Tensor p = ops::softmax_fwd(x);
  const std::vector<double> xv = to_double(x);
  std::vector<double> expected(xv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += std::exp(xv[r * cols + j]);
    for (int64_t j = 0; j < cols; ++j) expected[r * cols + j] = std::exp(xv[r * cols + j]) / sum;
  }
  EXPECT_LT(rel_l2(p.to_float_vector(), to_float(expected)), kForwardTol);
}

TEST(Softmax, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(34);
  const Tensor x = random_tensor({3, 9}, rng, -3.0f, 3.0f), dp = random_tensor({3, 9}, rng);
  auto objective = [&] { return weighted_sum(ops::softmax_fwd(x), dp); };
  const Tensor dx = ops::softmax_bwd(dp, ops::softmax_fwd(x));
  EXPECT_LT(rel_l2(dx.to_float_vector(), numeric_grad(x, objective, kStep)), kGradTol);
}

TEST(Sigmoid, ForwardMatchesFloat64AndStaysFiniteAtExtremes) {
  std::mt19937 rng(37);
  const Tensor x = random_tensor({5, 3, 4}, rng, -12.0f, 12.0f);
  const Tensor y = ops::sigmoid_fwd(x);
  ASSERT_EQ(y.shape(), x.shape());
  ASSERT_EQ(y.dtype(), DType::kF32);
  std::vector<double> expected;
  for (double v : to_double(x)) expected.push_back(1.0 / (1.0 + std::exp(-v)));
  EXPECT_LT(rel_l2(y.to_float_vector(), to_float(expected)), kForwardTol);
  // exp of the argument never overflows: tiny positives below 0, exact 1 far above. (The
  // backward is differentiated by the op table's cases, op_cases.cpp.)
  const Tensor x_extreme =
      Tensor::from_vector(std::vector<float>{-1e4f, -80.0f, 0.0f, 100.0f, 1e4f}, {5, 1});
  const std::vector<float> extreme = ops::sigmoid_fwd(x_extreme).to_float_vector();
  EXPECT_EQ(extreme[0], 0.0f);
  EXPECT_GT(extreme[1], 0.0f);
  EXPECT_LT(extreme[1], 1e-34f);  // exp(-80) = 1.8e-35
  EXPECT_EQ(extreme[2], 0.5f);
  EXPECT_EQ(extreme[3], 1.0f);
  EXPECT_EQ(extreme[4], 1.0f);
}

TEST(Sigmoid, BackwardShapesMustAgree) {
  std::mt19937 rng(39);
  const Tensor y = ops::sigmoid_fwd(random_tensor({4, 1}, rng));
  expect_error([&] { ops::sigmoid_bwd(random_tensor({4}, rng), y); }, {"sigmoid_bwd", "dy", "[4, 1]"});
}

Tensor targets_with_ignored(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  std::vector<int64_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = i % 3 == 1 ? -100 : pick(rng);
  return Tensor::from_vector(t, {n});
}

TEST(CrossEntropy, MatchesFloat64LogSoftmax) {
  std::mt19937 rng(35);
  const int64_t n = 8, vocab = 50;
  const Tensor logits = random_tensor({n, vocab}, rng, -10.0f, 10.0f);
  const Tensor targets = targets_with_ignored(n, vocab, rng);
  const float grad_scale = 0.2f;
  Tensor dlogits = Tensor::empty({n, vocab}, DType::kF32);
  const ops::CrossEntropyResult r = ops::cross_entropy(logits, targets, grad_scale, &dlogits);
  const std::vector<double> x = to_double(logits);
  double expected_sum = 0;
  int64_t expected_count = 0;
  std::vector<double> expected_grad(n * vocab, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = targets.data<int64_t>()[i];
    if (t == -100) continue;
    double max = x[i * vocab];
    for (int64_t j = 0; j < vocab; ++j) max = std::max(max, x[i * vocab + j]);
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(x[i * vocab + j] - max);
    const double log_z = max + std::log(sum);
    expected_sum += log_z - x[i * vocab + t];
    ++expected_count;
    for (int64_t j = 0; j < vocab; ++j)
      expected_grad[i * vocab + j] = (std::exp(x[i * vocab + j] - log_z) - (j == t)) * grad_scale;
  }
  EXPECT_EQ(r.count, expected_count);
  EXPECT_NEAR(r.loss_sum, expected_sum, 1e-6 * expected_sum);
  EXPECT_LT(rel_l2(dlogits.to_float_vector(), to_float(expected_grad)), kForwardTol);
  // Ignored rows get exactly zero gradient.
  for (int64_t i = 1; i < n; i += 3)
    for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(dlogits.item_float(i * vocab + j), 0.0f);
  // Without dlogits the loss is the same.
  const ops::CrossEntropyResult no_grad = ops::cross_entropy(logits, targets, grad_scale, nullptr);
  EXPECT_EQ(no_grad.loss_sum, r.loss_sum);
  EXPECT_EQ(no_grad.count, r.count);
}

TEST(CrossEntropy, GradientMayReplaceTheLogitsInPlace) {
  std::mt19937 rng(38);
  const int64_t n = 6, vocab = 13;
  const Tensor logits = random_tensor({n, vocab}, rng, -5.0f, 5.0f);
  const Tensor targets = targets_with_ignored(n, vocab, rng);
  Tensor dlogits = Tensor::empty({n, vocab}, DType::kF32);
  const ops::CrossEntropyResult expected = ops::cross_entropy(logits, targets, 0.5f, &dlogits);
  Tensor in_place = logits.clone();
  const ops::CrossEntropyResult got = ops::cross_entropy(in_place, targets, 0.5f, &in_place);
  EXPECT_EQ(got.loss_sum, expected.loss_sum);
  EXPECT_EQ(got.count, expected.count);
  EXPECT_EQ(in_place.to_float_vector(), dlogits.to_float_vector());
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  std::mt19937 rng(36);
  const int64_t n = 6, vocab = 11;
  const Tensor logits = random_tensor({n, vocab}, rng, -3.0f, 3.0f);
  const Tensor targets = targets_with_ignored(n, vocab, rng);
  const float grad_scale = 1.0f / 4.0f;
  auto objective = [&] { return ops::cross_entropy(logits, targets, 0.0f, nullptr).loss_sum * grad_scale; };
  Tensor dlogits = Tensor::empty({n, vocab}, DType::kF32);
  ops::cross_entropy(logits, targets, grad_scale, &dlogits);
  EXPECT_LT(rel_l2(dlogits.to_float_vector(), numeric_grad(logits, objective, kStep)), kGradTol);
}

TEST(CrossEntropy, TargetOutsideVocabularyIsAnError) {
  std::mt19937 rng(37);
  const Tensor logits = random_tensor({2, 5}, rng);
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{1, 5}, {2});
  expect_error([&] { ops::cross_entropy(logits, targets, 1.0f, nullptr); },
               {"target 5", "row 1", "[0, 5)"});
}

TEST(CrossEntropy, ChunkedSumEqualsTheWholeBatch) {
  std::mt19937 rng(39);
  const int64_t n = 10, vocab = 7;
  const Tensor logits = random_tensor({n, vocab}, rng, -4.0f, 4.0f);
  const Tensor targets = targets_with_ignored(n, vocab, rng);
  Tensor whole_grad = Tensor::empty({n, vocab}, DType::kF32);
  const ops::CrossEntropyResult whole = ops::cross_entropy(logits, targets, 0.25f, &whole_grad);
  ops::CrossEntropySum sum;
  Tensor chunk_grad = Tensor::empty({n, vocab}, DType::kF32);
  for (const auto& [r0, r1] : {std::pair<int64_t, int64_t>{0, 4}, {4, 5}, {5, 10}}) {
    Tensor d = chunk_grad.slice(0, r0, r1);
    sum.add(logits.slice(0, r0, r1), targets.slice(0, r0, r1), 0.25f, &d);
  }
  EXPECT_NEAR(sum.total().loss_sum, whole.loss_sum, 1e-12 * std::abs(whole.loss_sum));
  EXPECT_EQ(sum.total().count, whole.count);
  EXPECT_EQ(chunk_grad.to_float_vector(), whole_grad.to_float_vector());
  // A bad target names its row in the whole batch.
  ops::CrossEntropySum bad;
  bad.add(logits.slice(0, 0, 4), targets.slice(0, 0, 4), 1.0f, nullptr);
  const Tensor bad_targets = Tensor::from_vector(std::vector<int64_t>{1, 9}, {2});
  expect_error([&] { bad.add(logits.slice(0, 4, 6), bad_targets, 1.0f, nullptr); },
               {"target 9", "row 5", "[0, 7)"});
}

}  // namespace
}  // namespace moeforge::testing
