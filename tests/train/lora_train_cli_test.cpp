// `moeforge train` with the lora_* options (or --adapter): adapters train on a frozen base, checkpoints
// and the final save are PEFT adapter folders, a resume is exact, and bad settings are refused by name.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "io/json.h"
#include "io/safetensors.h"
#include "train/trainer.h"
#include "train_cli_fixture.h"

namespace moeforge {
namespace {

const std::vector<std::string> kExperts = {"--lora_target_parameters", "mlp.experts.gate_up_proj,mlp.experts.down_proj"};

// PEFT's adapter keys for LoRA on attention and both expert parameters of an L-layer Qwen3-MoE.
std::set<std::string> attention_and_expert_keys(int layers) {
  std::set<std::string> keys;
  for (int l = 0; l < layers; ++l) {
    const std::string layer = str_cat("base_model.model.model.layers.", l, ".");
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
      for (const char* ab : {"lora_A", "lora_B"}) keys.insert(str_cat(layer, "self_attn.", p, ".", ab, ".weight"));
    for (const char* ab : {"lora_A", "lora_B"}) {
      keys.insert(str_cat(layer, "mlp.experts.base_layer.", ab, ".weight"));  // gate_up_proj, wrapped first
      keys.insert(str_cat(layer, "mlp.experts.", ab, ".weight"));             // down_proj
    }
  }
  return keys;
}

void expect_adapter_folder(const fs::path& dir, const std::set<std::string>& keys) {
  EXPECT_TRUE(fs::exists(dir / "adapter_config.json")) << dir;
  ASSERT_TRUE(fs::exists(dir / "adapter_model.safetensors")) << dir;
  EXPECT_EQ(tensor_names(dir / "adapter_model.safetensors"), keys) << dir;
  EXPECT_TRUE(fs::exists(dir / "tokenizer.json")) << dir;
  // Not a model folder: Transformers would take config.json + model.safetensors for the trained model.
  for (const char* f : {"model.safetensors", "model.safetensors.index.json", "config.json"})
    EXPECT_FALSE(fs::exists(dir / f)) << dir / f;
}

// The training losses metrics.jsonl records, step by step.
std::vector<double> logged_losses(const fs::path& out) {
  std::vector<double> loss;
  std::ifstream in(out / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (const auto rec = nlohmann::json::parse(line); rec.contains("loss")) loss.push_back(rec["loss"].get<double>());
  return loss;
}

// `moeforge demo` (one step) into `dir`, and in `args` the start of a `moeforge train` that fine-tunes
// its model on its chat data for `max_steps` steps into dir/lora (logged every step).
void demo_lora_args(const fs::path& dir, int max_steps, std::vector<std::string>& args) {
  fs::remove_all(dir);
  auto demo = testing::run_moeforge({"demo", "--output_dir", dir.string(), "--max_steps", "1", "--eval_questions", "1"});
  ASSERT_EQ(demo.exit_code, 0) << demo.err;
  args = {"train", "--model", (dir / "base-model").string(), "--train_file", (dir / "train.jsonl").string(),
          "--output_dir", (dir / "lora").string(), "--max_steps", std::to_string(max_steps),
          "--per_device_train_batch_size", "4", "--max_seq_length", "128", "--learning_rate", "1e-2",
          "--logging_steps", "1", "--eval_ratio", "0.01"};
}

// The demo's model (`moeforge demo` writes it with its chat dataset) fine-tuned with LoRA on
// attention and experts: the loss falls, only the adapters train, checkpoints and the final save
// are PEFT adapter folders.
TEST(LoraTrain, DemoModelOnChatDataTrainsAdapters) {
  const fs::path dir = testing::unique_temp_path("mf_lora_demo");
  std::vector<std::string> args;
  ASSERT_NO_FATAL_FAILURE(demo_lora_args(dir, 24, args));
  const fs::path base = dir / "base-model", out = dir / "lora";
  args.insert(args.end(), {"--save_steps", "12", "--lora-r", "8", "--lora-alpha", "16"});
  args.insert(args.end(), kExperts.begin(), kExperts.end());
  auto r = testing::run_moeforge(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const std::vector<double> loss = logged_losses(out);
  ASSERT_EQ(loss.size(), 24u);
  // The base barely trained and its head frozen: the adapters take the loss from about 5.9 to 5.1.
  EXPECT_LT((loss[20] + loss[21] + loss[22] + loss[23]) / 4, loss[0] - 0.5) << "the loss should fall";
  for (const char* needle : {"lora adapters: ", "  trains", "attention: ", "experts: ", "  FROZEN", "LoRA: r 8, alpha 16",
                             "saved the trained LoRA adapter", "reload check"})
    EXPECT_NE(r.err.find(needle), std::string::npos) << needle << " missing from:\n" << r.err;
  EXPECT_EQ(r.err.find("embeddings: 19200  trains"), std::string::npos) << r.err;

  const std::set<std::string> keys = attention_and_expert_keys(2);
  expect_adapter_folder(out, keys);
  expect_adapter_folder(out / "checkpoint-12", keys);
  // The optimizer state covers the adapters alone.
  for (const std::string& name : tensor_names(out / "checkpoint-12" / "optimizer.safetensors"))
    EXPECT_NE(name.find(".lora_"), std::string::npos) << name;
  const Json config = read_json_file(out / "adapter_config.json");
  EXPECT_EQ(config.at("r"), 8);
  EXPECT_EQ(config.at("lora_alpha").get<double>(), 16.0);
  EXPECT_EQ(config.at("peft_type"), "LORA");
  EXPECT_EQ(config.at("base_model_name_or_path"), base.string());
  EXPECT_EQ(config.at("target_parameters"), Json({"mlp.experts.down_proj", "mlp.experts.gate_up_proj"}));
  // The adapter shapes of the demo model (hidden 64, 4 x 16 query heads, 2 x 16 key/value heads, 8
  // experts of 64): A [r, in] and B [out, r]; per expert A [r * E, in] and B [out, r * E].
  SafetensorsFile adapter = SafetensorsFile::open(out / "adapter_model.safetensors");
  EXPECT_EQ(adapter.get("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").shape(), (Shape{32, 8}));
  EXPECT_EQ(adapter.get("base_model.model.model.layers.1.mlp.experts.base_layer.lora_A.weight").shape(), (Shape{64, 64}));
  EXPECT_EQ(adapter.get("base_model.model.model.layers.1.mlp.experts.base_layer.lora_B.weight").shape(), (Shape{128, 64}));
  EXPECT_EQ(adapter.get("base_model.model.model.layers.1.mlp.experts.lora_B.weight").shape(), (Shape{64, 64}));
  fs::remove_all(dir);
}

// --lora_target_modules all-linear on the demo's Qwen3-MoE, as PEFT resolves it there: attention, the
// experts (gate_up_proj at rank and alpha doubled, down_proj) and the router (target parameter
// mlp.gate.weight, one pair per layer); the router's adapter trains with the rest.
TEST(LoraTrain, AllLinearAdaptsAttentionExpertsAndRouterOfTheDemoModel) {
  const fs::path dir = testing::unique_temp_path("mf_lora_all_linear");
  std::vector<std::string> args;
  ASSERT_NO_FATAL_FAILURE(demo_lora_args(dir, 6, args));
  const fs::path out = dir / "lora";
  args.insert(args.end(), {"--save_steps", "0", "--lora_r", "4", "--lora_target_modules", "all-linear"});
  auto r = testing::run_moeforge(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("LoRA: r 4, alpha 8, dropout 0, 28 adapter tensors on "
                       "q_proj,k_proj,v_proj,o_proj,down_proj,gate.weight,gate_up_proj"),
            std::string::npos) << r.err;
  EXPECT_NE(r.err.find("reload check"), std::string::npos) << r.err;
  const std::vector<double> loss = logged_losses(out);
  ASSERT_EQ(loss.size(), 6u);
  EXPECT_LT(loss[5], loss[0] - 0.3) << "the loss should fall (measured: 5.91 -> 5.19)";

  std::set<std::string> keys = attention_and_expert_keys(2);
  for (int l = 0; l < 2; ++l)
    for (const char* ab : {"lora_A", "lora_B"}) keys.insert(str_cat("base_model.model.model.layers.", l, ".mlp.gate.", ab, ".weight"));
  expect_adapter_folder(out, keys);
  // adapter_config.json says what PEFT's resolution of "all-linear" says (tests/data/lora/lora_all_linear).
  const Json config = read_json_file(out / "adapter_config.json");
  EXPECT_EQ(config.at("target_modules"), Json({"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_EQ(config.at("target_parameters"), Json({"down_proj", "gate.weight", "gate_up_proj"}));
  EXPECT_EQ(config.at("rank_pattern"), Json({{R"(.*\.gate_up_proj)", 8}}));
  EXPECT_EQ(config.at("alpha_pattern").at(R"(.*\.gate_up_proj)").get<double>(), 16.0);
  // The router of the demo model: 8 experts over hidden 64. Its B started at zero and moved.
  SafetensorsFile adapter = SafetensorsFile::open(out / "adapter_model.safetensors");
  for (int l = 0; l < 2; ++l) {
    const std::string router = str_cat("base_model.model.model.layers.", l, ".mlp.gate.");
    EXPECT_EQ(adapter.get(router + "lora_A.weight").shape(), (Shape{4, 64}));
    const Tensor b = adapter.get(router + "lora_B.weight");
    ASSERT_EQ(b.shape(), (Shape{8, 4}));
    float largest = 0;
    for (int64_t i = 0; i < b.numel(); ++i) largest = std::max(largest, std::fabs(b.data<float>()[i]));
    EXPECT_GT(largest, 0.f) << router << "lora_B did not train";
  }
  fs::remove_all(dir);
}

class LoraTrainCli : public TrainCli {
 protected:
  std::vector<std::string> lora_args(const fs::path& out, int max_steps, std::vector<std::string> extra = {}) const {
    auto a = train_args(out, max_steps);
    a.insert(a.end(), {"--lora_r", "4", "--use_rslora", "--save_steps", "2"});
    a.insert(a.end(), kExperts.begin(), kExperts.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  static std::vector<std::string> history(const fs::path& out) {
    std::vector<std::string> records;
    for (auto r : metrics(out)) {
      for (const char* timing : {"tokens_per_s", "tflops", "peak_memory_bytes"}) r.erase(timing);
      records.push_back(r.dump());
    }
    return records;
  }
};

// Killed in a checkpoint's save and between steps, resumed each time: the same adapter, optimizer
// state and per-step records as a run that was never stopped.
TEST_F(LoraTrainCli, ResumeIsBitExact) {
  const fs::path reference = dir_ / "reference", out = dir_ / "killed";
  auto r = testing::run_moeforge(lora_args(reference, 8));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(run_with_env("kill@save:2", lora_args(out, 8)).exit_code, 128 + 9);  // adapter of step 4 written, no more
  ASSERT_EQ(latest_checkpoint(out.string()), (out / "checkpoint-2").string());
  auto killed = run_with_env("kill@step:3", lora_args(out, 8, {"--resume_from_checkpoint", "latest"}));
  ASSERT_EQ(killed.exit_code, 128 + 9) << killed.err;
  auto finished = testing::run_moeforge(lora_args(out, 8, {"--resume_from_checkpoint", "latest"}));
  ASSERT_EQ(finished.exit_code, 0) << finished.err;
  EXPECT_NE(finished.err.find("resumed from"), std::string::npos) << finished.err;

  EXPECT_TRUE(file_bytes(reference / "adapter_model.safetensors") == file_bytes(out / "adapter_model.safetensors"))
      << "final adapters differ";
  for (const char* f : {"adapter_model.safetensors", "optimizer.safetensors", "adapter_config.json"})
    EXPECT_TRUE(file_bytes(reference / "checkpoint-8" / f) == file_bytes(out / "checkpoint-8" / f))
        << "checkpoint-8/" << f << " differs";
  EXPECT_EQ(history(reference), history(out));
}

// A checkpoint continues only with the LoRA settings that wrote it, and a LoRA run does not take a
// full model's checkpoint (or the reverse): each refusal names what differs.
TEST_F(LoraTrainCli, ResumeRefusesOtherSettings) {
  const fs::path out = dir_ / "run";
  ASSERT_EQ(testing::run_moeforge(lora_args(out, 2)).exit_code, 0);
  auto alpha = testing::run_moeforge(lora_args(out, 4, {"--lora_alpha", "16", "--resume", "latest"}));
  EXPECT_EQ(alpha.exit_code, 2) << alpha.err;
  EXPECT_NE(alpha.err.find("the adapter was trained with lora_alpha 8.0, this run's LoRA settings have 16.0"),
            std::string::npos) << alpha.err;
  auto full = train_args(out, 4);
  full.insert(full.end(), {"--resume", "latest"});
  auto no_lora = testing::run_moeforge(full);
  EXPECT_EQ(no_lora.exit_code, 2) << no_lora.err;
  EXPECT_NE(no_lora.err.find("holds a LoRA adapter (adapter_model.safetensors), not a model"), std::string::npos)
      << no_lora.err;

  const fs::path full_run = dir_ / "full";
  auto f = train_args(full_run, 2);
  f.insert(f.end(), {"--save_steps", "2"});
  ASSERT_EQ(testing::run_moeforge(f).exit_code, 0);
  auto lora = testing::run_moeforge(lora_args(full_run, 4, {"--resume", "latest"}));
  EXPECT_EQ(lora.exit_code, 2) << lora.err;
  EXPECT_NE(lora.err.find("holds a full model, not a LoRA adapter"), std::string::npos) << lora.err;
}

// --adapter: training starts from a PEFT adapter folder, with its configuration and weights.
TEST_F(LoraTrainCli, ContinuesFromAnAdapterFolder) {
  const fs::path first = dir_ / "first", second = dir_ / "second";
  ASSERT_EQ(testing::run_moeforge(lora_args(first, 3)).exit_code, 0);
  // Named as an adapter from the Hub names its base: the continued adapter keeps the name, as PEFT's
  // save_pretrained does (fresh adapters name --model, as get_peft_model).
  Json config = read_json_file(first / "adapter_config.json");
  EXPECT_EQ(config.at("base_model_name_or_path"), model_.string());
  config["base_model_name_or_path"] = "org/base-model";
  std::ofstream(first / "adapter_config.json") << config.dump(2);
  auto args = train_args(second, 2);
  args.insert(args.end(), {"--adapter", first.string(), "--learning_rate", "0"});
  auto r = testing::run_moeforge(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json_file(second / "adapter_config.json").at("base_model_name_or_path"), "org/base-model");
  EXPECT_NE(r.err.find("adapters start from " + first.string()), std::string::npos) << r.err;
  const Json a = read_json_file(first / "adapter_config.json"), b = read_json_file(second / "adapter_config.json");
  for (const char* key : {"r", "lora_alpha", "use_rslora", "target_parameters", "target_modules"})
    EXPECT_EQ(a.at(key), b.at(key)) << key;
  // At learning rate 0 the adapters stay what was loaded, bit for bit.
  EXPECT_TRUE(file_bytes(first / "adapter_model.safetensors") == file_bytes(second / "adapter_model.safetensors"));
  // The same first batch: the base model's loss in the first run (B starts at zero), the trained
  // adapters' in the second.
  EXPECT_NE(metrics(first).front()["loss"].get<double>(), metrics(second).front()["loss"].get<double>());
  // A folder that names no base (PEFT's own adapters, saved from a model without a name) gets --model.
  config["base_model_name_or_path"] = nullptr;
  std::ofstream(first / "adapter_config.json") << config.dump(2);
  auto unnamed = train_args(dir_ / "third", 1);
  unnamed.insert(unnamed.end(), {"--adapter", first.string()});
  ASSERT_EQ(testing::run_moeforge(unnamed).exit_code, 0);
  EXPECT_EQ(read_json_file(dir_ / "third" / "adapter_config.json").at("base_model_name_or_path"), model_.string());
  // The LoRA options come from the folder and are not given beside it.
  args.insert(args.end(), {"--lora_r", "8", "--overwrite_output_dir"});
  auto both = testing::run_moeforge(args);
  EXPECT_EQ(both.exit_code, 2) << both.err;
  EXPECT_NE(both.err.find("option 'lora_r' cannot be combined with 'adapter'"), std::string::npos) << both.err;
}

TEST_F(LoraTrainCli, BadLoraSettingsAreNamed) {
  const fs::path out = dir_ / "run";
  struct Case {
    std::vector<std::string> extra;
    std::string needle;
  };
  const fs::path no_weights = dir_ / "half-adapter";
  fs::create_directories(no_weights);
  std::ofstream(no_weights / "adapter_config.json") << R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})";
  const Case cases[] = {
      {{"--lora_target_modules", "q_proj,k_prj"}, "target_modules 'k_prj' matches nothing in qwen3_moe"},
      {{"--lora_target_parameters", "mlp.experts.gate_proj"}, "target_parameters 'mlp.experts.gate_proj' matches nothing"},
      {{"--lora_target_modules", "", "--lora_target_parameters", ""}, "LoRA: no target"},
      {{"--adapter", no_weights.string()}, no_weights.string() + ": no adapter_model.safetensors"},
      {{"--adapter", (dir_ / "missing").string()}, "adapter folder " + (dir_ / "missing").string() + " does not exist"},
  };
  for (const Case& c : cases) {
    auto args = train_args(out, 2);
    if (c.extra[0] != "--adapter") args.insert(args.end(), {"--lora_r", "4"});
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    auto r = testing::run_moeforge(args);
    EXPECT_EQ(r.exit_code, 2) << c.needle << "\n" << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.needle << " missing from:\n" << r.err;
    EXPECT_FALSE(fs::exists(out / "adapter_model.safetensors"));
  }
}

}  // namespace
}  // namespace moeforge
