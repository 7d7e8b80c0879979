// The options of `moeforge train` (and the demo) as one table, under Hugging Face TrainingArguments'
// names, and their conversion into SessionOptions.
#pragma once

#include <vector>

#include "command.h"
#include "data/example_encoder.h"
#include "train/session.h"

namespace moeforge::cli {

std::vector<OptionSpec> training_option_table();
// How dataset lines become tokens and loss masks, under TRL's names: train and pretokenize take them.
std::vector<OptionSpec> encoder_option_table();
data::EncoderOptions encoder_options_from(const ParsedOptions& o);
SessionOptions session_options_from(const ParsedOptions& o);
// LoRA under PEFT's LoraConfig names (lora_r, lora_alpha, ..., adapter): train takes them, inspect plans
// with them. The configuration they give, or nothing when LoRA is off.
std::vector<OptionSpec> lora_option_table();
std::optional<LoraConfig> lora_options_from(const ParsedOptions& o);
// The resolved configuration as YAML, each value commented with where it came from.
std::string resolved_config_yaml(const CommandSpec& command, const ParsedOptions& o);

// The processes the launcher started (mpirun, srun; dist/launch.h), as a group for `device`'s
// collectives, or null when this one runs alone. The first rank logs as a single process does; the
// others only warnings and errors, marked with their rank.
std::shared_ptr<ProcessGroup> join_launch_world(Device device);

}  // namespace moeforge::cli
