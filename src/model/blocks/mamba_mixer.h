// Nemotron-H's Mamba-2 mixer (Transformers' NemotronHMamba2Mixer, its torch path):
//
//   [z | xBC | dt] = in_proj(x)
//   xBC = silu(conv1d(xBC))              depthwise, causal, per document (ops::causal_conv1d_silu_fwd)
//   y   = SSD scan of x with B, C, dt    plus the D skip (ops::ssd_scan_fwd)
//   out = out_proj(w * groupnorm(y * silu(z)))   (ops::gated_rms_norm_fwd)
//
// Packed documents restart the convolution and the state; padding rows enter the convolution as
// zeros, as Transformers masks them.
#pragma once

#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "model/blocks/context.h"
#include "ops/mamba.h"

namespace moeforge {

struct MambaState {
  Tensor z, xbc, dt;        // in_proj's three parts: [N, inner], [B, T, conv_dim], [B, T, heads]
  Tensor conv_out;          // [B, T, conv_dim]
  Tensor y, rstd, normed;   // the scan's output [N, inner], the norm's statistics and output
  Tensor in_lora, out_lora; // the adapters' low-rank activations (blocks/linear.h)
};

class MambaMixer {
 public:
  MambaMixer(const MambaSlots& slots, const MambaConfig& config);

  // x: the normed input [N, H]; returns out_proj's output [N, H].
  Tensor forward(const Params& p, const BatchContext& ctx, const Tensor& x, MambaState& st) const;
  // dy [N, H] -> dx [N, H]; adds the parameters' gradients. x: the forward's input.
  Tensor backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x, MambaState& st) const;

 private:
  MambaSlots slots_;
  ops::SsdShape shape_;
  int64_t inner_, conv_dim_, kernel_, norm_group_;
};

}  // namespace moeforge
