#include "model/blocks/lm_head.h"

#include <algorithm>

#include "ops/ops.h"

namespace moeforge {

HeadOutput LmHead::run(const Params& p, const Tensor& x, const Tensor& targets, float norm_eps, float grad_scale,
                       bool backward, bool keep_logits) const {
  const int64_t N = x.size(0), H = x.size(1);
  const Device dev = x.device();
  HeadOutput out;
  Tensor rstd;
  const Tensor hidden = ops::rms_norm_fwd(x, p.w(final_norm_), norm_eps, rstd);
  Tensor d_hidden;
  if (backward) d_hidden = Tensor::empty({N, H}, hidden.dtype(), dev, "hidden-state gradient");
  auto head_backward = [&](const Tensor& dlogits_rows, const Tensor& hidden_rows, Tensor d_hidden_rows) {
    ops::gemm(dlogits_rows, false, p.w(head_), false, d_hidden_rows);
    if (!p.trainable(head_)) return;
    float beta = 1.0f;  // 0 for the step's first chunk: it writes the gradient without reading it
    Tensor& grad = p.g_write(head_, beta);
    ops::gemm(dlogits_rows, true, hidden_rows, false, grad, 1.0f, beta);
  };
  if (backward && !keep_logits) {
    ops::CrossEntropySum loss;  // read back once, after the last chunk
    for (int64_t r0 = 0; r0 < N; r0 += chunk_rows_) {
      const int64_t r1 = std::min(N, r0 + chunk_rows_);
      Tensor hidden_rows = hidden.slice(0, r0, r1);
      Tensor logits = ops::linear(hidden_rows, p.w(head_));
      loss.add(logits, targets.slice(0, r0, r1), grad_scale, &logits);
      head_backward(logits, hidden_rows, d_hidden.slice(0, r0, r1));
    }
    out.loss_sum = loss.total().loss_sum;
  } else {
    Tensor logits = ops::linear(hidden, p.w(head_));  // [N, V]
    if (targets.defined()) {
      Tensor dlogits;
      if (backward) dlogits = Tensor::empty(logits.shape(), logits.dtype(), dev, "logit gradients");
      ops::CrossEntropyResult ce = ops::cross_entropy(logits, targets, grad_scale, backward ? &dlogits : nullptr);
      out.loss_sum = ce.loss_sum;
      if (backward) head_backward(dlogits, hidden, d_hidden);
    }
    if (keep_logits) out.logits = logits;
  }
  if (backward) out.dx = ops::rms_norm_bwd(d_hidden, x, p.w(final_norm_), rstd, p.g(final_norm_));
  return out;
}

}  // namespace moeforge
