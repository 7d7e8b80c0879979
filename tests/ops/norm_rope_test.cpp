// RMSNorm and rotary embedding: forward against float64 recomputations, backward against central
// differences.
#include <cmath>

#include "ops/dense.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops_test_util.h"

namespace moeforge::testing {
namespace {

constexpr double kForwardTol = 1e-5;
// Backward against central differences of the float32 forward with step kStep: relative L2 below
// kGradTol (the step's truncation error and float32 rounding of the objective stay well below it).
constexpr float kStep = 1e-2f;
constexpr double kGradTol = 1e-3;

TEST(RmsNorm, ForwardMatchesFloat64) {
  std::mt19937 rng(11);
  const int64_t rows = 7, d = 48;
  const float eps = 1e-6f;
  const Tensor x = random_tensor({rows, d}, rng, -2.0f, 2.0f), w = random_tensor({d}, rng);
  Tensor rstd;
  const Tensor y = ops::rms_norm_fwd(x, w, eps, rstd);
  ASSERT_EQ(rstd.shape(), (Shape{rows}));
  const std::vector<double> xv = to_double(x), wv = to_double(w);
  std::vector<double> expected(xv.size()), expected_rstd(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t j = 0; j < d; ++j) ms += xv[r * d + j] * xv[r * d + j];
    expected_rstd[r] = 1.0 / std::sqrt(ms / d + eps);
    for (int64_t j = 0; j < d; ++j) expected[r * d + j] = wv[j] * xv[r * d + j] * expected_rstd[r];
  }
  EXPECT_LT(rel_l2(y.to_float_vector(), to_float(expected)), kForwardTol);
  EXPECT_LT(rel_l2(rstd.to_float_vector(), to_float(expected_rstd)), kForwardTol);
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(12);
  const int64_t rows = 5, d = 24;
  const float eps = 1e-5f;
  const Tensor x = random_tensor({rows, d}, rng, -2.0f, 2.0f), w = random_tensor({d}, rng);
  const Tensor dy = random_tensor({rows, d}, rng);
  auto objective = [&] {
    Tensor rstd;
    return weighted_sum(ops::rms_norm_fwd(x, w, eps, rstd), dy);
  };
  Tensor rstd;
  ops::rms_norm_fwd(x, w, eps, rstd);
  const Tensor grad_w0 = random_tensor({d}, rng);
  Tensor grad_w = grad_w0.clone();
  const Tensor dx = ops::rms_norm_bwd(dy, x, w, rstd, grad_w);
  EXPECT_LT(rel_l2(dx.to_float_vector(), numeric_grad(x, objective, kStep)), kGradTol);
  // grad_w accumulates: compare the increment.
  std::vector<float> dw = grad_w.to_float_vector();
  const std::vector<float> before = grad_w0.to_float_vector();
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= before[i];
  EXPECT_LT(rel_l2(dw, numeric_grad(w, objective, kStep)), kGradTol);
}

// The fused residual forms are the separate ops in turn: x += residual then the norm; the
// backward's dx plus the residual gradient.
TEST(RmsNorm, ResidualFormsEqualTheSeparateOps) {
  std::mt19937 rng(18);
  const int64_t rows = 5, d = 24;
  const Tensor x0 = random_tensor({rows, d}, rng, -2.0f, 2.0f), residual = random_tensor({rows, d}, rng);
  const Tensor w = random_tensor({d}, rng);
  Tensor x = x0.clone(), rstd;
  const Tensor y = ops::add_rms_norm_fwd(x, residual, w, 1e-6f, rstd);
  Tensor sum = x0.clone(), rstd_ref;
  ops::add_inplace(sum, residual);
  EXPECT_EQ(x.to_float_vector(), sum.to_float_vector());
  EXPECT_EQ(y.to_float_vector(), ops::rms_norm_fwd(sum, w, 1e-6f, rstd_ref).to_float_vector());

  const Tensor dy = random_tensor({rows, d}, rng), dx_residual = random_tensor({rows, d}, rng);
  Tensor gw = Tensor::zeros({d}, DType::kF32), gw_ref = Tensor::zeros({d}, DType::kF32);
  const Tensor dx = ops::rms_norm_bwd(dy, sum, w, rstd, gw, dx_residual);
  Tensor dx_ref = ops::rms_norm_bwd(dy, sum, w, rstd, gw_ref);
  ops::add_inplace(dx_ref, dx_residual);
  EXPECT_EQ(dx.to_float_vector(), dx_ref.to_float_vector());
  EXPECT_EQ(gw.to_float_vector(), gw_ref.to_float_vector());
  expect_error([&] { ops::add_rms_norm_fwd(x, random_tensor({rows, d + 1}, rng), w, 1e-6f, rstd); },
               {"add_rms_norm_fwd", "residual"});
}

TEST(RmsNorm, SavedRstdIsAllocatedOrOverwritten) {
  std::mt19937 rng(16);
  const Tensor x = random_tensor({3, 8}, rng), w = random_tensor({8}, rng);
  Tensor allocated;
  ops::rms_norm_fwd(x, w, 1e-6f, allocated);
  Tensor provided = random_tensor({3}, rng);
  const float* storage = provided.data<float>();
  ops::rms_norm_fwd(x, w, 1e-6f, provided);
  EXPECT_EQ(provided.data<float>(), storage);
  EXPECT_EQ(provided.to_float_vector(), allocated.to_float_vector());
  Tensor wrong = random_tensor({4}, rng);
  expect_error([&] { ops::rms_norm_fwd(x, w, 1e-6f, wrong); }, {"rstd", "[4]", "[3]"});
}

// inv_freq of the default rope for head dimension d and base theta.
Tensor default_inv_freq(int64_t d, double theta) {
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i)
    f[i] = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(2 * i) / d));
  return Tensor::from_vector(f, {d / 2});
}

// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1) and cos/sin = cat(c, c),
// written out as in Transformers; the angle is position * inv_freq rounded to float32.
std::vector<double> reference_rope(const Tensor& x, const std::vector<int64_t>& pos,
                                   const Tensor& inv_freq, double scaling) {
  const int64_t n = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  const std::vector<double> xv = to_double(x);
  std::vector<double> out(xv.size());
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> cos_full(d), sin_full(d);
    for (int64_t i = 0; i < d; ++i) {
      const float angle = static_cast<float>(pos[t]) * inv_freq.item_float(i % half);
      cos_full[i] = std::cos(static_cast<double>(angle)) * scaling;
      sin_full[i] = std::sin(static_cast<double>(angle)) * scaling;
    }
    for (int64_t h = 0; h < heads; ++h) {
      const double* xr = xv.data() + (t * heads + h) * d;
      std::vector<double> rotated(d);
      for (int64_t i = 0; i < half; ++i) {
        rotated[i] = -xr[i + half];
        rotated[i + half] = xr[i];
      }
      for (int64_t i = 0; i < d; ++i)
        out[(t * heads + h) * d + i] = xr[i] * cos_full[i] + rotated[i] * sin_full[i];
    }
  }
  return out;
}

TEST(Rope, ForwardMatchesRotateHalf) {
  std::mt19937 rng(13);
  const int64_t heads = 3, d = 16;
  const std::vector<int64_t> pos = {0, 1, 5, 17, 3, 999, 40961};
  const Tensor positions = Tensor::from_vector(pos, {static_cast<int64_t>(pos.size())});
  const Tensor x = random_tensor({static_cast<int64_t>(pos.size()), heads, d}, rng);
  // Default rope (theta 1e6, scaling 1) and a non-default inv_freq with attention scaling.
  const Tensor default_freq = default_inv_freq(d, 1e6);
  const Tensor custom_freq = random_tensor({d / 2}, rng, 0.01f, 1.5f);
  for (auto [freq, scaling] : {std::pair{default_freq, 1.0f}, std::pair{custom_freq, 1.3466f}}) {
    const Tensor y = ops::rope_fwd(x, positions, freq, scaling);
    EXPECT_LT(rel_l2(y.to_float_vector(), to_float(reference_rope(x, pos, freq, scaling))),
              kForwardTol);
  }
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(14);
  const std::vector<int64_t> pos = {3, 1, 8, 0, 27};
  const Tensor positions = Tensor::from_vector(pos, {5});
  const Tensor x = random_tensor({5, 2, 8}, rng), dy = random_tensor({5, 2, 8}, rng);
  const Tensor inv_freq = random_tensor({4}, rng, 0.05f, 1.0f);
  auto objective = [&] { return weighted_sum(ops::rope_fwd(x, positions, inv_freq, 1.25f), dy); };
  const Tensor dx = ops::rope_bwd(dy, positions, inv_freq, 1.25f);
  EXPECT_LT(rel_l2(dx.to_float_vector(), numeric_grad(x, objective, kStep)), kGradTol);
}

