// Dispatch of the dense ops (dense.h).
#include "ops/dense.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta) {
  const Op op = Op::kGemm;
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

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const Op op = Op::kLinear;
  const Device device = check_float_input(op, "x", x, 2);
  check_layout(op, "w", w, device);
  check_float(op, "w", w);
  check_rank(op, "w", w, 2);
  MF_CHECK(x.size(1) == w.size(1), kShape, "linear: x ", shape_str(x.shape()), " has ", x.size(1),
           " features but w ", shape_str(w.shape()), " expects ", w.size(1));
  Tensor y = Tensor::empty({x.size(0), w.size(0)}, x.dtype(), device, "linear output");
  if (!bias.defined()) {
    gemm(x, false, w, true, y);
    return y;
  }
  check_float_tensor(op, "bias", bias, device, {w.size(0)});
  MF_DISPATCH(x, op, linear(x, w, bias, y));
  return y;
}

void linear_bias_bwd(const Tensor& dy, Tensor& grad_bias) {
  const Op op = Op::kLinearBiasBwd;
  const Device device = check_float_input(op, "dy", dy, 2);
  check_float_tensor(op, "grad_bias", grad_bias, device, {dy.size(1)});
  MF_DISPATCH(dy, op, linear_bias_bwd(dy, grad_bias));
}

void add_inplace(Tensor& a, const Tensor& b) {
  const Op op = Op::kAddInplace;
  check_defined(op, "a", a);
  check_layout(op, "a", a, a.device());
  check_float(op, "a", a);
  check_float_tensor(op, "b", b, a.device(), a.shape());
  check_dtype(op, "b", b, a.dtype());
  MF_DISPATCH(a, op, add_inplace(a, b));
}

void scale_inplace(Tensor& a, float s) {
  const Op op = Op::kScaleInplace;
  check_defined(op, "a", a);
  check_layout(op, "a", a, a.device());
  check_float(op, "a", a);
  MF_DISPATCH(a, op, scale_inplace(a, s));
}

Tensor cast(const Tensor& x, DType dtype) {
  const Op op = Op::kCast;
  check_layout(op, "x", x, x.device());
  MF_CHECK(dtype_is_floating(x.dtype()) && dtype_is_floating(dtype), kInvalidArgument,
           op_name(op), ": casts floating tensors only (", dtype_torch_name(x.dtype()), " to ",
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

}  // namespace moeforge::ops
