// `moeforge train` end to end on a tiny Qwen3-MoE: resume after SIGTERM matches an uninterrupted run
// step for step; SIGKILL during a save leaves the last complete checkpoint loadable; a full disk
// during a save keeps the previous checkpoint; bad input gets a message and an exit code.
#include <fstream>
#include <random>

#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTinyConfig = R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
 "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 24,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
 "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": true, "output_router_logits": true,
 "router_aux_loss_coef": 0.01, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "max_position_embeddings": 256,
 "initializer_range": 0.05, "tie_word_embeddings": false, "torch_dtype": "float32"})";

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::unique_temp_path("mf_train_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    model_ = dir_ / "model";
    fs::create_directories(model_);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(testing::source_dir() / "demo" / "tokenizer" / f, model_ / f);
    std::ofstream(model_ / "config.json") << kTinyConfig;
    CausalLM::from_config(load_model_config(model_), {}, 7).save_pretrained(model_, DType::kF32);
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

testing::CommandResult run_with_env(const std::string& env, const std::vector<std::string>& args) {
  setenv("MOEFORGE_FAULT", env.c_str(), 1);
  auto r = testing::run_moeforge(args);
  unsetenv("MOEFORGE_FAULT");
  return r;
}

TEST_F(TrainCli, TrainsSavesAndReportsWithReloadCheck) {
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(train_args(out, 12));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = metrics(out);
  ASSERT_GE(m.size(), 12u);
  EXPECT_LT(m[11]["loss"].get<double>(), m[0]["loss"].get<double>());  // it learns
  for (const char* needle : {"trainable parameters", "auxiliary load-balancing loss: ON", "memory plan",
                             "tokens with loss in [[ ]]", "reload check", "experts min/max"})
    EXPECT_NE(r.err.find(needle), std::string::npos) << needle << " missing from:\n" << r.err;
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(out / "moeforge_config.yaml"));
  std::ifstream html(out / "report.html");
  std::string text((std::istreambuf_iterator<char>(html)), std::istreambuf_iterator<char>());
  for (const char* id : {"loss-chart", "lr-chart", "gradnorm-chart", "throughput-chart", "expert-heatmap"})
    EXPECT_NE(text.find(id), std::string::npos) << id;
}

TEST_F(TrainCli, ResumeAfterSigtermMatchesUninterruptedRun) {
  const fs::path a = dir_ / "a", b = dir_ / "b";
  ASSERT_EQ(testing::run_moeforge(train_args(a, 10)).exit_code, 0);
  auto stopped = run_with_env("sigterm@step:4", train_args(b, 10));
  ASSERT_EQ(stopped.exit_code, 0) << stopped.err;
  EXPECT_TRUE(fs::exists(b / "checkpoint-4" / "trainer_state.json"));
  auto args = train_args(b, 10);
  args.insert(args.end(), {"--resume_from_checkpoint", "latest"});
  auto resumed = testing::run_moeforge(args);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  auto ma = metrics(a), mb = metrics(b);
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_EQ(ma[i]["step"], mb[i]["step"]);
    for (const char* key : {"loss", "grad_norm", "lr", "eval_loss"})
      if (ma[i].contains(key)) {
        EXPECT_EQ(ma[i][key].get<double>(), mb[i][key].get<double>()) << key << " at record " << i;
      }
  }
}

TEST_F(TrainCli, SigkillDuringSaveLeavesLastCheckpointLoadable) {
  const fs::path out = dir_ / "run";
  auto args = train_args(out, 10);
  args.insert(args.end(), {"--save_steps", "3"});
  auto r = run_with_env("kill@save:2", args);
  EXPECT_EQ(r.exit_code, 128 + 9);
  ASSERT_TRUE(fs::exists(out / "checkpoint-3" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(out / "checkpoint-6"));
  CausalLM loaded = CausalLM::from_pretrained(out / "checkpoint-3", {});
  EXPECT_GT(loaded.params().numel(), 0);
  args.insert(args.end(), {"--resume", "latest"});
  auto resumed = testing::run_moeforge(args);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resumed from"), std::string::npos);
}

TEST_F(TrainCli, FullDiskDuringSaveKeepsPreviousCheckpoint) {
  const fs::path out = dir_ / "run";
  auto args = train_args(out, 10);
  args.insert(args.end(), {"--save_steps", "3"});
  auto r = run_with_env("enospc@save:2", args);
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("checkpoint-3 is intact"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(out / "checkpoint-3" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(out / ".tmp-checkpoint-6"));
}

TEST_F(TrainCli, BadInputGetsMessageAndExitCode) {
  const fs::path out = dir_ / "run";
  auto base = train_args(out, 2);
  {  // missing model folder
    auto args = base;
    args[2] = (dir_ / "no-such-model").string();
    auto r = testing::run_moeforge(args);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("no-such-model"), std::string::npos) << r.err;
  }
  {  // a dataset line that does not parse: FILE:LINE, then --skip_bad_lines counts it
    std::ofstream(dir_ / "train.jsonl", std::ios::app) << "{\"messages\": [oops\n";
    auto r = testing::run_moeforge(base);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("train.jsonl:121"), std::string::npos) << r.err;
    auto args = base;
    args.push_back("--skip_bad_lines");
    auto ok = testing::run_moeforge(args);
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_NE(ok.err.find("skipped 1 bad lines"), std::string::npos) << ok.err;
  }
  {  // recipe with an unknown key (closest suggested) and one with a wrong type
    std::ofstream(dir_ / "r1.yaml") << "max_steps: 2\nlearning_rat: 0.1\n";
    auto r = testing::run_moeforge({"train", (dir_ / "r1.yaml").string()});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("r1.yaml:2: unknown key 'learning_rat' (did you mean 'learning_rate'?)"), std::string::npos)
        << r.err;
    std::ofstream(dir_ / "r2.yaml") << "max_steps: lots\n";
    auto r2 = testing::run_moeforge({"train", (dir_ / "r2.yaml").string()});
    EXPECT_EQ(r2.exit_code, 2);
    EXPECT_NE(r2.err.find("expects an integer"), std::string::npos) << r2.err;
  }
  {  // an architecture that cannot train yet, with the list of those that can
    std::string cfg = kTinyConfig;
    cfg.replace(cfg.find("qwen3_moe"), 9, "olmoe");
    std::ofstream(model_ / "config.json") << cfg;
    auto r = testing::run_moeforge(base);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("trainable: qwen3_moe, qwen3"), std::string::npos) << r.err;
    std::ofstream(model_ / "config.json") << kTinyConfig;
  }
  {  // NaN loss: an absurd learning rate blows the weights up; stop names the step, skip continues
    auto args = train_args(out, 4);
    args.insert(args.end(), {"--learning_rate", "1e30", "--max_grad_norm", "0", "--skip_bad_lines"});
    auto r = testing::run_moeforge(args);
    EXPECT_EQ(r.exit_code, 6) << r.err;
    EXPECT_NE(r.err.find("the loss is"), std::string::npos) << r.err;
    args.insert(args.end(), {"--nan_policy", "skip"});
    auto skipped = testing::run_moeforge(args);
    EXPECT_NE(skipped.err.find("skipping the batch"), std::string::npos) << skipped.err;
  }
}

}  // namespace
}  // namespace moeforge
