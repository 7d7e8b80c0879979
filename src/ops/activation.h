// Activations: SwiGLU and squared ReLU (with the MoE routing weight folded in), the row softmax, the sigmoid,
// dropout, and the normal draws of random weights.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// gate_up [M, 2I] (gate columns first): h = silu(gate) * up, [M, I], each row times
// row_scale[r] when row_scale [M] fp32 is given (the MoE layers' routing weights, applied before
// the down projection so the experts' outputs need not be kept for the weights' gradient).
Tensor swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale = Tensor());
struct SwigluGrads {
  Tensor d_gate_up;    // [M, 2I]
  Tensor d_row_scale;  // [M] fp32: dh[r] . (silu(gate) * up)[r]; only when row_scale was given
};
SwigluGrads swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale = Tensor());
// GPT-OSS's clamped SwiGLU on the same gate_up (gate columns first; the checkpoint's interleaved
// columns are reordered on load): g = min(gate, limit), u = clamp(up, -limit, limit),
// h = (u + 1) * g * sigmoid(alpha * g), times row_scale as swiglu_fwd. A clamped input gets no
// gradient (as torch.clamp: inputs equal to a limit do).
struct ClampedSwiglu {
  float limit = 7.0f;
  float alpha = 1.702f;
};
Tensor clamped_swiglu_fwd(const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale = Tensor());
SwigluGrads clamped_swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const ClampedSwiglu& c,
                               const Tensor& row_scale = Tensor());
// Squared ReLU on a non-gated input x [M, I] (Nemotron-H's experts and MLPs): h = relu(x)^2, times
// row_scale as swiglu_fwd. Its backward returns the gradient of x in SwigluGrads::d_gate_up.
Tensor relu2_fwd(const Tensor& x, const Tensor& row_scale = Tensor());
SwigluGrads relu2_bwd(const Tensor& dh, const Tensor& x, const Tensor& row_scale = Tensor());
// Row softmax in fp32: probs [R, C].
Tensor softmax_fwd(const Tensor& logits);
Tensor softmax_bwd(const Tensor& dprobs, const Tensor& probs);
// Logistic sigmoid, computed and returned in fp32: x any floating dtype, any shape (contiguous) ->
// same shape fp32 (Qwen2-MoE's shared-expert gate: [N, 1] logits in the model dtype become an fp32
// per-row scale). Numerically stable: exp(x) / (1 + exp(x)) for x < 0, never exp of a large x.
Tensor sigmoid_fwd(const Tensor& x);
// Its backward from the forward's output: dx = dy * y * (1 - y); dy and y fp32 of one shape,
// dx fp32.
Tensor sigmoid_bwd(const Tensor& dy, const Tensor& y);
// Inverted dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p), or zeroed;
// which elements is a function of (seed, element index) alone (ops/dropout_mask.h), identical on
// every backend. Its own backward: dropout(dy, p, seed) is dx. x any floating dtype, contiguous;
// 0 <= p < 1.
Tensor dropout(const Tensor& x, float p, uint64_t seed);

// Fills x (contiguous, any floating dtype) with normal(0, std_dev) draws, element j
// normal_at(seed, stream, j) (ops/normal_hash.h), the same on every backend: random weights made
// where they live.
void init_normal(Tensor& x, uint64_t seed, uint64_t stream, float std_dev);

}  // namespace moeforge::ops
