// MoE routing: top-k (ties, renormalisation, backward), the token permutation, the gathers and
// scatters around the experts and the grouped expert products.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "dist/process_group.h"
#include "ops/activation.h"
#include "ops/dense.h"
#include "ops/moe.h"
#include "ops_test_util.h"

namespace moeforge::testing {
namespace {

constexpr double kForwardTol = 1e-5;
// Backward against central differences (step kStep) of the float32 forward: relative L2 bound.
constexpr float kStep = 1e-2f;
constexpr double kGradTol = 1e-3;

std::vector<int32_t> int32_values(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

Tensor int32_tensor(const std::vector<int32_t>& values, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kI32);
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

TEST(RouterTopK, MatchesFullSortOfSoftmaxProbabilities) {
  std::mt19937 rng(41);
  const int64_t n = 9, experts = 16, k = 4;
  const Tensor probs = ops::softmax_fwd(random_tensor({n, experts}, rng, -3.0f, 3.0f));
  const std::vector<double> p = to_double(probs);
  for (bool norm : {false, true}) {
    SCOPED_TRACE(norm ? "norm_topk_prob" : "raw");
    const ops::TopK topk = ops::router_topk(probs, k, norm);
    ASSERT_EQ(topk.index.shape(), (Shape{n, k}));
    const std::vector<int32_t> idx = int32_values(topk.index);
    std::vector<double> expected_weight(n * k);
    for (int64_t r = 0; r < n; ++r) {
      std::vector<int32_t> order(experts);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return p[r * experts + a] > p[r * experts + b]; });
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += p[r * experts + order[j]];
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_EQ(idx[r * k + j], order[j]) << "row " << r << " slot " << j;
        expected_weight[r * k + j] = p[r * experts + order[j]] / (norm ? sum : 1.0);
      }
    }
    EXPECT_LT(rel_l2(topk.weight.to_float_vector(), to_float(expected_weight)), kForwardTol);
  }
}

TEST(RouterTopK, TiesGoToTheLowerExpertIndex) {
  const Tensor probs = Tensor::from_vector(
      std::vector<float>{0.1f, 0.3f, 0.1f, 0.3f, 0.2f, 0.25f, 0.25f, 0.25f, 0.25f, 0.0f}, {2, 5});
  EXPECT_EQ(int32_values(ops::router_topk(probs, 4, false).index),
            (std::vector<int32_t>{1, 3, 4, 0, 0, 1, 2, 3}));
  EXPECT_EQ(int32_values(ops::router_topk(probs, 2, true).index), (std::vector<int32_t>{1, 3, 0, 1}));
}

// Four groups of two experts, the best two groups by the sum of their two biased scores; the
// weights are the unbiased scores of the chosen experts, renormalised.
TEST(RouterGroupTopK, BiasChoosesGroupsAndExpertsButNotWeights) {
  const Tensor scores = Tensor::from_vector(std::vector<float>{0.9f, 0.1f, 0.5f, 0.45f, 0.2f, 0.2f, 0.6f, 0.7f}, {1, 8});
  const ops::TopK plain = ops::router_group_topk(scores, Tensor::zeros({8}, DType::kF32), 2, 4, 2, true);
  EXPECT_EQ(int32_values(plain.index), (std::vector<int32_t>{0, 7}));  // groups 3 (1.3) and 0 (1.0)
  EXPECT_LT(rel_l2(plain.weight.to_float_vector(), {0.9f / 1.6f, 0.7f / 1.6f}), kForwardTol);
  std::vector<float> bias(8, 0.0f);
  bias[2] = 0.4f;  // group 1 now sums 1.35 and expert 2 scores 0.9 for the choice
  const ops::TopK biased = ops::router_group_topk(scores, Tensor::from_vector(bias, {8}), 2, 4, 2, true);
  EXPECT_EQ(int32_values(biased.index), (std::vector<int32_t>{2, 7}));
  EXPECT_LT(rel_l2(biased.weight.to_float_vector(), {0.5f / 1.2f, 0.7f / 1.2f}), kForwardTol);
  const ops::TopK raw = ops::router_group_topk(scores, Tensor::from_vector(bias, {8}), 2, 4, 2, false);
  EXPECT_LT(rel_l2(raw.weight.to_float_vector(), {0.5f, 0.7f}), kForwardTol);
  expect_error([&] { ops::router_group_topk(scores, Tensor::zeros({8}, DType::kF32), 5, 4, 2, true); },
               {"router_group_topk", "k = 5", "topk_group"});
}

