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

ColumnSplit split_columns(const Tensor& x, int64_t left_columns) {
  const Op op = Op::kSplitColumns;
  const Device device = check_float_input(op, "x", x, 2);
  MF_CHECK(left_columns >= 0 && left_columns <= x.size(1), kShape, op_name(op), ": ", left_columns,
           " left columns of x ", shape_str(x.shape()));
  ColumnSplit out{Tensor::empty({x.size(0), left_columns}, x.dtype(), device, "split_columns left"),
                  Tensor::empty({x.size(0), x.size(1) - left_columns}, x.dtype(), device, "split_columns right")};
  MF_DISPATCH(x, op, split_columns(x, out));
  return out;
}

Tensor concat_columns(const Tensor& a, const Tensor& b) {
  const Op op = Op::kConcatColumns;
  const Device device = check_float_input(op, "a", a, 2);
  const int64_t b_columns = check_rows(op, "b", b, device, {a.size(0)});
  Tensor out = Tensor::empty({a.size(0), a.size(1) + b_columns}, a.dtype(), device, "concat_columns output");
  MF_DISPATCH(a, op, concat_columns(a, b, out));
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
