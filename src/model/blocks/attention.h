// Grouped-query attention as Qwen3, Mixtral, OLMoE, Qwen2-MoE and GPT-OSS compute it:
//
//   q = q_proj(x) [+ bias], k = k_proj(x) [+ bias], v = v_proj(x) [+ bias]
//   q, k normed: per head over head_dim (Qwen3), over the whole projection (OLMoE), or not at all
//   out = o_proj(attention(rope(q), rope(k), v)) [+ bias]    causal, GQA, padding/packing mask
//
// GPT-OSS adds a learned sink logit per head to the softmax and, on its sliding layers, a window
// (both in the attention op). MLA (DeepSeek-V3) is a block of its own with the same shape.
#pragma once

#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "model/blocks/context.h"

namespace moeforge {

// What the forward keeps for the backward. q_raw/k_raw are the projections before a q/k norm;
// *_lora the adapters' low-rank activations (blocks/linear.h), undefined without adapters.
struct AttentionState {
  Tensor q_raw, q_rstd, k_raw, k_rstd;
  Tensor q_rot, k_rot, v, out, lse;
  Tensor q_lora, k_lora, v_lora, o_lora;
};

class AttentionBlock {
 public:
  // window: the layer's sliding window in tokens, 0 for full causal attention.
  AttentionBlock(const AttentionSlots& slots, const ModelConfig& config, Tensor inv_freq, float rope_scaling,
                 int64_t window);

  // x: the normed input [N, H]; returns o_proj's output [N, H].
  Tensor forward(const Params& p, const BatchContext& ctx, const Tensor& x, AttentionState& st) const;
  // Selective recomputation keeps the attention kernel's output (out, lse) and lets the projections
  // go: q, k, v and the normed, rotated q and k are rebuilt from x by project(), o_proj's output
  // from out by output_projection(), each bit for bit as the forward made them.
  static void drop_projections(AttentionState& st);
  void project(const Params& p, const BatchContext& ctx, const Tensor& x, AttentionState& st) const;
  Tensor output_projection(const Params& p, const BatchContext& ctx, AttentionState& st) const;
  // dy [N, H] -> dx [N, H]; adds the weights' gradients. x: the forward's input.
  Tensor backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x,
                  AttentionState& st) const;

 private:
  // The sink logits [heads], or undefined.
  Tensor sinks(const Params& p) const;
  // q or k: the projection normed (as configured) and rotated, [N, heads, D].
  Tensor norm_rope_fwd(const Params& p, const BatchContext& ctx, int norm, const Tensor& proj, int64_t heads,
                       Tensor& raw, Tensor& rstd) const;
  // Its backward: the gradient of the projection [N, heads * D].
  Tensor norm_rope_bwd(const Params& p, const BatchContext& ctx, int norm, const Tensor& d_rot, int64_t heads,
                       const Tensor& raw, const Tensor& rstd) const;

  AttentionSlots slots_;
  AttentionConfig::QkNorm qk_norm_;
  int64_t heads_, kv_heads_, head_dim_;
  float scale_;
  Tensor inv_freq_;  // [head_dim / 2] fp32 on the model's device; undefined: no RoPE (Nemotron-H)
  float rope_scaling_;
  int64_t window_;
};

}  // namespace moeforge