// Rows whose probabilities are at least 0.01 apart, so that a step of kRouterStep never changes
// which experts are chosen.
Tensor separated_probs(int64_t n, int64_t experts, std::mt19937& rng) {
  std::uniform_real_distribution<float> jitter(0.0f, 0.005f);
  std::vector<float> values(n * experts);
  for (int64_t r = 0; r < n; ++r) {
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 1);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t e = 0; e < experts; ++e) values[r * experts + e] = 0.015f * order[e] + jitter(rng);
  }
  return Tensor::from_vector(values, {n, experts});
}

TEST(RouterTopK, BackwardMatchesFiniteDifferences) {
  constexpr float kRouterStep = 1e-3f;
  std::mt19937 rng(42);
  const int64_t n = 5, experts = 8, k = 3;
  const Tensor probs = separated_probs(n, experts, rng);
  const Tensor dw = random_tensor({n, k}, rng);
  for (bool norm : {false, true}) {
    SCOPED_TRACE(norm ? "norm_topk_prob" : "raw");
    auto objective = [&] { return weighted_sum(ops::router_topk(probs, k, norm).weight, dw); };
    const ops::TopK topk = ops::router_topk(probs, k, norm);
    const Tensor dprobs = ops::router_topk_bwd(dw, probs, topk, norm);
    EXPECT_LT(rel_l2(dprobs.to_float_vector(), numeric_grad(probs, objective, kRouterStep)), kGradTol);
  }
}

// Routing of 7 tokens to 2 of 6 experts; experts 1 and 4 receive no token.
Tensor example_routing() {
  return int32_tensor({3, 0, 5, 2, 0, 3, 2, 5, 3, 2, 0, 5, 5, 0}, {7, 2});
}

TEST(Permutation, StableCountingSortByExpert) {
  const Tensor topk_index = example_routing();
  const int64_t n = 7, k = 2, experts = 6;
  const ops::Permutation p = ops::make_permutation(topk_index, experts);
  const std::vector<int32_t> idx = int32_values(topk_index);
  const std::vector<int32_t> source_row = int32_values(p.source_row), slot_of = int32_values(p.slot_of);
  const int64_t* off = p.offsets.data<int64_t>();
  ASSERT_EQ(p.offsets.shape(), (Shape{experts + 1}));
  EXPECT_EQ(off[0], 0);
  for (int64_t e = 0; e < experts; ++e)
    EXPECT_EQ(off[e + 1] - off[e], std::count(idx.begin(), idx.end(), e)) << "expert " << e;
  EXPECT_EQ(off[1], off[2]);  // expert 1: no tokens
  EXPECT_EQ(off[4], off[5]);  // expert 4: no tokens
  // slot_of and source_row agree, every sorted row is used once, and it holds the right expert.
  std::vector<int> used(n * k, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = slot_of[t * k + j];
      ASSERT_TRUE(row >= 0 && row < n * k);
      ++used[row];
      EXPECT_EQ(source_row[row], t);
      const int32_t e = idx[t * k + j];
      EXPECT_TRUE(row >= off[e] && row < off[e + 1]) << "token " << t << " expert " << e;
    }
  for (int u : used) EXPECT_EQ(u, 1);
  // Stable: token order inside each expert.
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t r = off[e] + 1; r < off[e + 1]; ++r) EXPECT_LT(source_row[r - 1], source_row[r]);
}

