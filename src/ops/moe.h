// Mixture-of-experts routing (top-k, token permutation) and the grouped per-expert products.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ops/host_device.h"

namespace moeforge::ops {

// probs [N, E] (softmax of the router logits, fp32). Top-k per row, ties broken by lower expert
// index, in descending order of probability; weights renormalised to sum 1 when norm_topk_prob.
struct TopK {
  Tensor index;   // [N, k] int32
  Tensor weight;  // [N, k] fp32
};
TopK router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob);
// DeepSeek-V3's group-limited choice on scores [N, E] (sigmoid of the router logits, fp32): the
// experts are chosen by scores + bias ([E] fp32, e_score_correction_bias), within the topk_group of
// n_group equal groups whose two best biased scores sum highest; ties go to the lower index. The
// weights are the chosen experts' unbiased scores, renormalised to sum 1 when norm_topk_prob.
TopK router_group_topk(const Tensor& scores, const Tensor& bias, int64_t k, int64_t n_group, int64_t topk_group,
                       bool norm_topk_prob);
// DeepSeek-V3's auxiliary-loss-free balancing after an optimizer step: bias [E] fp32 moves by
// `rate` towards balance, up where load [E] fp32 (tokens per expert, over every rank) is below the
// mean, down where above, unchanged where equal. On the device with no host synchronisation.
void router_bias_update(Tensor& bias, const Tensor& load, float rate);
// The routing weights of given expert choices index [N, k] int32 (the same renormalisation): how a
// run reuses another run's top-k choices (a test hook: near-ties flip top-k between precisions).
TopK router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob);
// Gradient of the top-k weights back to probs [N, E] (zero outside the chosen experts); with
// renormalisation this includes the gradient through the normalising sum.
Tensor router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                       bool norm_topk_prob);

// Token permutation: the (token, slot) pairs sorted by expert, stable in token order inside each
// expert. offsets [E+1] int64 stays on the device (no host sync on CUDA).
//
// A permutation may be partial: a slot whose index is -1 (its expert is on another process, under
// expert parallelism) gets no sorted row, and slot_of is -1 there. Then R, the sorted rows, is the
// number of held slots, fewer than N*k. Every op below takes them on either device.
struct Permutation {
  Tensor source_row;  // [R] int32: token row of each sorted row
  Tensor slot_of;     // [N, k] int32: sorted row of each (token, slot), or -1
  Tensor offsets;     // [E+1] int64: expert e owns sorted rows offsets[e] .. offsets[e+1]
};
// The CPU counts the held slots (-1 allowed); on CUDA every slot must be held (the host does not
// read the index), else the kernel traps.
Permutation make_permutation(const Tensor& topk_index, int64_t num_experts);
// A partial permutation on either device, with its number of held slots (R) given by the caller:
// the expert-parallel plan knows it from the counts it exchanges. A different count is an error
// (CPU) or a trap (CUDA).
Permutation make_permutation(const Tensor& topk_index, int64_t num_experts, int64_t held_slots);
// Each of a pair is the other's backward.
// sorted[r] = x[source_row[r]]: [N, H] -> [R, H].
Tensor permute(const Tensor& x, const Permutation& p);
// out[n] = sum_j sorted[slot_of[n, j]] over the held slots, accumulated in fp32: [R, H] -> [N, H].
Tensor unpermute(const Tensor& sorted, const Permutation& p, int64_t n_tokens);
// The routing weight of each sorted row: [N, k] fp32 -> [R] fp32, row slot_of[n, j] gets
// weight[n, j].
Tensor permute_weights(const Tensor& weight, const Permutation& p);
// [R] fp32 -> [N, k] fp32: out[n, j] = sorted[slot_of[n, j]], 0 where the slot is not held.
Tensor unpermute_weights(const Tensor& sorted, const Permutation& p);

