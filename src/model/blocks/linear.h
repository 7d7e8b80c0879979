// The projections every block is made of, with their LoRA adapters and frozen weights:
//
//   y = x W^T [+ b] [+ scale * (drop(x) A^T) B^T]
//
// The adapter's path is computed as two thin products next to the base one (never W + scale B A,
// which would cost a weight-sized temporary per projection, and per expert). Its backward:
//   u = scale * drop(x) A^T (kept from the forward, [rows, r])
//   dB += dy^T u,  du = scale * dy B,  dA += du^T drop(x),  dx += drop(du A)
// drop is LoRA's input dropout in training (its mask drawn again from the pass's seed, never kept).
// A frozen weight (or bias) gets no gradient; the adapter's pair always does.
//
// The grouped versions do the same per expert on expert-sorted rows, through the grouped products
// (W [E, out, in], A [E, r, in], B [E, out, r]); experts take no dropout (as PEFT).
#pragma once

#include "arch/weight_map.h"
#include "model/blocks/context.h"

namespace moeforge {

// x [N, in] -> [N, out]; `lora_u` receives u when the projection has an adapter. `dropout_seed`:
// the pass's BatchContext::lora_dropout_seed (0: no dropout).
Tensor linear_fwd(const Params& p, const LinearSlots& s, const Tensor& x, Tensor& lora_u, uint64_t dropout_seed = 0);
// dx [N, in] = (or += when `accumulate`) dy's share through the projection; the trainable parts'
// gradients are added. x, lora_u and dropout_seed: the forward's.
void linear_bwd(const Params& p, const LinearSlots& s, const Tensor& dy, const Tensor& x, const Tensor& lora_u,
                Tensor& dx, bool accumulate, uint64_t dropout_seed = 0);

// Rows offsets[e] .. offsets[e+1] of x [M, in] belong to expert e; `weight` [E, out, in]; bias [E, out]
// (optional) added after the adapter's part.
Tensor grouped_fwd(const Params& p, int weight, const LoraSlots& lora, const Tensor& x, const Tensor& offsets,
                   Tensor& lora_u, const Tensor& bias = Tensor());
// Returns dx [M, in]; adds the trainable parts' gradients.
Tensor grouped_bwd(const Params& p, int weight, const LoraSlots& lora, const Tensor& dy, const Tensor& x,
                   const Tensor& lora_u, const Tensor& offsets);

}  // namespace moeforge
