// The options of `moeforge train` (and the demo) as one table, under Hugging Face TrainingArguments'
// names, and their conversion into SessionOptions.
#pragma once

#include <vector>

#include "command.h"
#include "train/session.h"

namespace moeforge::cli {

std::vector<OptionSpec> training_option_table();
SessionOptions session_options_from(const ParsedOptions& o);
// The resolved configuration as YAML, each value commented with where it came from.
std::string resolved_config_yaml(const CommandSpec& command, const ParsedOptions& o);

}  // namespace moeforge::cli
