// Dispatch of the cross-entropy (loss.h).
#include "ops/loss.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

void CrossEntropySum::add(const Tensor& logits, const Tensor& targets, float grad_scale,
                          Tensor* dlogits) {
  const Op op = Op::kCrossEntropy;
  const Device device = check_float_input(op, "logits", logits, 2);
  MF_CHECK(logits.size(1) > 0, kShape, op_name(op), ": logits ", shape_str(logits.shape()),
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

}  // namespace moeforge::ops
