#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "optim/adamw.h"
#include "optim/optimizer_files.h"
#include "optim/schedule.h"
#include "presummed_copies.h"
#include "testing.h"

namespace moeforge {
namespace {

// Shape of the Hugging Face schedules: warm-up from 0 (the first update uses multiplier 0), the
// peak at the end of warm-up, decay to 0 at the last step; cosine is half way at mid-decay.
TEST(Schedule, WarmupThenDecay) {
  for (auto s : {LrSchedule::kLinear, LrSchedule::kCosine}) {
    EXPECT_EQ(lr_multiplier(s, 0, 10, 110), 0.0);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 5, 10, 110), 0.5);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 10, 10, 110), 1.0);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 60, 10, 110), 0.5);
    EXPECT_NEAR(lr_multiplier(s, 110, 10, 110), 0.0, 1e-12);
    for (int64_t i = 11; i <= 110; ++i) EXPECT_LE(lr_multiplier(s, i, 10, 110), lr_multiplier(s, i - 1, 10, 110));
  }
  EXPECT_EQ(lr_multiplier(LrSchedule::kConstant, 0, 10, 110), 1.0);
  EXPECT_EQ(lr_multiplier(LrSchedule::kConstantWithWarmup, 50, 10, 110), 1.0);
  EXPECT_THROW(parse_lr_schedule("polynomial_typo"), Error);
}

// Two parameters, a.weight [3, 5] of `a_class` and b.weight [7], declared in that order or `swapped`,
// float32 on the CPU, gradients 0.1 * (index + 1) per element.
struct TwoParams {
  ParameterSet set;
  explicit TwoParams(bool swapped, ShardClass a_class = ShardClass::kReplicated) {
    struct Decl { const char* name; Shape shape; ShardClass shard_class; };
    const Decl a{"a.weight", {3, 5}, a_class}, b{"b.weight", {7}, ShardClass::kReplicated};
    for (const Decl& d : swapped ? std::vector{b, a} : std::vector{a, b})
      set.add(d.name, d.shape, ParamGroup::kAttention, true, d.shard_class);
    set.allocate(Device::kCPU, DType::kF32, DType::kF32);
    for (int i = 0; i < static_cast<int>(set.size()); ++i) {
      Tensor g = set.mutable_grad(i);
      for (int64_t j = 0; j < g.numel(); ++j) g.data<float>()[j] = 0.1f * static_cast<float>(j + 1);
    }
  }
};

// The checkpoint's shard metadata names the elements of each parameter a process keeps state for,
// counted in the whole parameter; format 1's expert ranges (expert-parallel checkpoints before
// optimizer sharding) read as elements; malformed metadata is refused naming where it is.
TEST(AdamWState, ShardMetadataNamesEachParametersElements) {
  TwoParams params(false, ShardClass::kExpert);  // a.weight [3, 5]: 3 experts
  AdamW opt(params.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  const nlohmann::json meta = nlohmann::json::parse(opt.shard_metadata());
  EXPECT_EQ(meta, nlohmann::json::parse(R"({"format": 2, "parameters": {"a.weight": {"elements": [0, 15], "of": 15},
                                                                         "b.weight": {"elements": [0, 7], "of": 7}}})"));
  const auto ranges = parse_optimizer_shards(opt.shard_metadata(), "test", params.set);
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges.at("a.weight").begin, 0);
  EXPECT_EQ(ranges.at("a.weight").end, 15);
  EXPECT_EQ(ranges.at("a.weight").of, 15);
  const auto v1 = parse_optimizer_shards(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [1, 3], "of": 3}}})",
                                         "test", params.set);
  ASSERT_EQ(v1.size(), 1u);
  EXPECT_EQ(v1.at("a.weight").begin, 5);
  EXPECT_EQ(v1.at("a.weight").end, 15);
  EXPECT_EQ(v1.at("a.weight").of, 15);
  auto expect_refused = [&](const std::string& text, const std::string& needle) {
    try {
      parse_optimizer_shards(text, "optimizer state metadata", params.set);
      ADD_FAILURE() << "accepted " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused(R"({"format": 2, "parameters": {"a.weight": {"elements": [9, 1], "of": 15}}})",
                 "a.weight holds elements [9, 1) of 15");
  expect_refused(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [2, 1], "of": 3}}})",
                 "a.weight holds experts [2, 1) of 3");
  expect_refused(R"({"format": 2, "parameters": {"a.weight": {"elements": "all"}}})", "is not {");
  expect_refused(R"({"format": "one"})", "expected {");
  expect_refused("[1, 2", "optimizer state metadata");
}

