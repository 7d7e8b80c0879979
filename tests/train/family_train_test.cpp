// `moeforge train` on each trainable family beyond Qwen3: a model of the family's golden fixture
// config (vocabulary widened to the demo tokenizer's), randomly initialised and saved, trains on the
// letter-reversal chat data; the run learns, and the folder it writes carries the source's checkpoint
// names and shapes (Mixtral's block_sparse_moe.* included), config keys and untouched buffers.
#include "io/safetensors.h"
#include "train_cli_fixture.h"

namespace moeforge {
namespace {

class FamilyTrain : public TrainCli, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    TrainCli::SetUp();
    nlohmann::json config = nlohmann::json::parse(
        std::ifstream(testing::test_data_dir() / "golden" / GetParam() / "config.json"));
    config["vocab_size"] = nlohmann::json::parse(kTinyConfig)["vocab_size"];
    config["pad_token_id"] = nullptr;
    fs::remove(model_ / "model.safetensors");
    std::ofstream(model_ / "config.json") << config.dump(2);
    CausalLM::from_config(load_model_config(model_), {}, 5).save_pretrained(model_, DType::kF32);
  }
};

std::map<std::string, Shape> checkpoint_shapes(const fs::path& folder) {
  CheckpointReader reader(folder);
  std::map<std::string, Shape> shapes;
  for (const auto& name : reader.tensor_names()) shapes[name] = reader.get(name).shape();
  return shapes;
}

