#include "model/blocks/moe.h"

#include "model/blocks/linear.h"
#include "ops/ops.h"

namespace moeforge {

namespace {

// Whether the backward of a grouped projection reads its input: only for the weight's gradient or
// the adapter's (dx needs the weight alone). Under attention-only LoRA the experts' input rows and
// SwiGLU outputs are not kept (about 9 GiB at 48 layers of Qwen3-30B-A3B, seq 4096).
bool backward_reads_input(const Params& p, int weight, const LoraSlots& lora) {
  return p.trainable(weight) || lora.on();
}

// An expert bias's gradient (a handle on the parameter's), or undefined when the bias is frozen.
Tensor bias_grad(const Params& p, int bias) { return p.trainable(bias) ? p.g(bias) : Tensor(); }

}  // namespace

MoeBlock::MoeBlock(const MoeSlots& slots, const MoeConfig& moe, const ExpertDispatcher& dispatcher)
    : slots_(slots),
      relu2_(moe.activation == ExpertActivation::kRelu2),
      num_experts_(moe.num_experts),
      router_(LinearSlots{.weight = slots.router, .bias = slots.router_bias, .lora = slots.router_lora},
              slots.score_bias, moe),
      shared_(slots.shared, relu2_ ? ExpertActivation::kRelu2 : ExpertActivation::kSwiGlu),
      dispatcher_(&dispatcher) {
  if (moe.activation == ExpertActivation::kGptOssClampedSwiGlu)
    clamp_ = ops::ClampedSwiglu{.limit = static_cast<float>(moe.swiglu_limit)};
}

Tensor MoeBlock::expert_act(const SwiGluState& st) const {
  if (relu2_) return ops::relu2_fwd(st.gate_up_out, st.row_scale);
  return clamp_ ? ops::clamped_swiglu_fwd(st.gate_up_out, *clamp_, st.row_scale)
                : ops::swiglu_fwd(st.gate_up_out, st.row_scale);
}

ops::SwigluGrads MoeBlock::expert_act_bwd(const Tensor& dh, const SwiGluState& st) const {
  if (relu2_) return ops::relu2_bwd(dh, st.gate_up_out, st.row_scale);
  return clamp_ ? ops::clamped_swiglu_bwd(dh, st.gate_up_out, *clamp_, st.row_scale)
                : ops::swiglu_bwd(dh, st.gate_up_out, st.row_scale);
}

Tensor MoeBlock::forward(const Params& p, const BatchContext& ctx, const Tensor& x, MoeState& st,
                         const Tensor& reuse_index) const {
  return ctx.routed.scatter(forward_rows(p, ctx.routed.gather(x), st, reuse_index, ctx.lora_dropout_seed));
}

Tensor MoeBlock::backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x,
                          const MoeState& st, const Tensor& aux_dprobs) const {
  return ctx.routed.scatter(
      backward_rows(p, ctx.routed.gather(dy), ctx.routed.gather(x), st, aux_dprobs, ctx.lora_dropout_seed));
}

Tensor MoeBlock::forward_rows(const Params& p, const Tensor& x, MoeState& st, const Tensor& reuse_index,
                              uint64_t dropout_seed) const {
  if (!st.router.routed()) {
    router_.forward(p, x, st.router, reuse_index);
    st.plan = dispatcher_->plan(st.router.topk, num_experts_);
  }
  const Tensor& offsets = st.plan.expert_offsets();
  if (latent()) st.latent = linear_fwd(p, slots_.latent_in, x, st.latent_in_lora, dropout_seed);
  const SwiGluSlots& ex = slots_.experts;
  if (gathers_input()) {
    st.experts.gate_up_out = ops::gathered_grouped_linear(latent() ? st.latent : x, st.plan.perm, p.w(ex.gate_up));
  } else {
    st.x_rows = dispatcher_->dispatch(latent() ? st.latent : x, st.plan);
    st.experts.gate_up_out = grouped_fwd(p, ex.gate_up, ex.gate_up_lora, st.x_rows, offsets, st.gate_up_lora,
                                         ex.gate_up_bias >= 0 ? p.w(ex.gate_up_bias) : Tensor());
    if (!backward_reads_input(p, ex.gate_up, ex.gate_up_lora)) st.x_rows = Tensor();
  }
  st.experts.row_scale = dispatcher_->dispatch_weights(st.router.topk.weight, st.plan);
  st.experts.act = expert_act(st.experts);
  Tensor y_rows = grouped_fwd(p, ex.down, ex.down_lora, st.experts.act, offsets, st.down_lora);
  // The routing weight scaled the down projection's input, so it scales its bias too.
  if (ex.down_bias >= 0) ops::grouped_bias_add(y_rows, p.w(ex.down_bias), offsets, st.experts.row_scale);
  if (!backward_reads_input(p, ex.down, ex.down_lora)) st.experts.act = Tensor();
  Tensor out = dispatcher_->combine(y_rows, st.plan, x.size(0));
  if (latent()) {
    st.latent_sum = std::move(out);
    out = linear_fwd(p, slots_.latent_out, st.latent_sum, st.latent_out_lora, dropout_seed);
  }
  if (slots_.shared.gate_up >= 0) {
    Tensor gate;
    if (slots_.shared_gate >= 0)
      gate = ops::sigmoid_fwd(ops::linear(x, p.w(slots_.shared_gate))).view({x.size(0)});
    ops::add_inplace(out, shared_.forward(p, x, st.shared, gate));
  }
  return out;
}

