#include "model/blocks/expert_parallel_dispatcher.h"

#include <algorithm>

#include "core/error.h"
#include "ops/profile.h"

namespace moeforge {

namespace {

// The tokens' rows between the ranks, timed as communication when ops are profiled (the benchmark's split).
Tensor exchange_rows(ProcessGroup& group, const Tensor& rows, const std::vector<int64_t>& send,
                     const std::vector<int64_t>& recv) {
  const ops::OpTimer timer(ops::OpCategory::kCommunication);
  return group.all_to_all_rows(rows, send, recv);
}

ops::Permutation on_device(const ops::Permutation& p, Device device) {
  if (device == Device::kCPU) return p;
  return {p.source_row.to(device), p.slot_of.to(device), p.offsets.to(device)};
}

}  // namespace

ExpertParallelDispatcher::ExpertParallelDispatcher(std::shared_ptr<ProcessGroup> group, int64_t num_experts)
    : group_(std::move(group)), num_experts_(num_experts) {
  MF_CHECK(num_experts_ >= group_->size(), kInvalidArgument, "expert parallelism over ", group_->size(),
           " ranks needs at least as many experts; the model has ", num_experts_);
  for (int64_t e = 0; e < num_experts_; ++e) owner_.push_back(split_owner(num_experts_, group_->size(), e));
}

DispatchPlan ExpertParallelDispatcher::plan(const ops::TopK& topk, int64_t num_experts) const {
  MF_ASSERT(num_experts == num_experts_);
  const Device device = topk.index.device();
  const int ranks = group_->size();
  // The plan is made on the host: on CUDA this copy is the layer's one host synchronisation (the
  // sizes of what is sent and received must be known to the host).
  const Tensor index = topk.index.to(Device::kCPU).contiguous();
  const int64_t n = index.size(0), k = index.size(1);
  const int32_t* ix = index.data<int32_t>();

  // The ranks each token goes to (each once, however many of its experts are there), as a
  // permutation whose "experts" are the ranks: its sorted rows are the rows sent, grouped by rank.
  Tensor destination = Tensor::empty({n, ranks}, DType::kI32, Device::kCPU, "expert-parallel destinations");
  int32_t* dest = destination.data<int32_t>();
  std::fill(dest, dest + n * ranks, -1);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ix[t * k + j];
      MF_CHECK(e >= 0 && e < num_experts_, kInternal, "expert parallelism: token ", t, " routed to expert ", e,
               " of ", num_experts_);
      const int p = owner_[static_cast<size_t>(e)];
      dest[t * ranks + p] = p;
    }
  DispatchPlan plan;
  plan.tokens = n;
  const ops::Permutation send = ops::make_permutation(destination, ranks);
  const int64_t* send_offsets = send.offsets.data<int64_t>();
  for (int p = 0; p < ranks; ++p) plan.send_rows.push_back(send_offsets[p + 1] - send_offsets[p]);

  // Each sent row's slots as its destination numbers its experts, -1 for slots held elsewhere.
  const int64_t s = send.source_row.numel();
  Tensor send_experts = Tensor::empty({s, k}, DType::kI32, Device::kCPU, "expert-parallel send experts");
  int32_t* se = send_experts.data<int32_t>();
  for (int p = 0; p < ranks; ++p)
    for (int64_t r = send_offsets[p]; r < send_offsets[p + 1]; ++r) {
      const int32_t t = send.source_row.data<int32_t>()[r];
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = ix[t * k + j];
        se[r * k + j] = owner_[static_cast<size_t>(e)] == p ? static_cast<int32_t>(e - experts_begin(p)) : -1;
      }
    }
  plan.recv_rows = group_->all_to_all_counts(plan.send_rows);
  const Tensor recv_experts = group_->all_to_all_rows(send_experts, plan.send_rows, plan.recv_rows);

  // The received (token, slot) pairs held here, grouped by expert, in received order within each.
  const int64_t local = experts_begin(group_->rank() + 1) - experts_begin(group_->rank());
  plan.perm = on_device(ops::make_permutation(recv_experts, local), device);
  plan.send = on_device(send, device);
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
