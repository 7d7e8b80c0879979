// RMSNorm, alone and fused with the residual add before it.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// x [R, D], w [D]: y = w * (x * rsqrt(mean(x^2) + eps)). rstd [R] (fp32) is saved for backward.
Tensor rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& rstd);
// The residual add before a norm, in one pass: x += residual in place (the new residual stream, in
// x's dtype), then rms_norm_fwd of that.
Tensor add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& rstd);
// Returns dx, plus dx_residual when given (the gradient that reaches x past the norm, by the
// residual connection); adds dw into grad_w.
Tensor rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                    Tensor& grad_w, const Tensor& dx_residual = Tensor());

}  // namespace moeforge::ops