TEST_P(FamilyTrain, LearnsAndSavesTheSourceLayout) {
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(train_args(out, 8));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = metrics(out);
  ASSERT_GE(m.size(), 8u);
  EXPECT_LT(m[7]["loss"].get<double>(), m[0]["loss"].get<double>());
  EXPECT_EQ(checkpoint_shapes(out), checkpoint_shapes(model_));
  const nlohmann::json saved = nlohmann::json::parse(std::ifstream(out / "config.json"));
  const nlohmann::json source = nlohmann::json::parse(std::ifstream(model_ / "config.json"));
  for (const auto& [key, value] : source.items()) EXPECT_TRUE(saved.contains(key)) << key;
  EXPECT_EQ(saved["model_type"], source["model_type"]);
  // Buffers (DeepSeek-V3's e_score_correction_bias) are saved as they were: training never moves them.
  CheckpointReader before(model_), after(out);
  for (const auto& name : before.tensor_names()) {
    if (!name.ends_with("e_score_correction_bias")) continue;
    EXPECT_EQ(after.get(name).to_float_vector(), before.get(name).to_float_vector()) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyTrain,
                         ::testing::Values("olmoe_qknorm_aux_pad", "mixtral_top2_aux_pad",
                                           "qwen2_moe_shared_dense_aux_pad", "deepseek_v3_q_lora_yarn_groups",
                                           "gpt_oss_sinks_windows_aux_pad"));

// --save_quantization mxfp4: the final folder stores GPT-OSS's experts as its release does (blocks and
// scales, quantization_config quant_method mxfp4); the run's own reload check holds them to the trained
// weights quantised and back, bit for bit. Checkpoints stay dense: a resume reads their weights exactly.
class Mxfp4Train : public FamilyTrain {};

TEST_P(Mxfp4Train, SavesTheExpertsAsReleasedAndCheckpointsDense) {
  const fs::path out = dir_ / "run";
  std::vector<std::string> args = train_args(out, 4);
  args.insert(args.end(), {"--save_quantization", "mxfp4", "--save_steps", "2"});
  auto r = testing::run_moeforge(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("the experts' as MXFP4"), std::string::npos) << r.err;
  const std::string experts = "model.layers.0.mlp.experts.gate_up_proj";
  CheckpointReader saved(out), checkpoint(out / "checkpoint-2");
  EXPECT_TRUE(saved.contains(experts + "_blocks") && saved.contains(experts + "_scales"));
  EXPECT_FALSE(saved.contains(experts));
  EXPECT_TRUE(checkpoint.contains(experts));
  const nlohmann::json config = nlohmann::json::parse(std::ifstream(out / "config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "mxfp4");
}

TEST_P(Mxfp4Train, LoraAdaptersAreRefusedBeforeTraining) {
  const fs::path out = dir_ / "run";
  std::vector<std::string> args = train_args(out, 2);
  args.insert(args.end(), {"--save_quantization", "mxfp4", "--lora_r", "4"});
  auto r = testing::run_moeforge(args);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("this run trains LoRA adapters, which save as PEFT saves them"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "metrics.jsonl"));
}

INSTANTIATE_TEST_SUITE_P(GptOss, Mxfp4Train, ::testing::Values("gpt_oss_mxfp4_tied"));

// A family without an MXFP4 release, and LoRA adapters (saved as PEFT saves them), are refused before
// training, and no folder is left.
TEST_F(TrainCli, SaveQuantizationMxfp4IsRefusedWhereItCannotApply) {
  const fs::path out = dir_ / "run";
  std::vector<std::string> args = train_args(out, 2);
  args.insert(args.end(), {"--save_quantization", "mxfp4"});
  auto r = testing::run_moeforge(args);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("qwen3_moe has no release in MXFP4 to save as"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "config.json"));
}

// --router_bias_update_rate: after each step every bias moves by the rate towards balance, from the
// loads the step's metrics record (the biases start at zero, as Transformers initialises them).
class RouterBiasTrain : public FamilyTrain {};

TEST_P(RouterBiasTrain, BiasesFollowTheRecordedLoads) {
  const fs::path out = dir_ / "run";
  std::vector<std::string> args = train_args(out, 4);
  args.insert(args.end(), {"--router_bias_update_rate", "0.01"});
  auto r = testing::run_moeforge(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json config = nlohmann::json::parse(std::ifstream(model_ / "config.json"));
  const int64_t first_moe = config["first_k_dense_replace"].get<int64_t>();
  std::vector<std::vector<float>> want;
  for (const nlohmann::json& record : metrics(out)) {
    if (!record.contains("expert_load")) continue;  // the final evaluation's record
    const auto& loads = record["expert_load"];
    want.resize(loads.size());
    for (size_t l = 0; l < loads.size(); ++l) {
      const std::vector<int64_t> load = loads[l].get<std::vector<int64_t>>();
      want[l].resize(load.size(), 0.0f);
      int64_t total = 0;
      for (int64_t v : load) total += v;
      for (size_t e = 0; e < load.size(); ++e) {
        const double mean = static_cast<double>(total) / static_cast<double>(load.size());
        want[l][e] += load[e] < mean ? 0.01f : load[e] > mean ? -0.01f : 0.0f;
      }
    }
  }
  ASSERT_FALSE(want.empty());
  EXPECT_NE(want[0], std::vector<float>(want[0].size(), 0.0f)) << "the loads never left balance: nothing tested";
  CheckpointReader saved(out);
  for (size_t l = 0; l < want.size(); ++l) {
    const std::string name = str_cat("model.layers.", first_moe + static_cast<int64_t>(l), ".mlp.gate.e_score_correction_bias");
    EXPECT_EQ(saved.get(name).to_float_vector(), want[l]) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(DeepseekV3, RouterBiasTrain, ::testing::Values("deepseek_v3_q_lora_yarn_groups"));

// A model whose routers have no bias refuses the option by name.
TEST_F(TrainCli, RouterBiasUpdateRateNeedsABias) {
  std::vector<std::string> args = train_args(dir_ / "run", 2);
  args.insert(args.end(), {"--router_bias_update_rate", "0.01"});
  auto r = testing::run_moeforge(args);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("router_bias_update_rate: model_type 'qwen3_moe' has no router score-correction bias"),
            std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeforge
