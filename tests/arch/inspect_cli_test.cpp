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
  EXPECT_NE(missing.err.find("nowhere: no such model folder"), std::string::npos) << missing.err;
  CommandResult no_flag = run_moeforge({"inspect"});
  EXPECT_EQ(no_flag.exit_code, 2);
  EXPECT_NE(no_flag.err.find("'--model' is required"), std::string::npos) << no_flag.err;
}

}  // namespace
}  // namespace moeforge::testing
