#include "model/blocks/router.h"

#include "model/blocks/linear.h"
#include "ops/ops.h"

namespace moeforge {

void SoftmaxTopKRouter::forward(const Params& p, const Tensor& x, RouterState& st, const Tensor& reuse_index) const {
  st.probs = ops::softmax_fwd(linear_fwd(p, slots_, x, st.lora_u));
  st.topk = reuse_index.defined() ? ops::router_weights_for(st.probs, reuse_index, norm_topk_prob_)
                                  : ops::router_topk(st.probs, top_k_, norm_topk_prob_);
}

void SoftmaxTopKRouter::backward(const Params& p, const Tensor& d_weight, const Tensor& extra_dprobs,
                                 const Tensor& x, const RouterState& st, Tensor& dx) const {
  Tensor dprobs = ops::router_topk_bwd(d_weight, st.probs, st.topk, norm_topk_prob_);
  if (extra_dprobs.defined()) ops::add_inplace(dprobs, extra_dprobs);
  const Tensor dlogits = ops::cast(ops::softmax_bwd(dprobs, st.probs), x.dtype());
  linear_bwd(p, slots_, dlogits, x, st.lora_u, dx, /*accumulate=*/true);
}

}  // namespace moeforge
