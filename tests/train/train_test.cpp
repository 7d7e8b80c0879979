// `moeforge train` end to end on a tiny Qwen3-MoE: resume after SIGTERM matches an uninterrupted run
// step for step; SIGKILL during a save leaves the last complete checkpoint loadable; a full disk
// during a save keeps the previous checkpoint; bad input gets a message and an exit code.
#include "io/safetensors.h"
#include "train_cli_fixture.h"

namespace moeforge {
namespace {

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
  {  // a config key the blocks do not compute yet, named, before anything is allocated
    nlohmann::json config =
        nlohmann::json::parse(std::ifstream(testing::test_data_dir() / "configs" / "tiny-nemotron-h" / "config.json"));
    config["mlp_bias"] = true;
    std::ofstream(model_ / "config.json") << config.dump(2);
    auto r = testing::run_moeforge(train_args(dir_ / "run-nemotron-h", 2));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("key 'mlp_bias' (biases on Nemotron-H's MLPs) is not supported yet"), std::string::npos)
        << r.err;
    std::ofstream(model_ / "config.json") << kTinyConfig;
  }
  {  // NaN loss: an absurd learning rate blows the weights up; stop names the step, skip continues
    auto args = train_args(dir_ / "run-nan", 4);
    args.insert(args.end(), {"--learning_rate", "1e30", "--max_grad_norm", "0", "--skip_bad_lines"});
    auto r = testing::run_moeforge(args);
    EXPECT_EQ(r.exit_code, 6) << r.err;
    EXPECT_NE(r.err.find("the loss is"), std::string::npos) << r.err;
    args.insert(args.end(), {"--nan_policy", "skip", "--overwrite_output_dir"});
    auto skipped = testing::run_moeforge(args);
    EXPECT_NE(skipped.err.find("skipping the batch"), std::string::npos) << skipped.err;
  }
}

}  // namespace
}  // namespace moeforge
