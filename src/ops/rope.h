// Rotary position embedding, alone and fused with the per-head q/k-norm before it.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// x [N, heads, D]; positions [N] int64; inv_freq [D/2] fp32 (from the architecture's rope type);
// angle = position * inv_freq[i] in fp32; cos/sin multiplied by attention_scaling (1 for default rope).
// y = x * cos + rotate_half(x) * sin with cos/sin repeated over both halves.
Tensor rope_fwd(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling = 1.0f);
Tensor rope_bwd(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling = 1.0f);
// Qwen3's per-head q/k-norm followed by the rotation, in one op (one pass over the heads on CUDA
// where a head of D = 16 .. 256 columns, D % 16 == 0, fits a warp; the two ops in turn elsewhere):
// x [N, heads, D] -> rope(rms_norm(x) * w); rstd [N * heads] as rms_norm_fwd's.
Tensor qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                        const Tensor& inv_freq, float attention_scaling, Tensor& rstd);
// Returns dx [N, heads, D]; adds the norm weight's gradient into grad_w.
Tensor qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                        Tensor& grad_w);

}  // namespace moeforge::ops
