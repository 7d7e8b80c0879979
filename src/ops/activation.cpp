// Dispatch of the activations (activation.h).
#include "ops/activation.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

void check_gate_up(Op op, const Tensor& gate_up) {
  check_float_input(op, "gate_up", gate_up, 2);
  MF_CHECK(gate_up.size(1) % 2 == 0, kShape, op_name(op), ": gate_up ", shape_str(gate_up.shape()),
           " has an odd number of columns (expected gate then up, [M, 2I])");
}

void check_row_scale(Op op, const Tensor& row_scale, const Tensor& gate_up) {
  if (row_scale.defined())
    check_typed_tensor(op, "row_scale", row_scale, gate_up.device(), DType::kF32, {gate_up.size(0)});
}

}  // namespace

namespace {

// The checked gate_up and row_scale of a gated activation, and its output h [M, I].
Tensor gated_output(Op op, const Tensor& gate_up, const Tensor& row_scale) {
  check_gate_up(op, gate_up);
  check_row_scale(op, row_scale, gate_up);
  return Tensor::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.dtype(), gate_up.device(), op_name(op));
}

// The same for its backward, with dh checked: the gradients to fill.
SwigluGrads gated_grads(Op op, const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale) {
  check_gate_up(op, gate_up);
  check_row_scale(op, row_scale, gate_up);
  const Device device = gate_up.device();
  check_float_tensor(op, "dh", dh, device, {gate_up.size(0), gate_up.size(1) / 2});
  SwigluGrads grads;
  grads.d_gate_up = Tensor::empty(gate_up.shape(), gate_up.dtype(), device, "d_gate_up");
  if (row_scale.defined()) grads.d_row_scale = Tensor::empty({gate_up.size(0)}, DType::kF32, device, "d_row_scale");
  return grads;
}

}  // namespace

Tensor swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale) {
  const Op op = Op::kSwigluFwd;
  Tensor h = gated_output(op, gate_up, row_scale);
  MF_DISPATCH(gate_up, op, swiglu_fwd(gate_up, row_scale, h));
  return h;
}

SwigluGrads swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale) {
  const Op op = Op::kSwigluBwd;
  SwigluGrads grads = gated_grads(op, dh, gate_up, row_scale);
  MF_DISPATCH(gate_up, op, swiglu_bwd(dh, gate_up, row_scale, grads));
  return grads;
}

Tensor clamped_swiglu_fwd(const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale) {
  const Op op = Op::kClampedSwigluFwd;
  Tensor h = gated_output(op, gate_up, row_scale);
  MF_DISPATCH(gate_up, op, clamped_swiglu_fwd(gate_up, c, row_scale, h));
  return h;
}

SwigluGrads clamped_swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const ClampedSwiglu& c,
                               const Tensor& row_scale) {
  const Op op = Op::kClampedSwigluBwd;
  SwigluGrads grads = gated_grads(op, dh, gate_up, row_scale);
  MF_DISPATCH(gate_up, op, clamped_swiglu_bwd(dh, gate_up, c, row_scale, grads));
  return grads;
}

namespace {

// x [M, I] and row_scale [M] or undefined, checked.
void check_relu2(Op op, const Tensor& x, const Tensor& row_scale) {
  check_float_input(op, "x", x, 2);
  check_row_scale(op, row_scale, x);
}

}  // namespace

Tensor relu2_fwd(const Tensor& x, const Tensor& row_scale) {
  const Op op = Op::kRelu2Fwd;
  check_relu2(op, x, row_scale);
  Tensor h = Tensor::empty(x.shape(), x.dtype(), x.device(), op_name(op));
  MF_DISPATCH(x, op, relu2_fwd(x, row_scale, h));
  return h;
}

SwigluGrads relu2_bwd(const Tensor& dh, const Tensor& x, const Tensor& row_scale) {
  const Op op = Op::kRelu2Bwd;
  check_relu2(op, x, row_scale);
  check_float_tensor(op, "dh", dh, x.device(), x.shape());
  SwigluGrads grads;
  grads.d_gate_up = Tensor::empty(x.shape(), x.dtype(), x.device(), "relu2 dx");
  if (row_scale.defined()) grads.d_row_scale = Tensor::empty({x.size(0)}, DType::kF32, x.device(), "d_row_scale");
  MF_DISPATCH(x, op, relu2_bwd(dh, x, row_scale, grads));
  return grads;
}

Tensor softmax_fwd(const Tensor& logits) {
  const Op op = Op::kSoftmaxFwd;
  check_defined(op, "logits", logits);
  check_layout(op, "logits", logits, logits.device());
  check_float(op, "logits", logits);
  check_rank(op, "logits", logits, 2);
  Tensor probs = Tensor::empty(logits.shape(), DType::kF32, logits.device(), "softmax probs");
  MF_DISPATCH(logits, op, softmax_fwd(logits, probs));
  return probs;
}

Tensor softmax_bwd(const Tensor& dprobs, const Tensor& probs) {
  const Op op = Op::kSoftmaxBwd;
  const Device device = check_probs(op, probs);
  check_float_tensor(op, "dprobs", dprobs, device, probs.shape());
  Tensor dlogits = Tensor::empty(probs.shape(), DType::kF32, device, "softmax dlogits");
  MF_DISPATCH(probs, op, softmax_bwd(dprobs, probs, dlogits));
  return dlogits;
}

Tensor sigmoid_fwd(const Tensor& x) {
  const Op op = Op::kSigmoidFwd;
  check_defined(op, "x", x);
  check_layout(op, "x", x, x.device());
  check_float(op, "x", x);
  Tensor y = Tensor::empty(x.shape(), DType::kF32, x.device(), "sigmoid output");
  MF_DISPATCH(x, op, sigmoid_fwd(x, y));
  return y;
}

Tensor dropout(const Tensor& x, float p, uint64_t seed) {
  const Op op = Op::kDropout;
  check_defined(op, "x", x);
  check_layout(op, "x", x, x.device());
  check_float(op, "x", x);
  MF_CHECK(p >= 0.0f && p < 1.0f, kInvalidArgument, op_name(op), ": p must be in [0, 1), got ", p);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device(), "dropout output");
  MF_DISPATCH(x, op, dropout(x, p, seed, y));
  return y;
}

void init_normal(Tensor& x, uint64_t seed, uint64_t stream, float std_dev) {
  const Op op = Op::kInitNormal;
  check_defined(op, "x", x);
  check_layout(op, "x", x, x.device());
  check_float(op, "x", x);
  MF_DISPATCH(x, op, init_normal(x, seed, stream, std_dev));
}

Tensor sigmoid_bwd(const Tensor& dy, const Tensor& y) {
  const Op op = Op::kSigmoidBwd;
  check_defined(op, "y", y);
  const Device device = y.device();
  check_typed_tensor(op, "y", y, device, DType::kF32, y.shape());
  check_typed_tensor(op, "dy", dy, device, DType::kF32, y.shape());
  Tensor dx = Tensor::empty(y.shape(), DType::kF32, device, "sigmoid dx");
  MF_DISPATCH(y, op, sigmoid_bwd(dy, y, dx));
  return dx;
}

}  // namespace moeforge::ops
