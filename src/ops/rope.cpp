// Dispatch of the rotary embedding ops (rope.h).
#include "ops/rope.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

void check_rope(Op op, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const Device device = check_float_input(op, "x", x, 3);
  MF_CHECK(x.size(2) % 2 == 0, kShape, op_name(op), ": head dimension ", x.size(2), " of ",
           shape_str(x.shape()), " is odd");
  check_typed_tensor(op, "positions", positions, device, DType::kI64, {x.size(0)});
  check_typed_tensor(op, "inv_freq", inv_freq, device, DType::kF32, {x.size(2) / 2});
}

}  // namespace

Tensor rope_fwd(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling) {
  check_rope(Op::kRopeFwd, x, positions, inv_freq);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "rope output");
  MF_DISPATCH(x, Op::kRopeFwd, rope_apply(x, positions, inv_freq, attention_scaling, 1.0f, y));
  return y;
}

Tensor rope_bwd(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling) {
  check_rope(Op::kRopeBwd, dy, positions, inv_freq);
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device(), "rope dx");
  MF_DISPATCH(dy, Op::kRopeBwd, rope_apply(dy, positions, inv_freq, attention_scaling, -1.0f, dx));
  return dx;
}

namespace {

// x [N, heads, D] with w [D], and the rope arguments.
void check_qk_norm_rope(Op op, const Tensor& x, const Tensor& w, const Tensor& positions,
                        const Tensor& inv_freq) {
  check_rope(op, x, positions, inv_freq);
  check_float_tensor(op, "w", w, x.device(), {x.size(2)});
}

}  // namespace

Tensor qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                        const Tensor& inv_freq, float attention_scaling, Tensor& rstd) {
  const Op op = Op::kQkNormRopeFwd;
  check_qk_norm_rope(op, x, w, positions, inv_freq);
  prepare_saved(op, "rstd", rstd, x.device(), {x.size(0) * x.size(1)});
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "q/k-norm + rope output");
  MF_DISPATCH(x, op, qk_norm_rope_fwd(x, w, eps, positions, inv_freq, attention_scaling, y, rstd));
  return y;
}

Tensor qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                        Tensor& grad_w) {
  const Op op = Op::kQkNormRopeBwd;
  check_qk_norm_rope(op, x, w, positions, inv_freq);
  check_float_tensor(op, "dy", dy, x.device(), x.shape());
  check_typed_tensor(op, "rstd", rstd, x.device(), DType::kF32, {x.size(0) * x.size(1)});
  check_float_tensor(op, "grad_w", grad_w, x.device(), {x.size(2)});
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device(), "q/k-norm + rope dx");
  MF_DISPATCH(x, op, qk_norm_rope_bwd(dy, x, w, rstd, positions, inv_freq, attention_scaling, dx, grad_w));
  return dx;
}

}  // namespace moeforge::ops
