// The moeforge command line. Each subcommand lives in its own cmd_<name>.cpp and registers a
// CommandSpec: its options as one declarative table that drives parsing, environment variables,
// recipe files and --help alike. An option's canonical name is Hugging Face TrainingArguments' where
// one exists; flags accept it with underscores or dashes, and short aliases live in the same table.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"
#include "train/training_arguments.h"

namespace moeforge::cli {

enum class OptionType { kString, kPath, kInt, kFloat, kBool, kChoice };

struct OptionSpec {
  std::string name;                  // canonical: "learning_rate"
  OptionType type = OptionType::kString;
  std::string default_value;         // empty: no default
  std::string help;
  std::vector<std::string> aliases;  // "lr", "resume": also accepted as --lr, --resume
  std::vector<std::string> choices;  // for kChoice
  bool required = false;
  bool positional = false;           // may also be given as the first bare argument
  std::optional<NumericRange> range; // kInt, kFloat: the values accepted, from whatever source
  // Names Transformers 4.x used for this option ("per_gpu_train_batch_size"): refused with a message
  // naming this one, so a 4.x command line or recipe says what to write instead.
  std::vector<std::string> former_names;
};

// Where a resolved value came from, for the resolved-configuration file and error messages.
enum class ValueSource { kDefault, kRecipe, kEnvironment, kFlag };

class ParsedOptions {
 public:
  bool has(const std::string& name) const;       // given by the user (not a default)
  bool is_set(const std::string& name) const;    // has a value, default included
  const std::string& str(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double real(const std::string& name) const;
  bool flag(const std::string& name) const;
  ValueSource source(const std::string& name) const;
  const std::vector<std::string>& extra_args() const { return extra_; }

  // Used by the parser.
  void set(const std::string& name, std::string value, ValueSource source);
  void add_extra(std::string arg) { extra_.push_back(std::move(arg)); }
  const std::map<std::string, std::pair<std::string, ValueSource>>& values() const { return values_; }

 private:
  std::map<std::string, std::pair<std::string, ValueSource>> values_;
  std::vector<std::string> extra_;
};

struct CommandSpec {
  std::string name;
  std::string summary;  // one line for the command list
  std::string description;
  std::vector<OptionSpec> options;
  int (*run)(const ParsedOptions& options) = nullptr;
};

// Registers a command at static-initialisation time: `static CommandRegistration reg{spec()};`.
struct CommandRegistration {
  explicit CommandRegistration(CommandSpec spec);
};

const std::vector<CommandSpec>& all_commands();

// Parses argv (after the command name) against the command's table; env vars MOEFORGE_<NAME> apply
// below flags. Throws Error(kInvalidArgument) naming the bad flag and suggesting the closest one, or
// naming the option, where its value came from, the value and what it accepts. Numbers are decimal
// only (no hex, nan or inf) and must fit an int64 or a double.
ParsedOptions parse_options(const CommandSpec& command, const std::vector<std::string>& args);
std::string command_help(const CommandSpec& command);

// Closest candidate by edit distance, or empty when nothing is close.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// The --device and --dtype options every model-running command shares, and what they resolve to:
// dtype "auto" is float32 on the CPU (the reference backend) and bfloat16 on CUDA.
OptionSpec device_option();
OptionSpec dtype_option();
Device option_device(const ParsedOptions& o);
DType option_dtype(const ParsedOptions& o);
// --save_quantization none|mxfp4: how a saved model's weights are stored (CausalLM::saved_weights_named).
OptionSpec save_quantization_option();

}  // namespace moeforge::cli