TEST(Rope, RejectsMismatchedInvFreq) {
  std::mt19937 rng(15);
  const Tensor x = random_tensor({2, 1, 8}, rng);
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 1}, {2});
  expect_error([&] { ops::rope_fwd(x, positions, random_tensor({8}, rng)); },
               {"inv_freq", "[8]", "[4]"});
}

// The fused op is the two ops in turn: its forward equals rope(rms_norm(x)) over [N * heads, D]
// rows, and its backward matches central differences for both the input and the norm weight.
TEST(QkNormRope, ForwardIsNormThenRope) {
  std::mt19937 rng(16);
  const int64_t n = 5, heads = 3, d = 16;
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{4, 0, 9, 33, 2}, {n});
  const Tensor x = random_tensor({n, heads, d}, rng, -2.0f, 2.0f), w = random_tensor({d}, rng);
  const Tensor inv_freq = default_inv_freq(d, 1e6);
  Tensor rstd, rstd_ref;
  const Tensor y = ops::qk_norm_rope_fwd(x, w, 1e-6f, positions, inv_freq, 1.25f, rstd);
  const Tensor normed = ops::rms_norm_fwd(x.view({n * heads, d}), w, 1e-6f, rstd_ref);
  const Tensor expected = ops::rope_fwd(normed.view({n, heads, d}), positions, inv_freq, 1.25f);
  EXPECT_EQ(y.to_float_vector(), expected.to_float_vector());
  EXPECT_EQ(rstd.to_float_vector(), rstd_ref.to_float_vector());
}

TEST(QkNormRope, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(17);
  const int64_t n = 4, heads = 2, d = 8;
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{3, 1, 8, 0}, {n});
  const Tensor x = random_tensor({n, heads, d}, rng, -2.0f, 2.0f), w = random_tensor({d}, rng, 0.5f, 1.5f);
  const Tensor dy = random_tensor({n, heads, d}, rng), inv_freq = random_tensor({d / 2}, rng, 0.05f, 1.0f);
  auto objective = [&] {
    Tensor rstd;
    return weighted_sum(ops::qk_norm_rope_fwd(x, w, 1e-6f, positions, inv_freq, 1.25f, rstd), dy);
  };
  Tensor rstd;
  ops::qk_norm_rope_fwd(x, w, 1e-6f, positions, inv_freq, 1.25f, rstd);
  Tensor grad_w = Tensor::zeros({d}, DType::kF32);
  const Tensor dx = ops::qk_norm_rope_bwd(dy, x, w, rstd, positions, inv_freq, 1.25f, grad_w);
  EXPECT_LT(rel_l2(dx.to_float_vector(), numeric_grad(x, objective, kStep)), kGradTol);
  EXPECT_LT(rel_l2(grad_w.to_float_vector(), numeric_grad(w, objective, kStep)), kGradTol);
}

}  // namespace
}  // namespace moeforge::testing
