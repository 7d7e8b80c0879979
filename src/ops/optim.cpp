// Dispatch of the optimizer ops (optim.h).
#include "ops/optim.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

double sum_of_squares(const Tensor& x) {
  const Op op = Op::kSumOfSquares;
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
  const Op op = Op::kAdamwUpdate;
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
