// Dispatch of the RMSNorm ops (norm.h).
#include "ops/norm.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

// x [R, D] and its norm weight w [D]; returns x's device.
Device check_norm_input(Op op, const Tensor& x, const Tensor& w) {
  const Device device = check_float_input(op, "x", x, 2);
  check_float_tensor(op, "w", w, device, {x.size(1)});
  return device;
}

}  // namespace

Tensor rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& rstd) {
  const Op op = Op::kRmsNormFwd;
  const Device device = check_norm_input(op, x, w);
  prepare_saved(op, "rstd", rstd, device, {x.size(0)});
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device, "rms_norm output");
  MF_DISPATCH(x, op, rms_norm_fwd(x, w, eps, y, rstd));
  return y;
}

Tensor add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& rstd) {
  const Op op = Op::kAddRmsNormFwd;
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
  const Op op = Op::kRmsNormBwd;
  const Device device = check_norm_input(op, x, w);
  check_float_tensor(op, "dy", dy, device, x.shape());
  check_typed_tensor(op, "rstd", rstd, device, DType::kF32, {x.size(0)});
  check_float_tensor(op, "grad_w", grad_w, device, {x.size(1)});
  if (dx_residual.defined()) check_float_tensor(op, "dx_residual", dx_residual, device, x.shape());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), device, "rms_norm dx");
  MF_DISPATCH(x, op, rms_norm_bwd(dy, x, w, rstd, dx_residual, dx, grad_w));
  return dx;
}

}  // namespace moeforge::ops
