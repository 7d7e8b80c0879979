// The backend op cases (tests/ops/op_cases.h) on CUDA against the float32 CPU reference, forward
// and, in gradient mode, backward. Inputs and output gradients are rounded to the case's dtype
// first so both sides see the same values; then the normalised error ||cuda - cpu|| / ||cpu|| of
// every output is checked (as gpu_ops_test.cpp does):
//   bf16 outputs: 1e-2 (bf16 keeps 8 bits)   fp32 outputs: 1e-4   integers: exact
//   gradients: by the case's dtype (1e-2 for bf16 cases even where a gradient is stored in fp32:
//   the backward reads forward results that CUDA rounded to bf16)
// Every comparison prints "ERR <case>/<output> <error>" so a run records the measured errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "op_cases.h"
#include "testing.h"

namespace moeforge::testing {
namespace {

constexpr double kBf16Tol = 1e-2;
constexpr double kF32Tol = 1e-4;

// A CPU float32 tensor rounded as the CUDA side stores it.
Tensor rounded(const Tensor& t, InputKind kind, DType dtype) {
  if (kind != InputKind::kActivation || dtype == DType::kF32) return t;
  return t.to(dtype).to(DType::kF32);
}

Tensor on_cuda(const Tensor& t, InputKind kind, DType dtype) {
  return (kind == InputKind::kActivation ? t.to(dtype) : t).to(Device::kCUDA);
}

void expect_close(const std::string& what, const Tensor& cuda_out, const Tensor& cpu_ref,
                  DType tolerance_dtype) {
  ASSERT_EQ(shape_str(cuda_out.shape()), shape_str(cpu_ref.shape())) << what;
  const Tensor got = cuda_out.to(Device::kCPU);
  if (!dtype_is_floating(got.dtype())) {
    ASSERT_EQ(got.dtype(), cpu_ref.dtype()) << what;
    int64_t mismatches = 0;
    for (int64_t i = 0; i < got.numel(); ++i) mismatches += got.item_float(i) != cpu_ref.item_float(i);
    std::printf("ERR %s %lld mismatches\n", what.c_str(), static_cast<long long>(mismatches));
    EXPECT_EQ(mismatches, 0) << what;
    return;
  }
  const std::vector<float> g = got.to(DType::kF32).to_float_vector();
  for (float v : g) ASSERT_FALSE(std::isnan(v)) << what << ": NaN in the CUDA output";
  const double err = rel_l2(g, cpu_ref.to_float_vector());
  std::printf("ERR %s %.3e\n", what.c_str(), err);
  EXPECT_LE(err, tolerance_dtype == DType::kBF16 ? kBf16Tol : kF32Tol) << what;
}

class GpuOpCaseTest : public ::testing::TestWithParam<size_t> {};

TEST_P(GpuOpCaseTest, CudaMatchesTheCpuReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const OpCase& c = op_cases()[GetParam()];
  if (!c.on_cuda) GTEST_SKIP() << "CPU only so far";
  std::mt19937 rng(static_cast<unsigned>(GetParam()) + 1);
  std::vector<CaseTensor> inputs = c.make_inputs(rng);
  std::vector<Tensor> cpu_in, cuda_in;
  for (CaseTensor& t : inputs) {
    t.value = rounded(t.value, t.kind, c.dtype);
    cpu_in.push_back(t.value);
    cuda_in.push_back(on_cuda(t.value, t.kind, c.dtype));
  }
  const std::vector<CaseTensor> want = c.forward(cpu_in), got = c.forward(cuda_in);
  ASSERT_EQ(want.size(), got.size());
  std::vector<Tensor> cpu_dout, cuda_dout;
  for (size_t o = 0; o < want.size(); ++o) {
    expect_close(c.name + "/" + want[o].name, got[o].value, want[o].value, got[o].value.dtype());
    if (!want[o].differentiable) continue;
    const DType dt = got[o].value.dtype();
    const Tensor d = rounded(random_tensor(want[o].value.shape(), rng), InputKind::kActivation, dt);
    cpu_dout.push_back(d);
    cuda_dout.push_back((dt == DType::kF32 ? d : d.to(dt)).to(got[o].value.device()));
  }
  if (c.grad == GradMode::kForward) return;
  const std::vector<Tensor> want_grads = c.backward(cpu_in, cpu_dout);
  const std::vector<Tensor> got_grads = c.backward(cuda_in, cuda_dout);
  ASSERT_EQ(want_grads.size(), got_grads.size());
  size_t g = 0;
  for (const CaseTensor& t : inputs)
    if (t.differentiable) {
      expect_close(c.name + "/d_" + t.name, got_grads[g], want_grads[g], c.dtype);
      ++g;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuOpCaseTest, ::testing::Range<size_t>(0, op_cases().size()),
                         [](const auto& info) { return case_identifier(op_cases()[info.param]); });

}  // namespace
}  // namespace moeforge::testing
