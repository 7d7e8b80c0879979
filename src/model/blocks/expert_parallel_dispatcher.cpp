#include "model/blocks/expert_parallel_dispatcher.h"

#include <cstring>

#include "core/error.h"

namespace moeforge {
namespace {

void check_cpu(const Tensor& t, const char* what) {
  MF_CHECK(t.device() == Device::kCPU, kUnsupported, "expert parallelism: ", what,
           " on the GPU is not built yet (the CPU backend's MPI path is)");
}

// out[i] = src[index[i]] for rows of any dtype: [n, ...] from [m, ...].
Tensor gather_rows(const Tensor& src, const int32_t* index, int64_t n) {
  const Tensor s = src.contiguous();
  Shape shape = s.shape();
  shape[0] = n;
  Tensor out = Tensor::empty(shape, s.dtype(), Device::kCPU, "expert-parallel rows");
  const size_t row = n > 0 ? out.nbytes() / static_cast<size_t>(n) : 0;
  const auto* from = static_cast<const char*>(s.raw_data());
  auto* to = static_cast<char*>(out.raw_data());
  for (int64_t i = 0; i < n; ++i) std::memcpy(to + i * row, from + index[i] * row, row);
  return out;
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
  check_cpu(topk.index, "routing");
  const int ranks = group_->size();
  const int64_t n = topk.index.size(0), k = topk.index.size(1);
  const Tensor index = topk.index.contiguous();
  const int32_t* ix = index.data<int32_t>();

  DispatchPlan plan;
  plan.tokens = n;
  plan.send_rows.assign(static_cast<size_t>(ranks), 0);
  std::vector<int32_t> send_token, send_experts;
  for (int p = 0; p < ranks; ++p) {
    const int64_t first = experts_begin(p);
    for (int64_t t = 0; t < n; ++t) {
      bool any = false;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = ix[t * k + j];
        MF_CHECK(e >= 0 && e < num_experts_, kInternal, "expert parallelism: token ", t, " routed to expert ", e,
                 " of ", num_experts_);
        any |= owner_[static_cast<size_t>(e)] == p;
      }
      if (!any) continue;
      send_token.push_back(static_cast<int32_t>(t));
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = ix[t * k + j];
        send_experts.push_back(owner_[static_cast<size_t>(e)] == p ? static_cast<int32_t>(e - first) : -1);
      }
      ++plan.send_rows[static_cast<size_t>(p)];
    }
  }
  const auto s = static_cast<int64_t>(send_token.size());
  plan.send_token = Tensor::empty({s}, DType::kI32, Device::kCPU, "expert-parallel send tokens");
  std::memcpy(plan.send_token.raw_data(), send_token.data(), send_token.size() * sizeof(int32_t));
  plan.send_experts = Tensor::empty({s, k}, DType::kI32, Device::kCPU, "expert-parallel send experts");
  std::memcpy(plan.send_experts.raw_data(), send_experts.data(), send_experts.size() * sizeof(int32_t));
  plan.recv_rows = group_->all_to_all_counts(plan.send_rows);
  const Tensor recv_experts = group_->all_to_all_rows(plan.send_experts, plan.send_rows, plan.recv_rows);

  // The received (token, slot) pairs held here, grouped by expert, in received order within each.
  const int64_t m = recv_experts.size(0);
  const int64_t local = experts_begin(group_->rank() + 1) - experts_begin(group_->rank());
  const int32_t* re = recv_experts.data<int32_t>();
  ops::Permutation& perm = plan.perm;
  perm.offsets = Tensor::zeros({local + 1}, DType::kI64, Device::kCPU, "expert offsets");
  int64_t* off = perm.offsets.data<int64_t>();
  for (int64_t i = 0; i < m * k; ++i)
    if (re[i] >= 0) ++off[re[i] + 1];
  for (int64_t e = 0; e < local; ++e) off[e + 1] += off[e];
  std::vector<int64_t> next(off, off + local);
  perm.source_row = Tensor::empty({off[local]}, DType::kI32, Device::kCPU, "expert rows' tokens");
  perm.slot_of = Tensor::empty({m, k}, DType::kI32, Device::kCPU, "expert row of each slot");
  int32_t* src = perm.source_row.data<int32_t>();
  int32_t* slot = perm.slot_of.data<int32_t>();
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = re[t * k + j];
      if (e < 0) {
        slot[t * k + j] = -1;
        continue;
      }
      const int64_t r = next[static_cast<size_t>(e)]++;
      src[r] = static_cast<int32_t>(t);
      slot[t * k + j] = static_cast<int32_t>(r);
    }
  return plan;
}

