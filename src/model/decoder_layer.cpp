#include "model/decoder_layer.h"

#include "ops/ops.h"

namespace moeforge {

std::vector<Tensor*> kept_activations(LayerState& st) {
  AttentionState& a = st.attention;
  MlaState& m = st.mla;
  MambaState& s = st.mamba;
  std::vector<Tensor*> kept = {
      &st.x_in, &st.n1, &st.rstd1, &st.x_mid, &st.n2, &st.rstd2,
      &a.q_raw, &a.q_rstd, &a.k_raw, &a.k_rstd, &a.q_rot, &a.k_rot, &a.v, &a.out, &a.lse,
      &a.q_lora, &a.k_lora, &a.v_lora, &a.o_lora,
      &m.q_latent, &m.q_rstd, &m.q_normed, &m.kv_latent, &m.kv_rstd, &m.kv_normed, &m.q, &m.k, &m.v, &m.out,
      &m.lse, &m.q_lora, &m.q_a_lora, &m.q_b_lora, &m.kv_a_lora, &m.kv_b_lora, &m.o_lora,
      &s.z, &s.xbc, &s.dt, &s.conv_out, &s.y, &s.rstd, &s.normed, &s.in_lora, &s.out_lora,
      &st.moe.router.probs, &st.moe.router.lora_u, &st.moe.x_rows, &st.moe.gate_up_lora, &st.moe.down_lora,
      &st.moe.latent, &st.moe.latent_sum, &st.moe.latent_in_lora, &st.moe.latent_out_lora};
  for (SwiGluState* s : {&st.mlp, &st.moe.experts, &st.moe.shared})
    kept.insert(kept.end(), {&s->gate_up_out, &s->act, &s->row_scale});
  return kept;
}

DecoderLayer::DecoderLayer(const LayerSlots& slots, const ModelConfig& config, int64_t index, const Tensor& inv_freq,
                           float rope_scaling, const ExpertDispatcher& dispatcher)
    : slots_(slots),
      mlp_(slots.mlp, config.hidden_act == "relu2" ? ExpertActivation::kRelu2 : ExpertActivation::kSwiGlu) {
  const bool sliding = config.layers[index].window == AttentionWindow::kSliding;
  if (slots.mla.on())
    mla_.emplace(slots.mla, config, inv_freq, rope_scaling);
  else if (slots.mamba.on())
    mamba_.emplace(slots.mamba, *config.mamba);
  else if (slots.attention.q.weight >= 0)
    attention_.emplace(slots.attention, config, inv_freq, rope_scaling,
                       sliding ? config.attention.sliding_window.value_or(0) : 0);
  if (slots.is_moe()) moe_.emplace(slots.moe, *config.moe, dispatcher);
}

Tensor DecoderLayer::attention_fwd(const Params& p, const BatchContext& ctx, const Tensor& x, LayerState& st) const {
  if (mamba_) return mamba_->forward(p, ctx, x, st.mamba);
  return mla_ ? mla_->forward(p, ctx, x, st.mla) : attention_->forward(p, ctx, x, st.attention);
}

Tensor DecoderLayer::attention_bwd(const Params& p, const BatchContext& ctx, const Tensor& dy, LayerState& st) const {
  if (mamba_) return mamba_->backward(p, ctx, dy, st.n1, st.mamba);
  return mla_ ? mla_->backward(p, ctx, dy, st.n1, st.mla) : attention_->backward(p, ctx, dy, st.n1, st.attention);
}

Tensor DecoderLayer::forward(const Params& p, const BatchContext& ctx, const Tensor& x, LayerState& st,
                             const Tensor& reuse_index) const {
  st.x_in = x;
  if (!slots_.has_ffn()) {  // a mixer alone (Nemotron-H)
    st.n1 = ops::rms_norm_fwd(x, p.w(slots_.input_norm), ctx.norm_eps, st.rstd1);
    Tensor out = attention_fwd(p, ctx, st.n1, st);
    ops::add_inplace(out, x);
    return out;
  }
  if (slots_.has_mixer()) {
    st.n1 = ops::rms_norm_fwd(x, p.w(slots_.input_norm), ctx.norm_eps, st.rstd1);
    Tensor x_mid = attention_fwd(p, ctx, st.n1, st);
    st.n2 = ops::add_rms_norm_fwd(x_mid, x, p.w(slots_.post_norm), ctx.norm_eps, st.rstd2);  // x_mid += x
    st.x_mid = x_mid;
  } else {  // a feed-forward block alone (Nemotron-H)
    st.n2 = ops::rms_norm_fwd(x, p.w(slots_.post_norm), ctx.norm_eps, st.rstd2);
    st.x_mid = x;
  }
  Tensor out = moe_ ? moe_->forward(p, ctx, st.n2, st.moe, reuse_index) : mlp_.forward(p, st.n2, st.mlp);
  ops::add_inplace(out, st.x_mid);
  return out;
}

// selective: what an attention kernel or an expert product made is kept (the attention output and
// its statistics, the experts' gate/up products); the rest is rebuilt from the layer input: the two
// norms, the dense q/k/v/o projections with q/k's norm and RoPE, the residual sum after attention,
// the dispatched expert inputs and the SwiGLU outputs (latent attention keeps its projections and
// the residual sum for now). full: only the layer input and its routing are kept.
void DecoderLayer::drop_recomputable(const BatchContext& ctx, LayerState& st) const {
  switch (ctx.recompute) {
    case Recompute::kNone:
      return;
    case Recompute::kSelective:
      st.n1 = st.n2 = st.mlp.act = Tensor();
      if (attention_) {
        st.x_mid = Tensor();
        AttentionBlock::drop_projections(st.attention);
      }
      MoeBlock::drop_selective(st.moe);
      return;
    case Recompute::kFull: {
      LayerState kept;
      kept.x_in = st.x_in;
      kept.moe = MoeBlock::routing_only(st.moe);
      st = std::move(kept);
      return;
    }
  }
}

// Selective recomputation rebuilds here what the feed-forward block's backward reads; the attention's
// projections wait for backward() to free the feed-forward block's activations first.
void DecoderLayer::restore_recomputed(const Params& p, const BatchContext& ctx, LayerState& st) const {
  switch (ctx.recompute) {
    case Recompute::kNone:
      return;
    case Recompute::kSelective:
      if (!slots_.has_ffn()) return;  // a mixer alone: backward() rebuilds its norm and projections
      if (attention_) {  // the residual sum, rebuilt as the forward made it
        st.x_mid = attention_->output_projection(p, ctx, st.attention);
        st.n2 = ops::add_rms_norm_fwd(st.x_mid, st.x_in, p.w(slots_.post_norm), ctx.norm_eps, st.rstd2);
      } else {
        st.n2 = ops::rms_norm_fwd(st.x_mid, p.w(slots_.post_norm), ctx.norm_eps, st.rstd2);
      }
      if (moe_)
        moe_->restore_selective(p, ctx, st.n2, st.moe);
      else
        mlp_.recompute_act(st.mlp);
      return;
    case Recompute::kFull:
      forward(p, ctx, st.x_in, st);  // the kept routing is reused, never recomputed
      return;
  }
}

Tensor DecoderLayer::backward(const Params& p, const BatchContext& ctx, const Tensor& dy, LayerState& st,
                              const Tensor& aux_dprobs) const {
  Tensor dx_mid = dy;
  if (slots_.has_ffn()) {
    Tensor dn2;
    if (moe_) {
      dn2 = moe_->backward(p, ctx, dy, st.n2, st.moe, aux_dprobs);
    } else {
      dn2 = Tensor::empty(st.n2.shape(), st.n2.dtype(), st.n2.device());
      mlp_.backward(p, dy, st.n2, st.mlp, dn2, /*accumulate=*/false);
    }
    // dy reaches x_mid twice: through the post-attention norm and along the residual stream.
    dx_mid = ops::rms_norm_bwd(dn2, st.x_mid, p.w(slots_.post_norm), st.rstd2, p.g(slots_.post_norm), dy);
  }
  if (!slots_.has_mixer()) {
    st = LayerState();
    return dx_mid;
  }
  if (ctx.recompute == Recompute::kSelective) {
    st.moe = MoeState();
    st.mlp = SwiGluState();
    st.x_mid = st.n2 = Tensor();
    st.n1 = ops::rms_norm_fwd(st.x_in, p.w(slots_.input_norm), ctx.norm_eps, st.rstd1);
    if (attention_) attention_->project(p, ctx, st.n1, st.attention);
  }
  const Tensor dn1 = attention_bwd(p, ctx, dx_mid, st);
  Tensor dx = ops::rms_norm_bwd(dn1, st.x_in, p.w(slots_.input_norm), st.rstd1, p.g(slots_.input_norm), dx_mid);
  st = LayerState();  // free this layer's activations as soon as they are used
  return dx;
}

}  // namespace moeforge
