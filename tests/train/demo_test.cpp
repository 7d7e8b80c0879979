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
  // The before/after table prints what a terminal shows as it is: the untrained model's random
  // tokens used to come out as U+FFFD and control characters.
  for (unsigned char c : r.out) EXPECT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7F)) << "byte " << int(c) << " in\n" << r.out;
  EXPECT_NE(r.out.find("question   expected   before       after"), std::string::npos) << r.out;

  // generate --chat_template renders with the given file, and --system adds a system message first.
  const std::filesystem::path tmpl = out / "strict.jinja";
  std::ofstream(tmpl) << "{% if messages[0].role == 'system' %}{{ raise_exception('system message: ' + messages[0].content) }}"
                         "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
  auto templated = testing::run_moeforge({"generate", "--model", (out / "model").string(), "Reverse the letters: QWERT",
                                          "--max_new_tokens", "8", "--chat_template", tmpl.string()});
  EXPECT_EQ(templated.exit_code, 0) << templated.err;
  EXPECT_EQ(templated.out, "TREWQ\n");
  auto with_system = testing::run_moeforge({"generate", "--model", (out / "model").string(), "Reverse the letters: QWERT",
                                            "--chat_template", tmpl.string(), "--system", "answer briefly"});
  EXPECT_NE(with_system.exit_code, 0);
  EXPECT_NE(with_system.err.find("system message: answer briefly"), std::string::npos) << with_system.err;
  std::filesystem::remove_all(out);
}

}  // namespace
}  // namespace moeforge
