// Out-of-range options end `moeforge` with exit 2 and a message naming the option, from a flag, the
// environment or a recipe, before any file is read: the model folder given here does not exist, so
// an error that names the model instead of the option means the value got through.
#include <unistd.h>

#include <fstream>

#include "core/error.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> train_with(std::vector<std::string> extra) {
  std::vector<std::string> args = {"train", "--model", "/nonexistent/mf-model", "--train_file", "/nonexistent/t.jsonl",
                                   "--output_dir", testing::unique_temp_path("mf_option_errors").string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

void expect_refused(const std::vector<std::string>& args, const std::string& needle) {
  std::string line;
  for (const auto& a : args) line += " " + a;
  auto r = testing::run_moeforge(args);
  EXPECT_EQ(r.exit_code, 2) << "moeforge" << line << "\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "moeforge" << line << ": '" << needle << "' missing from\n" << r.err;
  EXPECT_EQ(r.err.find("mf-model"), std::string::npos) << r.err;
}

TEST(OptionErrors, TrainFlagsOutOfRange) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"--max_steps", "99999999999999999999999"}, "option 'max_steps' expects an integer in the 64-bit range"},
      {{"--max_steps", "-2"}, "option 'max_steps' must be -1 or >= 0, got '-2'"},
      {{"--learning_rate", "-1"}, "option 'learning_rate' must be >= 0, got '-1'"},
      {{"--learning_rate", "nan"}, "option 'learning_rate' expects a decimal number, got 'nan'"},
      {{"--learning_rate", "inf"}, "option 'learning_rate' expects a decimal number, got 'inf'"},
      {{"--learning_rate", "1e400"}, "option 'learning_rate' expects a number in the range of a double"},
      {{"--learning_rate", "0x10"}, "option 'learning_rate' expects a decimal number, got '0x10'"},
      {{"--lr", "-3e-4"}, "(flag --lr): option 'learning_rate' must be >= 0"},
      {{"--adam_beta1", "1.5"}, "option 'adam_beta1' must be in [0, 1), got '1.5'"},
      {{"--adam_beta2", "1"}, "option 'adam_beta2' must be in [0, 1)"},
      {{"--adam_epsilon", "0"}, "option 'adam_epsilon' must be > 0"},
      {{"--warmup_ratio", "5"}, "option 'warmup_ratio' must be in [0, 1], got '5'"},
      {{"--num_train_epochs", "-1"}, "option 'num_train_epochs' must be > 0, got '-1'"},
      {{"--save_steps", "-1"}, "option 'save_steps' must be >= 0, got '-1'"},
      {{"--eval_steps", "-5"}, "option 'eval_steps' must be >= 0"},
      {{"--logging_steps", "-1"}, "option 'logging_steps' must be >= 0"},
      {{"--per_device_train_batch_size", "0"}, "option 'per_device_train_batch_size' must be >= 1"},
      {{"--gradient_accumulation_steps", "0"}, "option 'gradient_accumulation_steps' must be >= 1"},
      {{"--max_seq_length", "1"}, "option 'max_seq_length' must be >= 2"},
      {{"--max_grad_norm", "-1"}, "option 'max_grad_norm' must be >= 0"},
      {{"--eval_ratio", "1"}, "option 'eval_ratio' must be in [0, 1)"},
      {{"--save_total_limit", "-2"}, "option 'save_total_limit' must be >= 0"},
      {{"--seed", "-1"}, "option 'seed' must be >= 0"},
      {{"--lora_r", "-1"}, "option 'lora_r' must be >= 0, got '-1'"},
      {{"--lora-r", "2.5"}, "(flag --lora-r): option 'lora_r' expects an integer, got '2.5'"},
      {{"--lora_alpha", "0"}, "option 'lora_alpha' must be > 0, got '0'"},
      {{"--lora_dropout", "1"}, "option 'lora_dropout' must be in [0, 1), got '1'"},
      // LoRA options without a rank would be silently ignored.
      {{"--lora_alpha", "16"}, "option 'lora_alpha' configures LoRA, which is off: set lora_r > 0"},
      {{"--use_rslora"}, "option 'use_rslora' configures LoRA, which is off"},
  };
  for (const auto& [flags, needle] : cases) expect_refused(train_with(flags), needle);
}

