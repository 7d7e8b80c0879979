// The softmax top-k router of Qwen3-MoE, Mixtral, OLMoE and Qwen2-MoE: probs = softmax(x @ W^T) in
// fp32, the k largest per token (ties to the lower expert index), their weights renormalised to sum
// 1 when norm_topk_prob. Sigmoid group-limited routing (DeepSeek-V3, Nemotron-H) and top-k-then-
// softmax (GPT-OSS) are routers of the same shape that those families add.
#pragma once

#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "model/blocks/context.h"
#include "ops/moe.h"

namespace moeforge {

struct RouterState {
  Tensor probs;  // [N, E] fp32
  ops::TopK topk;
  Tensor lora_u;  // the router adapter's low-rank activation (blocks/linear.h), when it has one
  bool routed() const { return topk.index.defined(); }
};

class SoftmaxTopKRouter {
 public:
  SoftmaxTopKRouter(const LinearSlots& slots, const MoeConfig& moe)
      : slots_(slots), top_k_(moe.num_experts_per_tok), norm_topk_prob_(moe.norm_topk_prob) {}

  // Routes the rows of x [N, H]; with `reuse_index` [N, k] int32 defined, takes those expert choices
  // instead of the top-k (their weights still come from these probabilities).
  void forward(const Params& p, const Tensor& x, RouterState& st, const Tensor& reuse_index) const;
  // d_weight [N, k] fp32: the gradient of the routing weights; extra_dprobs [N, E] fp32 (the aux
  // loss's) or undefined. Adds the input's gradient into dx [N, H] and the weight's gradient.
  void backward(const Params& p, const Tensor& d_weight, const Tensor& extra_dprobs, const Tensor& x,
                const RouterState& st, Tensor& dx) const;

 private:
  LinearSlots slots_;  // the router weight [E, H], no bias, and its adapter
  int64_t top_k_;
  bool norm_topk_prob_;
};

}  // namespace moeforge
