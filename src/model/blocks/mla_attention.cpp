#include "model/blocks/mla_attention.h"

#include <cmath>

#include "model/blocks/linear.h"
#include "ops/ops.h"

namespace moeforge {

namespace {

// q_a_layernorm and kv_a_layernorm are built with DeepseekV3RMSNorm's default eps.
constexpr float kLatentNormEps = 1e-6f;

}  // namespace

float mla_softmax_scale(const ModelConfig& config) {
  double scale = 1.0 / std::sqrt(static_cast<double>(config.mla->qk_head_dim()));
  const RopeParameters& rope = *config.rope;
  const double mscale_all_dim = rope.mscale_all_dim.value_or(0);
  if (rope.type != RopeType::kDefault && mscale_all_dim != 0 && rope.factor > 1) {
    const double mscale = 0.1 * mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= mscale * mscale;
  }
  return static_cast<float>(scale);
}

MlaAttentionBlock::MlaAttentionBlock(const MlaSlots& slots, const ModelConfig& config, Tensor inv_freq,
                                     float rope_scaling)
    : slots_(slots),
      heads_(config.attention.num_heads),
      qk_dim_(config.mla->qk_head_dim()),
      v_dim_(config.mla->v_head_dim),
      kv_rank_(config.mla->kv_lora_rank),
      scale_(mla_softmax_scale(config)),
      inv_freq_(std::move(inv_freq)),
      rope_scaling_(rope_scaling),
      interleaved_(config.mla->rope_interleave) {}

ops::MlaRope MlaAttentionBlock::rope(const BatchContext& ctx) const {
  return {.positions = ctx.positions, .inv_freq = inv_freq_, .attention_scaling = rope_scaling_,
          .interleaved = interleaved_};
}

Tensor MlaAttentionBlock::forward(const Params& p, const BatchContext& ctx, const Tensor& x, MlaState& st) const {
  const int64_t B = ctx.batch, T = ctx.seq, N = ctx.tokens();
  const uint64_t seed = ctx.lora_dropout_seed;
  Tensor q;
  if (slots_.q_a.weight >= 0) {
    st.q_latent = linear_fwd(p, slots_.q_a, x, st.q_a_lora, seed);
    st.q_normed = ops::rms_norm_fwd(st.q_latent, p.w(slots_.q_a_norm), kLatentNormEps, st.q_rstd);
    q = linear_fwd(p, slots_.q_b, st.q_normed, st.q_b_lora, seed);
  } else {
    q = linear_fwd(p, slots_.q, x, st.q_lora, seed);
  }
  const Tensor kv_a = linear_fwd(p, slots_.kv_a, x, st.kv_a_lora, seed);
  const std::vector<Tensor> ckv = ops::split_columns(kv_a, {kv_rank_, kv_a.size(1) - kv_rank_});  // latent, k_pe
  st.kv_latent = ckv[0];
  st.kv_normed = ops::rms_norm_fwd(st.kv_latent, p.w(slots_.kv_a_norm), kLatentNormEps, st.kv_rstd);
  const Tensor kv = linear_fwd(p, slots_.kv_b, st.kv_normed, st.kv_b_lora, seed);
  const int64_t nope = qk_dim_ - ckv[1].size(1);
  ops::MlaHeads heads = ops::mla_heads_fwd(q.view({N, heads_, qk_dim_}), kv.view({N, heads_, nope + v_dim_}),
                                           ckv[1], rope(ctx));
  st.q = std::move(heads.q);
  st.k = std::move(heads.k);
  st.v = std::move(heads.v);
  st.out = ops::attention_fwd(st.q.view({B, T, heads_, qk_dim_}), st.k.view({B, T, heads_, qk_dim_}),
                              st.v.view({B, T, heads_, v_dim_}), ctx.mask, scale_, st.lse);
  return linear_fwd(p, slots_.o, st.out.view({N, heads_ * v_dim_}), st.o_lora, seed);
}

Tensor MlaAttentionBlock::backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x,
                                   MlaState& st) const {
  const int64_t B = ctx.batch, T = ctx.seq, N = ctx.tokens();
  const uint64_t seed = ctx.lora_dropout_seed;
  const Device dev = dy.device();
  const DType dt = dy.dtype();
  const Tensor out_flat = st.out.view({N, heads_ * v_dim_});
  Tensor d_out = Tensor::empty(out_flat.shape(), dt, dev);
  linear_bwd(p, slots_.o, dy, out_flat, st.o_lora, d_out, /*accumulate=*/false, seed);
  const ops::AttentionGrads ag = ops::attention_bwd(
      d_out.view({B, T, heads_, v_dim_}), st.q.view({B, T, heads_, qk_dim_}), st.k.view({B, T, heads_, qk_dim_}),
      st.v.view({B, T, heads_, v_dim_}), st.out, st.lse, ctx.mask, scale_);
  const ops::MlaHeadsGrads g = ops::mla_heads_bwd(ag.dq.view({N, heads_, qk_dim_}), ag.dk.view({N, heads_, qk_dim_}),
                                                  ag.dv.view({N, heads_, v_dim_}), rope(ctx));

  // The key/value path: kv_b, the latent's norm, then kv_a from [d latent | d k_pe].
  Tensor d_kv_normed = Tensor::empty(st.kv_normed.shape(), dt, dev);
  linear_bwd(p, slots_.kv_b, g.dkv.view({N, -1}), st.kv_normed, st.kv_b_lora, d_kv_normed, /*accumulate=*/false, seed);
  const Tensor d_latent =
      ops::rms_norm_bwd(d_kv_normed, st.kv_latent, p.w(slots_.kv_a_norm), st.kv_rstd, p.g(slots_.kv_a_norm));
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), dev);
  linear_bwd(p, slots_.kv_a, ops::concat_columns({d_latent, g.dk_pe}), x, st.kv_a_lora, dx, /*accumulate=*/false, seed);

  // The query path.
  const Tensor dq = g.dq.view({N, heads_ * qk_dim_});
  if (slots_.q_a.weight < 0) {
    linear_bwd(p, slots_.q, dq, x, st.q_lora, dx, /*accumulate=*/true, seed);
    return dx;
  }
  Tensor d_q_normed = Tensor::empty(st.q_normed.shape(), dt, dev);
  linear_bwd(p, slots_.q_b, dq, st.q_normed, st.q_b_lora, d_q_normed, /*accumulate=*/false, seed);
  const Tensor d_q_latent =
      ops::rms_norm_bwd(d_q_normed, st.q_latent, p.w(slots_.q_a_norm), st.q_rstd, p.g(slots_.q_a_norm));
  linear_bwd(p, slots_.q_a, d_q_latent, x, st.q_a_lora, dx, /*accumulate=*/true, seed);
  return dx;
}

}  // namespace moeforge
