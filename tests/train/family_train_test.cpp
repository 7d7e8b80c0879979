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
                                           "qwen2_moe_shared_dense_aux_pad", "deepseek_v3_q_lora_yarn_groups"));

}  // namespace
}  // namespace moeforge