using testing::PresummedCopies;

// An expert parameter a.weight [4 experts, 5] and a replicated b.weight [7], of which this process
// holds experts [first, end); AdamW over it after two steps with gradients that depend on the
// global expert index, so every process's state is a slice of a single process's.
struct ExpertShard {
  ParameterSet set;
  std::unique_ptr<AdamW> opt;
  // With `copies`, the replicated b.weight is sharded over them (PresummedCopies).
  ExpertShard(int64_t first, int64_t end, ProcessGroup* copies = nullptr) {
    const int a = set.add("a.weight", {4, 5}, ParamGroup::kExperts, true, ShardClass::kExpert);
    set.add("b.weight", {7}, ParamGroup::kAttention, true, ShardClass::kReplicated);
    set.hold_experts(a, first, end);
    set.allocate(Device::kCPU, DType::kF32, DType::kF32);
    opt = std::make_unique<AdamW>(set, AdamWConfig{}, OptimizerPrecision::kFp32Master, std::vector<bool>{true, true},
                                  std::vector<bool>{true, true}, OptimizerSharding{copies, nullptr, nullptr});
    for (int step = 0; step < 2; ++step) {
      Tensor ga = set.mutable_grad(a), gb = set.mutable_grad(1);
      for (int64_t j = 0; j < ga.numel(); ++j) ga.data<float>()[j] = 0.01f * static_cast<float>(first * 5 + j + 1 + step);
      for (int64_t j = 0; j < gb.numel(); ++j) gb.data<float>()[j] = -0.02f * static_cast<float>(j + 1 + step);
      opt->step(1e-2);
    }
  }
  void save(const std::filesystem::path& folder, int rank, int ranks) const {
    std::vector<NamedTensor> tensors;
    for (const auto& [k, v] : opt->state()) tensors.emplace_back(k, v.contiguous());
    write_safetensors(folder / optimizer_file_name(rank, ranks), tensors, {{kOptimizerShardsKey, opt->shard_metadata()}});
  }
};

bool same_rows(const Tensor& have, const Tensor& whole, int64_t first) {
  const Tensor want = whole.slice(0, first, first + have.size(0)).contiguous();
  return std::memcmp(have.contiguous().raw_data(), want.raw_data(), want.nbytes()) == 0;
}

