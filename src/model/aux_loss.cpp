#include "model/aux_loss.h"

#include <vector>

#include "ops/ops.h"

namespace moeforge {

LoadBalancingLoss::LoadBalancingLoss(const MoeConfig& moe, int64_t num_moe_layers, const BatchInputs& in,
                                     Device device)
    : num_experts_(moe.num_experts),
      tokens_(in.routed.count()),
      coef_(moe.router_aux_loss_coef),
      rows_(static_cast<double>(num_moe_layers * in.valid_tokens)),
      kept_rows_(in.row_valid.defined() ? in.row_valid
                                        : Tensor::from_vector(std::vector<float>(tokens_, 1.0f), {tokens_}).to(device)),
      sums_(Tensor::zeros({2, moe.num_experts}, DType::kF32, device, "aux loss sums")) {}

void LoadBalancingLoss::add_layer(const RouterState& router) {
  Tensor counts = sums_.select(0, 0);
  ops::expert_counts(router.topk.index, kept_rows_, counts);
  // P_e: a [1, N] x [N, E] product with the kept-row indicator.
  Tensor prob_sums = sums_.slice(0, 1, 2);
  ops::gemm(kept_rows_.view({1, tokens_}), false, router.probs, false, prob_sums, 1.0f, 1.0f);
}

void LoadBalancingLoss::sum_over_ranks(ProcessGroup& group) {
  Tensor host = sums_.to(Device::kCPU).clone();
  group.all_reduce_sum(host);
  sums_.copy_from(host.to(sums_.device()));
  rows_ = moeforge::sum_over_ranks(group, rows_);
}

double LoadBalancingLoss::value() const {
  if (rows_ == 0) return 0.0;
  const Tensor host = sums_.to(Device::kCPU);
  const float* counts = host.data<float>();
  const float* prob_sums = counts + num_experts_;
  double aux = 0;
  for (int64_t e = 0; e < num_experts_; ++e) aux += (counts[e] / rows_) * (prob_sums[e] / rows_);
  return aux * static_cast<double>(num_experts_);
}

Tensor LoadBalancingLoss::probs_grad() const {
  // An outer product: the kept-row indicator [N, 1] times the counts [1, E], scaled.
  Tensor grad = Tensor::empty({tokens_, num_experts_}, DType::kF32, sums_.device(), "aux loss gradient");
  const float scale = rows_ > 0 ? static_cast<float>(coef_ * num_experts_ / (rows_ * rows_)) : 0.0f;
  ops::gemm(kept_rows_.view({tokens_, 1}), false, sums_.slice(0, 0, 1), false, grad, scale, 0.0f);
  return grad;
}

}  // namespace moeforge
