// `moeforge step --adapter` reproduces PEFT's loss, adapter gradients and AdamW step on the fixtures of
// tests/data/lora (python/oracle/lora_fixtures.py); `moeforge merge` writes what PEFT's
// merge_and_unload + save_pretrained write, and nothing at all for a bad adapter.
#include <cmath>
#include <fstream>
#include <set>

#include "io/json.h"
#include "io/safetensors.h"
#include "train_cli_fixture.h"

namespace moeforge {
namespace {

// ---- moeforge step --adapter against PEFT ----------------------------------------------------

TEST(LoraStep, AdapterGradientsAndStepMatchPeft) {
  const fs::path fixture = testing::test_data_dir() / "lora" / "lora_attn_experts";
  const fs::path out = testing::unique_temp_path("mf_lora_step") / "step.safetensors";
  fs::create_directories(out.parent_path());
  SafetensorsFile want = SafetensorsFile::open(fixture / "expected.safetensors");
  const auto& meta = want.metadata();
  auto r = testing::run_moeforge({"step", "--model", fixture.string(), "--adapter", (fixture / "adapter").string(),
                                  "--batch", (fixture / "batch.safetensors").string(), "--out", out.string(),
                                  "--lr", meta.at("lr"), "--adam_beta1", meta.at("adam_beta1"), "--adam_beta2",
                                  meta.at("adam_beta2"), "--adam_epsilon", meta.at("adam_epsilon"), "--weight_decay",
                                  meta.at("weight_decay"), "--save_pretrained", (out.parent_path() / "saved").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile have = SafetensorsFile::open(out);
  auto relative = [](double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); };
  EXPECT_LE(relative(have.get("loss").item_float(), want.get("loss").item_float()), 1e-5);
  EXPECT_LE(relative(have.get("aux_loss").item_float(), want.get("aux_loss").item_float()), 1e-5);
  // After one AdamW step on the adapters alone: PEFT's loss at its second step.
  EXPECT_LE(relative(have.get("loss_after_step").item_float(), want.get("loss_1").item_float()), 1e-5);
  const Tensor mask = SafetensorsFile::open(fixture / "batch.safetensors").get("attention_mask");
  EXPECT_LE(testing::rel_l2(testing::real_token_logits(have.get("logits"), mask),
                            testing::real_token_logits(want.get("logits"), mask)),
            1e-4);
  // A gradient for every adapter tensor under its adapter_model.safetensors key, and no other.
  std::set<std::string> grads;
  for (const std::string& name : have.names())
    if (name.starts_with("grad.")) grads.insert(name.substr(5));
  EXPECT_EQ(grads, tensor_names(fixture / "adapter" / "adapter_model.safetensors"));
  for (const std::string& key : grads)
    EXPECT_LE(testing::rel_l2(have.get("grad." + key), want.get("grad." + key)), 1e-4) << key;
  // --save_pretrained writes the stepped adapter folder, naming the model it is on (PEFT's fixture names none).
  const fs::path saved = out.parent_path() / "saved";
  EXPECT_EQ(tensor_names(saved / "adapter_model.safetensors"), grads);
  EXPECT_EQ(read_json_file(saved / "adapter_config.json").at("base_model_name_or_path"), fixture.string());
  EXPECT_TRUE(read_json_file(fixture / "adapter" / "adapter_config.json").at("base_model_name_or_path").is_null());

  // An adapter folder without its weights is named before the model loads.
  const fs::path half = out.parent_path() / "half-adapter";
  fs::create_directories(half);
  fs::copy_file(fixture / "adapter" / "adapter_config.json", half / "adapter_config.json");
  auto bad = testing::run_moeforge({"step", "--model", fixture.string(), "--adapter", half.string(), "--batch",
                                    (fixture / "batch.safetensors").string(), "--out", out.string()});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find(half.string() + ": no adapter_model.safetensors"), std::string::npos) << bad.err;
  fs::remove_all(out.parent_path());
}

// ---- moeforge merge ----------------------------------------------------------------------------

class LoraMerge : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::unique_temp_path("mf_lora_merge");
    fs::remove_all(dir_);
    // The fixture's base with a tokenizer, which the merged folder must carry.
    base_ = dir_ / "base";
    fs::create_directories(base_);
    for (const char* f : {"config.json", "generation_config.json", "model.safetensors"})
      fs::copy_file(fixture() / f, base_ / f);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(testing::source_dir() / "demo" / "tokenizer" / f, base_ / f);
    adapter_ = dir_ / "adapter";
    fs::copy(fixture() / "adapter", adapter_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static fs::path fixture() { return testing::test_data_dir() / "lora" / "lora_attn"; }
  testing::CommandResult merge(const fs::path& out, std::vector<std::string> extra = {}) const {
    std::vector<std::string> args = {"merge", "--model", base_.string(), "--adapter", adapter_.string(),
                                     "--output_dir", out.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return testing::run_moeforge(args);
  }
  // Nothing but the inputs in the test's folder: no merged folder, no temporary one.
  void expect_nothing_written() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.insert(e.path().filename().string());
    EXPECT_EQ(names, (std::set<std::string>{"adapter", "base"}));
  }

  fs::path dir_, base_, adapter_;
};

TEST_F(LoraMerge, EqualsPeftMergeAndUnload) {
  const fs::path out = dir_ / "merged";
  auto r = merge(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile mine = SafetensorsFile::open(out / "model.safetensors");
  SafetensorsFile peft = SafetensorsFile::open(fixture() / "merged" / "model.safetensors");
  EXPECT_EQ(tensor_names(out / "model.safetensors"), tensor_names(fixture() / "merged" / "model.safetensors"));
  for (const std::string& n : peft.names()) {
    if (!mine.contains(n)) continue;
    EXPECT_LE(testing::rel_l2(mine.get(n), peft.get(n)), 1e-5) << n;
  }
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_EQ(read_json_file(out / "config.json"), read_json_file(base_ / "config.json"));
  EXPECT_FALSE(fs::exists(out / "adapter_config.json"));
  // --dtype: the saved tensors' dtype, and config.json says so.
  auto bf16 = merge(dir_ / "merged-bf16", {"--dtype", "bfloat16"});
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  EXPECT_EQ(SafetensorsFile::open(dir_ / "merged-bf16" / "model.safetensors").get("model.embed_tokens.weight").dtype(),
            DType::kBF16);
  EXPECT_EQ(read_json_file(dir_ / "merged-bf16" / "config.json").at("dtype"), "bfloat16");
  // An existing folder with files is replaced only when asked to.
  auto again = merge(out);
  EXPECT_EQ(again.exit_code, 2) << again.err;
  EXPECT_NE(again.err.find("is not empty"), std::string::npos) << again.err;
  EXPECT_EQ(merge(out, {"--overwrite_output_dir"}).exit_code, 0);
}

TEST_F(LoraMerge, BadAdaptersAreNamedAndNothingIsWritten) {
  const fs::path out = dir_ / "merged";
  {  // no weights file
    fs::rename(adapter_ / "adapter_model.safetensors", dir_ / "weights.safetensors");
    auto r = merge(out);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(adapter_.string() + ": no adapter_model.safetensors"), std::string::npos) << r.err;
    fs::rename(dir_ / "weights.safetensors", adapter_ / "adapter_model.safetensors");
    expect_nothing_written();
  }
  const std::string config_text = file_bytes(adapter_ / "adapter_config.json");
  {  // a target the model does not have
    Json config = Json::parse(config_text);
    config["target_modules"] = Json({"q_proj", "qkv_proj"});
    std::ofstream(adapter_ / "adapter_config.json") << config.dump();
    auto r = merge(out);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("target_modules 'qkv_proj' matches nothing"), std::string::npos) << r.err;
    expect_nothing_written();
  }
  {  // targets that ask for tensors the file lacks
    Json config = Json::parse(config_text);
    config["target_parameters"] = Json({"mlp.experts.down_proj"});
    std::ofstream(adapter_ / "adapter_config.json") << config.dump();
    auto r = merge(out);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("missing adapter tensor base_model.model.model.layers.0.mlp.experts.lora_A.weight"),
              std::string::npos) << r.err;
    expect_nothing_written();
  }
  std::ofstream(adapter_ / "adapter_config.json") << config_text;
  {  // a quantised save the base's family has no release of
    auto r = merge(out, {"--save_quantization", "mxfp4"});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("has no release in MXFP4 to save as"), std::string::npos) << r.err;
    expect_nothing_written();
  }
  {  // a missing base
    auto r = testing::run_moeforge({"merge", "--model", (dir_ / "nope").string(), "--adapter", adapter_.string(),
                                    "--output_dir", out.string()});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
    expect_nothing_written();
  }
}

}  // namespace
}  // namespace moeforge