// State written by two expert-parallel ranks loads into a process holding another range of experts
// and into a single process, each expert's rows from the file that holds it; a missing rank's file
// and another expert count are refused by name.
TEST(AdamWState, ExpertShardsJoinAndSplitAcrossProcessCounts) {
  const std::filesystem::path dir = testing::unique_temp_path("optimizer-shards");
  std::filesystem::create_directories(dir);
  // b.weight's 7 elements fill one 64-element slice: rank 1 keeps it, rank 0 nothing of it.
  PresummedCopies first_of_two(0, 2), second_of_two(1, 2);
  const ExpertShard whole(0, 4), rank0(0, 2, &first_of_two), rank1(2, 4, &second_of_two);
  ASSERT_EQ(rank0.opt->owned_ranges().count("b.weight"), 0u);
  ASSERT_EQ(rank1.opt->owned_ranges().count("b.weight"), 1u);
  rank0.save(dir, 0, 2);
  rank1.save(dir, 1, 2);
  const std::map<std::string, Tensor> reference = whole.opt->state();
  for (auto [first, end] : {std::pair<int64_t, int64_t>{1, 3}, {0, 4}, {3, 4}}) {
    ExpertShard into(first, end);
    const std::map<std::string, Tensor> state = read_optimizer_state(dir, into.set, into.opt->owned_ranges());
    ASSERT_EQ(state.size(), reference.size());
    for (const auto& [key, want] : reference) {
      const bool expert = key.rfind("a.weight.", 0) == 0;
      EXPECT_TRUE(same_rows(state.at(key), want, expert ? first : 0)) << key << " for experts [" << first << ", " << end << ")";
    }
    EXPECT_NO_THROW(into.opt->load_state(state, 2));
  }
  std::filesystem::remove(dir / optimizer_file_name(1, 2));
  ExpertShard any(0, 4);
  try {
    read_optimizer_state(dir, any.set, any.opt->owned_ranges());
    ADD_FAILURE() << "a checkpoint without rank 1's file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer-00002-of-00002.safetensors is missing"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir / optimizer_file_name(0, 2));
  TwoParams three(false, ShardClass::kExpert);  // a.weight with 3 experts, not 4
  whole.save(dir, 0, 1);
  try {
    AdamW opt(three.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
    read_optimizer_state(dir, three.set, opt.owned_ranges());
    ADD_FAILURE() << "state of 4 experts loaded into 3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.weight was saved with 4 experts, the model has 3"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// Optimizer state is keyed by parameter name, so it follows a parameter wherever the layout puts it
// (another declaration order here; another expert-parallel shard later).
TEST(AdamWState, SavedByParameterNameAndLoadedIntoAnotherLayout) {
  TwoParams first(false), second(true);
  AdamW saved(first.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  saved.step(1e-2);
  saved.step(1e-2);
  const std::map<std::string, Tensor> state = saved.state(/*with_weights=*/true);
  std::set<std::string> keys;
  for (const auto& [k, v] : state) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"a.weight.exp_avg", "a.weight.exp_avg_sq", "a.weight.master",
                                         "b.weight.exp_avg", "b.weight.exp_avg_sq", "b.weight.master"}));
  EXPECT_EQ(shape_str(state.at("a.weight.exp_avg").shape()), "[3, 5]");

  AdamW loaded(second.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  loaded.load_state(state, saved.steps_taken());
  for (const char* name : {"a.weight", "b.weight"})
    for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
      const std::string key = std::string(name) + "." + kind;
      EXPECT_EQ(loaded.state().at(key).to_float_vector(), state.at(key).to_float_vector()) << key;
    }
  // The weights travelled too ("master": float32 weights are their own master copy).
  EXPECT_EQ(second.set.param(1).to_float_vector(), first.set.param(0).to_float_vector());
  EXPECT_EQ(loaded.steps_taken(), 2);

  std::map<std::string, Tensor> extra = state;
  extra.emplace("c.weight.exp_avg", Tensor::zeros({2}, DType::kF32));
  try {
    loaded.load_state(extra, 2);
    FAIL() << "state of an unknown parameter was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'c.weight.exp_avg' belongs to no parameter"), std::string::npos) << e.what();
  }
  std::map<std::string, Tensor> misshapen = state;
  misshapen["b.weight.exp_avg"] = Tensor::zeros({8}, DType::kF32);
  EXPECT_THROW(loaded.load_state(misshapen, 2), Error);
}

