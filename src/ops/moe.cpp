// Dispatch of the MoE routing ops and grouped products (moe.h).
#include "ops/moe.h"

#include <algorithm>

#include "ops/dispatch.h"

namespace moeforge::ops {

using namespace detail;

namespace {

void check_permutation(Op op, const Permutation& p, Device device, int64_t n_tokens,
                       int64_t k) {
  check_typed_tensor(op, "permutation.slot_of", p.slot_of, device, DType::kI32, {n_tokens, k});
  check_typed_tensor(op, "permutation.source_row", p.source_row, device, DType::kI32, {p.source_row.numel()});
  MF_CHECK(p.source_row.numel() <= n_tokens * k, kInvalidArgument, op_name(op), ": permutation.source_row has ",
           p.source_row.numel(), " rows, more than the ", n_tokens * k, " slots");
}

// k, the slots per token, of a permutation whose slot_of [N, k] is checked in full later.
int64_t permutation_slots(Op op, const Permutation& p) {
  check_defined(op, "permutation.slot_of", p.slot_of);
  check_rank(op, "permutation.slot_of", p.slot_of, 2);
  return p.slot_of.size(1);
}

// offsets [E+1] int64 on `device`.
void check_offsets(Op op, const Tensor& offsets, Device device, int64_t num_experts) {
  check_typed_tensor(op, "offsets", offsets, device, DType::kI64, {num_experts + 1});
}

}  // namespace

TopK router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob) {
  const Op op = Op::kRouterTopk;
  const Device device = check_probs(op, probs);
  MF_CHECK(k >= 1 && k <= probs.size(1), kInvalidArgument, op_name(op), ": k = ", k,
           " is outside [1, ", probs.size(1), "] for probs ", shape_str(probs.shape()));
  const int64_t n = probs.size(0);
  TopK topk{Tensor::empty({n, k}, DType::kI32, device, "topk index"),
            Tensor::empty({n, k}, DType::kF32, device, "topk weight")};
  MF_DISPATCH(probs, op, router_topk(probs, k, norm_topk_prob, topk));
  return topk;
}

TopK router_group_topk(const Tensor& scores, const Tensor& bias, int64_t k, int64_t n_group, int64_t topk_group,
                       bool norm_topk_prob) {
  const Op op = Op::kRouterGroupTopk;
  const Device device = check_probs(op, scores);
  const int64_t n = scores.size(0), experts = scores.size(1);
  check_typed_tensor(op, "bias", bias, device, DType::kF32, {experts});
  MF_CHECK(n_group >= 1 && experts % n_group == 0 && experts / n_group >= 2, kInvalidArgument, op_name(op),
           ": ", experts, " experts do not split into n_group = ", n_group, " groups of two or more");
  MF_CHECK(topk_group >= 1 && topk_group <= n_group, kInvalidArgument, op_name(op), ": topk_group = ",
           topk_group, " is outside [1, n_group = ", n_group, "]");
  MF_CHECK(k >= 1 && k <= topk_group * (experts / n_group), kInvalidArgument, op_name(op), ": k = ", k,
           " is outside [1, ", topk_group * (experts / n_group), "] (the experts of topk_group groups)");
  TopK topk{Tensor::empty({n, k}, DType::kI32, device, "topk index"),
            Tensor::empty({n, k}, DType::kF32, device, "topk weight")};
  MF_DISPATCH(scores, op, router_group_topk(scores, bias, k, n_group, topk_group, norm_topk_prob, topk));
  return topk;
}

void router_bias_update(Tensor& bias, const Tensor& load, float rate) {
  const Op op = Op::kRouterBiasUpdate;
  const Device device = check_typed_input(op, "bias", bias, DType::kF32, 1);
  check_typed_tensor(op, "load", load, device, DType::kF32, bias.shape());
  MF_DISPATCH(bias, op, router_bias_update(bias, load, rate));
}

TopK router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob) {
  const Op op = Op::kRouterWeightsFor;
  const Device device = check_probs(op, probs);
  check_defined(op, "index", index);
  check_rank(op, "index", index, 2);
  check_typed_tensor(op, "index", index, device, DType::kI32, {probs.size(0), index.size(1)});
  TopK topk{index, Tensor::empty(index.shape(), DType::kF32, device, "topk weight")};
  MF_DISPATCH(probs, op, router_weights_for(probs, index, norm_topk_prob, topk.weight));
  return topk;
}

