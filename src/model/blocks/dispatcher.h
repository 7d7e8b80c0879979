// How token rows reach their experts and come back. The MoE block asks a dispatcher to plan a
// batch's routing, to send each (token, slot) row to the rows of its expert (grouped by expert,
// what the grouped products read), and to combine the experts' output rows back into tokens (the
// sum of each token's slots). Dispatch and combine are each other's transpose, so the backward pass
// uses them swapped.
//
// LocalDispatcher: every expert is on this device; dispatch is a gather, combine a scatter-add.
// ExpertParallelDispatcher (expert_parallel_dispatcher.h): the experts are split over processes
// and dispatch and combine are all-to-alls between them; the MoE block does not change.
#pragma once

#include <vector>

#include "ops/moe.h"

namespace moeforge {

// One batch's routing as the dispatcher arranged it.
struct DispatchPlan {
  // The (token, slot) -> expert row order of the rows this process computes. With expert
  // parallelism its tokens are the rows received from every rank, and slot_of is -1 for the slots
  // whose experts are elsewhere.
  ops::Permutation perm;
  // Expert parallelism: the rows sent, as a permutation whose "experts" are the ranks (each token
  // once to every rank holding any of its experts, grouped by rank, in token order), and the rows
  // sent to and received from each rank.
  ops::Permutation send;
  std::vector<int64_t> send_rows, recv_rows;
  int64_t tokens = 0;  // this process's tokens
  // Rows offsets[e] .. offsets[e+1] belong to expert e: [E + 1] int64 on the device.
  const Tensor& expert_offsets() const { return perm.offsets; }
};

class ExpertDispatcher {
 public:
  virtual ~ExpertDispatcher() = default;
  virtual DispatchPlan plan(const ops::TopK& topk, int64_t num_experts) const = 0;
  // Token rows [N, H] -> expert rows [N * k, H].
  virtual Tensor dispatch(const Tensor& x, const DispatchPlan& plan) const = 0;
  // The routing weights [N, k] fp32 -> one per expert row [N * k] fp32.
  virtual Tensor dispatch_weights(const Tensor& weight, const DispatchPlan& plan) const = 0;
  // Expert rows [N * k, H] -> token rows [N, H], each the sum of its slots (fp32 accumulation).
  virtual Tensor combine(const Tensor& rows, const DispatchPlan& plan, int64_t tokens) const = 0;
  // One value per expert row [N * k] fp32 -> [N, k] fp32 (dispatch_weights' transpose).
  virtual Tensor combine_weights(const Tensor& rows, const DispatchPlan& plan) const = 0;
  // Whether dispatch(x) is permute(x, plan.perm), nothing exchanged: then an expert product may read
  // x's rows through plan.perm itself (ops::gathered_grouped_linear), and the rows need not exist.
  virtual bool gathers_locally() const { return false; }
};

class LocalDispatcher final : public ExpertDispatcher {
 public:
  DispatchPlan plan(const ops::TopK& topk, int64_t num_experts) const override {
    return {ops::make_permutation(topk.index, num_experts)};
  }
  Tensor dispatch(const Tensor& x, const DispatchPlan& plan) const override { return ops::permute(x, plan.perm); }
  Tensor dispatch_weights(const Tensor& weight, const DispatchPlan& plan) const override {
    return ops::permute_weights(weight, plan.perm);
  }
  Tensor combine(const Tensor& rows, const DispatchPlan& plan, int64_t tokens) const override {
    return ops::unpermute(rows, plan.perm, tokens);
  }
  Tensor combine_weights(const Tensor& rows, const DispatchPlan& plan) const override {
    return ops::unpermute_weights(rows, plan.perm);
  }
  bool gathers_locally() const override { return true; }
};

}  // namespace moeforge
