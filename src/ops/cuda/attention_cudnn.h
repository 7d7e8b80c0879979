// Attention through cuDNN's fused SDPA (attention_cudnn.cpp, its own translation unit so that
// nothing else compiles the cuDNN frontend). attention.cu decides which calls come here.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "ops/ops.h"

namespace moeforge::ops::cuda {

// Whether cuDNN's kernels take these tensors: all bf16 and 16-byte aligned. q [B, T, Hq, D] and
// v [B, T, Hkv, Dv] with head sizes multiples of 8: up to 128, or up to 256 on Hopper and newer
// (DeepSeek's D = 192, Dv = 128 among them).
bool cudnn_attention_takes(const Tensor& q, const Tensor& v, std::initializer_list<const Tensor*> others);

// Causal attention over [B, T, H, D] with no padding or documents: lse [B, Hq, T] fp32. GPT-OSS's
// additions: window > 0 keeps keys s > t - window (cuDNN's top-left diagonal band, left bound =
// window); sinks_f32 [Hq] fp32 (undefined: none) joins each row's softmax, and lse includes it. The
// backward takes the forward's lse, so its dq/dk/dv need no sink; AttentionGrads::dsinks is not
// written here (attention.cu sums it).
void cudnn_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         const Tensor& sinks_f32, int64_t window, Tensor& out, Tensor& lse);
void cudnn_attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& out, const Tensor& lse, float scale, int64_t window,
                         AttentionGrads& grads);

// Attention inside blocks of the flat token axis (cuDNN's ragged "THD" layout): the tensors are
// [B, T, H, D] as above, read as B*T token rows. Block i's queries are seq_len_q[i] rows starting
// at element offset q_offsets[i] of q/dq, o_offsets[i] of out/dout and stats_offsets[i] of stats,
// its keys seq_len_kv[i] rows at kv_offsets[i] of k/dk and v_offsets[i] of v/dv (the value
// offsets differ from the query/key ones when Dv != D). Causal blocks have the same rows for both and
// each query sees the keys up to itself; full blocks see all their keys. stats [B*T, Hq] fp32,
// token-major. Only the blocks' query rows of out/stats/dq and key rows of dk/dv are written.
struct VarlenBlocks {
  bool causal = true;
  // Neither causal nor full: query i of a block sees key j iff j >= i + seq_len_kv - seq_len_q (cuDNN's
  // bottom-right band of left bound 1), the mask of padded queries under a sliding window (attention.cu).
  bool tail_band = false;
  int64_t capacity = 0;     // entries in each array (empty blocks have length 0)
  int64_t max_queries = 0;  // the longest block's rows
  int64_t max_keys = 0;
  const int32_t* seq_len_q = nullptr;      // [capacity]
  const int32_t* seq_len_kv = nullptr;     // [capacity]
  const int32_t* q_offsets = nullptr;      // [capacity + 1]
  const int32_t* kv_offsets = nullptr;     // [capacity + 1]
  const int32_t* stats_offsets = nullptr;  // [capacity + 1]
  const int32_t* o_offsets = nullptr;      // [capacity + 1]
  const int32_t* v_offsets = nullptr;      // [capacity + 1]
};
// GPT-OSS's sinks (sinks_f32, undefined: none) and window (> 0) as in cudnn_attention_fwd, inside each
// causal block (a document).
void cudnn_varlen_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenBlocks& blocks,
                                float scale, const Tensor& sinks_f32, int64_t window, Tensor& out, Tensor& stats);
void cudnn_varlen_attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const Tensor& stats, const VarlenBlocks& blocks, float scale,
                                int64_t window, AttentionGrads& grads);

}  // namespace moeforge::ops::cuda
