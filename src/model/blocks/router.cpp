#include "model/blocks/router.h"

#include "core/error.h"
#include "model/blocks/linear.h"
#include "ops/ops.h"

namespace moeforge {

TopKRouter::TopKRouter(const LinearSlots& slots, int score_bias, const MoeConfig& moe)
    : slots_(slots),
      score_bias_(score_bias),
      scoring_(moe.scoring),
      top_k_(moe.num_experts_per_tok),
      n_group_(moe.n_group),
      topk_group_(moe.topk_group),
      norm_topk_prob_(moe.norm_topk_prob),
      routed_scaling_factor_(static_cast<float>(moe.routed_scaling_factor)) {
  MF_ASSERT((scoring_ == RouterScoring::kSigmoid) == (score_bias_ >= 0));  // the bias is the sigmoid router's
}

void TopKRouter::forward(const Params& p, const Tensor& x, RouterState& st, const Tensor& reuse_index) const {
  const Tensor logits = linear_fwd(p, slots_, x, st.lora_u);
  if (scoring_ == RouterScoring::kSoftmax) {
    st.probs = ops::softmax_fwd(logits);
    st.topk = reuse_index.defined() ? ops::router_weights_for(st.probs, reuse_index, norm_topk_prob_)
                                    : ops::router_topk(st.probs, top_k_, norm_topk_prob_);
    return;
  }
  st.probs = ops::sigmoid_fwd(ops::cast(logits, DType::kF32));
  st.topk = reuse_index.defined()
                ? ops::router_weights_for(st.probs, reuse_index, norm_topk_prob_)
                : ops::router_group_topk(st.probs, p.w(score_bias_), top_k_, n_group_, topk_group_, norm_topk_prob_);
  ops::scale_inplace(st.topk.weight, routed_scaling_factor_);
}

void TopKRouter::backward(const Params& p, const Tensor& d_weight, const Tensor& extra_dprobs, const Tensor& x,
                          const RouterState& st, Tensor& dx) const {
  Tensor dprobs;
  if (scoring_ == RouterScoring::kSoftmax) {
    dprobs = ops::router_topk_bwd(d_weight, st.probs, st.topk, norm_topk_prob_);
  } else {
    // The weights are routed_scaling_factor times the (renormalised) scores.
    Tensor d_unscaled = d_weight.clone();
    ops::scale_inplace(d_unscaled, routed_scaling_factor_);
    dprobs = ops::router_topk_bwd(d_unscaled, st.probs, st.topk, norm_topk_prob_);
  }
  if (extra_dprobs.defined()) ops::add_inplace(dprobs, extra_dprobs);
  const Tensor dlogits = scoring_ == RouterScoring::kSoftmax ? ops::softmax_bwd(dprobs, st.probs)
                                                             : ops::sigmoid_bwd(dprobs, st.probs);
  linear_bwd(p, slots_, ops::cast(dlogits, x.dtype()), x, st.lora_u, dx, /*accumulate=*/true);
}

}  // namespace moeforge
