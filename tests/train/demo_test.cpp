// The README's main command: `moeforge demo` must learn its task within its default budget.
#include <fstream>

#include <nlohmann/json.hpp>

#include "testing.h"

namespace moeforge {
namespace {

TEST(Demo, AccuracyRisesClearly) {
  const std::filesystem::path out = testing::unique_temp_path("mf_demo_test");
  std::filesystem::remove_all(out);
  auto r = testing::run_moeforge({"demo", "--output_dir", out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream in(out / "demo_summary.json");
  nlohmann::json s = nlohmann::json::parse(in);
  EXPECT_LE(s["accuracy_before"].get<double>(), 0.05);
  EXPECT_GE(s["accuracy_after"].get<double>(), 0.8);
  EXPECT_LT(s["final_eval_loss"].get<double>(), 0.2);
  EXPECT_TRUE(std::filesystem::exists(out / "model" / "model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(out / "model" / "report.html"));
  // The saved folder answers through `moeforge generate` and its chat template.
  auto g = testing::run_moeforge({"generate", "--model", (out / "model").string(), "Reverse the letters: QWERT",
                                  "--max_new_tokens", "8"});
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out, "TREWQ\n");
  std::filesystem::remove_all(out);
}

}  // namespace
}  // namespace moeforge
