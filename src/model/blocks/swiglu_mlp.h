// A SwiGLU MLP on fused weights: h = silu(gate) * up of gate_up = x @ W_gate_up^T ([N, 2I], gate
// columns first), out = h @ W_down^T. An optional fp32 per-row scale multiplies h before the down
// projection, which equals scaling the output (the projection is linear): the routing weight of an
// expert row, or a shared expert's sigmoid gate. Dense MLP layers and shared experts use it as is;
// the routed experts run the same math through grouped products (moe.h). Nemotron-H's MLPs are
// non-gated: h = relu(up)^2 of gate_up = the up projection alone ([N, I]).
#pragma once

#include "arch/weight_map.h"
#include "model/blocks/context.h"

namespace moeforge {

struct SwiGluState {
  Tensor gate_up_out;  // [N, 2I] ([N, I] non-gated)
  Tensor act;          // [N, I]; dropped by selective recomputation
  Tensor row_scale;    // [N] fp32, or undefined
};

class SwiGluMlp {
 public:
  explicit SwiGluMlp(const SwiGluSlots& slots, ExpertActivation activation = ExpertActivation::kSwiGlu)
      : slots_(slots), relu2_(activation == ExpertActivation::kRelu2) {}

  Tensor forward(const Params& p, const Tensor& x, SwiGluState& st, const Tensor& row_scale = Tensor()) const;
  // Writes dx (or adds it, when `accumulate`) [N, H]; adds the weights' gradients; returns the
  // gradient of the row scale [N] fp32 when the forward had one.
  Tensor backward(const Params& p, const Tensor& dy, const Tensor& x, const SwiGluState& st, Tensor& dx,
                  bool accumulate) const;
  void recompute_act(SwiGluState& st) const;

 private:
  SwiGluSlots slots_;
  bool relu2_;  // squared ReLU of the up projection, else SwiGLU
};

}  // namespace moeforge