Tensor router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                       bool norm_topk_prob) {
  const Op op = Op::kRouterTopkBwd;
  const Device device = check_probs(op, probs);
  check_defined(op, "topk.index", topk.index);
  check_rank(op, "topk.index", topk.index, 2);
  const Shape nk = {probs.size(0), topk.index.size(1)};
  check_typed_tensor(op, "topk.index", topk.index, device, DType::kI32, nk);
  check_typed_tensor(op, "topk.weight", topk.weight, device, DType::kF32, nk);
  check_typed_tensor(op, "d_weight", d_weight, device, DType::kF32, nk);
  Tensor dprobs = Tensor::empty(probs.shape(), DType::kF32, device, "router dprobs");
  MF_DISPATCH(probs, op, router_topk_bwd(d_weight, probs, topk, norm_topk_prob, dprobs));
  return dprobs;
}

namespace {

Permutation permutation_of(Op op, const Tensor& topk_index, int64_t num_experts, int64_t held_slots) {
  const Device device = topk_index.device();
  const int64_t n = topk_index.size(0), k = topk_index.size(1);
  MF_CHECK(held_slots >= 0 && held_slots <= n * k, kInvalidArgument, op_name(op), ": ", held_slots,
           " held slots is outside [0, ", n * k, "] for topk_index ", shape_str(topk_index.shape()));
  Permutation p{Tensor::empty({held_slots}, DType::kI32, device, "permutation source_row"),
                Tensor::empty({n, k}, DType::kI32, device, "permutation slot_of"),
                Tensor::empty({num_experts + 1}, DType::kI64, device, "permutation offsets")};
  MF_DISPATCH(topk_index, op, make_permutation(topk_index, num_experts, p));
  return p;
}

}  // namespace

Permutation make_permutation(const Tensor& topk_index, int64_t num_experts) {
  const Op op = Op::kMakePermutation;
  const Device device = check_typed_input(op, "topk_index", topk_index, DType::kI32, 2);
  MF_CHECK(num_experts >= 1, kInvalidArgument, op_name(op), ": num_experts = ", num_experts);
  int64_t held = topk_index.numel();
  if (device == Device::kCPU) {
    const int32_t* index = topk_index.data<int32_t>();
    held -= std::count(index, index + topk_index.numel(), -1);
  }
  return permutation_of(op, topk_index, num_experts, held);
}

Permutation make_permutation(const Tensor& topk_index, int64_t num_experts, int64_t held_slots) {
  const Op op = Op::kMakePermutation;
  check_typed_input(op, "topk_index", topk_index, DType::kI32, 2);
  MF_CHECK(num_experts >= 1, kInvalidArgument, op_name(op), ": num_experts = ", num_experts);
  return permutation_of(op, topk_index, num_experts, held_slots);
}

Tensor permute(const Tensor& x, const Permutation& p) {
  const Op op = Op::kPermute;
  const Device device = check_float_input(op, "x", x, 2);
  const int64_t n = x.size(0), k = permutation_slots(op, p);
  check_permutation(op, p, device, n, k);
  Tensor sorted = Tensor::empty({p.source_row.numel(), x.size(1)}, x.dtype(), device, "permuted rows");
  MF_DISPATCH(x, op, permute(x, p, sorted));
  return sorted;
}

Tensor unpermute(const Tensor& sorted, const Permutation& p, int64_t n_tokens) {
  const Op op = Op::kUnpermute;
  const Device device = check_float_input(op, "sorted", sorted, 2);
  const int64_t k = permutation_slots(op, p);
  check_permutation(op, p, device, n_tokens, k);
  check_shape(op, "sorted", sorted, {p.source_row.numel(), sorted.size(1)});
  Tensor out = Tensor::empty({n_tokens, sorted.size(1)}, sorted.dtype(), device, "unpermuted rows");
  MF_DISPATCH(sorted, op, unpermute(sorted, p, out));
  return out;
}

