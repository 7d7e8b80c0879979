// Dispatch of attention (attention.h), and its mask's document blocks, found on the host.
#include "ops/attention.h"

#include <algorithm>
#include <bit>
#include <unordered_map>
#include <vector>

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

void check_mask(Op op, const AttentionMask& mask, Device device, int64_t batch,
                int64_t seq) {
  if (mask.key_valid.defined()) {
    check_layout(op, "mask.key_valid", mask.key_valid, device);
    const DType dt = mask.key_valid.dtype();
    MF_CHECK(dt == DType::kI64 || dt == DType::kI32 || dt == DType::kU8 || dt == DType::kBool,
             kInvalidArgument, op_name(op), ": mask.key_valid has dtype ", dtype_torch_name(dt),
             ", expected int64, int32, uint8 or bool");
    check_shape(op, "mask.key_valid", mask.key_valid, {batch, seq});
  }
  if (mask.segment.defined())
    check_typed_tensor(op, "mask.segment", mask.segment, device, DType::kI32, {batch, seq});
  const AttentionDocuments& docs = mask.documents;
  if (!docs.defined()) return;
  for (const AttentionBlocks* blocks : {&docs.causal, &docs.full}) {
    if (!blocks->table.defined()) continue;
    const char* name = blocks == &docs.causal ? "mask.documents.causal" : "mask.documents.full";
    MF_CHECK(blocks->table.dim() == 2 && blocks->table.size(0) == 4 && blocks->count > 0 &&
                 blocks->count <= blocks->table.size(1) && blocks->max_queries > 0 &&
                 blocks->max_queries <= seq && blocks->max_keys > 0 && blocks->max_keys <= seq,
             kInvalidArgument, op_name(op), ": ", name, ": a [4, capacity] table of ", blocks->count,
             " blocks of up to ", blocks->max_queries, " queries and ", blocks->max_keys,
             " keys does not fit ", shape_str(blocks->table.shape()), " and sequence length ", seq);
    check_typed_tensor(op, name, blocks->table, device, DType::kI32, {4, blocks->table.size(1)});
  }
}

void check_qkv(Op op, const Tensor& q, const Tensor& k, const Tensor& v) {
  const Device device = check_float_input(op, "q", q, 4);
  check_layout(op, "k", k, device);
  check_float(op, "k", k);
  check_rank(op, "k", k, 4);
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3), hkv = k.size(2);
  MF_CHECK(k.size(0) == b && k.size(1) == t && k.size(3) == d, kShape, op_name(op), ": k has shape ",
           shape_str(k.shape()), ", expected [", b, ", ", t, ", Hkv, ", d, "] to match q ",
           shape_str(q.shape()));
  MF_CHECK(d > 0, kShape, op_name(op), ": q ", shape_str(q.shape()), " has an empty head dimension");
  MF_CHECK(hkv > 0 && hq % hkv == 0, kShape, op_name(op), ": ", hq, " query heads are not a multiple of ",
           hkv, " key/value heads");
  check_layout(op, "v", v, device);
  check_float(op, "v", v);
  check_rank(op, "v", v, 4);
  MF_CHECK(v.size(0) == b && v.size(1) == t && v.size(2) == hkv && v.size(3) > 0, kShape, op_name(op),
           ": v has shape ", shape_str(v.shape()), ", expected [", b, ", ", t, ", ", hkv, ", Dv] to match k ",
           shape_str(k.shape()));
}

// Sinks [Hq] and a window: GPT-OSS's.
void check_sinks_window(Op op, const Tensor& q, const Tensor& sinks, int64_t window) {
  MF_CHECK(window >= 0, kInvalidArgument, op_name(op), ": window ", window, " is negative");
  if (sinks.defined()) check_float_tensor(op, "sinks", sinks, q.device(), {q.size(2)});
}

// The output's (and its gradient's) shape: q's heads with v's head size.
Shape output_shape(const Tensor& q, const Tensor& v) { return {q.size(0), q.size(1), q.size(2), v.size(3)}; }

// Blocks as they are found, then padded to a power-of-two capacity and uploaded.
struct BlockList {
  std::vector<int64_t> q_first, q_len, kv_first, kv_len;

  void add(int64_t qf, int64_t ql, int64_t kf, int64_t kl) {
    q_first.push_back(qf);
    q_len.push_back(ql);
    kv_first.push_back(kf);
    kv_len.push_back(kl);
  }
  AttentionBlocks upload(int64_t tokens, Device device) {
    AttentionBlocks blocks;
    if (q_first.empty()) return blocks;
    blocks.count = static_cast<int64_t>(q_first.size());
    blocks.max_queries = *std::max_element(q_len.begin(), q_len.end());
    blocks.max_keys = *std::max_element(kv_len.begin(), kv_len.end());
    const auto capacity = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(blocks.count)));
    std::vector<int64_t> table;
    for (std::vector<int64_t>* row : {&q_first, &q_len, &kv_first, &kv_len}) {
      const bool is_first = row == &q_first || row == &kv_first;
      row->resize(capacity, is_first ? tokens : 0);
      table.insert(table.end(), row->begin(), row->end());
    }
    blocks.table = Tensor::from_vector(table, {4, capacity}).to(DType::kI32).to(device);
    return blocks;
  }
};

}  // namespace

