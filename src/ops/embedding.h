// Token embedding lookup and its gradient.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// ids [N] int64 -> rows of weight [V, H]. Ids outside [0, V) are an Error naming the id and V.
Tensor embedding_fwd(const Tensor& weight, const Tensor& ids);
// grad_weight += the rows of grad_out scattered by ids, except rows whose id is padding_idx (as
// torch.nn.Embedding's padding_idx: that row gets no gradient from the lookup); -1: none.
void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx = -1);

}  // namespace moeforge::ops
