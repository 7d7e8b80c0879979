// The fixture of the `moeforge train` tests: a tiny Qwen3-MoE folder (float32, or bfloat16 as the
// published Qwen3-30B-A3B config says), a chat dataset of 120 letter-reversal lines, and helpers to
// run the binary with test-only fault injection (MOEFORGE_FAULT, src/core/fault_injection.h).
#pragma once

#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {

namespace fs = std::filesystem;

constexpr const char* kTinyConfig = R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
 "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 24,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
 "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": true, "output_router_logits": true,
 "router_aux_loss_coef": 0.01, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "max_position_embeddings": 256,
 "initializer_range": 0.05, "tie_word_embeddings": false, "torch_dtype": "float32"})";

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override { make_model_and_data("float32"); }

  // `torch_dtype`: the dtype the config declares and checkpoints are saved in.
  void make_model_and_data(const std::string& torch_dtype) {
    dir_ = testing::unique_temp_path("mf_train_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    model_ = dir_ / "model";
    fs::create_directories(model_);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(testing::source_dir() / "demo" / "tokenizer" / f, model_ / f);
    std::string config = kTinyConfig;
    config.replace(config.find("\"float32\""), 9, "\"" + torch_dtype + "\"");
    std::ofstream(model_ / "config.json") << config;
    // Saved in the declared dtype: save_pretrained writes the dtype it wrote into config.json.
    CausalLM::from_config(load_model_config(model_), {}, 7)
        .save_pretrained(model_, torch_dtype == "bfloat16" ? DType::kBF16 : DType::kF32);
    std::mt19937 rng(3);
    std::ofstream data(dir_ / "train.jsonl");
    for (int i = 0; i < 120; ++i) {
      std::string s;
      for (int j = 0; j < 3 + i % 4; ++j) s += static_cast<char>('A' + rng() % 26);
      data << R"({"messages": [{"role": "user", "content": "Reverse the letters: )" << s
           << R"("}, {"role": "assistant", "content": ")" << std::string(s.rbegin(), s.rend()) << "\"}]}\n";
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> train_args(const fs::path& out, int max_steps) const {
    return {"train", "--model", model_.string(), "--train_file", (dir_ / "train.jsonl").string(), "--output_dir",
            out.string(), "--max_steps", std::to_string(max_steps), "--per_device_train_batch_size", "2",
            "--max_seq_length", "64", "--learning_rate", "3e-3", "--logging_steps", "1", "--save_steps", "0",
            "--eval_ratio", "0.1", "--warmup_steps", "2", "--lr_scheduler_type", "cosine"};
  }

  static std::vector<nlohmann::json> metrics(const fs::path& out) {
    std::vector<nlohmann::json> records;
    std::ifstream in(out / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
    return records;
  }

  fs::path dir_, model_;
};

inline std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The tensor names of a safetensors file.
inline std::set<std::string> tensor_names(const fs::path& file) {
  const std::vector<std::string> names = SafetensorsFile::open(file).names();
  return {names.begin(), names.end()};
}

inline testing::CommandResult run_with_env(const std::string& env, const std::vector<std::string>& args) {
  setenv("MOEFORGE_FAULT", env.c_str(), 1);
  auto r = testing::run_moeforge(args);
  unsetenv("MOEFORGE_FAULT");
  return r;
}

}  // namespace moeforge
