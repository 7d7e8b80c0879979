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
       .help = "peak learning rate", .aliases = {"lr"}},
      {.name = "max_steps", .type = OptionType::kInt, .default_value = "-1", .help = "steps"},
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

}  // namespace
}  // namespace moeforge::cli