AttentionDocuments attention_documents(int64_t batch, int64_t seq, const int32_t* segment,
                                       const uint8_t* valid, Device device, bool padded_queries_attend) {
  const int64_t tokens = batch * seq;
  MF_CHECK(tokens < (int64_t{1} << 31), kInvalidArgument, "attention_documents: ", tokens,
           " tokens do not fit the int32 tables");
  BlockList documents, padded;
  bool covers_all = true;
  auto segment_of = [&](int64_t i) { return segment != nullptr ? segment[i] : 0; };
  auto valid_at = [&](int64_t i) { return valid == nullptr || valid[i] != 0; };
  for (int64_t b = 0; b < batch; ++b) {
    // Per segment id of this row: the index of its document in `documents`, once it has begun.
    std::unordered_map<int32_t, int64_t> document_of;
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t i = b * seq + t;
      const int32_t seg = segment_of(i);
      auto it = document_of.find(seg);
      const bool after_same_segment = t > 0 && segment_of(i - 1) == seg;
      if (!valid_at(i)) {
        covers_all = false;  // a padded token is no document's key
        // Attending nothing, or no valid key of its segment before it: sees nothing.
        if (!padded_queries_attend || it == document_of.end()) continue;
        // A padded query after its segment's document sees all of it: extend the previous
        // token's block when that is one of these for the same document.
        const int64_t doc = it->second;
        const int64_t last = static_cast<int64_t>(padded.q_first.size()) - 1;
        if (after_same_segment && !valid_at(i - 1) && last >= 0 &&
            padded.q_first[last] + padded.q_len[last] == i &&
            padded.kv_first[last] == documents.q_first[doc])
          ++padded.q_len[last];
        else
          padded.add(i, 1, documents.q_first[doc], documents.q_len[doc]);
        continue;
      }
      if (it == document_of.end()) {
        document_of.emplace(seg, static_cast<int64_t>(documents.q_first.size()));
        documents.add(i, 1, i, 1);
      } else if (after_same_segment && valid_at(i - 1) &&
                 it->second == static_cast<int64_t>(documents.q_first.size()) - 1) {
        ++documents.q_len[it->second];
        ++documents.kv_len[it->second];
      } else {
        return {};  // the segment's valid tokens are split: its later part sees the earlier one
      }
    }
  }
  AttentionDocuments docs;
  docs.causal = documents.upload(tokens, device);
  if (!docs.causal.table.defined()) return {};
  docs.full = padded.upload(tokens, device);
  docs.covers_all_tokens = covers_all;
  return docs;
}

Tensor attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                     float scale, Tensor& lse, const Tensor& sinks, int64_t window) {
  const Op op = Op::kAttentionFwd;
  check_qkv(op, q, k, v);
  const Device device = q.device();
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2);
  check_mask(op, mask, device, b, t);
  check_sinks_window(op, q, sinks, window);
  prepare_saved(op, "lse", lse, device, {b, hq, t});
  Tensor out = Tensor::empty(output_shape(q, v), q.dtype(), device, "attention output");
  MF_DISPATCH(q, op, attention_fwd(q, k, v, mask, scale, sinks, window, out, lse));
  return out;
}

AttentionGrads attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                             float scale, const Tensor& sinks, int64_t window) {
  const Op op = Op::kAttentionBwd;
  check_qkv(op, q, k, v);
  const Device device = q.device();
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2);
  check_mask(op, mask, device, b, t);
  check_sinks_window(op, q, sinks, window);
  check_float_tensor(op, "dout", dout, device, output_shape(q, v));
  check_float_tensor(op, "out", out, device, output_shape(q, v));
  check_typed_tensor(op, "lse", lse, device, DType::kF32, {b, hq, t});
  AttentionGrads grads{Tensor::empty(q.shape(), q.dtype(), device, "attention dq"),
                       Tensor::empty(k.shape(), k.dtype(), device, "attention dk"),
                       Tensor::empty(v.shape(), v.dtype(), device, "attention dv")};
  if (sinks.defined()) grads.dsinks = Tensor::empty(sinks.shape(), sinks.dtype(), device, "attention dsinks");
  MF_DISPATCH(q, op, attention_bwd(dout, q, k, v, out, lse, mask, scale, sinks, window, grads));
  return grads;
}

}  // namespace moeforge::ops
