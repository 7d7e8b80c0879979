// The timing mode of the backend op cases (tests/ops/op_cases.h): each case's forward and, in
// gradient mode, backward on the GPU, in milliseconds per call (CUDA events around `iterations`
// calls after one warm-up). A case's time includes what it allocates and, for the loss and the sum
// of squares, their read-back to the host: the time of the op as the model calls it.
//
//   moeforge-ops-bench [substring of case names] [iterations, default 20]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cuda/check.h"
#include "core/error.h"
#include "op_cases.h"

namespace {

using namespace moeforge;
using namespace moeforge::testing;

double time_ms(const std::function<void()>& fn, int iterations) {
  fn();
  cudaEvent_t start, stop;
  MF_CUDA_CHECK(cudaEventCreate(&start));
  MF_CUDA_CHECK(cudaEventCreate(&stop));
  MF_CUDA_CHECK(cudaEventRecord(start, 0));
  for (int i = 0; i < iterations; ++i) fn();
  MF_CUDA_CHECK(cudaEventRecord(stop, 0));
  MF_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  MF_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  MF_CUDA_CHECK(cudaEventDestroy(start));
  MF_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / iterations;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  const int iterations = argc > 2 ? std::atoi(argv[2]) : 20;
  if (iterations < 1) {
    std::fprintf(stderr, "iterations must be at least 1\n");
    return 2;
  }
  try {
    std::printf("%-60s %-16s %10s %10s\n", "case", "category", "fwd ms", "bwd ms");
    for (size_t i = 0; i < op_cases().size(); ++i) {
      const OpCase& c = op_cases()[i];
      if (c.name.find(filter) == std::string::npos || !c.on_cuda) continue;
      std::mt19937 rng(static_cast<unsigned>(i) + 1);
      std::vector<Tensor> in;
      for (const CaseTensor& t : c.make_inputs(rng))
        in.push_back((t.kind == InputKind::kActivation ? t.value.to(c.dtype) : t.value).to(Device::kCUDA));
      const double fwd = time_ms([&] { c.forward(in); }, iterations);
      std::string bwd = "-";
      if (c.grad == GradMode::kBackward) {
        std::vector<Tensor> dout;
        for (const CaseTensor& out : c.forward(in))
          if (out.differentiable)
            dout.push_back(Tensor::zeros(out.value.shape(), out.value.dtype(), out.value.device()));
        bwd = str_cat(time_ms([&] { c.backward(in, dout); }, iterations));
      }
      std::printf("%-60s %-16s %10.4f %10s\n", c.name.c_str(),
                  ops::op_category_name(ops::op_info(c.op).category), fwd, bwd.c_str());
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "moeforge-ops-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