// Checkpoints written before per-parameter state hold each kind as one flat tensor, every parameter
// 64-aligned in declaration order: a.weight at 0 and b.weight at 64 here, although the expert-class
// a.weight now lies after b.weight.
TEST(AdamWState, LoadsTheFlatLayoutOfOlderCheckpoints) {
  TwoParams first(false, ShardClass::kExpert), second(false, ShardClass::kExpert);
  ASSERT_EQ(first.set.entry(0).offset, 64);
  AdamW saved(first.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  saved.step(1e-2);
  std::map<std::string, Tensor> flat;
  for (const char* kind : {"exp_avg", "exp_avg_sq"}) {
    Tensor t = Tensor::zeros({first.set.numel()}, DType::kF32);
    t.slice(0, 0, 15).view({3, 5}).copy_from(saved.state().at(std::string("a.weight.") + kind));
    t.slice(0, 64, 71).copy_from(saved.state().at(std::string("b.weight.") + kind));
    flat.emplace(kind, t);
  }
  AdamW loaded(second.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  loaded.load_state(flat, 1);
  for (const auto& [k, v] : saved.state()) EXPECT_EQ(loaded.state().at(k).to_float_vector(), v.to_float_vector()) << k;
}

// Replicated r1 [3, 50] and r2 [70] (320 padded elements: five 64-element granules) and experts
// x [4, 40] (192: three), float32 on the CPU, with gradients that depend on the element only.
struct ThreeParams {
  ParameterSet set;
  ThreeParams() {
    set.add("r1.weight", {3, 50}, ParamGroup::kAttention, true, ShardClass::kReplicated);
    set.add("r2.weight", {70}, ParamGroup::kNorm, false, ShardClass::kReplicated);
    set.add("x.weight", {4, 40}, ParamGroup::kExperts, true, ShardClass::kExpert);
    set.allocate(Device::kCPU, DType::kF32, DType::kF32);
  }
  void set_grads(int step) {
    for (int i = 0; i < 3; ++i) {
      Tensor g = set.mutable_grad(i);
      for (int64_t j = 0; j < g.numel(); ++j) g.data<float>()[j] = 0.01f * static_cast<float>((j * 7 + i * 3 + step) % 23) - 0.1f;
    }
  }
};

// Optimizer sharding: three ranks holding copies of every parameter each update and keep the state
// of one slice; their slices together are one process's state, element for element, and their
// files load into one process and into two ranks with other slices.
TEST(AdamWState, ShardedSlicesTogetherAreOneProcessState) {
  ThreeParams one;
  AdamW reference(one.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true});
  std::vector<std::unique_ptr<ThreeParams>> ranks;
  std::vector<std::unique_ptr<PresummedCopies>> groups;
  std::vector<std::unique_ptr<AdamW>> sharded;
  for (int r = 0; r < 3; ++r) {
    ranks.push_back(std::make_unique<ThreeParams>());
    groups.push_back(std::make_unique<PresummedCopies>(r, 3));
    sharded.push_back(std::make_unique<AdamW>(ranks[r]->set, AdamWConfig{}, OptimizerPrecision::kFp32Master,
                                              std::vector<bool>{true, false, true}, std::vector<bool>{true, true, true},
                                              OptimizerSharding{groups[r].get(), groups[r].get(), nullptr}));
  }
  for (int step = 0; step < 2; ++step) {
    one.set_grads(step);
    reference.step(1e-2);
    for (int r = 0; r < 3; ++r) {
      ranks[r]->set_grads(step);
      sharded[r]->step(1e-2);
    }
  }
  // Replicated granules split 1/2/2 over the ranks (r1 and part of r2 cut across them), experts 1/1/1.
  EXPECT_EQ(sharded[0]->state_bytes(), 2 * (64 + 64) * 4);
  EXPECT_EQ(sharded[1]->state_bytes(), 2 * (128 + 64) * 4);
  const std::map<std::string, Tensor> want = reference.state(/*with_weights=*/true);
  std::map<std::string, std::vector<float>> joined;
  for (const auto& [key, t] : want) joined[key].assign(static_cast<size_t>(t.numel()), NAN);
  for (int r = 0; r < 3; ++r) {
    const std::map<std::string, ElementRange> owned = sharded[r]->owned_ranges();
    for (const auto& [key, t] : sharded[r]->state(/*with_weights=*/true)) {
      const ElementRange range = owned.at(key.substr(0, key.rfind('.')));
      const std::vector<float> v = t.to_float_vector();
      ASSERT_EQ(static_cast<int64_t>(v.size()), range.end - range.begin) << key;
      std::copy(v.begin(), v.end(), joined[key].begin() + range.begin);
    }
  }
  for (const auto& [key, t] : want) EXPECT_EQ(joined[key], t.to_float_vector()) << key;

  const std::filesystem::path dir = testing::unique_temp_path("optimizer-sharded");
  std::filesystem::create_directories(dir);
  for (int r = 0; r < 3; ++r) {
    std::vector<NamedTensor> tensors;
    for (const auto& [k, v] : sharded[r]->state(true)) tensors.emplace_back(k, v.contiguous());
    write_safetensors(dir / optimizer_file_name(r, 3), tensors, {{kOptimizerShardsKey, sharded[r]->shard_metadata()}});
  }
  ThreeParams single;
  AdamW loaded(single.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true});
  loaded.load_state(read_optimizer_state(dir, single.set, loaded.owned_ranges()), 2);
  for (const auto& [key, t] : want) EXPECT_EQ(loaded.state(true).at(key).to_float_vector(), t.to_float_vector()) << key;
  for (int r = 0; r < 2; ++r) {
    ThreeParams into;
    PresummedCopies two(r, 2);
    AdamW half(into.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true},
               OptimizerSharding{&two, &two, nullptr});
    half.load_state(read_optimizer_state(dir, into.set, half.owned_ranges()), 2);
    for (const auto& [key, t] : half.state(true)) {
      const ElementRange range = half.owned_ranges().at(key.substr(0, key.rfind('.')));
      const std::vector<float> all = want.at(key).to_float_vector();
      EXPECT_EQ(t.to_float_vector(), std::vector<float>(all.begin() + range.begin, all.begin() + range.end)) << key;
    }
  }
  std::filesystem::remove_all(dir);
}

