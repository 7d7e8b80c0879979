// What every block of one forward/backward pass shares: the batch's geometry, positions and mask,
// and the parameters. Blocks keep no pointers to either between calls.
#pragma once

#include <cstdint>

#include "model/blocks/routed_rows.h"
#include "ops/attention.h"
#include "params/parameter_set.h"

namespace moeforge {

// Activation recomputation (the trainer's gradient_checkpointing): none keeps every activation;
// selective keeps what an attention kernel or an expert product made and rebuilds the rest (norm
// outputs, dense projections, permuted expert inputs, SwiGLU outputs: blocks/decoder_layer.cpp); full keeps only each layer's input and routing and reruns the layer's
// forward before its backward (as Transformers' gradient_checkpointing=True). Recomputation never
// re-routes: the forward's top-k expert choices are kept and reused.
enum class Recompute { kNone, kSelective, kFull };

struct BatchContext {
  int64_t batch = 0, seq = 0;  // B, T; blocks see N = B * T token rows
  Tensor positions;            // [N] int64 on the model's device
  ops::AttentionMask mask;
  RoutedRows routed;  // the token rows the MoE block computes
  float norm_eps = 1e-6f;
  Recompute recompute = Recompute::kNone;
  // Seeds LoRA's input dropout in this pass (training only; 0: no dropout). Each adapter draws its
  // mask from this and its own parameter index, so a recomputed layer draws the same one.
  uint64_t lora_dropout_seed = 0;
  int64_t tokens() const { return batch * seq; }
};

// A block's view of the parameters: weights by slot, and the gradients its backward accumulates.
struct Params {
  ParameterSet& set;
  const Tensor& w(int slot) const { return set.param(slot); }
  Tensor& g(int slot) const { return set.mutable_grad(slot); }
  // For an op that writes the whole gradient: beta 0 on its first write of the step (ParameterSet::grad_to_write).
  Tensor& g_write(int slot, float& beta) const { return set.grad_to_write(slot, beta); }
  // False for a frozen weight (LoRA's base), whose gradient is not computed.
  bool trainable(int slot) const { return set.trainable(slot); }
};

}  // namespace moeforge
