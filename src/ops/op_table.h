// The table of ops: every op's name (in its error messages and in the op tests) and the profiler
// category its GPU time is filed under, declared once here. An op added to the headers gets a row.
#pragma once

#include <cstddef>
#include <iterator>

namespace moeforge::ops {

enum class OpCategory {
  kAttention,   // attention forward/backward
  kExpertGemm,  // grouped (per-expert) products
  kDenseGemm,   // every other matrix product (projections, router, lm_head), their biases
  kRouting,     // router softmax/top-k, permutation, permute/unpermute
  kNormRope,    // RMSNorm, RoPE
  kElementwise, // SwiGLU, residual adds, scaling, casts, embedding
  kLoss,        // cross-entropy
  kOptimizer,   // gradient norm, AdamW
  kMambaConv,   // Mamba-2's causal convolution
  kMambaScan,   // Mamba-2's state-space scan
  kDispatchCombine,  // between processes: expert parallelism's all-to-alls of token rows
  kDataParallel,     // between processes: the copies' gradient sums and weight gathers
  kCount
};
constexpr const char* op_category_name(OpCategory c) {
  switch (c) {
    case OpCategory::kAttention: return "attention";
    case OpCategory::kExpertGemm: return "expert GEMMs";
    case OpCategory::kDenseGemm: return "dense GEMMs";
    case OpCategory::kRouting: return "router/permute";
    case OpCategory::kNormRope: return "norms/RoPE";
    case OpCategory::kElementwise: return "elementwise";
    case OpCategory::kLoss: return "loss";
    case OpCategory::kOptimizer: return "optimizer";
    case OpCategory::kMambaConv: return "Mamba conv";
    case OpCategory::kMambaScan: return "Mamba scan";
    case OpCategory::kDispatchCombine: return "dispatch/combine";
    case OpCategory::kDataParallel: return "data-parallel sums";
    case OpCategory::kCount: break;
  }
  return "?";
}

enum class Op {
  kGemm, kLinear, kLinearBiasBwd,
  kAddInplace, kScaleInplace, kCast,
  kEmbeddingFwd, kEmbeddingBwd,
  kRmsNormFwd, kAddRmsNormFwd, kRmsNormBwd,
  kRopeFwd, kRopeBwd, kQkNormRopeFwd, kQkNormRopeBwd,
  kAttentionFwd, kAttentionBwd,
  kSplitColumns, kConcatColumns, kMlaHeadsFwd, kMlaHeadsBwd,
  kCausalConv1dSiluFwd, kCausalConv1dSiluBwd, kSsdScanFwd, kSsdScanBwd, kGatedRmsNormFwd, kGatedRmsNormBwd,
  kSwigluFwd, kSwigluBwd, kClampedSwigluFwd, kClampedSwigluBwd, kRelu2Fwd, kRelu2Bwd,
  kSoftmaxFwd, kSoftmaxBwd,
  kSigmoidFwd, kSigmoidBwd, kDropout, kInitNormal,
  kRouterTopk, kRouterGroupTopk, kRouterBiasUpdate, kRouterWeightsFor, kRouterTopkBwd,
  kMakePermutation, kPermute, kUnpermute, kPermuteWeights, kUnpermuteWeights,
  kExpertCounts, kExpertRanks, kSentExpertSlots,
  kGroupedLinear, kGatheredGroupedLinear, kGroupedLinearDx, kGroupedLinearDw, kGroupedBiasAdd, kGroupedBiasBwd,
  kCrossEntropy,
  kSumOfSquares, kAdamwUpdate,
  kCount
};

struct OpInfo {
  Op op;
  const char* name;
  OpCategory category;
};

inline constexpr OpInfo kOpTable[] = {
    {Op::kGemm, "gemm", OpCategory::kDenseGemm},
    {Op::kLinear, "linear", OpCategory::kDenseGemm},
    {Op::kLinearBiasBwd, "linear_bias_bwd", OpCategory::kDenseGemm},
    {Op::kAddInplace, "add_inplace", OpCategory::kElementwise},
    {Op::kScaleInplace, "scale_inplace", OpCategory::kElementwise},
    {Op::kCast, "cast", OpCategory::kElementwise},
    {Op::kEmbeddingFwd, "embedding_fwd", OpCategory::kElementwise},
    {Op::kEmbeddingBwd, "embedding_bwd", OpCategory::kElementwise},
    {Op::kRmsNormFwd, "rms_norm_fwd", OpCategory::kNormRope},
    {Op::kAddRmsNormFwd, "add_rms_norm_fwd", OpCategory::kNormRope},
    {Op::kRmsNormBwd, "rms_norm_bwd", OpCategory::kNormRope},
    {Op::kRopeFwd, "rope_fwd", OpCategory::kNormRope},
    {Op::kRopeBwd, "rope_bwd", OpCategory::kNormRope},
    {Op::kQkNormRopeFwd, "qk_norm_rope_fwd", OpCategory::kNormRope},
    {Op::kQkNormRopeBwd, "qk_norm_rope_bwd", OpCategory::kNormRope},
    {Op::kAttentionFwd, "attention_fwd", OpCategory::kAttention},
    {Op::kAttentionBwd, "attention_bwd", OpCategory::kAttention},
    {Op::kSplitColumns, "split_columns", OpCategory::kElementwise},
    {Op::kConcatColumns, "concat_columns", OpCategory::kElementwise},
    {Op::kMlaHeadsFwd, "mla_heads_fwd", OpCategory::kNormRope},
    {Op::kMlaHeadsBwd, "mla_heads_bwd", OpCategory::kNormRope},
    {Op::kCausalConv1dSiluFwd, "causal_conv1d_silu_fwd", OpCategory::kMambaConv},
    {Op::kCausalConv1dSiluBwd, "causal_conv1d_silu_bwd", OpCategory::kMambaConv},
    {Op::kSsdScanFwd, "ssd_scan_fwd", OpCategory::kMambaScan},
    {Op::kSsdScanBwd, "ssd_scan_bwd", OpCategory::kMambaScan},
    {Op::kGatedRmsNormFwd, "gated_rms_norm_fwd", OpCategory::kNormRope},
    {Op::kGatedRmsNormBwd, "gated_rms_norm_bwd", OpCategory::kNormRope},
    {Op::kSwigluFwd, "swiglu_fwd", OpCategory::kElementwise},
    {Op::kSwigluBwd, "swiglu_bwd", OpCategory::kElementwise},
    {Op::kClampedSwigluFwd, "clamped_swiglu_fwd", OpCategory::kElementwise},
    {Op::kClampedSwigluBwd, "clamped_swiglu_bwd", OpCategory::kElementwise},
    {Op::kRelu2Fwd, "relu2_fwd", OpCategory::kElementwise},
    {Op::kRelu2Bwd, "relu2_bwd", OpCategory::kElementwise},
    {Op::kSoftmaxFwd, "softmax_fwd", OpCategory::kRouting},
    {Op::kSoftmaxBwd, "softmax_bwd", OpCategory::kRouting},
    {Op::kSigmoidFwd, "sigmoid_fwd", OpCategory::kElementwise},
    {Op::kSigmoidBwd, "sigmoid_bwd", OpCategory::kElementwise},
    {Op::kDropout, "dropout", OpCategory::kElementwise},
    {Op::kInitNormal, "init_normal", OpCategory::kElementwise},
    {Op::kRouterTopk, "router_topk", OpCategory::kRouting},
    {Op::kRouterGroupTopk, "router_group_topk", OpCategory::kRouting},
    {Op::kRouterBiasUpdate, "router_bias_update", OpCategory::kRouting},
    {Op::kRouterWeightsFor, "router_weights_for", OpCategory::kRouting},
    {Op::kRouterTopkBwd, "router_topk_bwd", OpCategory::kRouting},
    {Op::kMakePermutation, "make_permutation", OpCategory::kRouting},
    {Op::kPermute, "permute", OpCategory::kRouting},
    {Op::kUnpermute, "unpermute", OpCategory::kRouting},
    {Op::kPermuteWeights, "permute_weights", OpCategory::kRouting},
    {Op::kUnpermuteWeights, "unpermute_weights", OpCategory::kRouting},
    {Op::kExpertCounts, "expert_counts", OpCategory::kRouting},
    {Op::kExpertRanks, "expert_ranks", OpCategory::kRouting},
    {Op::kSentExpertSlots, "sent_expert_slots", OpCategory::kRouting},
    {Op::kGroupedLinear, "grouped_linear", OpCategory::kExpertGemm},
    {Op::kGatheredGroupedLinear, "gathered_grouped_linear", OpCategory::kExpertGemm},
    {Op::kGroupedLinearDx, "grouped_linear_dx", OpCategory::kExpertGemm},
    {Op::kGroupedLinearDw, "grouped_linear_dw", OpCategory::kExpertGemm},
    {Op::kGroupedBiasAdd, "grouped_bias_add", OpCategory::kExpertGemm},
    {Op::kGroupedBiasBwd, "grouped_bias_bwd", OpCategory::kExpertGemm},
    {Op::kCrossEntropy, "cross_entropy", OpCategory::kLoss},
    {Op::kSumOfSquares, "sum_of_squares", OpCategory::kOptimizer},
    {Op::kAdamwUpdate, "adamw_update", OpCategory::kOptimizer},
};

// Row i describes Op i, so a lookup is an index.
constexpr bool op_table_in_order() {
  for (size_t i = 0; i < std::size(kOpTable); ++i)
    if (static_cast<size_t>(kOpTable[i].op) != i) return false;
  return std::size(kOpTable) == static_cast<size_t>(Op::kCount);
}
static_assert(op_table_in_order(), "kOpTable needs one row per Op, in the enum's order");

constexpr const OpInfo& op_info(Op op) { return kOpTable[static_cast<size_t>(op)]; }
constexpr const char* op_name(Op op) { return op_info(op).name; }

}  // namespace moeforge::ops
