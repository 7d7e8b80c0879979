// `moeforge train` never exits 0 with a broken model and never mixes runs: NaN anywhere stops the run
// before anything non-finite is saved; the output folder is locked, cleaned of leftovers and refused
// when it holds another run's files; write failures stop the run at once with whole lines kept;
// bad paths and checkpoint files are bad input; signals while loading or saving end cleanly.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <set>

#include "io/json.h"
#include "io/safetensors.h"
#include "train/trainer.h"
#include "train_cli_fixture.h"

namespace moeforge {
namespace {

class RunSafety : public TrainCli {
 protected:
  // Rewrites one element of one tensor of the tiny model's checkpoint.
  void set_weight(const std::string& name, int64_t index, float value) const {
    const fs::path file = model_ / "model.safetensors";
    std::vector<NamedTensor> all;
    {
      SafetensorsFile f = SafetensorsFile::open(file);
      for (const auto& n : f.names()) {
        Tensor t = f.get(n);
        Tensor copy = Tensor::empty(t.shape(), t.dtype());
        copy.copy_from(t);
        all.emplace_back(n, copy);
      }
    }
    bool found = false;
    for (auto& [n, t] : all)
      if (n == name) {
        t.data<float>()[index] = value;
        found = true;
      }
    ASSERT_TRUE(found) << name;
    write_safetensors(file, all);
  }

