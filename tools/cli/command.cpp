#include "command.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/error.h"

namespace moeforge::cli {
namespace {

std::vector<CommandSpec>& registry() {
  static std::vector<CommandSpec> commands;
  return commands;
}

std::string normalise_flag(std::string s) {
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

const OptionSpec* find_option(const CommandSpec& command, const std::string& flag) {
  const std::string key = normalise_flag(flag);
  for (const auto& o : command.options) {
    if (o.name == key) return &o;
    for (const auto& a : o.aliases)
      if (normalise_flag(a) == key) return &o;
  }
  return nullptr;
}

// An optional sign, digits and, for a real number, a decimal point and an exponent: what strtoll
// and strtod accept beyond that (hex, nan, inf, leading blanks) is refused before they see it.
bool is_decimal(const std::string& s, bool integer) {
  size_t i = 0, digits = 0;
  auto sign = [&] {
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  };
  auto count_digits = [&] {
    size_t n = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) ++n;
    return n;
  };
  sign();
  digits += count_digits();
  if (!integer && i < s.size() && s[i] == '.') {
    ++i;
    digits += count_digits();
  }
  if (digits == 0) return false;
  if (!integer && i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    sign();
    if (count_digits() == 0) return false;
  }
  return i == s.size();
}

void check_value(const OptionSpec& o, const std::string& value, const std::string& where) {
  auto bad = [&](const char* what) {
    fail(ErrorCode::kInvalidArgument, where, ": option '", o.name, "' expects ", what, ", got '",
         value, "'");
  };
  double number = 0;
  switch (o.type) {
    case OptionType::kInt: {
      if (!is_decimal(value, true)) bad("an integer");
      errno = 0;
      number = static_cast<double>(std::strtoll(value.c_str(), nullptr, 10));
      if (errno == ERANGE) bad("an integer in the 64-bit range");
      break;
    }
    case OptionType::kFloat: {
      if (!is_decimal(value, false)) bad("a decimal number");
      errno = 0;
      number = std::strtod(value.c_str(), nullptr);
      if (errno == ERANGE) bad("a number in the range of a double");
      break;
    }
    case OptionType::kBool:
      if (value != "true" && value != "false" && value != "1" && value != "0") bad("true or false");
      break;
    case OptionType::kChoice:
      if (std::find(o.choices.begin(), o.choices.end(), value) == o.choices.end()) {
        std::string list;
        for (const auto& c : o.choices) list += (list.empty() ? "" : ", ") + c;
        bad(str_cat("one of ", list).c_str());
      }
      break;
    default: break;
  }
  if (o.range && !o.range->contains(number))
    fail(ErrorCode::kInvalidArgument, where, ": option '", o.name, "' must be ", o.range->str(), ", got '", value,
         "'");
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

CommandRegistration::CommandRegistration(CommandSpec spec) { registry().push_back(std::move(spec)); }

const std::vector<CommandSpec>& all_commands() { return registry(); }

bool ParsedOptions::has(const std::string& name) const {
  auto it = values_.find(name);
  return it != values_.end() && it->second.second != ValueSource::kDefault;
}

bool ParsedOptions::is_set(const std::string& name) const { return values_.count(name) != 0; }

const std::string& ParsedOptions::str(const std::string& name) const {
  auto it = values_.find(name);
  MF_CHECK(it != values_.end(), kInvalidArgument, "option '", name, "' is required");
  return it->second.first;
}

int64_t ParsedOptions::integer(const std::string& name) const {
  return std::strtoll(str(name).c_str(), nullptr, 10);
}

double ParsedOptions::real(const std::string& name) const {
  return std::strtod(str(name).c_str(), nullptr);
}

bool ParsedOptions::flag(const std::string& name) const {
  if (!is_set(name)) return false;
  const std::string& v = str(name);
  return v == "true" || v == "1";
}

ValueSource ParsedOptions::source(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? ValueSource::kDefault : it->second.second;
}

void ParsedOptions::set(const std::string& name, std::string value, ValueSource source) {
  values_[name] = {std::move(value), source};
}

namespace {

// Throws when `name` is a Transformers 4.x name of one of the command's options, naming the option.
void fail_renamed(const CommandSpec& command, const std::string& name, const std::string& where) {
  for (const auto& o : command.options)
    if (std::find(o.former_names.begin(), o.former_names.end(), name) != o.former_names.end())
      fail(ErrorCode::kInvalidArgument, where, ": '", name, "' is the Transformers 4.x name of '", o.name,
           "' (its name in Transformers 5 and moeforge)");
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(3, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(normalise_flag(word), c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

namespace {

// YAML scalar or list of scalars -> the option's string form (lists joined by commas).
std::string yaml_value_string(const YAML::Node& node, const std::string& key, const std::string& path) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsNull()) return "";
  if (node.IsSequence()) {
    std::string joined;
    for (const auto& item : node) {
      MF_CHECK(item.IsScalar(), kFormat, path, ":", item.Mark().line + 1, ": key '", key,
               "' must be a list of plain values");
      joined += (joined.empty() ? "" : ",") + item.Scalar();
    }
    return joined;
  }
  fail(ErrorCode::kFormat, path, ":", node.Mark().line + 1, ": key '", key, "' must be a value or a list");
}

// Applies a YAML recipe (a flat mapping of option names to values) below environment and flags.
void apply_recipe(const CommandSpec& command, const std::string& path, ParsedOptions& parsed,
                  const std::vector<std::string>& names) {
  // The two things people pass here by mistake: a model folder and a dataset.
  const bool takes_data = find_option(command, "train_file") != nullptr;
  if (std::filesystem::is_directory(path))
    fail(ErrorCode::kInvalidArgument, "recipe ", path, " is a directory: the one positional argument of 'moeforge ",
         command.name, "' is a YAML recipe",
         find_option(command, "model") != nullptr ? str_cat("; a model folder goes in --model ", path) : std::string());
  const std::string ext = std::filesystem::path(path).extension().string();
  if (takes_data && (ext == ".jsonl" || ext == ".json" || ext == ".txt" || ext == ".mfbin" || ext == ".parquet"))
    fail(ErrorCode::kInvalidArgument, "recipe ", path, " looks like a dataset (", ext,
         "): the one positional argument of 'moeforge ", command.name, "' is a YAML recipe; pass data as --train_file ",
         path);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    fail(ErrorCode::kNotFound, "recipe file ", path, " cannot be read");
  } catch (const YAML::Exception& e) {
    fail(ErrorCode::kFormat, path, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg);
  }
  if (root.IsNull()) return;
  MF_CHECK(root.IsMap(), kFormat, path, ": a recipe is a mapping of option names to values");
  std::map<std::string, int> first_line;  // option name -> the line that set it (yaml-cpp keeps repeated keys)
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const OptionSpec* o = find_option(command, key);
    if (o == nullptr || o->name == "recipe") {
      const std::string where = str_cat(path, ":", kv.first.Mark().line + 1);
      fail_renamed(command, key, where);
      std::string hint = closest_match(key, names);
      fail(ErrorCode::kInvalidArgument, where, ": unknown key '", key, "'",
           hint.empty() ? std::string() : str_cat(" (did you mean '", hint, "'?)"));
    }
    const int line = kv.first.Mark().line + 1;
    if (auto [it, fresh] = first_line.emplace(o->name, line); !fresh)
      fail(ErrorCode::kInvalidArgument, path, ":", line, ": duplicate key '", key, "': option '", o->name,
           "' is already set on line ", it->second);
    std::string value = yaml_value_string(kv.second, key, path);
    check_value(*o, value, str_cat(path, ":", line));
    parsed.set(o->name, value, ValueSource::kRecipe);
  }
}

}  // namespace

ParsedOptions parse_options(const CommandSpec& command, const std::vector<std::string>& args) {
  ParsedOptions defaults_and_recipe;
  for (const auto& o : command.options)
    if (!o.default_value.empty()) defaults_and_recipe.set(o.name, o.default_value, ValueSource::kDefault);
  std::vector<std::string> names;
  for (const auto& o : command.options) names.push_back(o.name);

  // Flags first, into their own set, so the recipe they name can be applied beneath them.
  ParsedOptions flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      auto pos = std::find_if(command.options.begin(), command.options.end(), [&](const auto& o) {
        return o.positional && !flags.has(o.name);
      });
      MF_CHECK(pos != command.options.end(), kInvalidArgument, "moeforge ", command.name,
               ": unexpected argument '", arg, "'");
      check_value(*pos, arg, str_cat("moeforge ", command.name, " (argument)"));
      flags.set(pos->name, arg, ValueSource::kFlag);
      continue;
    }
    std::string flag = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    const OptionSpec* o = find_option(command, flag);
    if (o == nullptr) {
      fail_renamed(command, flag, str_cat("moeforge ", command.name));
      std::string hint = closest_match(flag, names);
      fail(ErrorCode::kInvalidArgument, "moeforge ", command.name, ": unknown option '--", flag,
           "'", hint.empty() ? std::string() : str_cat(" (did you mean '--", hint, "'?)"),
           "; see 'moeforge ", command.name, " --help'");
    }
    if (!has_value) {
      if (o->type == OptionType::kBool) {
        value = "true";
      } else {
        MF_CHECK(i + 1 < args.size(), kInvalidArgument, "moeforge ", command.name, ": option '--",
                 flag, "' needs a value");
        value = args[++i];
      }
    }
    check_value(*o, value, str_cat("moeforge ", command.name, " (flag --", flag, ")"));
    flags.set(o->name, value, ValueSource::kFlag);
  }

