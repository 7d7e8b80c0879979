// The backend op cases, one table in the spirit of ggml's test-backend-ops: each case is an op of
// ops/op_table.h at given shapes, the dtype its activations take on CUDA, and whether its backward
// is checked. Three programs run the same table:
//   tests/ops/op_table_test.cpp   the CPU reference: backward against central differences, and
//                                 forward invariants (deterministic, finite);
//   tests/gpu/gpu_op_table_test.cpp  CUDA against the CPU reference, forward and backward;
//   bench/ops_bench.cpp           the time of each case on the GPU.
// A case is device-agnostic: its functions call the ops on whatever device its inputs are on.
// No GoogleTest here, so the benchmark can link it.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/op_table.h"

namespace moeforge::testing {

// How an input travels to CUDA: activations and weights in the case's dtype; fp32 inputs stay fp32
// (probabilities, inverse frequencies, routing weights); index inputs as they are.
enum class InputKind { kActivation, kF32, kIndex };

struct CaseTensor {
  std::string name;
  Tensor value;
  InputKind kind = InputKind::kActivation;
  bool differentiable = false;  // inputs: backward returns its gradient; outputs: backward takes one
};

enum class GradMode {
  kForward,   // forward only
  kBackward,  // forward and backward
};

struct OpCase {
  std::string name;  // unique: the op's name and the shapes
  ops::Op op;
  DType dtype = DType::kBF16;  // of the activations on CUDA (the CPU runs float32)
  GradMode grad = GradMode::kBackward;
  bool on_cuda = true;  // false: the op (or these shapes) has a CPU reference only so far
  // Float32 CPU inputs, random from rng.
  std::function<std::vector<CaseTensor>(std::mt19937& rng)> make_inputs;
  // The op on the inputs' values (in make_inputs' order, on one device): its outputs.
  std::function<std::vector<CaseTensor>(const std::vector<Tensor>& in)> forward;
  // Given the inputs and a gradient for each differentiable output (in order): the gradients of
  // the differentiable inputs (in order). Parameter gradients start from zeros.
  std::function<std::vector<Tensor>(const std::vector<Tensor>& in, const std::vector<Tensor>& dout)>
      backward;
};

const std::vector<OpCase>& op_cases();

// The values of inputs or outputs, in order.
std::vector<Tensor> values(const std::vector<CaseTensor>& tensors);
// The case's name with every character outside [A-Za-z0-9] replaced by '_' (a test name).
std::string case_identifier(const OpCase& c);

// Uniform float32 CPU values in [lo, hi).
Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f);

}  // namespace moeforge::testing
