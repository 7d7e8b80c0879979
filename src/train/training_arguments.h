// TrainingArguments: the trainer's settings under Hugging Face TrainingArguments' names (and their
// defaults where moeforge has the same notion), so a recipe reads like an HF script's arguments.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moeforge {

struct TrainingArguments {
  std::string output_dir = "moeforge-output";
  double learning_rate = 5e-5;
  int64_t per_device_train_batch_size = 8;
  int64_t per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  double num_train_epochs = 3.0;
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;  // used when warmup_steps is 0
  std::string lr_scheduler_type = "linear";
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;
  int64_t logging_steps = 10;
  int64_t eval_steps = 0;        // 0: evaluate at the end only
  // When to evaluate during training (Transformers' names; every strategy evaluates at the end too):
  // steps every eval_steps, epoch at the end of each epoch, no never.
  std::string eval_strategy = "steps";
  int64_t save_steps = 500;      // 0: save at the end only
  int64_t save_total_limit = 0;  // 0: keep every checkpoint
  uint64_t seed = 42;
  std::string gradient_checkpointing = "none";  // none | selective | full
  int64_t recompute_full_layers = 0;            // the first N layers recompute fully (ModelOptions)
  int64_t activation_offload_layers = 0;        // the first N layers keep activations on the host (ModelOptions)
  std::string resume_from_checkpoint;           // a checkpoint folder, or "latest" in output_dir
  bool overwrite_output_dir = false;            // remove an earlier run's checkpoints and metrics first
  std::vector<std::string> report_to;           // "tensorboard"
  std::string optimizer_precision = "fp32-master";
  // DeepSpeed's ZeRO stages of data parallelism: 1 shards the optimizer state over the copies of the
  // parameters, 2 their gradients too (OptimizerSharding::shard_gradients).
  int64_t zero_stage = 1;
  std::string nan_policy = "stop";              // stop | skip
  // How save_model writes the trained weights (CausalLM::saved_weights_named): none (dense, in the
  // config's dtype) or mxfp4 (GPT-OSS's experts in its release's layout, to serve as the original).
  // Checkpoints stay dense: a resume reads their weights exactly.
  std::string save_quantization = "none";
  std::vector<std::string> freeze;              // parameter groups that do not train
  // DeepSeek-V3's auxiliary-loss-free balancing: after each optimizer step every router's
  // e_score_correction_bias moves by this much towards balance (CausalLM::update_router_biases);
  // 0: the biases stay as loaded, as Transformers leaves them.
  double router_bias_update_rate = 0.0;
};

// The values a numeric training option accepts: finite numbers in an interval whose ends may be
// open, plus an optional lone value outside it (max_steps: -1 means "use num_train_epochs").
struct NumericRange {
  double min = -HUGE_VAL, max = HUGE_VAL;
  bool min_open = false, max_open = false;
  std::optional<double> also;

  bool contains(double v) const {
    if (!std::isfinite(v)) return false;
    if (also && v == *also) return true;
    return (min_open ? v > min : v >= min) && (max_open ? v < max : v <= max);
  }
  // ">= 0", "in [0, 1)", "-1 or >= 1" (inline: the command-line parser links no more than core).
  std::string str() const {
    std::ostringstream os;
    if (also) os << *also << " or ";
    const bool has_min = std::isfinite(min), has_max = std::isfinite(max);
    if (has_min && has_max)
      os << "in " << (min_open ? "(" : "[") << min << ", " << max << (max_open ? ")" : "]");
    else if (has_min)
      os << (min_open ? "> " : ">= ") << min;
    else if (has_max)
      os << (max_open ? "< " : "<= ") << max;
    else
      os << "finite";
    return os.str();
  }
};

// The range of each numeric training option by its name: TrainingArguments' fields and the data
// options max_seq_length and eval_ratio, and the LoRA options lora_r, lora_alpha and lora_dropout.
// nullptr for an option without one. The command line's option table, validate() and the Python
// TrainingArguments all take their ranges from here.
const NumericRange* training_option_range(std::string_view name);

// Throws Error(kInvalidArgument) "<name> must be <range>, got <value>" when `name` has a range
// that `value` is outside of.
void check_training_option(std::string_view name, double value);

// Checks every field of `args` (ranges and the names of schedules, policies and modes); throws
// Error(kInvalidArgument) naming the first bad field and its value.
void validate(const TrainingArguments& args);

// Checks a checkpoint's trainer_state.json as read back for resume: global_step and
// optimizer_steps integers with 0 <= optimizer_steps <= global_step, data_position an object,
// log_history (if present) an array, run_fingerprint (if present) an object. Throws Error(kFormat)
// naming `path`, the field and its value.
void validate_trainer_state(const nlohmann::json& state, const std::string& path);

}  // namespace moeforge