TEST(OptionErrors, TrainEnvironmentOutOfRange) {
  setenv("MOEFORGE_LEARNING_RATE", "-1", 1);
  expect_refused(train_with({}), "environment variable MOEFORGE_LEARNING_RATE: option 'learning_rate' must be >= 0");
  unsetenv("MOEFORGE_LEARNING_RATE");
  setenv("MOEFORGE_WARMUP_RATIO", "nan", 1);
  expect_refused(train_with({}), "environment variable MOEFORGE_WARMUP_RATIO: option 'warmup_ratio' expects");
  unsetenv("MOEFORGE_WARMUP_RATIO");
}

TEST(OptionErrors, TrainRecipeOutOfRangeAndDuplicateKeys) {
  const fs::path dir = testing::unique_temp_path("mf_option_errors_recipes");
  fs::create_directories(dir);
  const std::pair<std::string, std::string> cases[] = {
      {"max_steps: 5\nlearning_rate: -1\n", ":2: option 'learning_rate' must be >= 0, got '-1'"},
      {"num_train_epochs: -1\n", ":1: option 'num_train_epochs' must be > 0"},
      {"learning_rate: .inf\n", ":1: option 'learning_rate' expects a decimal number, got '.inf'"},
      {"max_steps: 5\nlearning_rate: 0.1\nmax_steps: 7\n",
       ":3: duplicate key 'max_steps': option 'max_steps' is already set on line 1"},
  };
  int i = 0;
  for (const auto& [text, needle] : cases) {
    const std::string recipe = (dir / str_cat("r", i++, ".yaml")).string();
    std::ofstream(recipe) << text;
    expect_refused(train_with({recipe}), str_cat(recipe, needle));
  }
  fs::remove_all(dir);
}

// Issue 21: a model folder or a dataset where the recipe goes is named as such, never an internal error.
TEST(OptionErrors, PositionalFolderOrDatasetIsNotARecipe) {
  const fs::path dir = testing::unique_temp_path("mf_option_errors_positional");
  fs::create_directories(dir);
  auto r = testing::run_moeforge({"train", dir.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(str_cat("recipe ", dir.string(), " is a directory")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(str_cat("a model folder goes in --model ", dir.string())), std::string::npos) << r.err;
  const std::string data = (dir / "chat.jsonl").string();
  std::ofstream(data) << "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n";
  r = testing::run_moeforge({"train", data});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("looks like a dataset (.jsonl)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(str_cat("pass data as --train_file ", data)), std::string::npos) << r.err;
  fs::remove_all(dir);
}

TEST(OptionErrors, VersionIsPrinted) {
  for (const char* flag : {"--version", "-V"}) {
    auto r = testing::run_moeforge({flag});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.rfind("moeforge ", 0), 0u) << r.out;
    EXPECT_NE(r.out.find('.'), std::string::npos) << r.out;
  }
}

TEST(OptionErrors, OtherCommandsOutOfRange) {
  expect_refused({"step", "--model", "/nonexistent/mf-model", "--batch", "b", "--out", "o", "--adam_beta1", "1.5"},
                 "option 'adam_beta1' must be in [0, 1)");
  expect_refused({"generate", "--model", "/nonexistent/mf-model", "hello", "--temperature", "0"},
                 "option 'temperature' must be > 0");
  expect_refused({"generate", "--model", "/nonexistent/mf-model", "hello", "--top_p", "nan"},
                 "option 'top_p' expects a decimal number");
  // --device cuda: should the value get through, a CPU build stops at once rather than training.
  expect_refused({"demo", "--max_steps", "0", "--device", "cuda"}, "option 'max_steps' must be >= 1");
  expect_refused({"demo", "--eval_questions", "0", "--device", "cuda"}, "option 'eval_questions' must be >= 1");
  expect_refused({"merge", "--model", "/nonexistent/mf-model", "--adapter", "a", "--output_dir", "o", "--dtype", "int8"},
                 "option 'dtype' expects one of auto, float32, bfloat16, float16");
}

TEST(OptionErrors, HelpShowsRanges) {
  auto r = testing::run_moeforge({"train", "--help"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string help = r.out + r.err;
  for (const char* needle : {"[default: 5e-05] [range: >= 0]", "[default: -1] [range: -1 or >= 0]",
                             "[default: 0.9] [range: in [0, 1)]", "at most 2048) [range: >= 2]"})
    EXPECT_NE(help.find(needle), std::string::npos) << needle << " missing from\n" << help;
}

}  // namespace
}  // namespace moeforge
