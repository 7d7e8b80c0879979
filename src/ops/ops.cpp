// Dispatch of the ops in ops.h: every op checks its arguments here, once for all backends (devices
// agree, dtypes, shapes, contiguity), allocates its outputs on the inputs' device and calls the
// implementation for that device. Checks that need to read tensor values (token ids in range,
// expert offsets) happen where the data is read, in the backend.
#include "ops/ops.h"
#include "ops/profile.h"

#include <algorithm>
#include <bit>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#ifdef MOEFORGE_WITH_CUDA
#include "ops/cuda/cuda_ops.h"
#endif

namespace moeforge::ops {
namespace {

// ---- argument checks ------------------------------------------------------------------------

void check_defined(const char* op, const char* name, const Tensor& t) {
  MF_CHECK(t.defined(), kInvalidArgument, op, ": ", name, " is an undefined tensor");
}

// Every tensor an op reads or writes is contiguous and lives on the device of the op's first input.
void check_layout(const char* op, const char* name, const Tensor& t, Device device) {
  check_defined(op, name, t);
  MF_CHECK(t.device() == device, kInvalidArgument, op, ": ", name, " is on ",
           device_name(t.device()), " but the other inputs are on ", device_name(device));
  MF_CHECK(t.is_contiguous(), kInvalidArgument, op, ": ", name, " of shape ", shape_str(t.shape()),
           " is not contiguous (call .contiguous())");
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected) {
  MF_CHECK(t.shape() == expected, kShape, op, ": ", name, " has shape ", shape_str(t.shape()),
           ", expected ", shape_str(expected));
}

void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank) {
  MF_CHECK(t.dim() == rank, kShape, op, ": ", name, " has shape ", shape_str(t.shape()),
           ", expected ", rank, " dimensions");
}

void check_dtype(const char* op, const char* name, const Tensor& t, DType expected) {
  MF_CHECK(t.dtype() == expected, kInvalidArgument, op, ": ", name, " has dtype ",
           dtype_torch_name(t.dtype()), ", expected ", dtype_torch_name(expected));
}

// Activations, weights and their gradients: any floating dtype on CUDA, float32 on the CPU (the
// CPU backend is the float32 reference).
void check_float(const char* op, const char* name, const Tensor& t) {
  MF_CHECK(dtype_is_floating(t.dtype()), kInvalidArgument, op, ": ", name, " has dtype ",
           dtype_torch_name(t.dtype()), ", expected a floating dtype");
  MF_CHECK(t.device() != Device::kCPU || t.dtype() == DType::kF32, kUnsupported, op, ": ", name,
           " has dtype ", dtype_torch_name(t.dtype()), " but the CPU ops take float32 only");
}

// A defined, contiguous floating tensor of `rank` dimensions: an op's first input. Returns its
// device, which the op's other tensors must share.
Device check_float_input(const char* op, const char* name, const Tensor& t, int64_t rank) {
  check_defined(op, name, t);
  const Device device = t.device();
  check_layout(op, name, t, device);
  check_float(op, name, t);
  check_rank(op, name, t, rank);
  return device;
}

// A floating tensor of an expected shape on `device`.
void check_float_tensor(const char* op, const char* name, const Tensor& t, Device device,
                        const Shape& shape) {
  check_layout(op, name, t, device);
  check_float(op, name, t);
  check_shape(op, name, t, shape);
}

// A tensor of an exact dtype and shape on `device`.
void check_typed_tensor(const char* op, const char* name, const Tensor& t, Device device,
                        DType dtype, const Shape& shape) {
  check_layout(op, name, t, device);
  check_dtype(op, name, t, dtype);
  check_shape(op, name, t, shape);
}

// An optional saved-statistics output (rstd, lse): allocated when undefined, else checked and
// overwritten.
void prepare_saved(const char* op, const char* name, Tensor& t, Device device, const Shape& shape) {
  if (!t.defined()) {
    t = Tensor::empty(shape, DType::kF32, device, name);
    return;
  }
  check_typed_tensor(op, name, t, device, DType::kF32, shape);
}

bool on_cpu(const Tensor& t) { return t.device() == Device::kCPU; }

// Runs `call`, a function of both cpu_ops.h and cuda_ops.h (same signatures), on the backend of t.
#ifdef MOEFORGE_WITH_CUDA
#define MF_DISPATCH(t, op, call) \
  do {                           \
    (void)(op);                  \
    if (on_cpu(t)) {             \
      cpu::call;                 \
    } else {                     \
      OpTimer timer_(op);        \
      cuda::call;                \
    }                            \
  } while (0)
#else
[[noreturn]] void no_cuda(const char* op) {
  fail(ErrorCode::kUnsupported, op, ": this moeforge was built without the CUDA backend");
}
#define MF_DISPATCH(t, op, call) \
  do {                           \
    if (on_cpu(t))               \
      cpu::call;                 \
    else                         \
      no_cuda(op);               \
  } while (0)
#endif

void check_mask(const char* op, const AttentionMask& mask, Device device, int64_t batch,
                int64_t seq) {
  if (mask.key_valid.defined()) {
    check_layout(op, "mask.key_valid", mask.key_valid, device);
    const DType dt = mask.key_valid.dtype();
    MF_CHECK(dt == DType::kI64 || dt == DType::kI32 || dt == DType::kU8 || dt == DType::kBool,
             kInvalidArgument, op, ": mask.key_valid has dtype ", dtype_torch_name(dt),
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
             kInvalidArgument, op, ": ", name, ": a [4, capacity] table of ", blocks->count,
             " blocks of up to ", blocks->max_queries, " queries and ", blocks->max_keys,
             " keys does not fit ", shape_str(blocks->table.shape()), " and sequence length ", seq);
    check_typed_tensor(op, name, blocks->table, device, DType::kI32, {4, blocks->table.size(1)});
  }
}

// probs: a defined, contiguous [rows, columns] fp32 tensor (softmax and router outputs). Returns
// its device.
Device check_probs(const char* op, const Tensor& probs) {
  check_defined(op, "probs", probs);
  const Device device = probs.device();
  check_layout(op, "probs", probs, device);
  check_dtype(op, "probs", probs, DType::kF32);
  check_rank(op, "probs", probs, 2);
  return device;
}

void check_permutation(const char* op, const Permutation& p, Device device, int64_t n_tokens,
                       int64_t k) {
  check_typed_tensor(op, "permutation.slot_of", p.slot_of, device, DType::kI32, {n_tokens, k});
  check_typed_tensor(op, "permutation.source_row", p.source_row, device, DType::kI32,
                     {n_tokens * k});
}

// k, the slots per token, of a permutation whose slot_of [N, k] is checked in full later.
int64_t permutation_slots(const char* op, const Permutation& p) {
  check_defined(op, "permutation.slot_of", p.slot_of);
  check_rank(op, "permutation.slot_of", p.slot_of, 2);
  return p.slot_of.size(1);
}

// offsets [E+1] int64 on `device`.
void check_offsets(const char* op, const Tensor& offsets, Device device, int64_t num_experts) {
  check_typed_tensor(op, "offsets", offsets, device, DType::kI64, {num_experts + 1});
}

}  // namespace

// ---- dense algebra --------------------------------------------------------------------------

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta) {
  const char* op = "gemm";
  check_defined(op, "a", a);
  const Device device = a.device();
  auto check_matrix = [&](const char* name, const Tensor& t) {
    check_layout(op, name, t, device);
    check_float(op, name, t);
    check_rank(op, name, t, 2);
  };
  check_matrix("a", a);
  check_matrix("b", b);
  check_matrix("c", c);
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t k = transpose_a ? a.size(0) : a.size(1);
  const int64_t kb = transpose_b ? b.size(1) : b.size(0);
  const int64_t n = transpose_b ? b.size(0) : b.size(1);
  MF_CHECK(k == kb, kShape, "gemm: op(a) is ", shape_str({m, k}), " but op(b) is ",
           shape_str({kb, n}), " (inner dimensions differ)");
  check_shape(op, "c", c, {m, n});
  MF_DISPATCH(a, op, gemm(a, transpose_a, b, transpose_b, c, alpha, beta));
}

Tensor linear(const Tensor& x, const Tensor& w) {
  check_defined("linear", "x", x);
  check_defined("linear", "w", w);
  check_rank("linear", "x", x, 2);
  check_rank("linear", "w", w, 2);
  MF_CHECK(x.size(1) == w.size(1), kShape, "linear: x ", shape_str(x.shape()), " has ", x.size(1),
           " features but w ", shape_str(w.shape()), " expects ", w.size(1));
  Tensor y = Tensor::empty({x.size(0), w.size(0)}, x.dtype(), x.device(), "linear output");
  gemm(x, false, w, true, y);
  return y;
}

void add_inplace(Tensor& a, const Tensor& b) {
  const char* op = "add_inplace";
  check_defined(op, "a", a);
  check_layout(op, "a", a, a.device());
  check_float(op, "a", a);
  check_float_tensor(op, "b", b, a.device(), a.shape());
  check_dtype(op, "b", b, a.dtype());
  MF_DISPATCH(a, op, add_inplace(a, b));
}

void scale_inplace(Tensor& a, float s) {
  const char* op = "scale_inplace";
  check_defined(op, "a", a);
  check_layout(op, "a", a, a.device());
  check_float(op, "a", a);
  MF_DISPATCH(a, op, scale_inplace(a, s));
}

Tensor cast(const Tensor& x, DType dtype) {
  const char* op = "cast";
  check_layout(op, "x", x, x.device());
  MF_CHECK(dtype_is_floating(x.dtype()) && dtype_is_floating(dtype), kInvalidArgument, op,
           ": casts floating tensors only (", dtype_torch_name(x.dtype()), " to ",
           dtype_torch_name(dtype), ")");
  if (x.dtype() == dtype) return x;
  if (on_cpu(x)) return x.to(dtype);
#ifdef MOEFORGE_WITH_CUDA
  Tensor y = Tensor::empty(x.shape(), dtype, x.device(), "cast output");
  OpTimer timer(op);
  cuda::cast(x, y);
  return y;
#else
  no_cuda(op);
#endif
}

// ---- embedding ------------------------------------------------------------------------------

Tensor embedding_fwd(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding_fwd";
  const Device device = check_float_input(op, "weight", weight, 2);
  check_layout(op, "ids", ids, device);
  check_dtype(op, "ids", ids, DType::kI64);
  check_rank(op, "ids", ids, 1);
  Tensor out = Tensor::empty({ids.size(0), weight.size(1)}, weight.dtype(), device, "embedding");
  MF_DISPATCH(weight, op, embedding_fwd(weight, ids, out));
  return out;
}

void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight) {
  const char* op = "embedding_bwd";
  const Device device = check_float_input(op, "grad_weight", grad_weight, 2);
  check_layout(op, "ids", ids, device);
  check_dtype(op, "ids", ids, DType::kI64);
  check_rank(op, "ids", ids, 1);
  check_float_tensor(op, "grad_out", grad_out, device, {ids.size(0), grad_weight.size(1)});
  MF_DISPATCH(grad_weight, op, embedding_bwd(grad_out, ids, grad_weight));
}

// ---- RMSNorm --------------------------------------------------------------------------------

namespace {

// x [R, D] and its norm weight w [D]; returns x's device.
Device check_norm_input(const char* op, const Tensor& x, const Tensor& w) {
  const Device device = check_float_input(op, "x", x, 2);
  check_float_tensor(op, "w", w, device, {x.size(1)});
  return device;
}

}  // namespace

Tensor rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& rstd) {
  const char* op = "rms_norm_fwd";
  const Device device = check_norm_input(op, x, w);
  prepare_saved(op, "rstd", rstd, device, {x.size(0)});
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device, "rms_norm output");
  MF_DISPATCH(x, op, rms_norm_fwd(x, w, eps, y, rstd));
  return y;
}

Tensor add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& rstd) {
  const char* op = "add_rms_norm_fwd";
  const Device device = check_norm_input(op, x, w);
  check_float_tensor(op, "residual", residual, device, x.shape());
  check_dtype(op, "residual", residual, x.dtype());
  prepare_saved(op, "rstd", rstd, device, {x.size(0)});
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device, "rms_norm output");
  MF_DISPATCH(x, op, add_rms_norm_fwd(x, residual, w, eps, y, rstd));
  return y;
}

Tensor rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                    Tensor& grad_w, const Tensor& dx_residual) {
  const char* op = "rms_norm_bwd";
  const Device device = check_norm_input(op, x, w);
  check_float_tensor(op, "dy", dy, device, x.shape());
  check_typed_tensor(op, "rstd", rstd, device, DType::kF32, {x.size(0)});
  check_float_tensor(op, "grad_w", grad_w, device, {x.size(1)});
  if (dx_residual.defined()) check_float_tensor(op, "dx_residual", dx_residual, device, x.shape());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), device, "rms_norm dx");
  MF_DISPATCH(x, op, rms_norm_bwd(dy, x, w, rstd, dx_residual, dx, grad_w));
  return dx;
}

// ---- rotary embedding -----------------------------------------------------------------------

namespace {

void check_rope(const char* op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const Device device = check_float_input(op, "x", x, 3);
  MF_CHECK(x.size(2) % 2 == 0, kShape, op, ": head dimension ", x.size(2), " of ",
           shape_str(x.shape()), " is odd");
  check_typed_tensor(op, "positions", positions, device, DType::kI64, {x.size(0)});
  check_typed_tensor(op, "inv_freq", inv_freq, device, DType::kF32, {x.size(2) / 2});
}

}  // namespace

Tensor rope_fwd(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling) {
  check_rope("rope_fwd", x, positions, inv_freq);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "rope output");
  MF_DISPATCH(x, "rope_fwd", rope_apply(x, positions, inv_freq, attention_scaling, 1.0f, y));
  return y;
}

Tensor rope_bwd(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling) {
  check_rope("rope_bwd", dy, positions, inv_freq);
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device(), "rope dx");
  MF_DISPATCH(dy, "rope_bwd", rope_apply(dy, positions, inv_freq, attention_scaling, -1.0f, dx));
  return dx;
}

namespace {

// x [N, heads, D] with w [D], and the rope arguments.
void check_qk_norm_rope(const char* op, const Tensor& x, const Tensor& w, const Tensor& positions,
                        const Tensor& inv_freq) {
  check_rope(op, x, positions, inv_freq);
  check_float_tensor(op, "w", w, x.device(), {x.size(2)});
}

}  // namespace

Tensor qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                        const Tensor& inv_freq, float attention_scaling, Tensor& rstd) {
  const char* op = "qk_norm_rope_fwd";
  check_qk_norm_rope(op, x, w, positions, inv_freq);
  prepare_saved(op, "rstd", rstd, x.device(), {x.size(0) * x.size(1)});
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "q/k-norm + rope output");
  MF_DISPATCH(x, op, qk_norm_rope_fwd(x, w, eps, positions, inv_freq, attention_scaling, y, rstd));
  return y;
}

Tensor qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                        Tensor& grad_w) {
  const char* op = "qk_norm_rope_bwd";
  check_qk_norm_rope(op, x, w, positions, inv_freq);
  check_float_tensor(op, "dy", dy, x.device(), x.shape());
  check_typed_tensor(op, "rstd", rstd, x.device(), DType::kF32, {x.size(0) * x.size(1)});
  check_float_tensor(op, "grad_w", grad_w, x.device(), {x.size(2)});
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device(), "q/k-norm + rope dx");
  MF_DISPATCH(x, op, qk_norm_rope_bwd(dy, x, w, rstd, positions, inv_freq, attention_scaling, dx, grad_w));
  return dx;
}

// ---- attention ------------------------------------------------------------------------------

namespace {

void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  const Device device = check_float_input(op, "q", q, 4);
  check_layout(op, "k", k, device);
  check_float(op, "k", k);
  check_rank(op, "k", k, 4);
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3), hkv = k.size(2);
  MF_CHECK(k.size(0) == b && k.size(1) == t && k.size(3) == d, kShape, op, ": k has shape ",
           shape_str(k.shape()), ", expected [", b, ", ", t, ", Hkv, ", d, "] to match q ",
           shape_str(q.shape()));
  MF_CHECK(d > 0, kShape, op, ": q ", shape_str(q.shape()), " has an empty head dimension");
  MF_CHECK(hkv > 0 && hq % hkv == 0, kShape, op, ": ", hq, " query heads are not a multiple of ",
           hkv, " key/value heads");
  check_float_tensor(op, "v", v, device, k.shape());
}

}  // namespace

namespace {

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
                                       const uint8_t* valid, Device device) {
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
        if (it == document_of.end()) continue;  // no valid key of its segment before it: sees nothing
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
                     float scale, Tensor& lse) {
  const char* op = "attention_fwd";
  check_qkv(op, q, k, v);
  const Device device = q.device();
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2);
  check_mask(op, mask, device, b, t);
  prepare_saved(op, "lse", lse, device, {b, hq, t});
  Tensor out = Tensor::empty(q.shape(), q.dtype(), device, "attention output");
  MF_DISPATCH(q, op, attention_fwd(q, k, v, mask, scale, out, lse));
  return out;
}

AttentionGrads attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                             float scale) {
  const char* op = "attention_bwd";
  check_qkv(op, q, k, v);
  const Device device = q.device();
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2);
  check_mask(op, mask, device, b, t);
  check_float_tensor(op, "dout", dout, device, q.shape());
  check_float_tensor(op, "out", out, device, q.shape());
  check_typed_tensor(op, "lse", lse, device, DType::kF32, {b, hq, t});
  AttentionGrads grads{Tensor::empty(q.shape(), q.dtype(), device, "attention dq"),
                       Tensor::empty(k.shape(), k.dtype(), device, "attention dk"),
                       Tensor::empty(v.shape(), v.dtype(), device, "attention dv")};
  MF_DISPATCH(q, op, attention_bwd(dout, q, k, v, out, lse, mask, scale, grads));
  return grads;
}

// ---- activations ----------------------------------------------------------------------------

namespace {

void check_gate_up(const char* op, const Tensor& gate_up) {
  check_float_input(op, "gate_up", gate_up, 2);
  MF_CHECK(gate_up.size(1) % 2 == 0, kShape, op, ": gate_up ", shape_str(gate_up.shape()),
           " has an odd number of columns (expected gate then up, [M, 2I])");
}

void check_row_scale(const char* op, const Tensor& row_scale, const Tensor& gate_up) {
  if (row_scale.defined())
    check_typed_tensor(op, "row_scale", row_scale, gate_up.device(), DType::kF32, {gate_up.size(0)});
}

}  // namespace

Tensor swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale) {
  const char* op = "swiglu_fwd";
  check_gate_up(op, gate_up);
  check_row_scale(op, row_scale, gate_up);
  Tensor h = Tensor::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.dtype(),
                           gate_up.device(), "swiglu output");
  MF_DISPATCH(gate_up, op, swiglu_fwd(gate_up, row_scale, h));
  return h;
}

SwigluGrads swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale) {
  const char* op = "swiglu_bwd";
  check_gate_up(op, gate_up);
  check_row_scale(op, row_scale, gate_up);
  const Device device = gate_up.device();
  check_float_tensor(op, "dh", dh, device, {gate_up.size(0), gate_up.size(1) / 2});
  SwigluGrads grads;
  grads.d_gate_up = Tensor::empty(gate_up.shape(), gate_up.dtype(), device, "swiglu d_gate_up");
  if (row_scale.defined())
    grads.d_row_scale = Tensor::empty({gate_up.size(0)}, DType::kF32, device, "swiglu d_row_scale");
  MF_DISPATCH(gate_up, op, swiglu_bwd(dh, gate_up, row_scale, grads));
  return grads;
}

Tensor softmax_fwd(const Tensor& logits) {
  const char* op = "softmax_fwd";
  check_defined(op, "logits", logits);
  check_layout(op, "logits", logits, logits.device());
  check_float(op, "logits", logits);
  check_rank(op, "logits", logits, 2);
  Tensor probs = Tensor::empty(logits.shape(), DType::kF32, logits.device(), "softmax probs");
  MF_DISPATCH(logits, op, softmax_fwd(logits, probs));
  return probs;
}

Tensor softmax_bwd(const Tensor& dprobs, const Tensor& probs) {
  const char* op = "softmax_bwd";
  const Device device = check_probs(op, probs);
  check_float_tensor(op, "dprobs", dprobs, device, probs.shape());
  Tensor dlogits = Tensor::empty(probs.shape(), DType::kF32, device, "softmax dlogits");
  MF_DISPATCH(probs, op, softmax_bwd(dprobs, probs, dlogits));
  return dlogits;
}

// ---- MoE routing ----------------------------------------------------------------------------

TopK router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob) {
  const char* op = "router_topk";
  const Device device = check_probs(op, probs);
  MF_CHECK(k >= 1 && k <= probs.size(1), kInvalidArgument, op, ": k = ", k,
           " is outside [1, ", probs.size(1), "] for probs ", shape_str(probs.shape()));
  const int64_t n = probs.size(0);
  TopK topk{Tensor::empty({n, k}, DType::kI32, device, "topk index"),
            Tensor::empty({n, k}, DType::kF32, device, "topk weight")};
  MF_DISPATCH(probs, op, router_topk(probs, k, norm_topk_prob, topk));
  return topk;
}

TopK router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob) {
  const char* op = "router_weights_for";
  const Device device = check_probs(op, probs);
  check_defined(op, "index", index);
  check_rank(op, "index", index, 2);
  check_typed_tensor(op, "index", index, device, DType::kI32, {probs.size(0), index.size(1)});
  TopK topk{index, Tensor::empty(index.shape(), DType::kF32, device, "topk weight")};
  MF_DISPATCH(probs, op, router_weights_for(probs, index, norm_topk_prob, topk.weight));
  return topk;
}

Tensor router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                       bool norm_topk_prob) {
  const char* op = "router_topk_bwd";
  const Device device = check_probs(op, probs);
  check_defined(op, "topk.index", topk.index);
  check_rank(op, "topk.index", topk.index, 2);
  const Shape nk = {probs.size(0), topk.index.size(1)};
  check_typed_tensor(op, "topk.index", topk.index, device, DType::kI32, nk);
  check_typed_tensor(op, "topk.weight", topk.weight, device, DType::kF32, nk);
  check_typed_tensor(op, "d_weight", d_weight, device, DType::kF32, nk);
  Tensor dprobs = Tensor::empty(probs.shape(), DType::kF32, device, "router dprobs");
  MF_DISPATCH(probs, op, router_topk_bwd(d_weight, probs, topk, norm_topk_prob, dprobs));
  return dprobs;
}

Permutation make_permutation(const Tensor& topk_index, int64_t num_experts) {
  const char* op = "make_permutation";
  check_defined(op, "topk_index", topk_index);
  const Device device = topk_index.device();
  check_layout(op, "topk_index", topk_index, device);
  check_dtype(op, "topk_index", topk_index, DType::kI32);
  check_rank(op, "topk_index", topk_index, 2);
  MF_CHECK(num_experts >= 1, kInvalidArgument, op, ": num_experts = ", num_experts);
  const int64_t n = topk_index.size(0), k = topk_index.size(1);
  Permutation p{Tensor::empty({n * k}, DType::kI32, device, "permutation source_row"),
                Tensor::empty({n, k}, DType::kI32, device, "permutation slot_of"),
                Tensor::empty({num_experts + 1}, DType::kI64, device, "permutation offsets")};
  MF_DISPATCH(topk_index, op, make_permutation(topk_index, num_experts, p));
  return p;
}

Tensor permute(const Tensor& x, const Permutation& p) {
  const char* op = "permute";
  const Device device = check_float_input(op, "x", x, 2);
  const int64_t n = x.size(0), k = permutation_slots(op, p);
  check_permutation(op, p, device, n, k);
  Tensor sorted = Tensor::empty({n * k, x.size(1)}, x.dtype(), device, "permuted rows");
  MF_DISPATCH(x, op, permute(x, p, sorted));
  return sorted;
}

Tensor unpermute(const Tensor& sorted, const Permutation& p, int64_t n_tokens) {
  const char* op = "unpermute";
  const Device device = check_float_input(op, "sorted", sorted, 2);
  const int64_t k = permutation_slots(op, p);
  check_permutation(op, p, device, n_tokens, k);
  check_shape(op, "sorted", sorted, {n_tokens * k, sorted.size(1)});
  Tensor out = Tensor::empty({n_tokens, sorted.size(1)}, sorted.dtype(), device, "unpermuted rows");
  MF_DISPATCH(sorted, op, unpermute(sorted, p, out));
  return out;
}

Tensor permute_weights(const Tensor& weight, const Permutation& p) {
  const char* op = "permute_weights";
  check_defined(op, "weight", weight);
  const Device device = weight.device();
  check_layout(op, "weight", weight, device);
  check_dtype(op, "weight", weight, DType::kF32);
  check_rank(op, "weight", weight, 2);
  check_permutation(op, p, device, weight.size(0), weight.size(1));
  Tensor sorted = Tensor::empty({weight.numel()}, DType::kF32, device, "permuted routing weights");
  MF_DISPATCH(weight, op, permute_weights(weight, p, sorted));
  return sorted;
}

Tensor unpermute_weights(const Tensor& sorted, const Permutation& p) {
  const char* op = "unpermute_weights";
  const int64_t k = permutation_slots(op, p);
  const Device device = p.slot_of.device();
  const int64_t n = p.slot_of.size(0);
  check_permutation(op, p, device, n, k);
  check_typed_tensor(op, "sorted", sorted, device, DType::kF32, {n * k});
  Tensor weight = Tensor::empty({n, k}, DType::kF32, device, "unpermuted routing weights");
  MF_DISPATCH(sorted, op, unpermute_weights(sorted, p, weight));
  return weight;
}

// ---- grouped (per-expert) matrix products ---------------------------------------------------

namespace {

// w [E, N, K] and offsets [E+1] on the device of w.
void check_expert_weights(const char* op, const char* name, const Tensor& w, const Tensor& offsets) {
  check_defined(op, name, w);
  check_layout(op, name, w, w.device());
  check_float(op, name, w);
  check_rank(op, name, w, 3);
  check_offsets(op, offsets, w.device(), w.size(0));
}

}  // namespace

Tensor grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets) {
  const char* op = "grouped_linear";
  check_expert_weights(op, "w", w, offsets);
  check_layout(op, "x", x, w.device());
  check_float(op, "x", x);
  check_rank(op, "x", x, 2);
  check_shape(op, "x", x, {x.size(0), w.size(2)});
  Tensor y = Tensor::empty({x.size(0), w.size(1)}, x.dtype(), w.device(), "grouped_linear output");
  MF_DISPATCH(w, op, grouped_linear(x, w, offsets, y));
  return y;
}

Tensor grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets) {
  const char* op = "grouped_linear_dx";
  check_expert_weights(op, "w", w, offsets);
  check_layout(op, "dy", dy, w.device());
  check_float(op, "dy", dy);
  check_rank(op, "dy", dy, 2);
  check_shape(op, "dy", dy, {dy.size(0), w.size(1)});
  Tensor dx = Tensor::empty({dy.size(0), w.size(2)}, dy.dtype(), w.device(), "grouped_linear dx");
  MF_DISPATCH(w, op, grouped_linear_dx(dy, w, offsets, dx));
  return dx;
}

