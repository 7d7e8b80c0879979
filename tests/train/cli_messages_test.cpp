// Issue 21's misleading messages: each command says what is wrong in the user's terms, before it asks
// for files that do not matter yet, and accepts the inputs people give it (Hub ids, standard input).
#include <cstdlib>
#include <fstream>

#include "core/error.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

// A Mixtral config.json that asks for router jitter (random scaling of the router input), which the
// blocks do not compute.
constexpr const char* kJitterConfig = R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
 "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "rms_norm_eps": 1e-05,
 "rope_theta": 10000.0, "max_position_embeddings": 256, "router_jitter_noise": 0.1, "torch_dtype": "float32"})";

class CliMessages : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::unique_temp_path("mf_cli_messages");
    fs::remove_all(dir_);
    // As huggingface_hub lays out a download of org/jittery: the config alone, no tokenizer.
    model_ = dir_ / "hub" / "models--org--jittery" / "snapshots" / "rev1";
    fs::create_directories(model_);
    fs::create_directories(dir_ / "hub" / "models--org--jittery" / "refs");
    std::ofstream(dir_ / "hub" / "models--org--jittery" / "refs" / "main") << "rev1";
    std::ofstream(model_ / "config.json") << kJitterConfig;
    std::ofstream(dir_ / "chat.jsonl") << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})" "\n";
    ::setenv("HF_HUB_CACHE", (dir_ / "hub").c_str(), 1);  // inherited by the moeforge processes
  }
  void TearDown() override {
    ::unsetenv("HF_HUB_CACHE");
    fs::remove_all(dir_);
  }
  fs::path dir_, model_;
};

TEST_F(CliMessages, InspectResolvesHubIdsAndSaysWhetherTheModelRuns) {
  auto r = testing::run_moeforge({"inspect", "org/jittery"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find((model_ / "config.json").string()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("trains and generates"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'router_jitter_noise'"), std::string::npos) << r.out;
  auto j = testing::run_moeforge({"inspect", "org/jittery", "--json"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_NE(j.out.find("\"trainable\": false"), std::string::npos) << j.out;
}

TEST_F(CliMessages, AnUnsupportedModelIsNamedBeforeItsTokenizerIsAskedFor) {
  auto r = testing::run_moeforge({"train", "--model", "org/jittery", "--train_file", (dir_ / "chat.jsonl").string(),
                                  "--output_dir", (dir_ / "out").string(), "--max_steps", "1"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("'router_jitter_noise'"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("tokenizer"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(CliMessages, TokenizeReadsStandardInput) {
  const std::string tokenizer = (testing::source_dir() / "demo" / "tokenizer").string();
  auto from_file_flag = testing::run_moeforge({"tokenize", "--tokenizer", tokenizer, "--input", "-"},
                                              "{\"text\": \"Reverse the letters: ABC\"}\n");
  ASSERT_EQ(from_file_flag.exit_code, 0) << from_file_flag.err;
  EXPECT_EQ(from_file_flag.out.rfind("{\"ids\":[", 0), 0u) << from_file_flag.out;
  std::ofstream(dir_ / "line.jsonl") << "{\"text\": \"Reverse the letters: ABC\"}\n";
  auto from_file = testing::run_moeforge({"tokenize", "--tokenizer", tokenizer, "--input", (dir_ / "line.jsonl").string()});
  EXPECT_EQ(from_file.out, from_file_flag.out);
  auto by_default = testing::run_moeforge({"tokenize", "--tokenizer", tokenizer}, "{\"text\": \"Reverse the letters: ABC\"}\n");
  EXPECT_EQ(by_default.out, from_file_flag.out) << by_default.err;
  auto bad = testing::run_moeforge({"tokenize", "--tokenizer", tokenizer}, "{\"txt\": 1}\n");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("<stdin>:1: missing key \"text\""), std::string::npos) << bad.err;
}

TEST_F(CliMessages, HelpListsTheValuesOfReportToAndGeneratesChatOptions) {
  auto train = testing::run_moeforge({"train", "--help"});
  EXPECT_NE((train.out + train.err).find("comma-separated: tensorboard (event files in OUTPUT_DIR/runs) or none"),
            std::string::npos);
  auto generate = testing::run_moeforge({"generate", "--help"});
  for (const char* option : {"--system S", "--chat_template PATH"})
    EXPECT_NE((generate.out + generate.err).find(option), std::string::npos) << option;
}

}  // namespace
}  // namespace moeforge