  ParsedOptions parsed = defaults_and_recipe;
  if (flags.has("recipe")) apply_recipe(command, flags.str("recipe"), parsed, names);
  // Environment: MOEFORGE_LEARNING_RATE=... sits between recipes and flags.
  for (const auto& o : command.options) {
    std::string env = "MOEFORGE_" + o.name;
    std::transform(env.begin(), env.end(), env.begin(), ::toupper);
    if (const char* v = std::getenv(env.c_str())) {
      check_value(o, v, "environment variable " + env);
      parsed.set(o.name, v, ValueSource::kEnvironment);
    }
  }
  for (const auto& [name, value] : flags.values()) parsed.set(name, value.first, value.second);

  for (const auto& o : command.options)
    MF_CHECK(!o.required || parsed.is_set(o.name), kInvalidArgument, "moeforge ", command.name,
             ": option '--", o.name, "' is required");
  return parsed;
}

std::string command_help(const CommandSpec& command) {
  std::ostringstream os;
  os << "usage: moeforge " << command.name << " [options]\n\n" << command.summary << "\n";
  if (!command.description.empty()) os << "\n" << command.description << "\n";
  os << "\noptions (also as MOEFORGE_<NAME> environment variables):\n";
  for (const auto& o : command.options) {
    std::string left = "  --" + o.name;
    for (const auto& a : o.aliases) left += ", --" + a;
    switch (o.type) {
      case OptionType::kInt: left += " N"; break;
      case OptionType::kFloat: left += " X"; break;
      case OptionType::kPath: left += " PATH"; break;
      case OptionType::kString: left += " S"; break;
      case OptionType::kChoice: {
        std::string c;
        for (const auto& ch : o.choices) c += (c.empty() ? "" : "|") + ch;
        left += " " + c;
        break;
      }
      case OptionType::kBool: break;
    }
    os << left;
    if (left.size() < 34)
      os << std::string(34 - left.size(), ' ');
    else
      os << "\n" << std::string(34, ' ');
    os << o.help;
    if (o.required) os << " (required)";
    if (!o.default_value.empty()) os << " [default: " << o.default_value << "]";
    if (o.range) os << " [range: " << o.range->str() << "]";
    os << "\n";
  }
  return os.str();
}

OptionSpec device_option() {
  return {.name = "device", .type = OptionType::kChoice, .default_value = "cpu", .help = "backend",
          .choices = {"cpu", "cuda"}};
}

OptionSpec dtype_option() {
  return {.name = "dtype", .type = OptionType::kChoice, .default_value = "auto",
          .help = "compute dtype (auto: float32 on the CPU, bfloat16 on CUDA)",
          .choices = {"auto", "float32", "bfloat16"}};
}

OptionSpec save_quantization_option() {
  return {.name = "save_quantization", .type = OptionType::kChoice, .default_value = "none",
          .help = "the saved model's weights: none (dense, in the config's dtype) or mxfp4 (GPT-OSS's experts as\n"
                  "MXFP4 blocks and scales with the release's quantization_config, served as the original is)",
          .choices = {"none", "mxfp4"}};
}

Device option_device(const ParsedOptions& o) { return o.str("device") == "cuda" ? Device::kCUDA : Device::kCPU; }

DType option_dtype(const ParsedOptions& o) {
  if (o.str("dtype") == "auto") return option_device(o) == Device::kCUDA ? DType::kBF16 : DType::kF32;
  return *dtype_from_torch_name(o.str("dtype"));
}

}  // namespace moeforge::cli
