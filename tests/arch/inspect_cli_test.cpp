// moeforge inspect: reads only config.json, prints the counts moeforge's arch library computes, and
// fails with exit code 2 and a message naming the file and key on bad input.
#include "arch/checkpoint_tensors.h"
#include "arch/model_config.h"
#include "arch_test_util.h"

namespace moeforge::testing {
namespace {

TEST(InspectCli, JsonMatchesLibraryCounts) {
  for (const std::string& name : bundled_config_names()) {
    SCOPED_TRACE(name);
    const auto dir = configs_dir() / name;
    CommandResult r = run_moeforge({"inspect", "--model", dir.string(), "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    const ModelConfig c = load_model_config(dir);
    const ParamCounts p = count_parameters(c);
    EXPECT_EQ(j["model_type"], c.model_type);
    EXPECT_EQ(j["hidden_size"], c.hidden_size);
    EXPECT_EQ(j["num_hidden_layers"], c.num_hidden_layers);
    EXPECT_EQ(j["layers"]["moe"], c.num_moe_layers());
    EXPECT_EQ(j["parameters"]["total"], p.total);
    EXPECT_EQ(j["parameters"]["active"], p.active);
    EXPECT_EQ(j["parameters"]["total_without_embedding"], p.total - p.embedding);
    EXPECT_EQ(j["parameters"]["mtp"], p.mtp);
    EXPECT_EQ(j["parameters"]["total_includes_mtp"], false);
    // 16 / 12 / 8 bytes per parameter for fp32-master / bf16-weights / bf16-state.
    ASSERT_EQ(j["training_memory"].size(), 3u);
    const std::vector<std::pair<std::string, int>> modes = {{"fp32-master", 16}, {"bf16-weights", 12}, {"bf16-state", 8}};
    for (size_t i = 0; i < modes.size(); ++i) {
      EXPECT_EQ(j["training_memory"][i]["mode"], modes[i].first);
      EXPECT_EQ(j["training_memory"][i]["bytes_per_param"], modes[i].second);
      EXPECT_DOUBLE_EQ(j["training_memory"][i]["gib"].get<double>(),
                       static_cast<double>(p.total) * modes[i].second / (1024.0 * 1024.0 * 1024.0));
    }
  }
}

TEST(InspectCli, TextReportSaysWhatIsCounted) {
  const auto file = configs_dir() / "deepseek-v3" / "config.json";
  // --config is an alias of --model and may name config.json itself.
  CommandResult r = run_moeforge({"inspect", "--config", file.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* part : {"deepseek_v3 (DeepseekV3ForCausalLM)", "3 attention+dense MLP", "58 attention+MoE",
                           "256 routed, top-8", "active per token", "input embedding is counted",
                           "MTP module NOT counted above", "fp32-master   16 B/param", "bf16-weights  12 B/param",
                           "bf16-state     8 B/param"})
    EXPECT_NE(r.out.find(part), std::string::npos) << "missing '" << part << "' in:\n" << r.out;
  CommandResult q = run_moeforge({"inspect", (configs_dir() / "qwen3-30b-a3b").string()});  // positional
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_NE(q.out.find("MTP module: none."), std::string::npos) << q.out;
}

TEST(InspectCli, BadInputExitsTwoNamingFileAndKey) {
  const auto dir = configs_dir() / "malformed";
  const nlohmann::json expected = read_json(dir / "expected_errors.json");
  for (const auto& [file, want] : expected.items()) {
    SCOPED_TRACE(file);
    CommandResult r = run_moeforge({"inspect", "--model", (dir / file).string()});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    for (const auto& part : want["message_contains"])
      EXPECT_NE(r.err.find(part.get<std::string>()), std::string::npos) << r.err;
  }
  CommandResult missing = run_moeforge({"inspect", "--model", (dir / "nowhere").string()});
  EXPECT_EQ(missing.exit_code, 2);
  // Resolved as `train` resolves a model (a folder, else a cached Hub id), and said the same way.
  EXPECT_NE(missing.err.find("nowhere' not found (no such folder"), std::string::npos) << missing.err;
  CommandResult no_flag = run_moeforge({"inspect"});
  EXPECT_EQ(no_flag.exit_code, 2);
  EXPECT_NE(no_flag.err.find("'--model' is required"), std::string::npos) << no_flag.err;
}

// A benchmark config (bench/configs) cut to 8 layers as the benchmark cuts it, as a config folder.
std::filesystem::path eight_layer_config(const std::string& name) {
  nlohmann::json c = nlohmann::json::parse(std::ifstream(source_dir() / "bench" / "configs" / (name + ".json")));
  c["num_hidden_layers"] = 8;
  if (c.contains("layer_types")) {  // a per-layer list (GPT-OSS) keeps its first layers
    nlohmann::json first = nlohmann::json::array();
    for (size_t i = 0; i < 8; ++i) first.push_back(c["layer_types"].at(i));
    c["layer_types"] = first;
  }
  if (c.contains("hybrid_override_pattern"))
    c["hybrid_override_pattern"] = c["hybrid_override_pattern"].get<std::string>().substr(0, 8);
  const std::filesystem::path dir = unique_temp_path("mf_plan_8_layers");
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << c.dump();
  return dir;
}
std::filesystem::path eight_layer_qwen3_moe() { return eight_layer_config("qwen3-30b-a3b"); }

nlohmann::json plan(const std::filesystem::path& dir, std::vector<std::string> options) {
  std::vector<std::string> args = {"inspect", "--model", dir.string(), "--json"};
  args.insert(args.end(), options.begin(), options.end());
  const CommandResult r = run_moeforge(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out)["memory_plan"];
}

// The peak memory of moeforge's run of `key` (4 x 4096 tokens, bf16-state) in a bench/results JSON file.
double measured_peak(const std::string& file, const std::string& key) {
  const nlohmann::json measured = nlohmann::json::parse(std::ifstream(source_dir() / "bench" / "results" / file));
  double peak = 0;
  for (const nlohmann::json& r : measured.at(key))
    if (r["impl"] == "moeforge" && r["micro_batch"] == 4 && r["precision"] == "bf16-state")
      peak = r["peak_memory_bytes"].get<double>();
  EXPECT_GT(peak, 0.0) << file << " " << key;
  return peak;
}

// The plan of a bench/configs model at 8 layers, 4 x 4096 tokens, no recomputation, bf16-state against the
// peak the benchmark measured for it (what the allocator holds does not depend on the card): within 3%.
void expect_plan_matches(const std::string& config, double peak) {
  const std::filesystem::path dir = eight_layer_config(config);
  const nlohmann::json p = plan(dir, {"--micro_batch", "4", "--optimizer_precision", "bf16-state"});
  EXPECT_NEAR(p["total_bytes"].get<double>() / peak, 1.0, 0.03) << p.dump();
  EXPECT_TRUE(p["fits"].get<bool>());
  std::filesystem::remove_all(dir);
}

// The models whose experts gather their input rows (Qwen3-30B-A3B; Nemotron 3 Nano's first 8 layers, MEMEM*EM:
// Mamba-2, MoE and attention layers alone) against main's build, which keeps no dispatched rows (bench/results,
// 2026-12-07 on an H100: the gathered forward, its weight gradient through a temporary).
TEST(InspectCli, MemoryPlanMatchesTheMeasuredPeakOfTheBenchmark) {
  expect_plan_matches("qwen3-30b-a3b", measured_peak("train_bench_h100_20261207_main_0c66859.json",
                                                     "call1/1_qwen3_main"));
}
TEST(InspectCli, MemoryPlanOfNemotronHMatchesTheMeasuredPeak) {
  expect_plan_matches("nemotron-3-nano-30b-a3b", measured_peak("train_bench_h100_20261207_main_0c66859.json",
                                                               "call1/2_nemotron_main"));
}

// GPT-OSS's experts (a gate/up bias) do not gather: final main of 2026-12-05 on an H100.
TEST(InspectCli, MemoryPlanOfGptOssMatchesTheMeasuredPeak) {
  expect_plan_matches("gpt-oss-20b", measured_peak("train_bench_h100_20261205_final_81f3aae.json", "gptoss"));
}

// LoRA on the whole Qwen3-30B-A3B (48 layers, 4096 tokens, r=16, bf16-state) against the peaks the LoRA
// benchmark measured on the H200 (bench/results, 2026-12-03): attention adapters at selective
// recomputation (the experts' inputs are then not kept), attention and expert adapters at full
// recomputation; within 5%. The trained parameters are the benchmark's.
TEST(InspectCli, MemoryPlanOfLoraMatchesTheMeasuredPeaks) {
  const nlohmann::json measured = nlohmann::json::parse(
      std::ifstream(source_dir() / "bench" / "results" / "lora_bench_h200_20261203_leases4_6_48layers.json"));
  auto run = [&](const std::string& lease, const std::string& lora, const std::string& recompute) {
    for (const nlohmann::json& r : measured)
      if (r["impl"] == "moeforge" && r["lease"].get<std::string>().starts_with(lease) && r.value("lora", "") == lora &&
          r["recompute"] == recompute && !r.contains("recompute_full_layers"))
        return r;
    ADD_FAILURE() << "no run " << lease << " " << lora << " " << recompute;
    return nlohmann::json();
  };
  const std::filesystem::path config = source_dir() / "bench" / "configs" / "qwen3-30b-a3b.json";
  const std::vector<std::string> common = {"--lora_r", "16", "--lora_alpha", "32", "--optimizer_precision", "bf16-state"};
  struct Case {
    nlohmann::json run;
    std::vector<std::string> options;
  };
  const Case cases[] = {
      {run("5", "r=16 attention", "selective"), {"--gradient_checkpointing", "selective"}},
      {run("4", "r=16 attention+experts", "full"),
       {"--gradient_checkpointing", "full", "--lora_target_parameters", "mlp.experts.gate_up_proj,mlp.experts.down_proj"}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> options = common;
    options.insert(options.end(), c.options.begin(), c.options.end());
    const nlohmann::json p = plan(config, options);
    EXPECT_EQ(p["params_per_gpu"].get<int64_t>(), c.run["parameters"].get<int64_t>()) << c.run["lora"];
    const double trained = c.run["trainable_parameters"].get<double>();
    EXPECT_NEAR(p["gradients_bytes"].get<double>(), trained * 2, 64) << c.run["lora"];
    EXPECT_NEAR(p["total_bytes"].get<double>() / c.run["peak_memory_bytes"].get<double>(), 1.0, 0.05)
        << c.run["lora"] << " " << p.dump();
  }
}

// Expert parallelism divides the routed experts' weights, gradients and state, and nothing else;
// an expert-parallel size that does not divide the GPUs is bad input.
TEST(InspectCli, MemoryPlanSplitsTheExpertsOverTheExpertParallelRanks) {
  const std::filesystem::path dir = eight_layer_qwen3_moe();
  const ParamCounts counts = count_parameters(load_model_config(dir));
  const nlohmann::json one = plan(dir, {"--gpus", "1"}), eight = plan(dir, {"--gpus", "8"});
  EXPECT_EQ(one["params_per_gpu"].get<int64_t>(), counts.total);
  EXPECT_EQ(one["params_per_gpu"].get<int64_t>() - eight["params_per_gpu"].get<int64_t>(),
            counts.routed_experts / 8 * 7);
  // Split over 8 ranks, the experts keep the rows they receive; in one process they gather them from the
  // tokens' rows instead: top-8 rows of the hidden size a token and layer, 4096 tokens, 8 layers, bf16.
  EXPECT_DOUBLE_EQ(eight["activations_bytes"].get<double>() - one["activations_bytes"].get<double>(),
                   8.0 * 4096 * 8 * 2048 * 2);
  // The optimizer state is sharded: the replicated parameters' over all 8 GPUs, and at 2 expert-parallel
  // ranks each rank's half of the experts over the 4 expert groups (fp32-master: 12 bytes a parameter).
  const double replicated = static_cast<double>(counts.total - counts.routed_experts);
  EXPECT_NEAR(eight["optimizer_bytes"].get<double>(), (replicated / 8 + counts.routed_experts / 8.0) * 12, 64);
  const nlohmann::json two_groups = plan(dir, {"--gpus", "8", "--ep", "2"});
  EXPECT_NEAR(two_groups["optimizer_bytes"].get<double>(), (replicated / 8 + counts.routed_experts / 2.0 / 4) * 12, 64);
  const nlohmann::json selective = plan(dir, {"--gradient_checkpointing", "selective"});
  const nlohmann::json full = plan(dir, {"--gradient_checkpointing", "full"});
  EXPECT_LT(selective["activations_bytes"].get<double>(), one["activations_bytes"].get<double>());
  EXPECT_LT(full["activations_bytes"].get<double>(), selective["activations_bytes"].get<double>());
  const CommandResult bad = run_moeforge({"inspect", "--model", dir.string(), "--gpus", "8", "--ep", "3"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("expert_parallel 3 does not divide the 8 GPUs"), std::string::npos) << bad.err;
  std::filesystem::remove_all(dir);
}

// zero_stage 2: the gradients several GPUs share are sharded as their optimizer state is, beside the
// groups in flight: one being written while the one before it is summed (in Qwen3-30B-A3B at EP=8
// the untied head, final norm and vocab x hidden, with the last layer's replicated parameters; the
// experts' are not shared at EP=8). One GPU has nothing to shard. DeepSeek-V3 at EP=64 on 64 GPUs
// fits in 140 GiB only so, which its plan at zero_stage 1 says.
TEST(InspectCli, MemoryPlanShardsGradientsAtZeroStageTwo) {
  const std::filesystem::path dir = eight_layer_qwen3_moe();
  const ModelConfig config = load_model_config(dir);
  const ParamCounts counts = count_parameters(config);
  const double replicated = static_cast<double>(counts.total - counts.routed_experts);
  const double embedding = static_cast<double>(config.vocab_size * config.hidden_size);
  const double head = embedding + static_cast<double>(config.hidden_size);
  const double layer = (replicated - embedding - head) / 8;  // eight identical layers
  const nlohmann::json eight = plan(dir, {"--gpus", "8", "--zero_stage", "2"});
  EXPECT_NEAR(eight["gradients_bytes"].get<double>(),
              (replicated / 8 + counts.routed_experts / 8.0 + head + layer) * 2, 64);
  EXPECT_EQ(eight["zero_stage"].get<int>(), 2);
  const nlohmann::json two_groups = plan(dir, {"--gpus", "8", "--ep", "2", "--zero_stage", "2"}),
                       two_groups_stage1 = plan(dir, {"--gpus", "8", "--ep", "2"});
  EXPECT_LT(two_groups["gradients_bytes"].get<double>(), 0.6 * two_groups_stage1["gradients_bytes"].get<double>());
  EXPECT_DOUBLE_EQ(plan(dir, {"--gpus", "1", "--zero_stage", "2"})["gradients_bytes"].get<double>(),
                   plan(dir, {"--gpus", "1"})["gradients_bytes"].get<double>());
  std::filesystem::remove_all(dir);
  const std::vector<std::string> deepseek = {"--gpus", "64", "--ep", "64", "--gradient_checkpointing", "full",
                                             "--optimizer_precision", "bf16-state"};
  std::vector<std::string> stage2 = deepseek;
  stage2.insert(stage2.end(), {"--zero_stage", "2"});
  const nlohmann::json stage1_plan = plan(configs_dir() / "deepseek-v3", deepseek);
  EXPECT_FALSE(stage1_plan["fits"].get<bool>());
  EXPECT_TRUE(plan(configs_dir() / "deepseek-v3", stage2)["fits"].get<bool>());
  // The plan that does not fit names the one change that makes it fit.
  ASSERT_EQ(stage1_plan["changes"].size(), 1u) << stage1_plan.dump();
  EXPECT_EQ(stage1_plan["changes"][0]["flags"], nlohmann::json({"--zero_stage", "2"}));
  EXPECT_TRUE(stage1_plan["changes"][0]["fits"].get<bool>());
  // On 8 GPUs nothing does: all three changes together still do not fit.
  const nlohmann::json eight_gpus = plan(configs_dir() / "deepseek-v3", {"--gpus", "8", "--ep", "8"});
  ASSERT_EQ(eight_gpus["changes"].size(), 1u) << eight_gpus.dump();
  EXPECT_EQ(eight_gpus["changes"][0]["flags"],
            nlohmann::json({"--zero_stage", "2", "--gradient_checkpointing", "full", "--optimizer_precision", "bf16-state"}));
  EXPECT_FALSE(eight_gpus["changes"][0]["fits"].get<bool>());
}

// Every bundled config gets a whole plan, Mamba mixers included; recomputation keeps less.
TEST(InspectCli, MemoryPlanEstimatesActivationsOfEveryMixer) {
  for (const std::string& name : bundled_config_names()) {
    SCOPED_TRACE(name);
    const auto dir = configs_dir() / name;
    const nlohmann::json none = plan(dir, {"--gradient_checkpointing", "none"}),
                         selective = plan(dir, {"--gradient_checkpointing", "selective"}),
                         full = plan(dir, {"--gradient_checkpointing", "full"});
    EXPECT_GT(full["activations_bytes"].get<double>(), 0.0);
    EXPECT_LT(selective["activations_bytes"].get<double>(), none["activations_bytes"].get<double>());
    EXPECT_LT(full["activations_bytes"].get<double>(), selective["activations_bytes"].get<double>());
    EXPECT_GT(none["weights_bytes"].get<double>(), 0.0);
  }
}

}  // namespace
}  // namespace moeforge::testing