  static std::vector<int64_t> metric_steps(const fs::path& out) {
    std::vector<int64_t> steps;
    for (const auto& r : metrics(out))
      if (r.contains("loss")) steps.push_back(r["step"].get<int64_t>());
    return steps;
  }
};

std::vector<std::string> with(std::vector<std::string> args, std::initializer_list<std::string> more) {
  args.insert(args.end(), more);
  return args;
}

TEST_F(RunSafety, NanInAnAttentionWeightStopsTheRun) {
  // The CPU attention used to turn a row of NaN scores into zeros: a finite loss, NaN gradients, exit 0.
  set_weight("model.layers.0.self_attn.q_proj.weight", 0, NAN);
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(train_args(out, 3));
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("step 1: the loss is"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("model.layers.0.self_attn.q_proj.weight"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

TEST_F(RunSafety, NonFiniteWeightsAreNeverSaved) {
  // A NaN in an embedding row no batch reads: loss and gradients stay finite, the weight does not.
  set_weight("model.embed_tokens.weight", 299 * 32, NAN);
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(with(train_args(out, 2), {"--save_steps", "1"}));
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("model.embed_tokens.weight holds NaN or Inf"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "checkpoint-1"));
  EXPECT_EQ(latest_checkpoint(out.string()), "");
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

TEST_F(RunSafety, NanPolicySkipStopsAfterTenSkipsInARow) {
  set_weight("model.layers.1.self_attn.k_proj.weight", 5, NAN);
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(with(train_args(out, 30), {"--nan_policy", "skip"}));
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("10 steps in a row were skipped"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

TEST_F(RunSafety, BfloatConfiguredModelTrainsOnTheCpuAndReloads) {
  // The reload check used to compare the bf16-rounded folder with the float32 model at 1e-5: exit 1.
  make_model_and_data("bfloat16");
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(train_args(out, 4));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("holds the trained weights rounded to bfloat16"), std::string::npos) << r.err;
  SafetensorsFile saved = SafetensorsFile::open(out / "model.safetensors");
  EXPECT_EQ(saved.info("model.embed_tokens.weight").dtype, DType::kBF16);
}

TEST_F(RunSafety, FloatWeightsUnderABfloatConfigStayFloatAndReload) {
  // Float32 weights under a bfloat16 config.json are saved in float32 as the source stores them
  // (CheckpointTensor::keep_f32); the reload check compared them rounded to bfloat16: exit 1.
  make_model_and_data("bfloat16");
  CausalLM::from_config(load_model_config(model_), {}, 7).save_pretrained(model_, DType::kF32);
  Json config = read_json_file(model_ / "config.json");
  config[config.contains("dtype") ? "dtype" : "torch_dtype"] = "bfloat16";
  std::ofstream(model_ / "config.json") << config.dump(2);
  const fs::path out = dir_ / "run";
  auto r = testing::run_moeforge(train_args(out, 2));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("reload check: the saved folder holds the trained weights"), std::string::npos) << r.err;
  EXPECT_EQ(SafetensorsFile::open(out / "model.safetensors").info("model.embed_tokens.weight").dtype, DType::kF32);
}

TEST_F(RunSafety, ASecondRunIsRefusedWhileTheFirstHoldsTheFolder) {
  const fs::path out = dir_ / "run";
  fs::create_directories(out);
  // This test plays the first run: it holds the lock as a running moeforge would.
  const int fd = ::open((out / ".moeforge.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  ASSERT_EQ(::write(fd, "process 4242\n", 13), 13);
  auto refused = testing::run_moeforge(train_args(out, 2));
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("in use by another moeforge run (process 4242)"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(out / "metrics.jsonl"));
  ::close(fd);  // the first run ends: its lock goes with it
  auto ok = testing::run_moeforge(train_args(out, 2));
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(RunSafety, AnEarlierRunsFilesAreRefusedUnlessResumedOrOverwritten) {
  const fs::path out = dir_ / "run";
  ASSERT_EQ(testing::run_moeforge(with(train_args(out, 3), {"--save_steps", "1"})).exit_code, 0);
  auto refused = testing::run_moeforge(train_args(out, 2));
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("holds an earlier run's files (checkpoint-1, checkpoint-2, checkpoint-3, metrics.jsonl)"),
            std::string::npos) << refused.err;
  // Leftovers of killed runs are cleaned by whichever run takes the folder next.
  fs::create_directories(out / ".tmp-checkpoint-7-12345");
  std::ofstream(out / ".report.html.tmp.12345.0") << "<html";
  auto overwritten = testing::run_moeforge(with(train_args(out, 2), {"--overwrite_output_dir"}));
  ASSERT_EQ(overwritten.exit_code, 0) << overwritten.err;
  EXPECT_FALSE(fs::exists(out / "checkpoint-1"));
  EXPECT_FALSE(fs::exists(out / ".tmp-checkpoint-7-12345"));
  EXPECT_FALSE(fs::exists(out / ".report.html.tmp.12345.0"));
  EXPECT_EQ(metric_steps(out), (std::vector<int64_t>{1, 2}));
}

TEST_F(RunSafety, FullDiskOnMetricsStopsAtOnceKeepingWholeLines) {
  const fs::path out = dir_ / "run";
  auto r = run_with_env("enospc@metrics:3", train_args(out, 20));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find((out / "metrics.jsonl").string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  EXPECT_EQ(metric_steps(out), (std::vector<int64_t>{1, 2}));  // every line parses: none was cut
}

TEST_F(RunSafety, UnusableOutputDirIsBadInputNamingThePath) {
  std::ofstream(dir_ / "a-file") << "x";
  for (const fs::path& bad : {dir_ / "a-file", dir_ / "a-file" / "sub"}) {
    auto r = testing::run_moeforge(train_args(bad, 2));
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find((dir_ / "a-file").string() + " is a file"), std::string::npos) << r.err;
  }
  auto empty = testing::run_moeforge(train_args("", 2));
  EXPECT_EQ(empty.exit_code, 2) << empty.err;
  EXPECT_NE(empty.err.find("output_dir is empty"), std::string::npos) << empty.err;
}

TEST_F(RunSafety, ReadOnlyOutputDirIsAnIoErrorNamingThePath) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: permissions do not stop writes";
  fs::create_directories(dir_ / "read-only");
  fs::permissions(dir_ / "read-only", fs::perms::owner_read | fs::perms::owner_exec);
  auto denied = testing::run_moeforge(train_args(dir_ / "read-only" / "run", 2));
  fs::permissions(dir_ / "read-only", fs::perms::owner_all);
  EXPECT_EQ(denied.exit_code, 3) << denied.err;
  EXPECT_NE(denied.err.find((dir_ / "read-only" / "run").string()), std::string::npos) << denied.err;
}

TEST_F(RunSafety, HandEditedTrainerStateIsBadInputNamingTheKey) {
  const fs::path out = dir_ / "run";
  ASSERT_EQ(testing::run_moeforge(with(train_args(out, 2), {"--save_steps", "1"})).exit_code, 0);
  const fs::path state_file = out / "checkpoint-2" / "trainer_state.json";
  nlohmann::json state = nlohmann::json::parse(std::ifstream(state_file));
  const auto resume = with(train_args(out, 4), {"--resume_from_checkpoint", "latest"});
  struct Case {
    const char* key;
    nlohmann::json value;  // null: the key is removed
    const char* message;
  };
  for (const Case& c : {Case{"optimizer_steps", nullptr, "'optimizer_steps' is missing"},
                        Case{"global_step", -100, "'global_step' must be an integer >= 0, got -100"},
                        Case{"global_step", "2", "'global_step' must be an integer >= 0, got \"2\""}}) {
    nlohmann::json edited = state;
    if (c.value.is_null()) edited.erase(c.key);
    else edited[c.key] = c.value;
    std::ofstream(state_file) << edited.dump();
    auto r = testing::run_moeforge(resume);
    EXPECT_EQ(r.exit_code, 2) << c.key << ": " << r.err;
    EXPECT_NE(r.err.find(state_file.string() + ": " + c.message), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out / "checkpoint--98"));
  }
}

TEST_F(RunSafety, AFailedRunLeavesNoFolderBehind) {
  const fs::path out = dir_ / "run";
  auto args = train_args(out, 2);
  args[2] = (dir_ / "no-such-model").string();
  EXPECT_EQ(testing::run_moeforge(args).exit_code, 2);
  // Refused once the config record is written, before the first step: the record goes too.
  EXPECT_EQ(testing::run_moeforge(with(train_args(out, 2), {"--report_to", "wandb"})).exit_code, 2);
  EXPECT_FALSE(fs::exists(out)) << "left: " << (fs::exists(out / "moeforge_config.yaml") ? "moeforge_config.yaml" : "a folder");
  std::ofstream(dir_ / "train.jsonl", std::ios::app) << "{\"messages\": [oops\n";
  EXPECT_EQ(testing::run_moeforge(train_args(out, 2)).exit_code, 2);
  EXPECT_FALSE(fs::exists(out)) << "left: " << (fs::exists(out / "moeforge_config.yaml") ? "moeforge_config.yaml" : "a folder");
}

TEST_F(RunSafety, MetricsAfterAResumeHoldEveryStepOnce) {
  const fs::path out = dir_ / "run";
  auto args = with(train_args(out, 8), {"--save_steps", "3"});
  auto killed = run_with_env("kill@step:5", args);  // after step 5, two steps past checkpoint-3
  ASSERT_EQ(killed.exit_code, 128 + 9) << killed.err;
  EXPECT_EQ(metric_steps(out), (std::vector<int64_t>{1, 2, 3, 4}));  // step 5 was killed before its line
  auto resumed = testing::run_moeforge(with(args, {"--resume_from_checkpoint", "latest"}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_EQ(metric_steps(out), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST_F(RunSafety, AResumeOnOtherDataOrOptionsIsRefusedNamingWhatDiffers) {
  const fs::path out = dir_ / "run";
  const auto args = with(train_args(out, 3), {"--save_steps", "1"});
  ASSERT_EQ(testing::run_moeforge(args).exit_code, 0);
  // As many lines and tokens as before (the data position alone used to accept it): other letters.
  std::string text = file_bytes(dir_ / "train.jsonl");
  for (size_t at = text.find("letters: "); at != std::string::npos; at = text.find("letters: ", at + 1))
    text[at + 9] = text[at + 9] == 'Q' ? 'R' : 'Q';
  std::ofstream(dir_ / "train.jsonl") << text;
  auto refused = testing::run_moeforge(with(args, {"--resume_from_checkpoint", "latest", "--seed", "5"}));
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find((out / "checkpoint-3").string() + " belongs to a run with other data or options: "),
            std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("seed (checkpoint: 42, this run: 5)"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("train_file (checkpoint: \"sha256:"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("training tokens (checkpoint: "), std::string::npos) << refused.err;
  EXPECT_EQ(refused.err.find("max_seq_length ("), std::string::npos) << "only what differs: " << refused.err;
  EXPECT_EQ(metric_steps(out), (std::vector<int64_t>{1, 2, 3}));  // the refused run changed nothing
}

TEST_F(RunSafety, ASignalWhileLoadingExitsWithAMessageAndNothingWritten) {
  const fs::path out = dir_ / "run";
  auto r = run_with_env("sigterm@load:1", train_args(out, 2));
  EXPECT_EQ(r.exit_code, 128 + 15) << r.err;
  EXPECT_NE(r.err.find("stopped by a signal before training began; nothing was written"), std::string::npos) << r.err;
}

TEST_F(RunSafety, ASignalDuringTheFinalSaveLetsTheSaveFinish) {
  const fs::path out = dir_ / "run";
  auto r = run_with_env("sigterm@final_save:1", train_args(out, 2));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("arrived during the final save; the save was completed first"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("reload check"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
}

// A host allocation that fails is exit 4 naming the line being encoded, never exit 1 or an abort
// on a worker thread: one 48 MB line, under the dataset's 64 MiB line limit, needs more than the
// 1.5 GiB of address space the run is given to tokenise (Oniguruma's match stack alone).
TEST_F(RunSafety, HostMemoryExhaustedIsExit4) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space: no address-space limit can apply";
#endif
  std::ofstream(dir_ / "train.jsonl", std::ios::app)
      << R"({"messages": [{"role": "user", "content": ")" << std::string(48 << 20, 'a')
      << R"("}, {"role": "assistant", "content": "b"}]})" << "\n";
  // The limit is inherited by the child that std::system starts; this process allocates nothing
  // large until the limit is lifted again.
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_AS, &saved), 0);
  rlimit limited = saved;
  limited.rlim_cur = 3ull << 29;
  ASSERT_EQ(setrlimit(RLIMIT_AS, &limited), 0);
  auto r = testing::run_moeforge(train_args(dir_ / "run", 2));
  ASSERT_EQ(setrlimit(RLIMIT_AS, &saved), 0);
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_NE(r.err.find("train.jsonl:121: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("memory"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeforge
