// Dispatch of the multi-head latent attention ops (mla.h): checks, then the backend.
#include "ops/mla.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

// A floating tensor on `device` of rank leading.size() + 1 whose leading sizes are `leading` (its
// last size is free); returns that size.
int64_t check_rows(Op op, const char* name, const Tensor& t, Device device, const Shape& leading) {
  check_layout(op, name, t, device);
  check_float(op, name, t);
  check_rank(op, name, t, static_cast<int64_t>(leading.size()) + 1);
  Shape expected = leading;
  expected.push_back(t.size(-1));
  check_shape(op, name, t, expected);
  return t.size(-1);
}

// The rope's tensors on `device`, for heads whose last `rotated` columns turn; returns Dr.
int64_t check_rope(Op op, const MlaRope& rope, Device device, int64_t tokens, int64_t head_columns) {
  check_typed_tensor(op, "rope.positions", rope.positions, device, DType::kI64, {tokens});
  check_defined(op, "rope.inv_freq", rope.inv_freq);
  check_rank(op, "rope.inv_freq", rope.inv_freq, 1);
  const int64_t rotated = 2 * rope.inv_freq.size(0);
  check_typed_tensor(op, "rope.inv_freq", rope.inv_freq, device, DType::kF32, {rotated / 2});
  MF_CHECK(rotated > 0 && rotated < head_columns, kShape, op_name(op), ": ", rotated,
           " rotated columns (2 x inv_freq) do not leave a no-RoPE part in heads of ", head_columns);
  return rotated;
}

// The sizes of [N, H, Dn + Dr] heads (q or its gradient) whose last Dr columns the rope turns.
struct HeadSizes {
  Device device;
  int64_t tokens, heads, rotated, nope;
};
HeadSizes check_heads(Op op, const char* name, const Tensor& t, const MlaRope& rope) {
  const Device device = check_float_input(op, name, t, 3);
  const int64_t rotated = check_rope(op, rope, device, t.size(0), t.size(2));
  return {device, t.size(0), t.size(1), rotated, t.size(2) - rotated};
}

}  // namespace

std::vector<Tensor> split_columns(const Tensor& x, const std::vector<int64_t>& widths) {
  const Op op = Op::kSplitColumns;
  const Device device = check_float_input(op, "x", x, 2);
  int64_t total = 0;
  for (int64_t w : widths) {
    MF_CHECK(w >= 0, kShape, op_name(op), ": a part of ", w, " columns");
    total += w;
  }
  MF_CHECK(total == x.size(1), kShape, op_name(op), ": parts of ", total, " columns in all from x ",
           shape_str(x.shape()));
  std::vector<Tensor> parts;
  for (int64_t w : widths) parts.push_back(Tensor::empty({x.size(0), w}, x.dtype(), device, "split_columns part"));
  MF_DISPATCH(x, op, split_columns(x, parts));
  return parts;
}

Tensor concat_columns(const std::vector<Tensor>& parts) {
  const Op op = Op::kConcatColumns;
  MF_CHECK(!parts.empty(), kInvalidArgument, op_name(op), ": no parts");
  const Device device = check_float_input(op, "parts[0]", parts[0], 2);
  int64_t columns = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string name = str_cat("parts[", i, "]");
    columns += check_rows(op, name.c_str(), parts[i], device, {parts[0].size(0)});
    check_dtype(op, name.c_str(), parts[i], parts[0].dtype());
  }
  Tensor out = Tensor::empty({parts[0].size(0), columns}, parts[0].dtype(), device, "concat_columns output");
  MF_DISPATCH(parts[0], op, concat_columns(parts, out));
  return out;
}

MlaHeads mla_heads_fwd(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const MlaRope& rope) {
  const Op op = Op::kMlaHeadsFwd;
  const auto [device, n, heads, rotated, nope] = check_heads(op, "q", q, rope);
  const int64_t kv_columns = check_rows(op, "kv", kv, device, {n, heads});
  MF_CHECK(kv_columns > nope, kShape, op_name(op), ": kv ", shape_str(kv.shape()),
           " leaves no value columns after the key's ", nope, " no-RoPE columns");
  check_float_tensor(op, "k_pe", k_pe, device, {n, rotated});
  MlaHeads out{Tensor::empty(q.shape(), q.dtype(), device, "MLA q"),
               Tensor::empty(q.shape(), q.dtype(), device, "MLA k"),
               Tensor::empty({n, heads, kv_columns - nope}, q.dtype(), device, "MLA v")};
  MF_DISPATCH(q, op, mla_heads_fwd(q, kv, k_pe, rope, out));
  return out;
}

MlaHeadsGrads mla_heads_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const MlaRope& rope) {
  const Op op = Op::kMlaHeadsBwd;
  const auto [device, n, heads, rotated, nope] = check_heads(op, "dq", dq, rope);
  check_float_tensor(op, "dk", dk, device, dq.shape());
  const int64_t v_columns = check_rows(op, "dv", dv, device, {n, heads});
  MlaHeadsGrads grads{Tensor::empty(dq.shape(), dq.dtype(), device, "MLA dq"),
                      Tensor::empty({n, heads, nope + v_columns}, dq.dtype(), device, "MLA dkv"),
                      Tensor::empty({n, rotated}, dq.dtype(), device, "MLA dk_pe")};
  MF_DISPATCH(dq, op, mla_heads_bwd(dq, dk, dv, rope, grads));
  return grads;
}

}  // namespace moeforge::ops