Tensor permute_weights(const Tensor& weight, const Permutation& p) {
  const Op op = Op::kPermuteWeights;
  check_defined(op, "weight", weight);
  const Device device = weight.device();
  check_layout(op, "weight", weight, device);
  check_dtype(op, "weight", weight, DType::kF32);
  check_rank(op, "weight", weight, 2);
  check_permutation(op, p, device, weight.size(0), weight.size(1));
  Tensor sorted = Tensor::empty({p.source_row.numel()}, DType::kF32, device, "permuted routing weights");
  MF_DISPATCH(weight, op, permute_weights(weight, p, sorted));
  return sorted;
}

Tensor unpermute_weights(const Tensor& sorted, const Permutation& p) {
  const Op op = Op::kUnpermuteWeights;
  const int64_t k = permutation_slots(op, p);
  const Device device = p.slot_of.device();
  const int64_t n = p.slot_of.size(0);
  check_permutation(op, p, device, n, k);
  check_typed_tensor(op, "sorted", sorted, device, DType::kF32, {p.source_row.numel()});
  Tensor weight = Tensor::empty({n, k}, DType::kF32, device, "unpermuted routing weights");
  MF_DISPATCH(sorted, op, unpermute_weights(sorted, p, weight));
  return weight;
}

void expert_counts(const Tensor& topk_index, const Tensor& row_valid, Tensor& counts) {
  const Op op = Op::kExpertCounts;
  const Device device = check_typed_input(op, "topk_index", topk_index, DType::kI32, 2);
  check_layout(op, "counts", counts, device);
  check_dtype(op, "counts", counts, DType::kF32);
  check_rank(op, "counts", counts, 1);
  if (row_valid.defined())
    check_typed_tensor(op, "row_valid", row_valid, device, DType::kF32, {topk_index.size(0)});
  MF_DISPATCH(topk_index, op, expert_counts(topk_index, row_valid, counts));
}

ExpertRanks expert_ranks(const Tensor& topk_index, int64_t num_experts, int64_t ranks) {
  const Op op = Op::kExpertRanks;
  const Device device = check_typed_input(op, "topk_index", topk_index, DType::kI32, 2);
  MF_CHECK(ranks >= 1 && num_experts >= ranks, kInvalidArgument, op_name(op), ": ", num_experts,
           " experts over ", ranks, " ranks (each rank needs at least one)");
  const int64_t n = topk_index.size(0);
  ExpertRanks out{Tensor::empty({n, ranks}, DType::kI32, device, "expert ranks"),
                  Tensor::empty({ranks, 2}, DType::kI64, device, "expert rank counts")};
  MF_DISPATCH(topk_index, op, expert_ranks(topk_index, num_experts, out));
  return out;
}

Tensor sent_expert_slots(const Tensor& topk_index, const Permutation& send, int64_t num_experts) {
  const Op op = Op::kSentExpertSlots;
  const Device device = check_typed_input(op, "topk_index", topk_index, DType::kI32, 2);
  const int64_t n = topk_index.size(0), k = topk_index.size(1), ranks = permutation_slots(op, send);
  check_permutation(op, send, device, n, ranks);
  MF_CHECK(num_experts >= ranks, kInvalidArgument, op_name(op), ": ", num_experts, " experts over ", ranks,
           " ranks");
  Tensor slots = Tensor::empty({send.source_row.numel(), k}, DType::kI32, device, "sent expert slots");
  MF_DISPATCH(topk_index, op, sent_expert_slots(topk_index, send, num_experts, slots));
  return slots;
}

// ---- grouped (per-expert) matrix products ---------------------------------------------------

namespace {

// w [E, N, K] and offsets [E+1] on the device of w.
void check_expert_weights(Op op, const char* name, const Tensor& w, const Tensor& offsets) {
  check_defined(op, name, w);
  check_layout(op, name, w, w.device());
  check_float(op, name, w);
  check_rank(op, name, w, 3);
  check_offsets(op, offsets, w.device(), w.size(0));
}

// A floating [rows, columns] matrix on `device`, of any number of rows (the offsets cover them).
void check_rows(Op op, const char* name, const Tensor& t, Device device, int64_t columns) {
  check_layout(op, name, t, device);
  check_float(op, name, t);
  check_rank(op, name, t, 2);
  check_shape(op, name, t, {t.size(0), columns});
}

}  // namespace

