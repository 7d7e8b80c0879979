// validate(TrainingArguments) names the first field out of range, whoever built the struct (the
// command line, the Python API, a C++ caller); validate_trainer_state refuses a hand-edited
// trainer_state.json before a resume trusts it.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "testing.h"
#include "train/training_arguments.h"

namespace moeforge {
namespace {

std::string validate_error(const TrainingArguments& a) {
  try {
    validate(a);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  return "";
}

TEST(TrainingArgumentsValidate, DefaultsPass) { EXPECT_EQ(validate_error(TrainingArguments{}), ""); }

TEST(TrainingArgumentsValidate, NamesTheFieldAndValue) {
  const std::pair<void (*)(TrainingArguments&), std::string> cases[] = {
      {[](TrainingArguments& a) { a.learning_rate = -1; }, "learning_rate must be >= 0, got -1"},
      {[](TrainingArguments& a) { a.learning_rate = std::nan(""); }, "learning_rate must be >= 0, got nan"},
      {[](TrainingArguments& a) { a.learning_rate = HUGE_VAL; }, "learning_rate must be >= 0, got inf"},
      {[](TrainingArguments& a) { a.adam_beta1 = 1.5; }, "adam_beta1 must be in [0, 1), got 1.5"},
      {[](TrainingArguments& a) { a.adam_beta2 = 1; }, "adam_beta2 must be in [0, 1), got 1"},
      {[](TrainingArguments& a) { a.adam_epsilon = 0; }, "adam_epsilon must be > 0, got 0"},
      {[](TrainingArguments& a) { a.warmup_ratio = 5; }, "warmup_ratio must be in [0, 1], got 5"},
      {[](TrainingArguments& a) { a.num_train_epochs = -1; }, "num_train_epochs must be > 0, got -1"},
      {[](TrainingArguments& a) { a.save_steps = -1; }, "save_steps must be >= 0, got -1"},
      {[](TrainingArguments& a) { a.max_steps = -100; }, "max_steps must be -1 or >= 0, got -100"},
      {[](TrainingArguments& a) { a.per_device_eval_batch_size = 0; }, "per_device_eval_batch_size must be >= 1"},
      {[](TrainingArguments& a) { a.weight_decay = -0.1; }, "weight_decay must be >= 0"},
      {[](TrainingArguments& a) { a.lr_scheduler_type = "sawtooth"; }, "lr_scheduler_type 'sawtooth'"},
      {[](TrainingArguments& a) { a.gradient_checkpointing = "some"; }, "gradient_checkpointing 'some'"},
      {[](TrainingArguments& a) { a.optimizer_precision = "fp8"; }, "optimizer precision 'fp8'"},
      {[](TrainingArguments& a) { a.recompute_full_layers = -2; }, "recompute_full_layers must be >= 0"},
      {[](TrainingArguments& a) { a.activation_offload_layers = -1; }, "activation_offload_layers must be >= 0"},
      {[](TrainingArguments& a) { a.nan_policy = "skpi"; }, "nan_policy must be stop or skip, got 'skpi'"},
      {[](TrainingArguments& a) { a.eval_strategy = "epochs"; }, "eval_strategy must be no, steps or epoch, got 'epochs'"},
  };
  for (const auto& [edit, needle] : cases) {
    TrainingArguments a;
    edit(a);
    std::string m = validate_error(a);
    EXPECT_NE(m.find(needle), std::string::npos) << "'" << needle << "' missing from '" << m << "'";
  }
  TrainingArguments edge;
  edge.learning_rate = 0;
  edge.adam_beta1 = 0;
  edge.warmup_ratio = 1;
  edge.max_steps = 1;
  edge.save_steps = 0;
  edge.nan_policy = "skip";
  edge.eval_strategy = "epoch";
  EXPECT_EQ(validate_error(edge), "");
}

TEST(TrainingArgumentsValidate, DataOptionRanges) {
  EXPECT_NO_THROW(check_training_option("max_seq_length", 2));
  EXPECT_THROW(check_training_option("max_seq_length", 1), Error);
  EXPECT_THROW(check_training_option("eval_ratio", 1), Error);
  EXPECT_NO_THROW(check_training_option("output_dir", -1));  // no range
  EXPECT_EQ(training_option_range("max_steps")->str(), "-1 or >= 0");
}

std::string state_error(const std::string& text) {
  try {
    validate_trainer_state(nlohmann::json::parse(text), "ckpt/trainer_state.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
    return e.what();
  }
  return "";
}

TEST(TrainerStateValidate, RefusesHandEditedState) {
  const std::string pos = R"("data_position": {"documents": 3})";
  EXPECT_EQ(state_error(R"({"global_step": 4, "optimizer_steps": 4, )" + pos + R"(, "log_history": []})"), "");
  EXPECT_EQ(state_error(R"({"global_step": 4, "optimizer_steps": 3, )" + pos + "}"), "");
  const std::pair<std::string, std::string> cases[] = {
      {R"({"global_step": -100, "optimizer_steps": 0, )" + pos + "}",
       "ckpt/trainer_state.json: 'global_step' must be an integer >= 0, got -100"},
      {R"({"global_step": 2.5, "optimizer_steps": 0, )" + pos + "}", "'global_step' must be an integer >= 0, got 2.5"},
      {R"({"global_step": "7", "optimizer_steps": 0, )" + pos + "}", "'global_step' must be an integer >= 0, got \"7\""},
      {R"({"global_step": 18446744073709551615, "optimizer_steps": 0, )" + pos + "}", "'global_step' must be an integer"},
      {R"({"optimizer_steps": 0, )" + pos + "}", "'global_step' is missing"},
      {R"({"global_step": 3, "optimizer_steps": -1, )" + pos + "}", "'optimizer_steps' must be an integer >= 0"},
      {R"({"global_step": 3, "optimizer_steps": 5, )" + pos + "}", "'optimizer_steps' (5) exceeds 'global_step' (3)"},
      {R"({"global_step": 3, "optimizer_steps": 3})", "'data_position' must be an object"},
      {R"({"global_step": 3, "optimizer_steps": 3, )" + pos + R"(, "log_history": {}})", "'log_history' must be an array"},
      {"[1, 2]", "ckpt/trainer_state.json: expected a JSON object, got array"},
  };
  for (const auto& [text, needle] : cases) {
    std::string m = state_error(text);
    EXPECT_NE(m.find(needle), std::string::npos) << text << ": '" << needle << "' missing from '" << m << "'";
  }
}

}  // namespace
}  // namespace moeforge
