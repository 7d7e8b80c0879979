// The top-k routers of the MoE families:
//   softmax (Qwen3-MoE, Mixtral, OLMoE, Qwen2-MoE): probs = softmax(x @ W^T) in fp32, the k largest
//     per token (ties to the lower expert index), their weights renormalised to sum 1 when
//     norm_topk_prob;
//   sigmoid (DeepSeek-V3): scores = sigmoid(x @ W^T) in fp32; experts chosen by scores +
//     e_score_correction_bias (a frozen buffer) inside the best topk_group of n_group groups
//     (ops::router_group_topk); weights the chosen unbiased scores, renormalised when
//     norm_topk_prob, times routed_scaling_factor.
// GPT-OSS's router (a bias on its linear; top-k of the logits, then a softmax over those k) is the
// softmax router with norm_topk_prob: the same function of the logits.
#pragma once

#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "model/blocks/context.h"
#include "ops/moe.h"

namespace moeforge {

struct RouterState {
  Tensor probs;  // [N, E] fp32: the softmax probabilities or the sigmoid scores
  ops::TopK topk;
  Tensor lora_u;  // the router adapter's low-rank activation (blocks/linear.h), when it has one
  bool routed() const { return topk.index.defined(); }
};

class TopKRouter {
 public:
  // score_bias: the e_score_correction_bias parameter of a sigmoid router, else -1.
  TopKRouter(const LinearSlots& slots, int score_bias, const MoeConfig& moe);

  // Routes the rows of x [N, H]; with `reuse_index` [N, k] int32 defined, takes those expert choices
  // instead of the top-k (their weights still come from these probabilities).
  void forward(const Params& p, const Tensor& x, RouterState& st, const Tensor& reuse_index) const;
  // d_weight [N, k] fp32: the gradient of the routing weights; extra_dprobs [N, E] fp32 (the aux
  // loss's) or undefined. Adds the input's gradient into dx [N, H] and the weight's gradient.
  void backward(const Params& p, const Tensor& d_weight, const Tensor& extra_dprobs, const Tensor& x,
                const RouterState& st, Tensor& dx) const;

 private:
  LinearSlots slots_;  // the router weight [E, H], its bias [E] (GPT-OSS) and its adapter
  int score_bias_;
  RouterScoring scoring_;
  int64_t top_k_, n_group_, topk_group_;
  bool norm_topk_prob_;
  float routed_scaling_factor_;
};

}  // namespace moeforge