// Expert parallelism's partial permutation: this rank holds experts 2 and 3 of example_routing (as
// 0 and 1); the other slots are -1 and get no sorted row.
TEST(Permutation, PartialKeepsOnlyTheHeldSlots) {
  const Tensor held = int32_tensor({1, -1, -1, 0, -1, 1, 0, -1, 1, 0, -1, -1, -1, -1}, {7, 2});
  const ops::Permutation p = ops::make_permutation(held, 2);
  // Expert 0 (was 2): tokens 1, 3, 4; expert 1 (was 3): tokens 0, 2, 4.
  EXPECT_EQ(int32_values(p.source_row), (std::vector<int32_t>{1, 3, 4, 0, 2, 4}));
  EXPECT_EQ(int32_values(p.slot_of), (std::vector<int32_t>{3, -1, -1, 0, -1, 4, 1, -1, 5, 2, -1, -1, -1, -1}));
  EXPECT_EQ(p.offsets.data<int64_t>()[1], 3);
  EXPECT_EQ(p.offsets.data<int64_t>()[2], 6);

  std::mt19937 rng(46);
  const Tensor x = random_tensor({7, 3}, rng);
  const Tensor sorted = ops::permute(x, p);
  ASSERT_EQ(sorted.shape(), (Shape{6, 3}));
  for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(sorted.item_float(2 * 3 + c), x.item_float(4 * 3 + c));
  // Token 4 holds both its slots here, token 5 none: a sum of two rows, and zeros.
  const Tensor out = ops::unpermute(sorted, p, 7);
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_FLOAT_EQ(out.item_float(4 * 3 + c), 2 * x.item_float(4 * 3 + c));
    EXPECT_EQ(out.item_float(5 * 3 + c), 0.0f);
    EXPECT_EQ(out.item_float(1 * 3 + c), x.item_float(1 * 3 + c));
  }
  const Tensor weight = random_tensor({7, 2}, rng, 0.1f, 1.0f);
  const Tensor rows = ops::permute_weights(weight, p);
  ASSERT_EQ(rows.shape(), (Shape{6}));
  EXPECT_EQ(rows.item_float(3), weight.item_float(0));  // token 0 slot 0
  const std::vector<float> back = ops::unpermute_weights(rows, p).to_float_vector();
  for (int64_t i = 0; i < 14; ++i) EXPECT_EQ(back[i], int32_values(p.slot_of)[i] < 0 ? 0.0f : weight.item_float(i));
}

TEST(Permutation, AGivenCountOfHeldSlotsMustBeTheCount) {
  const Tensor held = int32_tensor({1, -1, -1, 0, -1, 1, 0, -1, 1, 0, -1, -1, -1, -1}, {7, 2});
  EXPECT_EQ(ops::make_permutation(held, 2, 6).source_row.numel(), 6);
  expect_error([&] { ops::make_permutation(held, 2, 5); }, {"make_permutation", "6 slots are held, not the 5 given"});
  expect_error([&] { ops::make_permutation(held, 2, 15); }, {"make_permutation", "15 held slots", "[0, 14]"});
}

// The rank of each expert is the split of dist/process_group.h: the largest p with p E / P <= e.
TEST(ExpertRanks, RankOfAnExpertIsItsSplitOwner) {
  for (int64_t experts = 1; experts <= 70; ++experts)
    for (int64_t ranks = 1; ranks <= experts; ++ranks)
      for (int64_t e = 0; e < experts; ++e) {
        ASSERT_EQ(ops::expert_rank_of(e, experts, ranks), split_owner(experts, ranks, e)) << e << " of " << experts;
        ASSERT_EQ(ops::expert_rank_begin(ranks, experts, ranks), experts);
      }
}

// Expert parallelism's send side, worked by hand from moe.h's definitions: 6 experts over 4 ranks
// hold [0], [1, 2], [3], [4, 5]. Token 0 has both its experts on rank 1 and goes there once; token
// 2 has both on rank 3.
TEST(ExpertRanks, EachTokenGoesOnceToEachRankOfItsExperts) {
  const Tensor index = int32_tensor({1, 2, 4, 0, 5, 4}, {3, 2});
  const ops::ExpertRanks to = ops::expert_ranks(index, 6, 4);
  EXPECT_EQ(int32_values(to.rank), (std::vector<int32_t>{-1, 1, -1, -1, 0, -1, -1, 3, -1, -1, -1, 3}));
  const int64_t* counts = to.counts.data<int64_t>();
  EXPECT_EQ((std::vector<int64_t>(counts, counts + 8)), (std::vector<int64_t>{1, 1, 1, 2, 0, 0, 2, 3}));

  // The rows sent, by rank in token order: token 1 to rank 0, token 0 to rank 1, tokens 1 and 2 to rank 3.
  const ops::Permutation send = ops::make_permutation(to.rank, 4, 4);
  EXPECT_EQ(int32_values(send.source_row), (std::vector<int32_t>{1, 0, 1, 2}));
  const Tensor slots = ops::sent_expert_slots(index, send, 6);
  EXPECT_EQ(int32_values(slots), (std::vector<int32_t>{-1, 0, 0, 1, 0, -1, 1, 0}));

  // Rank 3 receives the last two rows and holds three of their slots: expert 4 (its 0) in both, 5 in the second.
  const ops::Permutation held = ops::make_permutation(int32_tensor({0, -1, 1, 0}, {2, 2}), 2, 3);
  EXPECT_EQ(int32_values(held.source_row), (std::vector<int32_t>{0, 1, 1}));
  EXPECT_EQ(int32_values(held.slot_of), (std::vector<int32_t>{0, -1, 2, 1}));
}

