#include "model/blocks/attention.h"

#include <cmath>

#include "model/blocks/linear.h"
#include "ops/ops.h"

namespace moeforge {

AttentionBlock::AttentionBlock(const AttentionSlots& slots, const ModelConfig& config, Tensor inv_freq,
                               float rope_scaling, int64_t window)
    : slots_(slots),
      qk_norm_(config.attention.qk_norm),
      heads_(config.attention.num_heads),
      kv_heads_(config.attention.num_kv_heads),
      head_dim_(config.attention.head_dim),
      scale_(1.0f / std::sqrt(static_cast<float>(config.attention.head_dim))),
      inv_freq_(std::move(inv_freq)),
      rope_scaling_(rope_scaling),
      window_(window) {}

Tensor AttentionBlock::sinks(const Params& p) const { return slots_.sinks >= 0 ? p.w(slots_.sinks) : Tensor(); }

Tensor AttentionBlock::norm_rope_fwd(const Params& p, const BatchContext& ctx, int norm, const Tensor& proj,
                                     int64_t heads, Tensor& raw, Tensor& rstd) const {
  const int64_t N = ctx.tokens();
  switch (qk_norm_) {
    case AttentionConfig::QkNorm::kPerHead:
      raw = proj.view({N, heads, head_dim_});
      return ops::qk_norm_rope_fwd(raw, p.w(norm), ctx.norm_eps, ctx.positions, inv_freq_, rope_scaling_, rstd);
    case AttentionConfig::QkNorm::kWholeProjection: {
      // One RMS statistic per token over all heads, before the view into heads and RoPE (OLMoE).
      raw = proj;
      Tensor normed = ops::rms_norm_fwd(proj, p.w(norm), ctx.norm_eps, rstd);
      return ops::rope_fwd(normed.view({N, heads, head_dim_}), ctx.positions, inv_freq_, rope_scaling_);
    }
    case AttentionConfig::QkNorm::kNone:
      break;
  }
  if (!inv_freq_.defined()) return proj.view({N, heads, head_dim_});  // no positional encoding (Nemotron-H)
  return ops::rope_fwd(proj.view({N, heads, head_dim_}), ctx.positions, inv_freq_, rope_scaling_);
}

Tensor AttentionBlock::norm_rope_bwd(const Params& p, const BatchContext& ctx, int norm, const Tensor& d_rot,
                                     int64_t heads, const Tensor& raw, const Tensor& rstd) const {
  const int64_t N = ctx.tokens();
  const Tensor d = d_rot.view({N, heads, head_dim_});
  switch (qk_norm_) {
    case AttentionConfig::QkNorm::kPerHead:
      return ops::qk_norm_rope_bwd(d, raw, p.w(norm), rstd, ctx.positions, inv_freq_, rope_scaling_, p.g(norm))
          .view({N, heads * head_dim_});
    case AttentionConfig::QkNorm::kWholeProjection: {
      Tensor d_normed = ops::rope_bwd(d, ctx.positions, inv_freq_, rope_scaling_);
      return ops::rms_norm_bwd(d_normed.view({N, heads * head_dim_}), raw, p.w(norm), rstd, p.g(norm));
    }
    case AttentionConfig::QkNorm::kNone:
      break;
  }
  if (!inv_freq_.defined()) return d.view({N, heads * head_dim_});
  return ops::rope_bwd(d, ctx.positions, inv_freq_, rope_scaling_).view({N, heads * head_dim_});
}

void AttentionBlock::project(const Params& p, const BatchContext& ctx, const Tensor& x, AttentionState& st) const {
  Tensor q = linear_fwd(p, slots_.q, x, st.q_lora, ctx.lora_dropout_seed);
  Tensor k = linear_fwd(p, slots_.k, x, st.k_lora, ctx.lora_dropout_seed);
  st.v = linear_fwd(p, slots_.v, x, st.v_lora, ctx.lora_dropout_seed);
  st.q_rot = norm_rope_fwd(p, ctx, slots_.q_norm, q, heads_, st.q_raw, st.q_rstd);
  st.k_rot = norm_rope_fwd(p, ctx, slots_.k_norm, k, kv_heads_, st.k_raw, st.k_rstd);
}

void AttentionBlock::drop_projections(AttentionState& st) {
  st.q_raw = st.q_rstd = st.k_raw = st.k_rstd = Tensor();
  st.q_rot = st.k_rot = st.v = Tensor();
}

Tensor AttentionBlock::output_projection(const Params& p, const BatchContext& ctx, AttentionState& st) const {
  return linear_fwd(p, slots_.o, st.out.view({ctx.tokens(), heads_ * head_dim_}), st.o_lora, ctx.lora_dropout_seed);
}

Tensor AttentionBlock::forward(const Params& p, const BatchContext& ctx, const Tensor& x, AttentionState& st) const {
  const int64_t B = ctx.batch, T = ctx.seq, D = head_dim_;
  project(p, ctx, x, st);
  st.out = ops::attention_fwd(st.q_rot.view({B, T, heads_, D}), st.k_rot.view({B, T, kv_heads_, D}),
                              st.v.view({B, T, kv_heads_, D}), ctx.mask, scale_, st.lse, sinks(p), window_);
  return output_projection(p, ctx, st);
}

Tensor AttentionBlock::backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x,
                                AttentionState& st) const {
  const int64_t B = ctx.batch, T = ctx.seq, N = ctx.tokens(), D = head_dim_;
  const Device dev = dy.device();
  const Tensor out_flat = st.out.view({N, heads_ * D});
  Tensor d_out = Tensor::empty({N, heads_ * D}, out_flat.dtype(), dev);
  linear_bwd(p, slots_.o, dy, out_flat, st.o_lora, d_out, /*accumulate=*/false, ctx.lora_dropout_seed);
  ops::AttentionGrads ag = ops::attention_bwd(d_out.view({B, T, heads_, D}), st.q_rot.view({B, T, heads_, D}),
                                              st.k_rot.view({B, T, kv_heads_, D}),
                                              st.v.view({B, T, kv_heads_, D}), st.out, st.lse, ctx.mask, scale_,
                                              sinks(p), window_);
  if (slots_.sinks >= 0 && p.trainable(slots_.sinks)) ops::add_inplace(p.g(slots_.sinks), ag.dsinks);
  const Tensor dq = norm_rope_bwd(p, ctx, slots_.q_norm, ag.dq, heads_, st.q_raw, st.q_rstd);
  const Tensor dk = norm_rope_bwd(p, ctx, slots_.k_norm, ag.dk, kv_heads_, st.k_raw, st.k_rstd);
  const Tensor dv = ag.dv.view({N, kv_heads_ * D});
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), dev);
  linear_bwd(p, slots_.q, dq, x, st.q_lora, dx, /*accumulate=*/false, ctx.lora_dropout_seed);
  linear_bwd(p, slots_.k, dk, x, st.k_lora, dx, /*accumulate=*/true, ctx.lora_dropout_seed);
  linear_bwd(p, slots_.v, dv, x, st.v_lora, dx, /*accumulate=*/true, ctx.lora_dropout_seed);
  return dx;
}

}  // namespace moeforge
