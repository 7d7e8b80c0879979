// The optimizer's ops: the gradient norm's sum of squares and the AdamW update.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// sum(x^2) over all elements of a floating tensor, accumulated in fp32 per block and fp64 across
// blocks (CPU: fp64). Returns to the host: one device-to-host copy on CUDA.
double sum_of_squares(const Tensor& x);

// One AdamW update with torch.optim.AdamW's semantics over flat 1-D buffers: for each element i of
// the ranges in `spans` ([S, 3] int64 on the buffers' device: begin, end, apply weight decay 0/1;
// begin and end multiples of 8, so CUDA moves eight elements per access; on CUDA the gradients
// share the weights' dtype and the two moments one dtype), with g = grad_scale * the stored gradient
// (gradient clipping's coefficient, applied as the gradients are read instead of in a pass of its own):
//   p *= 1 - lr*wd (decay ranges); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)     with step_size = lr / bc1
// computed in fp32 from any mix of bf16/fp32 storage. When `master` is defined (fp32) it is the
// weight that is updated and `params` receives its rounded copy; otherwise `params` is updated in
// place. Elements outside the spans are untouched.
struct AdamWHyper {
  float lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt;
  float grad_scale = 1.0f;
};
void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h);

}  // namespace moeforge::ops
