// Causal grouped-query attention and the forms its mask comes in.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moeforge::ops {

// Causal grouped-query attention over B sequences of length T.
// q and k [B, T, Hq or Hkv, D], v [B, T, Hkv, Dv] with Hq % Hkv == 0; scale multiplies q.k; the
// output is [B, T, Hq, Dv]. Dv may differ from D (DeepSeek's multi-head latent attention).
// Query t may attend key s iff s <= t, key_valid[b, s] != 0 (padding; undefined tensor = all valid),
// and segment[b, s] == segment[b, t] (packed documents; undefined tensor = one segment); with
// padded_queries_attend false, also only if key_valid[b, t] != 0 (a padded query attends nothing).
// A query with no allowed key outputs zeros (its lse is -inf and it gets no gradient).
// lse [B, Hq, T] (fp32 log-sum-exp of the scaled scores) is saved for backward.
//
// GPT-OSS's two additions (on CUDA: cuDNN with every mask that has blocks, else the simple kernels):
//   window > 0: query t attends only keys s > t - window as well (a sliding-window layer);
//   sinks [Hq] (floating): one learned logit per query head joins every row's softmax as an extra
//     column whose value is zero, so the row's probabilities sum to less than 1; lse includes it
//     (a query with no allowed key then has lse = its sink). Its gradient is AttentionGrads::dsinks.
//
// The same mask may also come as blocks of the flat token axis (optional, see attention_documents):
// documents, inside which each query attends the keys from the document's first token up to itself,
// and padded queries after a document, which attend that whole document (HF's padding mask does
// the same) unless padded queries attend nothing. A token in no block attends nothing.
// Variable-length kernels (cuDNN on CUDA) run this form; the CPU and the fallback kernels read
// key_valid and segment, which must describe the same mask.
struct AttentionBlocks {
  Tensor table;             // [4, capacity] int32: first query row (flat index b*T + t), queries,
                            // first key row, keys; rows past `count` are empty (first B*T, length 0)
  int64_t count = 0;        // blocks
  int64_t max_queries = 0;  // the longest block's rows
  int64_t max_keys = 0;
};
struct AttentionDocuments {
  AttentionBlocks causal;  // documents: queries and keys are the same rows
  AttentionBlocks full;    // padded queries after a document, keys = the document
  bool covers_all_tokens = true;  // every token is in a document (else: padding is present)
  bool defined() const { return causal.table.defined(); }
};
struct AttentionMask {
  Tensor key_valid;  // [B, T] int64/int32/uint8, optional
  Tensor segment;    // [B, T] int32, optional
  AttentionDocuments documents;
  // false: padded queries (key_valid 0) attend nothing, as when nothing reads their outputs (a
  // model's padded rows that carry no label: model/batch_inputs.cpp); their blocks then cost nothing.
  bool padded_queries_attend = true;
};
// The blocks of a [B, T] mask given on the host (segment ids and key validity, row-major; either
// may be null) as tables on `device`, or nothing (no tables) when the mask has no such form (a
// padding hole inside a document, a segment split in two). Capacities are the counts rounded up
// to a power of two, so that kernels compiled per shape see few shapes.
AttentionDocuments attention_documents(int64_t batch, int64_t seq, const int32_t* segment,
                                       const uint8_t* valid, Device device, bool padded_queries_attend = true);
Tensor attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                     float scale, Tensor& lse, const Tensor& sinks = Tensor(), int64_t window = 0);
struct AttentionGrads {
  Tensor dq, dk, dv;
  Tensor dsinks;  // [Hq] in the sinks' dtype, when the forward had sinks
};
AttentionGrads attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                             float scale, const Tensor& sinks = Tensor(), int64_t window = 0);

}  // namespace moeforge::ops
