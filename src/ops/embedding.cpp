// Dispatch of the embedding ops (embedding.h).
#include "ops/embedding.h"

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

Tensor embedding_fwd(const Tensor& weight, const Tensor& ids) {
  const Op op = Op::kEmbeddingFwd;
  const Device device = check_float_input(op, "weight", weight, 2);
  check_layout(op, "ids", ids, device);
  check_dtype(op, "ids", ids, DType::kI64);
  check_rank(op, "ids", ids, 1);
  Tensor out = Tensor::empty({ids.size(0), weight.size(1)}, weight.dtype(), device, "embedding");
  MF_DISPATCH(weight, op, embedding_fwd(weight, ids, out));
  return out;
}

void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx) {
  const Op op = Op::kEmbeddingBwd;
  const Device device = check_float_input(op, "grad_weight", grad_weight, 2);
  check_layout(op, "ids", ids, device);
  check_dtype(op, "ids", ids, DType::kI64);
  check_rank(op, "ids", ids, 1);
  check_float_tensor(op, "grad_out", grad_out, device, {ids.size(0), grad_weight.size(1)});
  MF_DISPATCH(grad_weight, op, embedding_bwd(grad_out, ids, grad_weight, padding_idx));
}

}  // namespace moeforge::ops
