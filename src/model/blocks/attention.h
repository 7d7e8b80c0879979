// Grouped-query attention as Qwen3, Mixtral, OLMoE and Qwen2-MoE compute it:
//
//   q = q_proj(x) [+ bias], k = k_proj(x) [+ bias], v = v_proj(x) [+ bias]
//   q, k normed: per head over head_dim (Qwen3), over the whole projection (OLMoE), or not at all
//   out = o_proj(attention(rope(q), rope(k), v)) [+ bias]    causal, GQA, padding/packing mask
//
// Room left for the later families: sinks and sliding windows (GPT-OSS) go to the mask and the
// attention op; MLA (DeepSeek-V3) is a block of its own with the same forward/backward shape.
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
  AttentionBlock(const AttentionSlots& slots, const ModelConfig& config, Tensor inv_freq, float rope_scaling);

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
  Tensor inv_freq_;  // [head_dim / 2] fp32 on the model's device
  float rope_scaling_;
};

}  // namespace moeforge
