// The pieces of Nemotron-H's Mamba-2 mixer between its projections: the depthwise causal
// convolution with SiLU, the selective state-space scan (SSD) with its D skip, and the gated
// group RMSNorm.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
//
// Sequences: the convolution and the scan read [B, T, C] as B sequences of T rows. The mask is the
// attention's (ops/attention.h): where mask.segment changes a new packed document begins, which sees
// nothing of the one before (the convolution's window and the scan's state start from zero there);
// rows where mask.key_valid is 0 are padding, read as zero by the convolution and written as zero
// by it (Transformers' apply_mask_to_padding_states around the convolution), and their raw time
// step read as zero by the scan (Transformers zeroes in_proj's input there, and the projection has
// no bias), so a padding row only decays the scan's state, by exp(A softplus(dt_bias)).
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ops/attention.h"

namespace moeforge::ops {

// x [B, T, C], w [C, K], bias [C] or undefined: y[b, t, c] = silu(bias[c] + sum_j w[c, j] *
// x[b, t - K + 1 + j, c]), rows before the document's first one reading as zero.
Tensor causal_conv1d_silu_fwd(const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask);
// Returns dx; adds into grad_w [C, K] and, when the forward had a bias, grad_bias [C].
Tensor causal_conv1d_silu_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                              const AttentionMask& mask, Tensor& grad_w, Tensor& grad_bias);

// The scan's sizes: heads of head_dim channels, B and C in groups (head h reads group
// h / (heads / groups)) of `state` entries, and the smallest time step (Transformers clamps dt to
// [time_step_min, inf) whatever config.time_step_limit says).
struct SsdShape {
  int64_t heads = 0, head_dim = 0, groups = 0, state = 0;
  float dt_min = 0.0f;
};

// xbc [B, T, heads * head_dim + 2 * groups * state]: the convolution's output, x then B then C
// columns. dt [B, T, heads]: the projection's raw time steps. dt_bias, a_log, d [heads] fp32.
// Per head: dt = max(softplus(dt + dt_bias), dt_min), A = -exp(a_log),
//   h_t = exp(A dt_t) h_{t-1} + dt_t x_t B_t^T   ([head_dim, state], zero before a document)
//   y_t = h_t C_t + d x_t                        -> y [B, T, heads * head_dim], float32 whatever
// the inputs' dtype: Transformers keeps the scan's output, and the gated norm on it, in float32 in
// a bf16 model, so the gradient coming back into the scan is not rounded to bf16 either (it feeds
// sums over every token, A_log's and dt_bias's, that nearly cancel).
// The state is carried in double (Transformers' chunked form is the same sum, in another order).
Tensor ssd_scan_fwd(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                    const SsdShape& shape, const AttentionMask& mask);
struct SsdScanGrads {
  Tensor d_xbc;  // [B, T, heads * head_dim + 2 * groups * state]
  Tensor d_dt;   // [B, T, heads]: the gradient of the raw time steps
};
// Adds the gradients of dt_bias, a_log and d into grad_dt_bias, grad_a_log and grad_d.
SsdScanGrads ssd_scan_bwd(const Tensor& dy, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias,
                          const Tensor& a_log, const Tensor& d, const SsdShape& shape, const AttentionMask& mask,
                          Tensor& grad_dt_bias, Tensor& grad_a_log, Tensor& grad_d);

// The gated group RMSNorm of Mamba-2's output (norm_before_gate=False): y, z [R, D], w [D],
// g = y * silu(z), out = w * g * rsqrt(mean(g^2) + eps) with the mean over each of the D /
// group_size groups of consecutive columns. rstd [R, D / group_size] (fp32) is saved for backward.
// y may be float32 (the scan's output) where z is the model's dtype: out takes z's dtype, dy y's.
Tensor gated_rms_norm_fwd(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size, float eps,
                          Tensor& rstd);
struct GatedRmsNormGrads {
  Tensor dy, dz;
};
// Adds dw into grad_w.
GatedRmsNormGrads gated_rms_norm_bwd(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& w,
                                     int64_t group_size, const Tensor& rstd, Tensor& grad_w);

}  // namespace moeforge::ops
