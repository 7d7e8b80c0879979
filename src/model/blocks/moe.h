// A mixture-of-experts feed-forward block:
//
//   route x with the router; dispatch each token's row to its k experts; per expert (grouped
//   products) h = silu(gate) * up, scaled by the token's routing weight; down projection; combine
//   (sum of each token's k rows); plus, when the family has one, a shared SwiGLU expert on every
//   token, its output scaled by sigmoid(x . w_gate) when it is gated (Qwen2-MoE).
//   GPT-OSS: per-expert biases on both products (the down one scaled by the routing weight too)
//   and the clamped SwiGLU (ops::clamped_swiglu_fwd) for h. Nemotron-H: non-gated experts and
//   shared expert, h = relu(up)^2 (ops::relu2_fwd); with moe_latent_size the routed experts run on
//   fc1_latent_proj(x) and their sum goes back through fc2_latent_proj (the router and the shared
//   expert see x).
//
// The routing weight scales h before the (linear) down projection, which is the same sum as
// weighting the experts' outputs; so the outputs are not kept for the weights' gradient, which
// SwiGLU's backward gives instead (512 MiB a layer at 16k tokens of Qwen3-30B-A3B).
//
// Padding reaches neither the router nor the experts: the block computes the rows of ctx.routed
// (blocks/routed_rows.h), and its output and input gradient are zero on the others. The routing and
// every row the state holds are those of the routed rows, in order.
#pragma once

#include <optional>

#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "model/blocks/dispatcher.h"
#include "model/blocks/router.h"
#include "model/blocks/swiglu_mlp.h"
#include "ops/activation.h"

namespace moeforge {

struct MoeState {
  RouterState router;
  DispatchPlan plan;
  // The dispatched input rows, for the weight gradient: not kept when the first product gathers
  // them (MoeBlock::gathers_input); dropped by selective recomputation.
  Tensor x_rows;
  SwiGluState experts;  // over the expert rows; row_scale = each row's routing weight
  SwiGluState shared;   // the shared expert's; row_scale = its sigmoid gate (when gated)
  Tensor gate_up_lora, down_lora;  // the expert adapters' low-rank activations (blocks/linear.h)
  // Latent experts (MoeSlots::latent_in): the experts' input latent_in(x) [rows, latent] (kept: selective
  // recomputation dispatches it again) and the sum of their outputs, latent_out's input.
  Tensor latent, latent_sum, latent_in_lora, latent_out_lora;
};

class MoeBlock {
 public:
  MoeBlock(const MoeSlots& slots, const MoeConfig& moe, const ExpertDispatcher& dispatcher);

  // x [N, H] (normed) -> [N, H]. Routes unless st already holds a routing (recomputation keeps the
  // forward's); `reuse_index` [routed rows, k] as TopKRouter::forward.
  Tensor forward(const Params& p, const BatchContext& ctx, const Tensor& x, MoeState& st,
                 const Tensor& reuse_index) const;
  // dy [N, H] -> dx [N, H]; aux_dprobs [routed rows, E] fp32: the load-balancing loss's gradient of
  // the router probabilities, or undefined.
  Tensor backward(const Params& p, const BatchContext& ctx, const Tensor& dy, const Tensor& x, const MoeState& st,
                  const Tensor& aux_dprobs) const;

  // Selective recomputation: what drop_selective removes, restore_selective rebuilds from x.
  static void drop_selective(MoeState& st);
  void restore_selective(const Params& p, const BatchContext& ctx, const Tensor& x, MoeState& st) const;
  // Full recomputation keeps the routing only; forward() then reuses it.
  static MoeState routing_only(const MoeState& st);

 private:
  // forward and backward on the routed rows alone; dropout_seed: the pass's LoRA dropout seed
  // (BatchContext::lora_dropout_seed), for the latent projections' adapters.
  Tensor forward_rows(const Params& p, const Tensor& x, MoeState& st, const Tensor& reuse_index,
                      uint64_t dropout_seed) const;
  Tensor backward_rows(const Params& p, const Tensor& dy, const Tensor& x, const MoeState& st,
                       const Tensor& aux_dprobs, uint64_t dropout_seed) const;
  // h from st's gate_up_out and row_scale: SwiGLU, GPT-OSS's clamped one, or squared ReLU.
  Tensor expert_act(const SwiGluState& st) const;
  ops::SwigluGrads expert_act_bwd(const Tensor& dh, const SwiGluState& st) const;
  bool latent() const { return slots_.latent_in.weight >= 0; }
  // Whether the experts' first product reads its rows through the routing's permutation
  // (ops::gathered_grouped_linear) instead of from dispatched rows, which then are not kept: where the
  // dispatcher only gathers, and the product has no bias or adapter.
  bool gathers_input() const {
    return dispatcher_->gathers_locally() && slots_.experts.gate_up_bias < 0 && !slots_.experts.gate_up_lora.on();
  }

  MoeSlots slots_;
  std::optional<ops::ClampedSwiglu> clamp_;  // GPT-OSS's activation; plain SwiGLU when unset
  bool relu2_;                               // Nemotron-H's
  int64_t num_experts_;
  TopKRouter router_;
  SwiGluMlp shared_;
  const ExpertDispatcher* dispatcher_;
};

}  // namespace moeforge
