// Token embedding lookup and its gradient.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// ids [N] int64 -> rows of weight [V, H]. Ids outside [0, V) are an Error naming the id and V.
Tensor embedding_fwd(const Tensor& weight, const Tensor& ids);
void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight);  // accumulates

}  // namespace moeforge::ops
