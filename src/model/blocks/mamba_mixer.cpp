#include "model/blocks/mamba_mixer.h"

#include "model/blocks/linear.h"
#include "ops/ops.h"

namespace moeforge {

MambaMixer::MambaMixer(const MambaSlots& slots, const MambaConfig& config)
    : slots_(slots),
      shape_{.heads = config.num_heads,
             .head_dim = config.head_dim,
             .groups = config.n_groups,
             .state = config.ssm_state_size,
             .dt_min = static_cast<float>(config.time_step_min)},
      inner_(config.intermediate_size()),
      conv_dim_(config.conv_dim()),
      kernel_(config.conv_kernel),
      norm_group_(config.intermediate_size() / config.n_groups) {}

Tensor MambaMixer::forward(const Params& p, const BatchContext& ctx, const Tensor& x, MambaState& st) const {
  const int64_t B = ctx.batch, T = ctx.seq;
  const Tensor proj = linear_fwd(p, slots_.in_proj, x, st.in_lora, ctx.lora_dropout_seed);
  std::vector<Tensor> parts = ops::split_columns(proj, {inner_, conv_dim_, shape_.heads});
  st.z = parts[0];
  st.xbc = parts[1].view({B, T, conv_dim_});
  st.dt = parts[2].view({B, T, shape_.heads});
  const Tensor conv_bias = slots_.conv_bias >= 0 ? p.w(slots_.conv_bias) : Tensor();
  st.conv_out = ops::causal_conv1d_silu_fwd(st.xbc, p.w(slots_.conv_weight).view({conv_dim_, kernel_}), conv_bias,
                                            ctx.mask);
  st.y = ops::ssd_scan_fwd(st.conv_out, st.dt, p.w(slots_.dt_bias), p.w(slots_.a_log), p.w(slots_.d), shape_,
                           ctx.mask)
             .view({B * T, inner_});
  st.normed = ops::gated_rms_norm_fwd(st.y, st.z, p.w(slots_.norm), norm_group_, ctx.norm_eps, st.rstd);
  return linear_fwd(p, slots_.out_proj, st.normed, st.out_lora, ctx.lora_dropout_seed);
}

Tensor MambaMixer::backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x,
                            MambaState& st) const {
  const int64_t B = ctx.batch, T = ctx.seq;
  Tensor d_normed = Tensor::empty(st.normed.shape(), st.normed.dtype(), st.normed.device());
  linear_bwd(p, slots_.out_proj, dy, st.normed, st.out_lora, d_normed, /*accumulate=*/false, ctx.lora_dropout_seed);
  ops::GatedRmsNormGrads gn =
      ops::gated_rms_norm_bwd(d_normed, st.y, st.z, p.w(slots_.norm), norm_group_, st.rstd, p.g(slots_.norm));
  d_normed = Tensor();
  ops::SsdScanGrads sg = ops::ssd_scan_bwd(gn.dy.view({B, T, inner_}), st.conv_out, st.dt, p.w(slots_.dt_bias),
                                           p.w(slots_.a_log), p.w(slots_.d), shape_, ctx.mask, p.g(slots_.dt_bias),
                                           p.g(slots_.a_log), p.g(slots_.d));
  // A frozen (LoRA base) convolution has no gradient buffer; the op computes one anyway.
  const Tensor conv_w = p.w(slots_.conv_weight).view({conv_dim_, kernel_});
  Tensor grad_conv_w = p.trainable(slots_.conv_weight) ? p.g(slots_.conv_weight).view({conv_dim_, kernel_})
                                                       : Tensor::zeros(conv_w.shape(), conv_w.dtype(), conv_w.device());
  Tensor no_bias;
  const Tensor conv_bias = slots_.conv_bias >= 0 ? p.w(slots_.conv_bias) : Tensor();
  const Tensor d_xbc = ops::causal_conv1d_silu_bwd(sg.d_xbc, st.xbc, conv_w, conv_bias, ctx.mask, grad_conv_w,
                                                   slots_.conv_bias >= 0 ? p.g(slots_.conv_bias) : no_bias);
  const Tensor d_proj =
      ops::concat_columns({gn.dz, d_xbc.view({B * T, conv_dim_}), sg.d_dt.view({B * T, shape_.heads})});
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  linear_bwd(p, slots_.in_proj, d_proj, x, st.in_lora, dx, /*accumulate=*/false, ctx.lora_dropout_seed);
  return dx;
}

}  // namespace moeforge
