#include <cstring>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "optim/adamw.h"
#include "optim/optimizer_files.h"
#include "optim/schedule.h"
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

// The checkpoint's shard metadata names each expert parameter's expert range; malformed metadata
// is refused naming where it is.
TEST(AdamWState, ShardMetadataNamesEachExpertParametersRange) {
  TwoParams params(false, ShardClass::kExpert);  // a.weight [3, 5]: 3 experts
  AdamW opt(params.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  const nlohmann::json meta = nlohmann::json::parse(opt.shard_metadata());
  EXPECT_EQ(meta, nlohmann::json::parse(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [0, 3], "of": 3}}})"));
  const auto ranges = parse_optimizer_shards(opt.shard_metadata(), "test");
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges.at("a.weight").first, 0);
  EXPECT_EQ(ranges.at("a.weight").end, 3);
  EXPECT_EQ(ranges.at("a.weight").of, 3);
  auto expect_refused = [&](const std::string& text, const std::string& needle) {
    try {
      parse_optimizer_shards(text, "optimizer state metadata");
      ADD_FAILURE() << "accepted " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [2, 1], "of": 3}}})",
                 "a.weight holds experts [2, 1) of 3");
  expect_refused(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": "all"}}})", "is not {");
  expect_refused(R"({"format": "one"})", "expected {");
  expect_refused("[1, 2", "optimizer state metadata");
}

// An expert parameter a.weight [4 experts, 5] and a replicated b.weight [7], of which this process
// holds experts [first, end); AdamW over it after two steps with gradients that depend on the
// global expert index, so every process's state is a slice of a single process's.
struct ExpertShard {
  ParameterSet set;
  std::unique_ptr<AdamW> opt;
  ExpertShard(int64_t first, int64_t end) {
    const int a = set.add("a.weight", {4, 5}, ParamGroup::kExperts, true, ShardClass::kExpert);
    set.add("b.weight", {7}, ParamGroup::kAttention, true, ShardClass::kReplicated);
    set.hold_experts(a, first, end);
    set.allocate(Device::kCPU, DType::kF32, DType::kF32);
    opt = std::make_unique<AdamW>(set, AdamWConfig{}, OptimizerPrecision::kFp32Master, std::vector<bool>{true, true},
                                  std::vector<bool>{true, true});
    for (int step = 0; step < 2; ++step) {
      Tensor ga = set.mutable_grad(a), gb = set.mutable_grad(1);
      for (int64_t j = 0; j < ga.numel(); ++j) ga.data<float>()[j] = 0.01f * static_cast<float>(first * 5 + j + 1 + step);
      for (int64_t j = 0; j < gb.numel(); ++j) gb.data<float>()[j] = -0.02f * static_cast<float>(j + 1 + step);
      opt->step(1e-2);
    }
  }
  void save(const std::filesystem::path& folder, int rank, int ranks) const {
    std::vector<NamedTensor> tensors;
    for (const auto& [k, v] : opt->state(false, rank == 0)) tensors.emplace_back(k, v);
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
  const ExpertShard whole(0, 4), rank0(0, 2), rank1(2, 4);
  rank0.save(dir, 0, 2);
  rank1.save(dir, 1, 2);
  const std::map<std::string, Tensor> reference = whole.opt->state();
  for (auto [first, end] : {std::pair<int64_t, int64_t>{1, 3}, {0, 4}, {3, 4}}) {
    ExpertShard into(first, end);
    const std::map<std::string, Tensor> state = read_optimizer_state(dir, into.set);
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
    read_optimizer_state(dir, any.set);
    ADD_FAILURE() << "a checkpoint without rank 1's file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer-00002-of-00002.safetensors is missing"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir / optimizer_file_name(0, 2));
  TwoParams three(false, ShardClass::kExpert);  // a.weight with 3 experts, not 4
  whole.save(dir, 0, 1);
  try {
    read_optimizer_state(dir, three.set);
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

}  // namespace
}  // namespace moeforge
