// TrainingArguments: the trainer's settings under Hugging Face TrainingArguments' names (and their
// defaults where moeforge has the same notion), so a recipe reads like an HF script's arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
  int64_t save_steps = 500;      // 0: save at the end only
  int64_t save_total_limit = 0;  // 0: keep every checkpoint
  uint64_t seed = 42;
  std::string gradient_checkpointing = "none";  // none | selective | full
  std::string resume_from_checkpoint;           // a checkpoint folder, or "latest" in output_dir
  bool overwrite_output_dir = false;            // remove an earlier run's checkpoints and metrics first
  std::vector<std::string> report_to;           // "tensorboard"
  std::string optimizer_precision = "fp32-master";
  std::string nan_policy = "stop";              // stop | skip
  std::vector<std::string> freeze;              // parameter groups that do not train
};

}  // namespace moeforge