Tensor MoeBlock::backward_rows(const Params& p, const Tensor& dy, const Tensor& x, const MoeState& st,
                               const Tensor& aux_dprobs, uint64_t dropout_seed) const {
  const Tensor& offsets = st.plan.expert_offsets();
  const SwiGluSlots& ex = slots_.experts;
  // Each per-row gradient is let go as soon as the next is made: at most two of them exist at once.
  Tensor d_sum = dy;  // of the experts' sum: through latent_out when the experts are latent
  if (latent()) {
    d_sum = Tensor::empty(st.latent_sum.shape(), dy.dtype(), dy.device(), "MoE latent sum gradient");
    linear_bwd(p, slots_.latent_out, dy, st.latent_sum, st.latent_out_lora, d_sum, /*accumulate=*/false, dropout_seed);
  }
  Tensor d_rows = dispatcher_->dispatch(d_sum, st.plan);
  d_sum = Tensor();
  Tensor d_scale_by_bias;  // the down bias's share of the routing weights' gradient
  if (ex.down_bias >= 0) {
    Tensor grad = bias_grad(p, ex.down_bias);
    d_scale_by_bias = ops::grouped_bias_bwd(d_rows, p.w(ex.down_bias), offsets, grad, st.experts.row_scale);
  }
  d_rows = grouped_bwd(p, ex.down, ex.down_lora, d_rows, st.experts.act, st.down_lora, offsets);
  ops::SwigluGrads sg = expert_act_bwd(d_rows, st.experts);
  d_rows = Tensor();
  if (d_scale_by_bias.defined()) ops::add_inplace(sg.d_row_scale, d_scale_by_bias);
  if (ex.gate_up_bias >= 0) {
    Tensor grad = bias_grad(p, ex.gate_up_bias);
    ops::grouped_bias_bwd(sg.d_gate_up, p.w(ex.gate_up_bias), offsets, grad);
  }
  if (gathers_input()) {
    // The forward read its rows through the permutation. Its weight gradient takes them from a temporary
    // (a gathered kernel for it was slower than the permute: gathered_grouped_gemm.cu), let go before
    // the input gradient's rows exist, so that no more than two of these row tensors are alive at once.
    if (p.trainable(ex.gate_up)) {
      float beta = 1.0f;
      Tensor& grad = p.g_write(ex.gate_up, beta);
      ops::grouped_linear_dw(sg.d_gate_up, dispatcher_->dispatch(latent() ? st.latent : x, st.plan), offsets, grad,
                             beta != 0.0f);
    }
    d_rows = ops::grouped_linear_dx(sg.d_gate_up, p.w(ex.gate_up), offsets);
  } else {
    d_rows = grouped_bwd(p, ex.gate_up, ex.gate_up_lora, sg.d_gate_up, st.x_rows, st.gate_up_lora, offsets);
  }
  sg.d_gate_up = Tensor();
  Tensor dx = dispatcher_->combine(d_rows, st.plan, x.size(0));
  d_rows = Tensor();
  if (latent()) {
    const Tensor d_latent = std::move(dx);
    dx = Tensor::empty(x.shape(), x.dtype(), x.device(), "MoE input gradient");
    linear_bwd(p, slots_.latent_in, d_latent, x, st.latent_in_lora, dx, /*accumulate=*/false, dropout_seed);
  }
  const Tensor d_weight = dispatcher_->combine_weights(sg.d_row_scale, st.plan);
  router_.backward(p, d_weight, aux_dprobs, x, st.router, dx);
  if (slots_.shared.gate_up >= 0) {
    const Tensor d_gate = shared_.backward(p, dy, x, st.shared, dx, /*accumulate=*/true);
    if (slots_.shared_gate >= 0) {
      // The gate's logit [N, 1]: d logit = d gate * gate * (1 - gate).
      const Tensor d_logit = ops::cast(ops::sigmoid_bwd(d_gate, st.shared.row_scale), x.dtype()).view({x.size(0), 1});
      ops::gemm(d_logit, false, p.w(slots_.shared_gate), false, dx, 1.0f, 1.0f);
      if (p.trainable(slots_.shared_gate)) ops::gemm(d_logit, true, x, false, p.g(slots_.shared_gate), 1.0f, 1.0f);
    }
  }
  return dx;
}

void MoeBlock::drop_selective(MoeState& st) {
  st.x_rows = Tensor();
  st.experts.act = Tensor();
  st.shared.act = Tensor();
}

void MoeBlock::restore_selective(const Params& p, const BatchContext& ctx, const Tensor& x, MoeState& st) const {
  const SwiGluSlots& ex = slots_.experts;
  if (!gathers_input() && backward_reads_input(p, ex.gate_up, ex.gate_up_lora))
    st.x_rows = dispatcher_->dispatch(latent() ? st.latent : ctx.routed.gather(x), st.plan);
  if (backward_reads_input(p, ex.down, ex.down_lora)) st.experts.act = expert_act(st.experts);
  if (slots_.shared.gate_up >= 0) shared_.recompute_act(st.shared);
}

MoeState MoeBlock::routing_only(const MoeState& st) {
  MoeState kept;
  kept.router = st.router;
  kept.plan = st.plan;
  return kept;
}

}  // namespace moeforge
