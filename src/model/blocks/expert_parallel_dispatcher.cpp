#include "model/blocks/expert_parallel_dispatcher.h"

#include "core/error.h"
#include "ops/profile.h"

namespace moeforge {

namespace {

// Rows between the ranks (the plan's counts and slots, the tokens' rows), timed and their bytes to the
// other ranks counted when ops are profiled (the benchmark's split and dispatch GB/s).
Tensor exchange_rows(ProcessGroup& group, const Tensor& rows, const std::vector<int64_t>& send,
                     const std::vector<int64_t>& recv) {
  if (ops::op_profiling()) {
    int64_t to_others = 0;
    for (int p = 0; p < group.size(); ++p)
      if (p != group.rank()) to_others += send[static_cast<size_t>(p)];
    ops::count_profiled_bytes(ops::OpCategory::kDispatchCombine, to_others * static_cast<int64_t>(row_bytes(rows)));
  }
  const ops::OpTimer timer(ops::OpCategory::kDispatchCombine);
  return group.all_to_all_rows(rows, send, recv);
}

}  // namespace

ExpertParallelDispatcher::ExpertParallelDispatcher(std::shared_ptr<ProcessGroup> group, int64_t num_experts)
    : group_(std::move(group)), num_experts_(num_experts) {
  MF_CHECK(num_experts_ >= group_->size(), kInvalidArgument, "expert parallelism over ", group_->size(),
           " ranks needs at least as many experts; the model has ", num_experts_);
}

DispatchPlan ExpertParallelDispatcher::plan(const ops::TopK& topk, int64_t num_experts) const {
  MF_ASSERT(num_experts == num_experts_);
  const int ranks = group_->size();
  // Where the routing is (the device on CUDA): the ranks each token goes to, each once however many
  // of its experts are there, and how many tokens and (token, slot) pairs go to each rank.
  const ops::ExpertRanks to = ops::expert_ranks(topk.index, num_experts_, ranks);
  const std::vector<int64_t> one_each(static_cast<size_t>(ranks), 1);
  const Tensor from_counts = exchange_rows(*group_, to.counts, one_each, one_each);
  // The host needs the sizes of what is sent and received: on CUDA this is the layer's one wait.
  const Tensor sent = to.counts.to(Device::kCPU), received = from_counts.to(Device::kCPU);
  DispatchPlan plan;
  plan.tokens = topk.index.size(0);
  int64_t sent_rows = 0, held_slots = 0;
  for (int p = 0; p < ranks; ++p) {
    plan.send_rows.push_back(sent.data<int64_t>()[2 * p]);
    plan.recv_rows.push_back(received.data<int64_t>()[2 * p]);
    sent_rows += plan.send_rows.back();
    held_slots += received.data<int64_t>()[2 * p + 1];
  }
  // The rows sent, as a permutation whose "experts" are the ranks, and each one's slots as its
  // destination numbers its experts (-1 for the slots held elsewhere).
  plan.send = ops::make_permutation(to.rank, ranks, sent_rows);
  const Tensor sent_slots = ops::sent_expert_slots(topk.index, plan.send, num_experts_);
  const Tensor received_slots = exchange_rows(*group_, sent_slots, plan.send_rows, plan.recv_rows);
  // The received (token, slot) pairs held here, grouped by expert, in received order within each.
  const int64_t local = experts_begin(group_->rank() + 1) - experts_begin(group_->rank());
  plan.perm = ops::make_permutation(received_slots, local, held_slots);
  return plan;
}

Tensor ExpertParallelDispatcher::dispatch(const Tensor& x, const DispatchPlan& plan) const {
  const Tensor received = exchange_rows(*group_, ops::permute(x, plan.send), plan.send_rows, plan.recv_rows);
  return ops::permute(received, plan.perm);
}

Tensor ExpertParallelDispatcher::dispatch_weights(const Tensor& weight, const DispatchPlan& plan) const {
  // Each sent token carries all k weights; the receiver keeps those of the slots it holds.
  const Tensor received = exchange_rows(*group_, ops::permute(weight, plan.send), plan.send_rows, plan.recv_rows);
  return ops::permute_weights(received, plan.perm);
}

Tensor ExpertParallelDispatcher::combine(const Tensor& rows, const DispatchPlan& plan, int64_t tokens) const {
  // Each received token's rows summed where they were computed, one row per token back to its
  // sender, and there the sum over the ranks it went to.
  const Tensor sums = ops::unpermute(rows, plan.perm, plan.perm.slot_of.size(0));
  const Tensor returned = exchange_rows(*group_, sums, plan.recv_rows, plan.send_rows);
  return ops::unpermute(returned, plan.send, tokens);
}

Tensor ExpertParallelDispatcher::combine_weights(const Tensor& rows, const DispatchPlan& plan) const {
  // Zero for the slots held elsewhere, so the sum over the ranks is each slot's one value.
  const Tensor values = ops::unpermute_weights(rows, plan.perm);
  const Tensor returned = exchange_rows(*group_, values, plan.recv_rows, plan.send_rows);
  return ops::unpermute(returned, plan.send, plan.tokens);
}

}  // namespace moeforge
