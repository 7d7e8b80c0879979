// Dispatch of the Mamba-2 mixer's ops (mamba.h).
#include "ops/mamba.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

// The sequence mask's parts the Mamba ops read, over [batch, seq] rows.
void check_sequence_mask(Op op, const AttentionMask& mask, Device device, int64_t batch, int64_t seq) {
  if (mask.key_valid.defined()) {
    check_layout(op, "mask.key_valid", mask.key_valid, device);
    check_shape(op, "mask.key_valid", mask.key_valid, {batch, seq});
  }
  if (mask.segment.defined())
    check_typed_tensor(op, "mask.segment", mask.segment, device, DType::kI32, {batch, seq});
}

// x [B, T, C], w [C, K], bias [C] or undefined, and the mask.
Device check_conv(Op op, const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask) {
  const Device device = check_float_input(op, "x", x, 3);
  check_rank(op, "w", w, 2);
  check_float_tensor(op, "w", w, device, {x.size(2), w.size(1)});
  if (bias.defined()) check_float_tensor(op, "bias", bias, device, {x.size(2)});
  check_sequence_mask(op, mask, device, x.size(0), x.size(1));
  return device;
}

// xbc, dt and the per-head parameters against the shape.
Device check_scan(Op op, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log,
                  const Tensor& d, const SsdShape& s, const AttentionMask& mask) {
  const Device device = check_float_input(op, "xbc", xbc, 3);
  MF_CHECK(s.heads > 0 && s.head_dim > 0 && s.groups > 0 && s.state > 0 && s.heads % s.groups == 0, kShape,
           op_name(op), ": ", s.heads, " heads of ", s.head_dim, " in ", s.groups, " groups of state ", s.state,
           " (the groups must divide the heads)");
  const int64_t B = xbc.size(0), T = xbc.size(1);
  check_shape(op, "xbc", xbc, {B, T, s.heads * s.head_dim + 2 * s.groups * s.state});
  check_float_tensor(op, "dt", dt, device, {B, T, s.heads});
  check_float_tensor(op, "dt_bias", dt_bias, device, {s.heads});
  check_float_tensor(op, "a_log", a_log, device, {s.heads});
  check_float_tensor(op, "d", d, device, {s.heads});
  check_sequence_mask(op, mask, device, B, T);
  return device;
}

Device check_gated_norm(Op op, const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size) {
  const Device device = check_float_input(op, "y", y, 2);
  check_float_tensor(op, "z", z, device, y.shape());
  check_float_tensor(op, "w", w, device, {y.size(1)});
  MF_CHECK(group_size > 0 && y.size(1) % group_size == 0, kShape, op_name(op), ": group size ", group_size,
           " does not divide the ", y.size(1), " columns of y");
  return device;
}

}  // namespace

Tensor causal_conv1d_silu_fwd(const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask) {
  const Op op = Op::kCausalConv1dSiluFwd;
  const Device device = check_conv(op, x, w, bias, mask);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device, "causal_conv1d_silu output");
  MF_DISPATCH(x, op, causal_conv1d_silu_fwd(x, w, bias, mask, y));
  return y;
}

Tensor causal_conv1d_silu_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                              const AttentionMask& mask, Tensor& grad_w, Tensor& grad_bias) {
  const Op op = Op::kCausalConv1dSiluBwd;
  const Device device = check_conv(op, x, w, bias, mask);
  check_float_tensor(op, "dy", dy, device, x.shape());
  check_float_tensor(op, "grad_w", grad_w, device, w.shape());
  if (bias.defined()) check_float_tensor(op, "grad_bias", grad_bias, device, bias.shape());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), device, "causal_conv1d_silu dx");
  MF_DISPATCH(x, op, causal_conv1d_silu_bwd(dy, x, w, bias, mask, dx, grad_w, grad_bias));
  return dx;
}

Tensor ssd_scan_fwd(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                    const SsdShape& shape, const AttentionMask& mask) {
  const Op op = Op::kSsdScanFwd;
  const Device device = check_scan(op, xbc, dt, dt_bias, a_log, d, shape, mask);
  Tensor y = Tensor::empty({xbc.size(0), xbc.size(1), shape.heads * shape.head_dim}, DType::kF32, device,
                           "ssd_scan output");
  MF_DISPATCH(xbc, op, ssd_scan_fwd(xbc, dt, dt_bias, a_log, d, shape, mask, y));
  return y;
}

SsdScanGrads ssd_scan_bwd(const Tensor& dy, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias,
                          const Tensor& a_log, const Tensor& d, const SsdShape& shape, const AttentionMask& mask,
                          Tensor& grad_dt_bias, Tensor& grad_a_log, Tensor& grad_d) {
  const Op op = Op::kSsdScanBwd;
  const Device device = check_scan(op, xbc, dt, dt_bias, a_log, d, shape, mask);
  check_float_tensor(op, "dy", dy, device, {xbc.size(0), xbc.size(1), shape.heads * shape.head_dim});
  for (const auto& [name, grad] : {std::pair{"grad_dt_bias", &grad_dt_bias}, std::pair{"grad_a_log", &grad_a_log},
                                   std::pair{"grad_d", &grad_d}})
    check_float_tensor(op, name, *grad, device, {shape.heads});
  SsdScanGrads grads{Tensor::empty(xbc.shape(), xbc.dtype(), device, "ssd_scan d_xbc"),
                     Tensor::empty(dt.shape(), dt.dtype(), device, "ssd_scan d_dt")};
  MF_DISPATCH(xbc, op,
              ssd_scan_bwd(dy, xbc, dt, dt_bias, a_log, d, shape, mask, grads, grad_dt_bias, grad_a_log, grad_d));
  return grads;
}

Tensor gated_rms_norm_fwd(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size, float eps,
                          Tensor& rstd) {
  const Op op = Op::kGatedRmsNormFwd;
  const Device device = check_gated_norm(op, y, z, w, group_size);
  prepare_saved(op, "rstd", rstd, device, {y.size(0), y.size(1) / group_size});
  Tensor out = Tensor::empty(y.shape(), z.dtype(), device, "gated_rms_norm output");
  MF_DISPATCH(y, op, gated_rms_norm_fwd(y, z, w, group_size, eps, out, rstd));
  return out;
}

GatedRmsNormGrads gated_rms_norm_bwd(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& w,
                                     int64_t group_size, const Tensor& rstd, Tensor& grad_w) {
  const Op op = Op::kGatedRmsNormBwd;
  const Device device = check_gated_norm(op, y, z, w, group_size);
  check_float_tensor(op, "dout", dout, device, y.shape());
  check_typed_tensor(op, "rstd", rstd, device, DType::kF32, {y.size(0), y.size(1) / group_size});
  check_float_tensor(op, "grad_w", grad_w, device, w.shape());
  GatedRmsNormGrads grads{Tensor::empty(y.shape(), y.dtype(), device, "gated_rms_norm dy"),
                          Tensor::empty(z.shape(), z.dtype(), device, "gated_rms_norm dz")};
  MF_DISPATCH(y, op, gated_rms_norm_bwd(dout, y, z, w, group_size, rstd, grads, grad_w));
  return grads;
}

}  // namespace moeforge::ops
