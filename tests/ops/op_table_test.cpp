// The op table and the backend op cases on the CPU reference: every case's forward is
// deterministic and finite, and every backward matches central differences of the forward.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "op_cases.h"
#include "ops/dense.h"
#include "ops_test_util.h"

namespace moeforge::testing {
namespace {

constexpr float kStep = 1e-2f;
constexpr double kGradTol = 1e-3;
// Central differences run the forward twice per element of the differentiable inputs: cases with
// more elements than this (the CUDA-sized ones) are not differentiated here.
constexpr int64_t kDifferenceBudget = 6000;

TEST(OpTable, OneRowPerOpWithAUniqueName) {
  std::set<std::string> names;
  for (size_t i = 0; i < static_cast<size_t>(ops::Op::kCount); ++i) {
    const ops::OpInfo& info = ops::op_info(static_cast<ops::Op>(i));
    EXPECT_EQ(static_cast<size_t>(info.op), i);
    EXPECT_TRUE(names.insert(info.name).second) << info.name;
    EXPECT_NE(info.category, ops::OpCategory::kCount) << info.name;
    EXPECT_STRNE(ops::op_category_name(info.category), "?") << info.name;
  }
}

// Argument errors name the op as the table spells it.
TEST(OpTable, ErrorsNameTheOp) {
  std::mt19937 rng(1);
  const Tensor x = random_tensor({4, 6}, rng), w = random_tensor({5, 6}, rng);
  expect_error([&] { ops::linear(x, w, random_tensor({4}, rng)); },
               {ops::op_name(ops::Op::kLinear), "bias", "[4]", "[5]"});
  Tensor grad_bias = Tensor::zeros({6}, DType::kF32);
  expect_error([&] { ops::linear_bias_bwd(x.view({6, 4}), grad_bias); },
               {ops::op_name(ops::Op::kLinearBiasBwd), "grad_bias", "[6]", "[4]"});
}

TEST(OpCases, NamesAreUnique) {
  std::set<std::string> names;
  for (const OpCase& c : op_cases()) EXPECT_TRUE(names.insert(c.name).second) << c.name;
}

class OpCaseTest : public ::testing::TestWithParam<size_t> {};

TEST_P(OpCaseTest, ForwardIsDeterministicAndFinite) {
  const OpCase& c = op_cases()[GetParam()];
  std::mt19937 rng(static_cast<unsigned>(GetParam()) + 1);
  const std::vector<Tensor> in = values(c.make_inputs(rng));
  const std::vector<CaseTensor> first = c.forward(in), second = c.forward(in);
  ASSERT_EQ(first.size(), second.size());
  for (size_t o = 0; o < first.size(); ++o) {
    SCOPED_TRACE(first[o].name);
    const std::vector<float> a = first[o].value.to_float_vector(), b = second[o].value.to_float_vector();
    EXPECT_EQ(a, b);
    EXPECT_TRUE(std::all_of(a.begin(), a.end(), [](float v) { return std::isfinite(v); }));
  }
}

TEST_P(OpCaseTest, BackwardMatchesCentralDifferences) {
  const OpCase& c = op_cases()[GetParam()];
  if (c.grad == GradMode::kForward) GTEST_SKIP() << "forward-only case";
  std::mt19937 rng(static_cast<unsigned>(GetParam()) + 1);
  const std::vector<CaseTensor> inputs = c.make_inputs(rng);
  int64_t elements = 0;
  for (const CaseTensor& t : inputs) elements += t.differentiable ? t.value.numel() : 0;
  if (elements > kDifferenceBudget) GTEST_SKIP() << elements << " elements to differentiate";

  const std::vector<Tensor> in = values(inputs);
  std::vector<Tensor> dout;  // a random weight for each differentiable output
  for (const CaseTensor& out : c.forward(in))
    if (out.differentiable) dout.push_back(random_tensor(out.value.shape(), rng));
  auto objective = [&] {
    double s = 0;
    size_t d = 0;
    for (const CaseTensor& out : c.forward(in))
      if (out.differentiable) s += weighted_sum(out.value, dout[d++]);
    return s;
  };
  const std::vector<Tensor> grads = c.backward(in, dout);
  size_t g = 0;
  for (const CaseTensor& t : inputs) {
    if (!t.differentiable) continue;
    SCOPED_TRACE(t.name);
    ASSERT_LT(g, grads.size());
    ASSERT_EQ(grads[g].shape(), t.value.shape());
    EXPECT_LT(rel_l2(grads[g].to_float_vector(), numeric_grad(t.value, objective, kStep)), kGradTol);
    ++g;
  }
  EXPECT_EQ(g, grads.size());
}

INSTANTIATE_TEST_SUITE_P(Cases, OpCaseTest, ::testing::Range<size_t>(0, op_cases().size()),
                         [](const auto& info) { return case_identifier(op_cases()[info.param]); });

}  // namespace
}  // namespace moeforge::testing