Tensor ExpertParallelDispatcher::dispatch(const Tensor& x, const DispatchPlan& plan) const {
  check_cpu(x, "dispatch");
  const Tensor sent = gather_rows(x, plan.send_token.data<int32_t>(), plan.send_token.numel());
  const Tensor received = group_->all_to_all_rows(sent, plan.send_rows, plan.recv_rows);
  return gather_rows(received, plan.perm.source_row.data<int32_t>(), plan.perm.source_row.numel());
}

Tensor ExpertParallelDispatcher::dispatch_weights(const Tensor& weight, const DispatchPlan& plan) const {
  check_cpu(weight, "routing weights");
  const int64_t s = plan.send_token.numel(), k = plan.send_experts.size(1);
  const Tensor w = weight.contiguous();
  Tensor sent = Tensor::zeros({s, k}, DType::kF32, Device::kCPU, "expert-parallel weights");
  for (int64_t i = 0; i < s; ++i)
    for (int64_t j = 0; j < k; ++j)
      if (plan.send_experts.data<int32_t>()[i * k + j] >= 0)
        sent.data<float>()[i * k + j] = w.data<float>()[plan.send_token.data<int32_t>()[i] * k + j];
  const Tensor received = group_->all_to_all_rows(sent, plan.send_rows, plan.recv_rows);
  Tensor rows = Tensor::empty({plan.perm.source_row.numel()}, DType::kF32, Device::kCPU, "expert row weights");
  const int32_t* slot = plan.perm.slot_of.data<int32_t>();
  for (int64_t i = 0; i < received.numel(); ++i)
    if (slot[i] >= 0) rows.data<float>()[slot[i]] = received.data<float>()[i];
  return rows;
}

Tensor ExpertParallelDispatcher::combine(const Tensor& rows, const DispatchPlan& plan, int64_t tokens) const {
  check_cpu(rows, "combine");
  MF_CHECK(rows.dtype() == DType::kF32, kUnsupported, "expert parallelism: combine of ",
           dtype_torch_name(rows.dtype()), " rows (the CPU backend's are float32)");
  const Tensor r = rows.contiguous();
  const int64_t h = r.size(1), m = plan.perm.slot_of.size(0), k = plan.perm.slot_of.size(1);
  // Each received token's rows summed here, then one row per token back to its sender.
  Tensor sums = Tensor::zeros({m, h}, DType::kF32, Device::kCPU, "expert-parallel partial sums");
  const int32_t* slot = plan.perm.slot_of.data<int32_t>();
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = slot[t * k + j];
      if (row < 0) continue;
      float* dst = sums.data<float>() + t * h;
      const float* from = r.data<float>() + row * h;
      for (int64_t c = 0; c < h; ++c) dst[c] += from[c];
    }
  // The way back: each rank returns the rows it received.
  const Tensor returned = group_->all_to_all_rows(sums, plan.recv_rows, plan.send_rows);
  Tensor out = Tensor::zeros({tokens, h}, DType::kF32, Device::kCPU, "combined token rows");
  for (int64_t i = 0; i < returned.size(0); ++i) {
    float* dst = out.data<float>() + plan.send_token.data<int32_t>()[i] * h;
    const float* from = returned.data<float>() + i * h;
    for (int64_t c = 0; c < h; ++c) dst[c] += from[c];
  }
  return out;
}

Tensor ExpertParallelDispatcher::combine_weights(const Tensor& rows, const DispatchPlan& plan) const {
  check_cpu(rows, "combine of row values");
  const int64_t m = plan.perm.slot_of.size(0), k = plan.perm.slot_of.size(1);
  Tensor values = Tensor::zeros({m, k}, DType::kF32, Device::kCPU, "expert-parallel row values");
  const int32_t* slot = plan.perm.slot_of.data<int32_t>();
  for (int64_t i = 0; i < m * k; ++i)
    if (slot[i] >= 0) values.data<float>()[i] = rows.data<float>()[slot[i]];
  const Tensor returned = group_->all_to_all_rows(values, plan.recv_rows, plan.send_rows);
  // Each slot's value comes from the one rank that holds its expert.
  Tensor out = Tensor::zeros({plan.tokens, k}, DType::kF32, Device::kCPU, "expert-parallel slot values");
  for (int64_t i = 0; i < returned.size(0); ++i)
    for (int64_t j = 0; j < k; ++j)
      if (plan.send_experts.data<int32_t>()[i * k + j] >= 0)
        out.data<float>()[plan.send_token.data<int32_t>()[i] * k + j] = returned.data<float>()[i * k + j];
  return out;
}

}  // namespace moeforge
