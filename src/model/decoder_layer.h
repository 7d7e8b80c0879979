// A pre-norm decoder layer: one mixer and one feed-forward block, each behind an RMSNorm and a
// residual add:
//
//   x_mid = x + attention(input_layernorm(x))               attention: grouped-query or latent (MLA)
//   out   = x_mid + ffn(post_attention_layernorm(x_mid))      ffn: a SwiGLU MLP or a MoE block
//
// It owns what the layer keeps between forward and backward and what recomputation drops and
// rebuilds (ModelOptions::recompute). A Nemotron-H layer has one half only: a mixer (attention or
// a Mamba-2 mixer) or a feed-forward block, behind its one norm.
#pragma once

#include <optional>
#include <vector>

#include "arch/weight_map.h"
#include "model/blocks/attention.h"
#include "model/blocks/mamba_mixer.h"
#include "model/blocks/mla_attention.h"
#include "model/blocks/moe.h"
#include "model/blocks/swiglu_mlp.h"

namespace moeforge {

struct LayerState {
  Tensor x_in, n1, rstd1;   // the layer input, its norm (dropped by selective recompute), 1/rms
  Tensor x_mid, n2, rstd2;  // after attention's residual add, its norm, 1/rms
  AttentionState attention;
  MlaState mla;
  MambaState mamba;
  SwiGluState mlp;
  MoeState moe;
};

// Every activation a layer keeps between its forward and its backward, for activation offloading
// (model/activation_offload.h): all of LayerState's tensors but the routing (the top-k choices and
// the dispatch plan), which the step reads between the two. A tensor left off this list is only
// kept on the device.
std::vector<Tensor*> kept_activations(LayerState& st);

class DecoderLayer {
 public:
  // Layer `index` of config; inv_freq and rope_scaling: the rotary table (model/rope.h) on the
  // model's device.
  DecoderLayer(const LayerSlots& slots, const ModelConfig& config, int64_t index, const Tensor& inv_freq,
               float rope_scaling, const ExpertDispatcher& dispatcher);

  bool is_moe() const { return moe_.has_value(); }
  // reuse_index: expert choices to take instead of the router's top-k (MoE layers; undefined: none).
  Tensor forward(const Params& p, const BatchContext& ctx, const Tensor& x, LayerState& st,
                 const Tensor& reuse_index = Tensor()) const;
  // After the forward, what ctx.recompute lets go; before the backward, the same rebuilt.
  void drop_recomputable(const BatchContext& ctx, LayerState& st) const;
  void restore_recomputed(const Params& p, const BatchContext& ctx, LayerState& st) const;
  // dy: gradient of the layer output [N, H]; returns the gradient of its input and frees st.
  // aux_dprobs as MoeBlock::backward.
  Tensor backward(const Params& p, const BatchContext& ctx, const Tensor& dy, LayerState& st,
                  const Tensor& aux_dprobs) const;

 private:
  Tensor attention_fwd(const Params& p, const BatchContext& ctx, const Tensor& x, LayerState& st) const;
  Tensor attention_bwd(const Params& p, const BatchContext& ctx, const Tensor& dy, LayerState& st) const;

  LayerSlots slots_;
  std::optional<AttentionBlock> attention_;  // at most one of the three
  std::optional<MlaAttentionBlock> mla_;
  std::optional<MambaMixer> mamba_;
  SwiGluMlp mlp_;
  std::optional<MoeBlock> moe_;
};

}  // namespace moeforge