Tensor grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias) {
  const Op op = Op::kGroupedLinear;
  check_expert_weights(op, "w", w, offsets);
  check_rows(op, "x", x, w.device(), w.size(2));
  if (bias.defined()) check_float_tensor(op, "bias", bias, w.device(), {w.size(0), w.size(1)});
  Tensor y = Tensor::empty({x.size(0), w.size(1)}, x.dtype(), w.device(), "grouped_linear output");
  MF_DISPATCH(w, op, grouped_linear(x, w, offsets, bias, y));
  return y;
}

Tensor gathered_grouped_linear(const Tensor& x, const Permutation& p, const Tensor& w) {
  const Op op = Op::kGatheredGroupedLinear;
  check_expert_weights(op, "w", w, p.offsets);
  check_rows(op, "x", x, w.device(), w.size(2));
  check_permutation(op, p, w.device(), x.size(0), permutation_slots(op, p));
  Tensor y = Tensor::empty({p.source_row.numel(), w.size(1)}, x.dtype(), w.device(), "gathered_grouped_linear output");
  MF_DISPATCH(w, op, gathered_grouped_linear(x, p, w, y));
  return y;
}

Tensor grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets) {
  const Op op = Op::kGroupedLinearDx;
  check_expert_weights(op, "w", w, offsets);
  check_rows(op, "dy", dy, w.device(), w.size(1));
  Tensor dx = Tensor::empty({dy.size(0), w.size(2)}, dy.dtype(), w.device(), "grouped_linear dx");
  MF_DISPATCH(w, op, grouped_linear_dx(dy, w, offsets, dx));
  return dx;
}

void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w, bool accumulate) {
  const Op op = Op::kGroupedLinearDw;
  check_expert_weights(op, "grad_w", grad_w, offsets);
  const Device device = grad_w.device();
  check_rows(op, "x", x, device, grad_w.size(2));
  check_float_tensor(op, "dy", dy, device, {x.size(0), grad_w.size(1)});
  MF_DISPATCH(grad_w, op, grouped_linear_dw(dy, x, offsets, grad_w, accumulate));
}

namespace {

// bias [E, N] with offsets [E+1] on its device; y (or dy) [M, N] and row_scale [M] fp32 (optional).
void check_grouped_bias(Op op, const char* rows_name, const Tensor& rows, const Tensor& bias, const Tensor& offsets,
                        const Tensor& row_scale) {
  check_defined(op, "bias", bias);
  check_layout(op, "bias", bias, bias.device());
  check_float(op, "bias", bias);
  check_rank(op, "bias", bias, 2);
  check_offsets(op, offsets, bias.device(), bias.size(0));
  check_rows(op, rows_name, rows, bias.device(), bias.size(1));
  if (row_scale.defined())
    check_typed_tensor(op, "row_scale", row_scale, bias.device(), DType::kF32, {rows.size(0)});
}

}  // namespace

void grouped_bias_add(Tensor& y, const Tensor& bias, const Tensor& offsets, const Tensor& row_scale) {
  const Op op = Op::kGroupedBiasAdd;
  check_grouped_bias(op, "y", y, bias, offsets, row_scale);
  MF_DISPATCH(bias, op, grouped_bias_add(y, bias, offsets, row_scale));
}

Tensor grouped_bias_bwd(const Tensor& dy, const Tensor& bias, const Tensor& offsets, Tensor& grad_bias,
                        const Tensor& row_scale) {
  const Op op = Op::kGroupedBiasBwd;
  check_grouped_bias(op, "dy", dy, bias, offsets, row_scale);
  if (grad_bias.defined()) check_float_tensor(op, "grad_bias", grad_bias, bias.device(), bias.shape());
  Tensor d_row_scale;
  if (row_scale.defined()) d_row_scale = Tensor::empty({dy.size(0)}, DType::kF32, bias.device(), "grouped_bias d_row_scale");
  MF_DISPATCH(bias, op, grouped_bias_bwd(dy, bias, offsets, grad_bias, row_scale, d_row_scale));
  return d_row_scale;
}

}  // namespace moeforge::ops
