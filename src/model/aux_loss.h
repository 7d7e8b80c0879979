// Transformers' load-balancing auxiliary loss (load_balancing_loss_func), over all MoE layers
// together and the tokens the attention mask keeps, computed on the device for padded and packed
// batches alike:
//
//   aux = E * sum_e (count_e / R) * (P_e / R),   R = (MoE layers) x (kept tokens)
//
// count_e: how often expert e is among a kept token's top-k, P_e: its router probability summed over
// kept tokens, both over all layers. Its gradient reaches the router probabilities only:
// d aux / d p[r, e] = E * count_e / R^2 for kept rows r, the same in every layer.
#pragma once

#include "arch/model_config.h"
#include "dist/process_group.h"
#include "model/batch_inputs.h"
#include "model/blocks/router.h"

namespace moeforge {

class LoadBalancingLoss {
 public:
  // Made before the forward pass (it uploads the kept-row indicator).
  LoadBalancingLoss(const MoeConfig& moe, int64_t num_moe_layers, const BatchInputs& in, Device device);
  // Adds one MoE layer's counts and probability sums (on the device, no host synchronisation).
  void add_layer(const RouterState& router);
  // Expert parallelism: makes the counts, probability sums and kept rows those of every rank's
  // tokens together (after the last add_layer), as one process computing the whole batch has them.
  void sum_over_ranks(ProcessGroup& group);
  // The loss, unscaled (one device-to-host copy).
  double value() const;
  // router_aux_loss_coef * d aux / d probs [N, E] fp32 on the device.
  Tensor probs_grad() const;

 private:
  int64_t num_experts_, tokens_;
  double coef_, rows_;  // router_aux_loss_coef, R
  Tensor kept_rows_;    // [routed rows] fp32: 1 for kept rows, 0 for padding (uploaded once, before the layers)
  Tensor sums_;         // [2, E] fp32: counts, then probability sums
};

}  // namespace moeforge
