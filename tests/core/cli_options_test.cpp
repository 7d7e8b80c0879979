#include <unistd.h>

#include <fstream>

#include "command.h"
#include "core/error.h"
#include "testing.h"

namespace moeforge::cli {
namespace {

CommandSpec sample_command() {
  CommandSpec c;
  c.name = "sample";
  c.options = {
      {.name = "learning_rate", .type = OptionType::kFloat, .default_value = "5e-05",
       .help = "peak learning rate", .aliases = {"lr"}, .range = NumericRange{.min = 0}},
      {.name = "max_steps", .type = OptionType::kInt, .default_value = "-1", .help = "steps",
       .range = NumericRange{.min = 1, .also = -1}},
      {.name = "adam_beta1", .type = OptionType::kFloat, .default_value = "0.9", .help = "beta1",
       .range = NumericRange{.min = 0, .max = 1, .max_open = true}},
      {.name = "gradient_checkpointing", .type = OptionType::kBool, .help = "recompute"},
      {.name = "device", .type = OptionType::kChoice, .default_value = "cpu", .help = "device",
       .choices = {"cpu", "cuda"}},
  };
  return c;
}

TEST(CliOptions, SpellingsAndAliases) {
  CommandSpec c = sample_command();
  auto p = parse_options(c, {"--learning-rate", "0.1", "--max_steps=7", "--gradient-checkpointing"});
  EXPECT_DOUBLE_EQ(p.real("learning_rate"), 0.1);
  EXPECT_EQ(p.integer("max_steps"), 7);
  EXPECT_TRUE(p.flag("gradient_checkpointing"));
  EXPECT_EQ(p.str("device"), "cpu");
  EXPECT_FALSE(p.has("device"));
  auto q = parse_options(c, {"--lr", "3e-4"});
  EXPECT_DOUBLE_EQ(q.real("learning_rate"), 3e-4);
  EXPECT_EQ(q.source("learning_rate"), ValueSource::kFlag);
}

TEST(CliOptions, EnvironmentBelowFlags) {
  CommandSpec c = sample_command();
  setenv("MOEFORGE_MAX_STEPS", "11", 1);
  EXPECT_EQ(parse_options(c, {}).integer("max_steps"), 11);
  EXPECT_EQ(parse_options(c, {"--max-steps", "3"}).integer("max_steps"), 3);
  unsetenv("MOEFORGE_MAX_STEPS");
}

TEST(CliOptions, UnknownOptionSuggestsClosest) {
  CommandSpec c = sample_command();
  try {
    parse_options(c, {"--learnig_rate", "1"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean '--learning_rate'"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_options(c, {"--max_steps", "x"}), Error);
  EXPECT_THROW(parse_options(c, {"--device", "tpu"}), Error);
}

// The message of the Error that parsing `args` throws ("" if it does not throw).
std::string parse_error(const CommandSpec& c, const std::vector<std::string>& args) {
  try {
    parse_options(c, args);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  return "";
}

TEST(CliOptions, NumbersAreDecimalFiniteAndFit) {
  CommandSpec c = sample_command();
  for (const char* v : {"nan", "NaN", "inf", "-inf", "infinity", "1e400", "-1e400", "0x10", "0x1p3", " 1", "1 ",
                        "1e", "1e+", ".", "", "+", "1.2.3", "1,5"}) {
    std::string m = parse_error(c, {"--learning_rate", v});
    EXPECT_NE(m.find("option 'learning_rate' expects a"), std::string::npos) << "'" << v << "': " << m;
  }
  for (const char* v : {"99999999999999999999999", "-99999999999999999999999", "0x10", "1.5", "1e3", "010x", " 7"}) {
    std::string m = parse_error(c, {"--max_steps", v});
    EXPECT_NE(m.find("option 'max_steps' expects an integer"), std::string::npos) << "'" << v << "': " << m;
  }
  EXPECT_NE(parse_error(c, {"--max_steps", "99999999999999999999999"}).find("64-bit"), std::string::npos);
  EXPECT_NE(parse_error(c, {"--lr", "1e400"}).find("range of a double"), std::string::npos);
  for (const char* v : {"1e-3", "+0.5", ".5", "5.", "3E2", "0", "-0"})
    EXPECT_EQ(parse_error(c, {"--learning_rate", v}), "") << v;
  EXPECT_DOUBLE_EQ(parse_options(c, {"--lr", ".5"}).real("learning_rate"), 0.5);
  EXPECT_EQ(parse_options(c, {"--max_steps", "+7"}).integer("max_steps"), 7);
  EXPECT_EQ(parse_options(c, {"--max_steps", "9223372036854775807"}).integer("max_steps"), INT64_MAX);
}

TEST(CliOptions, RangesNameOptionSourceValueAndRange) {
  CommandSpec c = sample_command();
  EXPECT_NE(parse_error(c, {"--lr", "-1"}).find("moeforge sample (flag --lr): option 'learning_rate' must be >= 0, got '-1'"),
            std::string::npos);
  EXPECT_NE(parse_error(c, {"--adam-beta1", "1.5"}).find("option 'adam_beta1' must be in [0, 1), got '1.5'"),
            std::string::npos);
  EXPECT_NE(parse_error(c, {"--adam_beta1", "1"}).find("adam_beta1"), std::string::npos);
  for (const char* v : {"0", "-2", "-100"})
    EXPECT_NE(parse_error(c, {"--max_steps", v}).find("option 'max_steps' must be -1 or >= 1, got '"),
              std::string::npos) << v;
  EXPECT_EQ(parse_error(c, {"--max_steps", "-1", "--adam_beta1", "0", "--lr", "0"}), "");

  setenv("MOEFORGE_LEARNING_RATE", "-0.5", 1);
  std::string env = parse_error(c, {});
  unsetenv("MOEFORGE_LEARNING_RATE");
  EXPECT_NE(env.find("environment variable MOEFORGE_LEARNING_RATE: option 'learning_rate' must be >= 0, got '-0.5'"),
            std::string::npos) << env;
  setenv("MOEFORGE_MAX_STEPS", "inf", 1);
  env = parse_error(c, {});
  unsetenv("MOEFORGE_MAX_STEPS");
  EXPECT_NE(env.find("environment variable MOEFORGE_MAX_STEPS: option 'max_steps' expects an integer"),
            std::string::npos) << env;
}

TEST(CliOptions, HelpShowsRanges) {
  std::string help = command_help(sample_command());
  EXPECT_NE(help.find("[default: 5e-05] [range: >= 0]"), std::string::npos) << help;
  EXPECT_NE(help.find("[default: -1] [range: -1 or >= 1]"), std::string::npos) << help;
  EXPECT_NE(help.find("[range: in [0, 1)]"), std::string::npos) << help;
}

}  // namespace
}  // namespace moeforge::cli

namespace moeforge::cli {
namespace {

CommandSpec recipe_command() {
  CommandSpec c = sample_command();
  c.options.push_back({.name = "recipe", .type = OptionType::kPath, .help = "recipe", .positional = true});
  c.options.push_back({.name = "report_to", .type = OptionType::kString, .help = "loggers"});
  return c;
}

std::string write_recipe(const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("mf_recipe_" + std::to_string(::getpid()) + ".yaml");
  std::ofstream(path) << text;
  return path.string();
}

TEST(CliOptions, RecipeBelowEnvironmentAndFlags) {
  CommandSpec c = recipe_command();
  std::string path = write_recipe("learning_rate: 0.002\nmax_steps: 20\nreport_to: [tensorboard, jsonl]\n");
  auto p = parse_options(c, {path});
  EXPECT_DOUBLE_EQ(p.real("learning_rate"), 0.002);
  EXPECT_EQ(p.source("learning_rate"), ValueSource::kRecipe);
  EXPECT_EQ(p.str("report_to"), "tensorboard,jsonl");
  setenv("MOEFORGE_MAX_STEPS", "30", 1);
  auto q = parse_options(c, {"--recipe", path, "--learning-rate", "0.5"});
  unsetenv("MOEFORGE_MAX_STEPS");
  EXPECT_EQ(q.integer("max_steps"), 30);
  EXPECT_DOUBLE_EQ(q.real("learning_rate"), 0.5);
}

TEST(CliOptions, RecipeErrorsNameFileLineAndSuggest) {
  CommandSpec c = recipe_command();
  std::string path = write_recipe("max_steps: 3\nlearnin_rate: 0.1\n");
  try {
    parse_options(c, {path});
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(path + ":2: unknown key 'learnin_rate' (did you mean 'learning_rate'?)"), std::string::npos) << m;
  }
  std::string bad_type = write_recipe("max_steps: many\n");
  EXPECT_THROW(parse_options(c, {bad_type}), Error);
}

TEST(CliOptions, RecipeValuesAreRangeChecked) {
  CommandSpec c = recipe_command();
  for (const char* text : {"max_steps: 3\nlearning_rate: -1\n", "max_steps: 3\nlearning_rate: .nan\n",
                           "max_steps: 3\nlearning_rate: 1e400\n", "max_steps: 3\nlr: 0x10\n"}) {
    std::string path = write_recipe(text);
    std::string m = parse_error(c, {path});
    EXPECT_NE(m.find(path + ":2: option 'learning_rate' "), std::string::npos) << text << ": " << m;
  }
  std::string path = write_recipe("max_steps: 99999999999999999999999\n");
  EXPECT_NE(parse_error(c, {path}).find(path + ":1: option 'max_steps' expects an integer in the 64-bit range"),
            std::string::npos);
}

TEST(CliOptions, RecipeDuplicateKeysNameBothLines) {
  CommandSpec c = recipe_command();
  std::string path = write_recipe("max_steps: 3\nlearning_rate: 0.1\nmax_steps: 4\n");
  std::string m = parse_error(c, {path});
  EXPECT_NE(m.find(path + ":3: duplicate key 'max_steps': option 'max_steps' is already set on line 1"),
            std::string::npos) << m;
  path = write_recipe("learning_rate: 0.1\nmax_steps: 3\nlr: 0.2\n");  // an alias of the same option
  m = parse_error(c, {path});
  EXPECT_NE(m.find(path + ":3: duplicate key 'lr': option 'learning_rate' is already set on line 1"),
            std::string::npos) << m;
  path = write_recipe("recipe: other.yaml\n");
  EXPECT_NE(parse_error(c, {path}).find(path + ":1: unknown key 'recipe'"), std::string::npos);
}

}  // namespace
}  // namespace moeforge::cli
