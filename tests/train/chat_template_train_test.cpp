// `moeforge train` on multi-turn chat data of a Qwen3 model, with no chat template flag: moeforge's
// training variant of the model's template is picked, the config record names it, and the saved model
// keeps the model's own template. (The variant's masks against Transformers:
// tests/data_pipeline/training_template_test.cpp.)
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

// A one-layer Qwen3-MoE over the real Qwen3 vocabulary, tied embeddings to keep it a few MB.
constexpr const char* kQwen3VocabConfig = R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
 "vocab_size": 151936, "hidden_size": 16, "intermediate_size": 24, "moe_intermediate_size": 8,
 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
 "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": true, "rms_norm_eps": 1e-06,
 "rope_theta": 10000.0, "max_position_embeddings": 512, "initializer_range": 0.05,
 "tie_word_embeddings": true, "torch_dtype": "float32"})";

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(TrainChatTemplate, MultiTurnQwen3ChatTrainsWithNoFlag) {
  const fs::path tokenizer = testing::shared_assets_dir() / "tokenizers" / "qwen3";
  MF_SKIP_IF_MISSING(tokenizer);
  const fs::path dir = testing::unique_temp_path("mf_train_qwen3_chat");
  fs::remove_all(dir);
  const fs::path model = dir / "model", out = dir / "run";
  fs::create_directories(model);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(tokenizer / f, model / f);
  std::ofstream(model / "config.json") << kQwen3VocabConfig;
  CausalLM::from_config(load_model_config(model), {}, 5).save_pretrained(model, DType::kF32);
  std::ofstream data(dir / "chat.jsonl");
  for (const char* conversation : {"multi_turn", "reasoning", "reasoning_last_user", "basic"}) {
    std::ifstream in(testing::test_data_dir() / "chat" / "conversations" / (std::string(conversation) + ".json"));
    data << nlohmann::json{{"messages", nlohmann::json::parse(in)["messages"]}}.dump() << "\n";
  }
  data.close();

  const testing::CommandResult r = testing::run_moeforge(
      {"train", "--model", model.string(), "--train_file", (dir / "chat.jsonl").string(), "--output_dir",
       out.string(), "--max_steps", "2", "--per_device_train_batch_size", "1", "--max_seq_length", "128",
       "--save_steps", "0", "--logging_steps", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("chat template for 'messages' data: moeforge:qwen3"), std::string::npos) << r.err;
  EXPECT_NE(read_text(out / "moeforge_config.yaml").find("chat_template: \"moeforge:qwen3\""), std::string::npos)
      << read_text(out / "moeforge_config.yaml");
  std::ifstream own(tokenizer / "tokenizer_config.json"), saved(out / "tokenizer_config.json");
  EXPECT_EQ(nlohmann::json::parse(saved)["chat_template"], nlohmann::json::parse(own)["chat_template"]);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moeforge
