// DeepSeek's multi-head latent attention (DeepSeek-V2/V3, Kimi K2, Moonlight), as Transformers 5.17
// computes it:
//
//   q   = q_b(norm(q_a(x)))  or  q_proj(x) when q_lora_rank is null     [N, H, Dn + Dr]
//   ckv = kv_a(x) = [latent (kv_lora_rank) | k_pe (Dr)]
//   kv  = kv_b(norm(latent))                                            [N, H, Dn + Dv]: k_nope | v
//   q's last Dr columns and k_pe rotated (interleaved pairs as configured); k = [k_nope | k_pe] with
//   the one rotated k_pe shared by every head
//   out = o_proj(attention(q, k, v))   causal, scale 1/sqrt(Dn + Dr) times YaRN's mscale^2
//
// The two latent norms use eps 1e-6 whatever rms_norm_eps says (Transformers builds them with the
// default). Every projection goes through blocks/linear (LoRA adapters, frozen weights).
#pragma once

#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "model/blocks/context.h"
#include "ops/mla.h"

namespace moeforge {

// What the forward keeps for the backward: each norm's input, 1/rms and output (the next
// projection's input), the attention's inputs and output, and the adapters' low-rank activations.
struct MlaState {
  Tensor q_latent, q_rstd, q_normed;     // q_a's output, its norm (q_lora_rank set)
  Tensor kv_latent, kv_rstd, kv_normed;  // ckv's latent part, its norm
  Tensor q, k, v, out, lse;
  Tensor q_lora, q_a_lora, q_b_lora, kv_a_lora, kv_b_lora, o_lora;
};

class MlaAttentionBlock {
 public:
  MlaAttentionBlock(const MlaSlots& slots, const ModelConfig& config, Tensor inv_freq, float rope_scaling);

  // x: the normed input [N, H]; returns o_proj's output [N, H].
  Tensor forward(const Params& p, const BatchContext& ctx, const Tensor& x, MlaState& st) const;
  // dy [N, H] -> dx [N, H]; adds the weights' gradients. x: the forward's input.
  Tensor backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x, MlaState& st) const;

 private:
  ops::MlaRope rope(const BatchContext& ctx) const;

  MlaSlots slots_;
  int64_t heads_, qk_dim_, v_dim_, kv_rank_;
  float scale_;
  Tensor inv_freq_;  // [qk_rope_head_dim / 2] fp32 on the model's device
  float rope_scaling_;
  bool interleaved_;
};

// The softmax scale: 1/sqrt(qk_head_dim), times mscale^2 with mscale = 0.1 * mscale_all_dim *
// ln(factor) + 1 when the rope is scaled and mscale_all_dim is set (Transformers' yarn_apply_mscale).
float mla_softmax_scale(const ModelConfig& config);

}  // namespace moeforge
