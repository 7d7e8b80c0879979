#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "optim/adamw.h"
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

// The checkpoint's shard metadata names each expert parameter's expert range; a loader refuses state
// whose range or expert count is not what the model holds, naming the parameter.
TEST(AdamWState, ShardMetadataNamesEachExpertParametersRange) {
  TwoParams params(false, ShardClass::kExpert);  // a.weight [3, 5]: 3 experts
  AdamW opt(params.set, {}, OptimizerPrecision::kFp32Master, {true, true}, {true, true});
  const nlohmann::json meta = nlohmann::json::parse(opt.shard_metadata());
  EXPECT_EQ(meta, nlohmann::json::parse(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [0, 3], "of": 3}}})"));
  EXPECT_NO_THROW(opt.check_shard_metadata(opt.shard_metadata()));
  auto expect_refused = [&](const std::string& text, const std::string& needle) {
    try {
      opt.check_shard_metadata(text);
      ADD_FAILURE() << "accepted " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [0, 2], "of": 3}}})",
                 "a.weight holds experts [0, 2) of 3");
  expect_refused(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": [0, 4], "of": 4}}})",
                 "a.weight was saved with 4 experts, the model has 3");
  expect_refused(R"({"format": 1, "expert_parameters": {}})", "no entry for the expert parameter a.weight");
  expect_refused(R"({"format": 1, "expert_parameters": {"a.weight": {"experts": "all"}}})", "is not {");
  expect_refused(R"({"format": "one"})", "expected {");
  expect_refused("[1, 2", "optimizer state metadata");
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
