// The pieces of DeepSeek's multi-head latent attention (MLA) between its projections: splitting the
// compressed key/value projection, and assembling per-head queries, keys and values with the
// decoupled rotary part.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moeforge::ops {

// x [R, W0 + W1 + ...] -> its consecutive column blocks [R, W0], [R, W1], ..., each contiguous: one
// read of x however many parts (the widths must add up to x's columns).
std::vector<Tensor> split_columns(const Tensor& x, const std::vector<int64_t>& widths);
// The inverse: parts [R, Wi] -> [R, W0 + W1 + ...].
Tensor concat_columns(const std::vector<Tensor>& parts);

// The rotary embedding of MLA's Dr = 2 * inv_freq.size(0) rotated columns, as Transformers' DeepSeek
// applies it: angle = position * inv_freq[i] in fp32, cos and sin times attention_scaling. The pairs
// (x_lo, x_hi) rotated by frequency i are (x_2i, x_2i+1) when interleaved, else (x_i, x_i+Dr/2)
// (rotate_half); either way the rotated pair is written to columns i and i + Dr/2.
struct MlaRope {
  Tensor positions;  // [N] int64
  Tensor inv_freq;   // [Dr / 2] fp32
  float attention_scaling = 1.0f;
  bool interleaved = true;
};

// q [N, H, Dn + Dr]: each head's no-RoPE part, then its RoPE part. kv [N, H, Dn + Dv]: each head's
// key no-RoPE part, then its value. k_pe [N, Dr]: the key's RoPE part, one for all heads.
// Returns the attention's inputs: q with its RoPE part rotated, k [N, H, Dn + Dr] = (key no-RoPE
// part, rotated k_pe) and v [N, H, Dv].
struct MlaHeads {
  Tensor q, k, v;
};
MlaHeads mla_heads_fwd(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const MlaRope& rope);
// The gradients of mla_heads_fwd's inputs from those of its outputs: dk_pe sums the heads' shares.
struct MlaHeadsGrads {
  Tensor dq, dkv, dk_pe;
};
MlaHeadsGrads mla_heads_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const MlaRope& rope);

}  // namespace moeforge::ops