// Adds micro-batch `micro`'s gradient of ThreeParams' parameter i (accumulation, as a backward pass).
void add_grad(ParameterSet& set, int i, int micro) {
  Tensor g = set.mutable_grad(i);
  for (int64_t j = 0; j < g.numel(); ++j) g.data<float>()[j] += 0.01f * static_cast<float>((j * 5 + i + micro) % 19) - 0.09f;
}

// Gradient sharding (ZeRO-2): a sharded class has no gradient buffer; a backward pass's gradients
// exist between open() and close() of their span, and each rank keeps its slice of their sum over
// the micro-batches. Three ranks step to one process's state, element for element, and gathering
// the gradients gives each rank every one back.
TEST(AdamWState, ShardedGradientsStepAsOneProcess) {
  ThreeParams one;
  AdamW reference(one.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true});
  auto whole_span = [](const ParameterSet& set, int i) {
    return FlatSpan{set.entry(i).offset, set.entry(i).offset + set.entry(i).padded_numel()};
  };
  const std::map<std::string, Tensor> want = [&] {
    for (int step = 0; step < 2; ++step) {
      reference.zero_grad();
      for (int micro = 0; micro < 2; ++micro)
        for (int i = 0; i < 3; ++i) add_grad(one.set, i, 2 * step + micro);
      reference.step(1e-2);
    }
    return reference.state(/*with_weights=*/true);
  }();
  for (int r = 0; r < 3; ++r) {
    ThreeParams rank;
    PresummedCopies copies(r, 3);
    AdamW sharded(rank.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true},
                  OptimizerSharding{&copies, &copies, nullptr, /*shard_gradients=*/true});
    ASSERT_TRUE(sharded.shards_gradients());
    EXPECT_EQ(rank.set.flat_grads().numel(), 0);
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(rank.set.grad(i).defined()) << i;
    for (int step = 0; step < 2; ++step) {
      sharded.zero_grad();
      for (int micro = 0; micro < 2; ++micro)
        for (int i = 0; i < 3; ++i) {
          sharded.open(whole_span(rank.set, i));
          ASSERT_TRUE(rank.set.grad(i).defined());
          add_grad(rank.set, i, 2 * step + micro);
          sharded.close(whole_span(rank.set, i));
          EXPECT_FALSE(rank.set.grad(i).defined());
        }
      sharded.step(1e-2);
    }
    const std::map<std::string, ElementRange> owned = sharded.owned_ranges();
    for (const auto& [key, t] : sharded.state(/*with_weights=*/true)) {
      const ElementRange range = owned.at(key.substr(0, key.rfind('.')));
      const std::vector<float> all = want.at(key).to_float_vector();
      EXPECT_EQ(t.to_float_vector(), std::vector<float>(all.begin() + range.begin, all.begin() + range.end)) << key;
    }
    // One more micro-batch, then every gradient whole again (the copies' presummed sums).
    sharded.zero_grad();
    for (int i = 0; i < 3; ++i) {
      sharded.open(whole_span(rank.set, i));
      add_grad(rank.set, i, 9);
      sharded.close(whole_span(rank.set, i));
    }
    sharded.gather_gradients();
    EXPECT_FALSE(sharded.shards_gradients());
    ASSERT_EQ(rank.set.flat_grads().numel(), rank.set.trainable_numel());
    one.set.zero_grads();
    for (int i = 0; i < 3; ++i) add_grad(one.set, i, 9);
    const std::vector<float> mine = rank.set.flat_grads().to_float_vector(), all = one.set.flat_grads().to_float_vector();
    for (const auto& [name, range] : owned) {  // this rank's slices hold the sum; the copies' come from them
      const int i = name == "r1.weight" ? 0 : name == "r2.weight" ? 1 : 2;
      const int64_t at = rank.set.entry(i).offset;
      EXPECT_EQ(std::vector<float>(mine.begin() + at + range.begin, mine.begin() + at + range.end),
                std::vector<float>(all.begin() + at + range.begin, all.begin() + at + range.end)) << name;
    }
  }
  // Sharding the replicated class alone keeps the experts' gradients in a buffer of their own; without
  // the optimizer every gradient has its buffer again, the experts' as they were.
  ThreeParams rank;
  PresummedCopies copies(0, 2);
  std::vector<float> expert_grads;
  {
    AdamW sharded(rank.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true},
                  OptimizerSharding{&copies, nullptr, nullptr, /*shard_gradients=*/true});
    EXPECT_EQ(rank.set.flat_grads().numel(), rank.set.span(ShardClass::kExpert).size());
    EXPECT_FALSE(rank.set.grad(0).defined());
    add_grad(rank.set, 2, 0);
    expert_grads = rank.set.grad(2).to_float_vector();
  }
  EXPECT_EQ(rank.set.flat_grads().numel(), rank.set.trainable_numel());
  EXPECT_EQ(rank.set.grad(0).to_float_vector(), std::vector<float>(150, 0.0f));
  EXPECT_EQ(rank.set.grad(2).to_float_vector(), expert_grads);
}

// Sharded gradients belong to one optimizer: another on the same parameters, sharding or not, would
// find no gradients to read, so it is refused while the first lives.
TEST(AdamWState, ASecondOptimizerIsRefusedWhileTheFirstShardsTheGradients) {
  ThreeParams params;
  PresummedCopies copies(0, 2);
  auto sharded = std::make_unique<AdamW>(params.set, AdamWConfig{}, OptimizerPrecision::kFp32Master,
                                         std::vector<bool>{true, false, true}, std::vector<bool>{true, true, true},
                                         OptimizerSharding{&copies, nullptr, nullptr, /*shard_gradients=*/true});
  for (bool shard : {false, true})
    testing::expect_error(
        [&] {
          AdamW second(params.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true},
                       OptimizerSharding{&copies, nullptr, nullptr, shard});
        },
        {"another optimizer still shards this model's gradients"});
  sharded.reset();
  AdamW after(params.set, {}, OptimizerPrecision::kFp32Master, {true, false, true}, {true, true, true});
  EXPECT_TRUE(params.set.grad(0).defined());
}

}  // namespace
}  // namespace moeforge