void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w) {
  const char* op = "grouped_linear_dw";
  check_expert_weights(op, "grad_w", grad_w, offsets);
  const Device device = grad_w.device();
  check_layout(op, "x", x, device);
  check_float(op, "x", x);
  check_rank(op, "x", x, 2);
  check_shape(op, "x", x, {x.size(0), grad_w.size(2)});
  check_float_tensor(op, "dy", dy, device, {x.size(0), grad_w.size(1)});
  MF_DISPATCH(grad_w, op, grouped_linear_dw(dy, x, offsets, grad_w));
}

// ---- loss -----------------------------------------------------------------------------------

void CrossEntropySum::add(const Tensor& logits, const Tensor& targets, float grad_scale,
                          Tensor* dlogits) {
  const char* op = "cross_entropy";
  const Device device = check_float_input(op, "logits", logits, 2);
  MF_CHECK(logits.size(1) > 0, kShape, op, ": logits ", shape_str(logits.shape()),
           " have no vocabulary columns");
  check_typed_tensor(op, "targets", targets, device, DType::kI64, {logits.size(0)});
  Tensor* grad = dlogits != nullptr && dlogits->defined() ? dlogits : nullptr;
  if (grad != nullptr) check_float_tensor(op, "dlogits", *grad, device, logits.shape());
  const int64_t first_row = rows_;
  rows_ += logits.size(0);
  if (on_cpu(logits)) {
    const CrossEntropyResult r = cpu::cross_entropy(logits, targets, grad_scale, grad, first_row);
    host_.loss_sum += r.loss_sum;
    host_.count += r.count;
    return;
  }
#ifdef MOEFORGE_WITH_CUDA
  OpTimer timer(op);
  if (!device_totals_.defined()) device_totals_ = cuda::cross_entropy_totals();
  cuda::cross_entropy_add(logits, targets, grad_scale, grad, first_row, device_totals_);
#else
  no_cuda(op);
#endif
}

CrossEntropyResult CrossEntropySum::total() const {
  CrossEntropyResult r = host_;
#ifdef MOEFORGE_WITH_CUDA
  if (device_totals_.defined()) {
    const CrossEntropyResult d = cuda::read_cross_entropy_totals(device_totals_);
    r.loss_sum += d.loss_sum;
    r.count += d.count;
  }
#endif
  return r;
}

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                 Tensor* dlogits) {
  CrossEntropySum sum;
  sum.add(logits, targets, grad_scale, dlogits);
  return sum.total();
}

// ---- optimizer ------------------------------------------------------------------------------

double sum_of_squares(const Tensor& x) {
  const char* op = "sum_of_squares";
  check_layout(op, "x", x, x.device());
  check_float(op, "x", x);
  if (on_cpu(x)) return cpu::sum_of_squares(x);
#ifdef MOEFORGE_WITH_CUDA
  OpTimer timer(op);
  return cuda::sum_of_squares(x);
#else
  no_cuda(op);
#endif
}

void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h) {
  const char* op = "adamw_update";
  check_layout(op, "params", params, params.device());
  check_float(op, "params", params);
  check_rank(op, "params", params, 1);
  const Device device = params.device();
  check_float_tensor(op, "grads", grads, device, params.shape());
  check_float_tensor(op, "exp_avg", exp_avg, device, params.shape());
  check_float_tensor(op, "exp_avg_sq", exp_avg_sq, device, params.shape());
  if (master.defined()) check_typed_tensor(op, "master", master, device, DType::kF32, params.shape());
  check_defined(op, "spans", spans);
  check_rank(op, "spans", spans, 2);
  check_typed_tensor(op, "spans", spans, device, DType::kI64, {spans.size(0), 3});
  MF_DISPATCH(params, op, adamw_update(params, grads, master, exp_avg, exp_avg_sq, spans, h));
}

}  // namespace moeforge::ops