// ---- expert parallelism's plan (model/blocks/expert_parallel_dispatcher.h) -----------------------
// E experts split over P ranks in order, as evenly as they go: rank p holds experts
// [expert_rank_begin(p), expert_rank_begin(p + 1)), numbered from 0 there (dist's split_begin).
MF_HOST_DEVICE inline int64_t expert_rank_begin(int64_t p, int64_t experts, int64_t ranks) {
  return p * experts / ranks;
}
// The rank holding expert e: the largest p with p E / P <= e.
MF_HOST_DEVICE inline int64_t expert_rank_of(int64_t e, int64_t experts, int64_t ranks) {
  return ((e + 1) * ranks - 1) / experts;
}
struct ExpertRanks {
  // [N, P] int32: p where token n has any of its experts on rank p, else -1. make_permutation of it
  // over P "experts" is the plan's send side: each token once to each of those ranks.
  Tensor rank;
  // [P, 2] int64: the tokens going to rank p, and their (token, slot) pairs held there.
  Tensor counts;
};
// topk_index [N, k] int32, every index in [0, E) (else an error on the CPU, a trap on CUDA).
ExpertRanks expert_ranks(const Tensor& topk_index, int64_t num_experts, int64_t ranks);
// The slots of each row sent (`send`, the permutation of ExpertRanks::rank) as its destination
// rank numbers its experts, -1 for the slots held elsewhere: [R_send, k] int32.
Tensor sent_expert_slots(const Tensor& topk_index, const Permutation& send, int64_t num_experts);

// Tokens routed to each expert, added into counts [E] fp32: counts[e] += the number of (n, j) with
// topk_index[n, j] == e and, when row_valid [N] fp32 is defined, row_valid[n] != 0. topk_index
// [N, k] int32. Every index, of valid rows or not, must lie in [0, E): the CPU throws naming the
// pair, CUDA traps the kernel as the other routing kernels do (cuda_ops.h). No host sync on CUDA
// (the load-balancing loss of padded batches); exact while each count stays below 2^24.
void expert_counts(const Tensor& topk_index, const Tensor& row_valid, Tensor& counts);

// ---- grouped (per-expert) matrix products ---------------------------------------------------
// Rows offsets[e] .. offsets[e+1] of x belong to expert e. w [E, N, K] stacked expert weights.
// bias [E, N] (optional): y[r] = x[r] w_e^T + bias[e] for expert e's rows (CUDA may round the sum once).
Tensor grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets,
                      const Tensor& bias = Tensor());                                 // x [M,K] -> [M,N]
Tensor grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets);   // dy [M,N] -> [M,K]
// The same product of the permuted rows, grouped_linear(permute(x, p), w, p.offsets), without them in
// memory: y[r] = x[p.source_row[r]] w_e^T, x [N, K] -> [R, N]. CUDA gathers the rows in the product's
// loads where its kernel takes the shape (K a multiple of 64), else it permutes into a temporary.
Tensor gathered_grouped_linear(const Tensor& x, const Permutation& p, const Tensor& w);
// grad_w[e] += dy_e^T @ x_e; experts with no rows get no change. Without accumulate, grad_w[e] =
// dy_e^T @ x_e, zero for an expert without rows, and grad_w's old contents are not read.
void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w,
                       bool accumulate = true);
// Per-expert biases (GPT-OSS): y[r] += s[r] * bias[e] for the rows r of expert e,
// y [M, N], bias [E, N], s = row_scale [M] fp32 (undefined: 1; the routing weight that scales a
// product's input scales its bias too).
void grouped_bias_add(Tensor& y, const Tensor& bias, const Tensor& offsets, const Tensor& row_scale = Tensor());
// Its backward: grad_bias[e] += sum over expert e's rows of s[r] dy[r] (summed in fp32 or wider;
// grad_bias undefined: a frozen bias, none); returns d_row_scale [M] fp32, dy[r] . bias[e], when
// row_scale is given (else undefined).
Tensor grouped_bias_bwd(const Tensor& dy, const Tensor& bias, const Tensor& offsets, Tensor& grad_bias,
                        const Tensor& row_scale = Tensor());

}  // namespace moeforge::ops
