// Expert parallelism: the routed experts of every MoE layer split over the ranks of a process
// group (rank r holds experts [r E / P, (r + 1) E / P), numbered from 0 there), and each token's
// rows travel to the ranks of its experts and back.
//
//   plan      for each rank, the tokens with at least one expert there: each is sent once, with
//             its k choices as that rank numbers its experts (-1 for slots held elsewhere); the
//             receiver groups the (token, slot) pairs it holds by expert
//   dispatch  gather the sent tokens' rows, all-to-all, permute into expert rows
//   combine   sum each received token's expert rows where they were computed, all-to-all back,
//             add into the token (fp32): the transpose of dispatch, so the backward pass swaps them
//
// Everything runs where the routing and the rows are (the ops' expert_ranks, sent_expert_slots and
// partial permutations) and moves with the group's all-to-all. The host reads only the counts of
// rows sent and received, which size the exchanges: on CUDA one wait per MoE layer's forward.
#pragma once

#include <memory>

#include "dist/process_group.h"
#include "model/blocks/dispatcher.h"

namespace moeforge {

class ExpertParallelDispatcher final : public ExpertDispatcher {
 public:
  ExpertParallelDispatcher(std::shared_ptr<ProcessGroup> group, int64_t num_experts);

  DispatchPlan plan(const ops::TopK& topk, int64_t num_experts) const override;
  Tensor dispatch(const Tensor& x, const DispatchPlan& plan) const override;
  Tensor dispatch_weights(const Tensor& weight, const DispatchPlan& plan) const override;
  Tensor combine(const Tensor& rows, const DispatchPlan& plan, int64_t tokens) const override;
  Tensor combine_weights(const Tensor& rows, const DispatchPlan& plan) const override;

  // The experts rank `rank` holds: [experts_begin(rank), experts_begin(rank + 1)).
  int64_t experts_begin(int rank) const { return split_begin(num_experts_, group_->size(), rank); }

 private:
  std::shared_ptr<ProcessGroup> group_;
  int64_t num_experts_;
};

}  // namespace moeforge
