#include "model/blocks/swiglu_mlp.h"

#include "ops/ops.h"

namespace moeforge {

Tensor SwiGluMlp::forward(const Params& p, const Tensor& x, SwiGluState& st, const Tensor& row_scale) const {
  st.gate_up_out = ops::linear(x, p.w(slots_.gate_up));
  st.row_scale = row_scale;
  recompute_act(st);
  return ops::linear(st.act, p.w(slots_.down));
}

Tensor SwiGluMlp::backward(const Params& p, const Tensor& dy, const Tensor& x, const SwiGluState& st, Tensor& dx,
                           bool accumulate) const {
  Tensor dact = Tensor::empty(st.act.shape(), st.act.dtype(), st.act.device());
  ops::gemm(dy, false, p.w(slots_.down), false, dact);
  if (p.trainable(slots_.down)) ops::gemm(dy, true, st.act, false, p.g(slots_.down), 1.0f, 1.0f);
  ops::SwigluGrads sg = relu2_ ? ops::relu2_bwd(dact, st.gate_up_out, st.row_scale)
                               : ops::swiglu_bwd(dact, st.gate_up_out, st.row_scale);
  ops::gemm(sg.d_gate_up, false, p.w(slots_.gate_up), false, dx, 1.0f, accumulate ? 1.0f : 0.0f);
  if (p.trainable(slots_.gate_up)) ops::gemm(sg.d_gate_up, true, x, false, p.g(slots_.gate_up), 1.0f, 1.0f);
  return sg.d_row_scale;
}

void SwiGluMlp::recompute_act(SwiGluState& st) const {
  st.act = relu2_ ? ops::relu2_fwd(st.gate_up_out, st.row_scale) : ops::swiglu_fwd(st.gate_up_out, st.row_scale);
}

}  // namespace moeforge
