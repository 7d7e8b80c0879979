#include "train/training_arguments.h"

#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/causal_lm.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace moeforge {
namespace {

constexpr NumericRange at_least(double min) { return {.min = min}; }
constexpr NumericRange above(double min) { return {.min = min, .min_open = true}; }

const std::map<std::string, NumericRange, std::less<>>& ranges() {
  static const std::map<std::string, NumericRange, std::less<>> table = {
      {"learning_rate", at_least(0)},
      {"per_device_train_batch_size", at_least(1)},
      {"per_device_eval_batch_size", at_least(1)},
      {"gradient_accumulation_steps", at_least(1)},
      {"max_steps", {.min = 0, .also = -1}},  // as Hugging Face: <= 0 trains num_train_epochs
      {"num_train_epochs", above(0)},
      {"warmup_steps", at_least(0)},
      {"warmup_ratio", {.min = 0, .max = 1}},
      {"weight_decay", at_least(0)},
      {"adam_beta1", {.min = 0, .max = 1, .max_open = true}},
      {"adam_beta2", {.min = 0, .max = 1, .max_open = true}},
      {"adam_epsilon", above(0)},
      {"max_grad_norm", at_least(0)},
      {"logging_steps", at_least(0)},
      {"eval_steps", at_least(0)},
      {"save_steps", at_least(0)},
      {"save_total_limit", at_least(0)},
      {"recompute_full_layers", at_least(0)},
      {"activation_offload_layers", at_least(0)},
      {"zero_stage", {.min = 1, .max = 2}},
      {"seed", at_least(0)},
      // A packed row of T tokens trains on T - 1 next-token targets: one token teaches nothing.
      {"max_seq_length", at_least(2)},
      // The held-out fraction: all of the data held out leaves nothing to train on.
      {"eval_ratio", {.min = 0, .max = 1, .max_open = true}},
      // LoRA (arch/lora.h): rank 0 is a full fine-tune; PEFT's dropout is a probability below 1.
      {"lora_r", at_least(0)},
      {"lora_alpha", above(0)},
      {"lora_dropout", {.min = 0, .max = 1, .max_open = true}},
      {"router_bias_update_rate", at_least(0)},
  };
  return table;
}

}  // namespace

const NumericRange* training_option_range(std::string_view name) {
  auto it = ranges().find(name);
  return it == ranges().end() ? nullptr : &it->second;
}

void check_training_option(std::string_view name, double value) {
  const NumericRange* r = training_option_range(name);
  MF_CHECK(r == nullptr || r->contains(value), kInvalidArgument, name, " must be ", r->str(), ", got ", value);
}

void validate(const TrainingArguments& a) {
  const std::pair<const char*, double> fields[] = {
      {"learning_rate", a.learning_rate},
      {"per_device_train_batch_size", static_cast<double>(a.per_device_train_batch_size)},
      {"per_device_eval_batch_size", static_cast<double>(a.per_device_eval_batch_size)},
      {"gradient_accumulation_steps", static_cast<double>(a.gradient_accumulation_steps)},
      {"max_steps", static_cast<double>(a.max_steps)},
      {"num_train_epochs", a.num_train_epochs},
      {"warmup_steps", static_cast<double>(a.warmup_steps)},
      {"warmup_ratio", a.warmup_ratio},
      {"weight_decay", a.weight_decay},
      {"adam_beta1", a.adam_beta1},
      {"adam_beta2", a.adam_beta2},
      {"adam_epsilon", a.adam_epsilon},
      {"max_grad_norm", a.max_grad_norm},
      {"logging_steps", static_cast<double>(a.logging_steps)},
      {"eval_steps", static_cast<double>(a.eval_steps)},
      {"save_steps", static_cast<double>(a.save_steps)},
      {"save_total_limit", static_cast<double>(a.save_total_limit)},
      {"recompute_full_layers", static_cast<double>(a.recompute_full_layers)},
      {"activation_offload_layers", static_cast<double>(a.activation_offload_layers)},
      {"zero_stage", static_cast<double>(a.zero_stage)},
      {"router_bias_update_rate", a.router_bias_update_rate},
  };
  for (const auto& [name, value] : fields) check_training_option(name, value);
  parse_lr_schedule(a.lr_scheduler_type);
  parse_recompute(a.gradient_checkpointing);
  parse_optimizer_precision(a.optimizer_precision);
  MF_CHECK(a.nan_policy == "stop" || a.nan_policy == "skip", kInvalidArgument, "nan_policy must be stop or skip, got '",
           a.nan_policy, "'");
  MF_CHECK(a.save_quantization == "none" || a.save_quantization == "mxfp4", kInvalidArgument,
           "save_quantization must be none or mxfp4, got '", a.save_quantization, "'");
  MF_CHECK(a.eval_strategy == "no" || a.eval_strategy == "steps" || a.eval_strategy == "epoch", kInvalidArgument,
           "eval_strategy must be no, steps or epoch, got '", a.eval_strategy, "'");
}

void validate_trainer_state(const nlohmann::json& state, const std::string& path) {
  MF_CHECK(state.is_object(), kFormat, path, ": expected a JSON object, got ", state.type_name());
  auto step_count = [&](const char* key) {
    MF_CHECK(state.contains(key), kFormat, path, ": '", key, "' is missing");
    const nlohmann::json& v = state.at(key);
    const bool fits = v.is_number_integer() &&
                      (!v.is_number_unsigned() || v.get<uint64_t>() <= std::numeric_limits<int64_t>::max());
    MF_CHECK(fits && v.get<int64_t>() >= 0, kFormat, path, ": '", key, "' must be an integer >= 0, got ", v.dump());
    return v.get<int64_t>();
  };
  const int64_t global_step = step_count("global_step");
  const int64_t optimizer_steps = step_count("optimizer_steps");
  // Skipped batches (nan_policy=skip) advance global_step but not the optimizer.
  MF_CHECK(optimizer_steps <= global_step, kFormat, path, ": 'optimizer_steps' (", optimizer_steps,
           ") exceeds 'global_step' (", global_step, ")");
  MF_CHECK(state.contains("data_position") && state.at("data_position").is_object(), kFormat, path,
           ": 'data_position' must be an object");
  MF_CHECK(!state.contains("log_history") || state.at("log_history").is_array(), kFormat, path,
           ": 'log_history' must be an array");
  MF_CHECK(!state.contains("run_fingerprint") || state.at("run_fingerprint").is_object(), kFormat, path,
           ": 'run_fingerprint' must be an object");
}

}  // namespace moeforge
