// A training run killed again and again (SIGKILL: nothing is flushed, nothing cleaned) and resumed
// each time ends exactly where an uninterrupted run ends: the same model and optimizer bytes and the
// same per-step losses, for a float32 model and for a bfloat16-configured one (whose checkpoints
// round the weights, so the exact float32 values must travel in the optimizer state).
// Kill points: a fixed list (inside a file write, between a checkpoint's files, before its rename,
// between steps, inside the final save) and points drawn from a seed that the test logs.
#include <fstream>
#include <iterator>
#include <random>

#include "core/error.h"
#include "train/trainer.h"
#include "train_cli_fixture.h"

namespace moeforge {
namespace {

constexpr int kSteps = 8;

class KillResume : public TrainCli {
 protected:
  std::vector<std::string> args(const fs::path& out) const {
    auto a = train_args(out, kSteps);
    a.insert(a.end(), {"--save_steps", "2"});
    return a;
  }

  // Per-step records without the timing fields, which differ from run to run.
  static std::vector<nlohmann::json> history(const fs::path& out) {
    std::vector<nlohmann::json> out_records;
    for (auto r : metrics(out)) {
      for (const char* timing : {"tokens_per_s", "tflops", "peak_memory_bytes"}) r.erase(timing);
      out_records.push_back(r);
    }
    return out_records;
  }

  void check_kill_and_resume_matches_uninterrupted(const std::string& dtype) {
    make_model_and_data(dtype);
    const fs::path reference = dir_ / "reference", out = dir_ / "killed";
    auto r = testing::run_moeforge(args(reference));
    ASSERT_EQ(r.exit_code, 0) << r.err;

    std::vector<std::string> kills = {
        "kill@file_write:3",  // inside a file write (the second report.html)
        "kill@save:1",        // model written, optimizer state not yet
        "kill@rename:2",      // checkpoint-4 complete but still under its temporary name
        "kill@step:3",        // between steps, one past a checkpoint
        "kill@final_save:1",  // training done, the final model not yet saved
    };
    const unsigned seed = std::random_device{}();
    std::mt19937 rng(seed);
    const char* drawn_points[] = {"file_write", "save", "rename", "step"};
    for (int i = 0; i < 3; ++i)
      kills.push_back(str_cat("kill@", drawn_points[rng() % 4], ":", 1 + rng() % 12));
    std::string plan;
    for (const auto& k : kills) plan += k + " ";
    SCOPED_TRACE("kill points (seed " + std::to_string(seed) + "): " + plan);

    const size_t fixed_kills = 5;
    for (size_t i = 0; i < kills.size(); ++i) {
      auto a = args(out);
      if (!latest_checkpoint(out.string()).empty()) a.insert(a.end(), {"--resume_from_checkpoint", "latest"});
      else a.push_back("--overwrite_output_dir");  // killed before its first checkpoint: start over
      auto killed = run_with_env(kills[i], a);
      // The fixed points are reached by construction; a drawn one may lie past the end of its run.
      if (i < fixed_kills) ASSERT_EQ(killed.exit_code, 128 + 9) << kills[i] << ": " << killed.err;
      else ASSERT_TRUE(killed.exit_code == 128 + 9 || killed.exit_code == 0) << kills[i] << ": " << killed.err;
    }
    auto a = args(out);
    if (!latest_checkpoint(out.string()).empty()) a.insert(a.end(), {"--resume_from_checkpoint", "latest"});
    else a.push_back("--overwrite_output_dir");
    auto finished = testing::run_moeforge(a);
    ASSERT_EQ(finished.exit_code, 0) << finished.err;

    EXPECT_TRUE(file_bytes(reference / "model.safetensors") == file_bytes(out / "model.safetensors"))
        << "final models differ";
    const std::string last = str_cat("checkpoint-", kSteps);
    for (const char* f : {"model.safetensors", "optimizer.safetensors"})
      EXPECT_TRUE(file_bytes(reference / last / f) == file_bytes(out / last / f)) << last << "/" << f << " differs";
    const auto want = history(reference), got = history(out);
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(want[i].dump(), got[i].dump()) << "metrics record " << i;
  }
};

TEST_F(KillResume, Float32ModelEndsAsAnUninterruptedRun) { check_kill_and_resume_matches_uninterrupted("float32"); }

TEST_F(KillResume, BfloatConfiguredModelEndsAsAnUninterruptedRun) {
  check_kill_and_resume_matches_uninterrupted("bfloat16");
}

}  // namespace
}  // namespace moeforge