TEST(ExpertRanks, ExpertOutOfRangeIsAnError) {
  expect_error([] { ops::expert_ranks(int32_tensor({0, 6}, {1, 2}), 6, 2); },
               {"expert_ranks", "token 0 slot 1", "expert 6", "[0, 6)"});
  expect_error([] { ops::expert_ranks(int32_tensor({0, 1}, {1, 2}), 2, 3); }, {"expert_ranks", "2 experts over 3 ranks"});
}

TEST(Permutation, ExpertOutOfRangeIsAnError) {
  expect_error([] { ops::make_permutation(int32_tensor({0, 6}, {1, 2}), 6); },
               {"token 0 slot 1", "expert 6", "[0, 6)"});
}

TEST(ExpertCounts, AddsThePairsOfValidRowsPerExpert) {
  Tensor counts = Tensor::from_vector(std::vector<float>{10, 0, 0, 0, 0, 0}, {6});
  ops::expert_counts(example_routing(), Tensor(), counts);
  EXPECT_EQ(counts.to_float_vector(), (std::vector<float>{14, 0, 3, 3, 0, 4}));
  // Rows 2, 5 and 6 are padding: the pairs of rows 0, 1, 3, 4 are added on top.
  const Tensor row_valid = Tensor::from_vector(std::vector<float>{1, 1, 0, 1, 1, 0, 0}, {7});
  ops::expert_counts(example_routing(), row_valid, counts);
  EXPECT_EQ(counts.to_float_vector(), (std::vector<float>{15, 0, 6, 5, 0, 6}));
}

TEST(ExpertCounts, ExpertOutOfRangeIsAnErrorAndCountsAreLeftAsTheyWere) {
  Tensor counts = Tensor::zeros({6}, DType::kF32);
  expect_error([&] { ops::expert_counts(int32_tensor({0, 6}, {1, 2}), Tensor(), counts); },
               {"expert_counts", "token 0 slot 1", "expert 6", "[0, 6)"});
  // Even on a padding row.
  expect_error([&] {
    ops::expert_counts(int32_tensor({1, 2, -1, 0}, {2, 2}),
                       Tensor::from_vector(std::vector<float>{1, 0}, {2}), counts);
  }, {"token 1 slot 0", "expert -1"});
  EXPECT_EQ(counts.to_float_vector(), std::vector<float>(6, 0.0f));
  expect_error([&] {
    ops::expert_counts(example_routing(), Tensor::from_vector(std::vector<float>{1, 1}, {2}), counts);
  }, {"expert_counts", "row_valid", "[7]"});
}

TEST(Permute, GathersTokenRowsAndUnpermuteIsItsBackward) {
  std::mt19937 rng(43);
  const int64_t n = 7, k = 2, hidden = 5;
  const ops::Permutation p = ops::make_permutation(example_routing(), 6);
  const Tensor x = random_tensor({n, hidden}, rng);
  const Tensor sorted = ops::permute(x, p);
  ASSERT_EQ(sorted.shape(), (Shape{n * k, hidden}));
  const std::vector<int32_t> source_row = int32_values(p.source_row);
  for (int64_t r = 0; r < n * k; ++r)
    for (int64_t c = 0; c < hidden; ++c)
      EXPECT_EQ(sorted.item_float(r * hidden + c), x.item_float(source_row[r] * hidden + c));
  const Tensor d_sorted = random_tensor({n * k, hidden}, rng);
  auto objective = [&] { return weighted_sum(ops::permute(x, p), d_sorted); };
  const Tensor dx = ops::unpermute(d_sorted, p, n);
  EXPECT_LT(rel_l2(dx.to_float_vector(), numeric_grad(x, objective, kStep)), kGradTol);
}

TEST(Unpermute, SumsEachTokensSlotsAndPermuteIsItsBackward) {
  std::mt19937 rng(44);
  const int64_t n = 7, k = 2, hidden = 5;
  const ops::Permutation p = ops::make_permutation(example_routing(), 6);
  const Tensor sorted = random_tensor({n * k, hidden}, rng);
  const Tensor out = ops::unpermute(sorted, p, n);
  const std::vector<int32_t> slot_of = int32_values(p.slot_of);
  const std::vector<double> y = to_double(sorted);
  std::vector<double> expected(n * hidden, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < hidden; ++c) expected[t * hidden + c] += y[slot_of[t * k + j] * hidden + c];
  EXPECT_LT(rel_l2(out.to_float_vector(), to_float(expected)), kForwardTol);

  const Tensor dout = random_tensor({n, hidden}, rng);
  auto objective = [&] { return weighted_sum(ops::unpermute(sorted, p, n), dout); };
  const Tensor d_sorted = ops::permute(dout, p);
  EXPECT_LT(rel_l2(d_sorted.to_float_vector(), numeric_grad(sorted, objective, kStep)), kGradTol);
}

TEST(PermuteWeights, MovesEachTokenSlotsWeightToItsSortedRowAndBack) {
  std::mt19937 rng(45);
  const int64_t n = 7, k = 2;
  const ops::Permutation p = ops::make_permutation(example_routing(), 6);
  const Tensor weight = random_tensor({n, k}, rng, 0.1f, 1.0f);
  const Tensor sorted = ops::permute_weights(weight, p);
  ASSERT_EQ(sorted.shape(), (Shape{n * k}));
  const std::vector<int32_t> slot_of = int32_values(p.slot_of);
  for (int64_t i = 0; i < n * k; ++i) EXPECT_EQ(sorted.item_float(slot_of[i]), weight.item_float(i));
  const Tensor back = ops::unpermute_weights(sorted, p);
  ASSERT_EQ(back.shape(), (Shape{n, k}));
  EXPECT_EQ(back.to_float_vector(), weight.to_float_vector());
}

// The MoE layers' expert combine as the model composes it: routing weights folded into SwiGLU
// before a (linear) down projection, summed over slots. Its gradients, through the ops' backward
// chain, against central differences of the whole composition; its output against the weighted
// sum of the experts' outputs, which is how Transformers combines them.
TEST(ExpertCombine, WeightsFoldedIntoSwigluMatchTheWeightedSumAndItsGradients) {
  std::mt19937 rng(46);
  const int64_t n = 7, k = 2, inter = 3, hidden = 4;
  const ops::Permutation p = ops::make_permutation(example_routing(), 6);
  const Tensor gate_up = random_tensor({n * k, 2 * inter}, rng, -3.0f, 3.0f);
  const Tensor down = random_tensor({hidden, inter}, rng);  // one down projection shared by all rows
  const Tensor weight = random_tensor({n, k}, rng, 0.1f, 1.0f);
  auto combine = [&] {
    return ops::unpermute(ops::linear(ops::swiglu_fwd(gate_up, ops::permute_weights(weight, p)), down), p, n);
  };
  const Tensor y_sorted = ops::linear(ops::swiglu_fwd(gate_up), down);
  const std::vector<int32_t> slot_of = int32_values(p.slot_of);
  const std::vector<double> y = to_double(y_sorted), w = to_double(weight);
  std::vector<double> weighted(n * hidden, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < hidden; ++c)
        weighted[t * hidden + c] += w[t * k + j] * y[slot_of[t * k + j] * hidden + c];
  EXPECT_LT(rel_l2(combine().to_float_vector(), to_float(weighted)), kForwardTol);

  const Tensor dout = random_tensor({n, hidden}, rng);
  const Tensor dact = ops::linear(ops::permute(dout, p), down.transpose(0, 1).contiguous());
  const ops::SwigluGrads g = ops::swiglu_bwd(dact, gate_up, ops::permute_weights(weight, p));
  auto objective = [&] { return weighted_sum(combine(), dout); };
  EXPECT_LT(rel_l2(g.d_gate_up.to_float_vector(), numeric_grad(gate_up, objective, kStep)), kGradTol);
  EXPECT_LT(rel_l2(ops::unpermute_weights(g.d_row_scale, p).to_float_vector(),
                   numeric_grad(weight, objective, kStep)),
            kGradTol);
}

struct GroupedCase {
  ops::Permutation p;
  Tensor x, w;  // x [M, K] sorted rows, w [E, N, K]
};

GroupedCase grouped_case(std::mt19937& rng) {
  const int64_t experts = 6, out_f = 4, in_f = 9;
  ops::Permutation p = ops::make_permutation(example_routing(), experts);
  const int64_t rows = p.source_row.numel();
  return {p, random_tensor({rows, in_f}, rng), random_tensor({experts, out_f, in_f}, rng)};
}

TEST(GroupedLinear, ForwardMatchesPerExpertProducts) {
  std::mt19937 rng(45);
  const GroupedCase c = grouped_case(rng);
  const Tensor y = ops::grouped_linear(c.x, c.w, c.p.offsets);
  const int64_t rows = c.x.size(0), in_f = c.x.size(1), out_f = c.w.size(1);
  ASSERT_EQ(y.shape(), (Shape{rows, out_f}));
  const std::vector<double> x = to_double(c.x), w = to_double(c.w);
  const int64_t* off = c.p.offsets.data<int64_t>();
  std::vector<double> expected(rows * out_f);
  for (int64_t e = 0; e < c.w.size(0); ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t o = 0; o < out_f; ++o) {
        double s = 0;
        for (int64_t i = 0; i < in_f; ++i) s += x[r * in_f + i] * w[(e * out_f + o) * in_f + i];
        expected[r * out_f + o] = s;
      }
  EXPECT_LT(rel_l2(y.to_float_vector(), to_float(expected)), kForwardTol);
}

TEST(GroupedLinear, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(46);
  const GroupedCase c = grouped_case(rng);
  const Tensor dy = random_tensor({c.x.size(0), c.w.size(1)}, rng);
  auto objective = [&] { return weighted_sum(ops::grouped_linear(c.x, c.w, c.p.offsets), dy); };
  const Tensor dx = ops::grouped_linear_dx(dy, c.w, c.p.offsets);
  EXPECT_LT(rel_l2(dx.to_float_vector(), numeric_grad(c.x, objective, kStep)), kGradTol);

  const Tensor grad_w0 = random_tensor(c.w.shape(), rng);
  Tensor grad_w = grad_w0.clone();
  ops::grouped_linear_dw(dy, c.x, c.p.offsets, grad_w);
  std::vector<float> increment = grad_w.to_float_vector();
  const std::vector<float> before = grad_w0.to_float_vector();
  for (size_t i = 0; i < increment.size(); ++i) increment[i] -= before[i];
  EXPECT_LT(rel_l2(increment, numeric_grad(c.w, objective, kStep)), kGradTol);
  // Experts 1 and 4 have no rows: their gradient is left exactly as it was.
  const int64_t per_expert = c.w.size(1) * c.w.size(2);
  for (int64_t e : {1, 4})
    for (int64_t i = e * per_expert; i < (e + 1) * per_expert; ++i)
      EXPECT_EQ(grad_w.item_float(i), grad_w0.item_float(i));
}

TEST(GroupedLinear, WeightGradientWrittenWithoutAccumulatingIgnoresWhatWasThere) {
  std::mt19937 rng(48);
  const GroupedCase c = grouped_case(rng);
  const Tensor dy = random_tensor({c.x.size(0), c.w.size(1)}, rng);
  Tensor accumulated = Tensor::zeros(c.w.shape(), DType::kF32, Device::kCPU);
  ops::grouped_linear_dw(dy, c.x, c.p.offsets, accumulated);
  Tensor written = Tensor::from_vector(std::vector<float>(c.w.numel(), std::nanf("")), c.w.shape());
  ops::grouped_linear_dw(dy, c.x, c.p.offsets, written, /*accumulate=*/false);
  // Bit for bit what adding to zeros gives, experts 1 and 4 (no rows) included.
  EXPECT_EQ(written.to_float_vector(), accumulated.to_float_vector());
}

TEST(GroupedLinear, OffsetsMustCoverTheRows) {
  std::mt19937 rng(47);
  const Tensor x = random_tensor({5, 3}, rng), w = random_tensor({2, 4, 3}, rng);
  expect_error([&] { ops::grouped_linear(x, w, Tensor::from_vector(std::vector<int64_t>{0, 2, 4}, {3})); },
               {"offsets", "0 to 4", "0 to 5"});
  expect_error([&] { ops::grouped_linear(x, w, Tensor::from_vector(std::vector<int64_t>{0, 2}, {2})); },
               {"offsets", "[2]", "[3]"});
}

}  // namespace
}  // namespace moeforge::testing
