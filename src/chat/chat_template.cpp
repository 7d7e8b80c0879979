#include "chat/chat_template.h"

#include <fstream>
#include <sstream>

#include "chat/training_templates.h"
#include "core/error.h"
#include "io/json.h"

namespace moeforge::chat {

namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), kIo, "cannot read ", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A special token entry: a string or an AddedToken object {"content": ...}; null means unset.
std::optional<std::string> token_text(const nlohmann::ordered_json& v, const std::string& key, const fs::path& file) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail(ErrorCode::kFormat, file.string(), ": special token '", key, "' is neither a string nor an AddedToken object");
}

}  // namespace

ChatTemplate ChatTemplate::from_folder(const fs::path& folder, const fs::path& template_file) {
  const fs::path config_path = folder / "tokenizer_config.json";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (fs::exists(config_path)) {
    config = parse_json_text<OrderedJson>(read_text(config_path), config_path.string());
    MF_CHECK(config.is_object(), kFormat, config_path.string(), ": expected a JSON object");
  }

  std::map<std::string, std::string> templates;
  std::string source_name;
  if (template_file.string().starts_with(kTrainingTemplatePrefix)) {
    const std::string name = template_file.string().substr(kTrainingTemplatePrefix.size());
    templates["default"] = training_template_named(name).source;
    source_name = template_file.string();
  } else if (!template_file.empty()) {
    MF_CHECK(fs::is_regular_file(template_file), kNotFound, "chat template file ", template_file.string(),
             " does not exist");
    templates["default"] = read_text(template_file);
    source_name = template_file.string();
  }
  const fs::path jinja_path = folder / "chat_template.jinja";
  const fs::path extra_dir = folder / "additional_chat_templates";
  if (templates.empty() && fs::exists(jinja_path)) {
    templates["default"] = read_text(jinja_path);
    source_name = jinja_path.string();
  }
  if (template_file.empty() && fs::is_directory(extra_dir)) {
    for (const auto& entry : fs::directory_iterator(extra_dir)) {
      if (entry.path().extension() == ".jinja") templates[entry.path().stem().string()] = read_text(entry.path());
    }
    if (source_name.empty()) source_name = extra_dir.string();
  }
  if (templates.empty() && config.contains("chat_template") && !config["chat_template"].is_null()) {
    const auto& ct = config["chat_template"];
    source_name = config_path.string() + " chat_template";
    if (ct.is_string()) {
      templates["default"] = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& item : ct) {
        MF_CHECK(item.is_object() && item.contains("name") && item["name"].is_string() && item.contains("template") &&
                     item["template"].is_string(),
                 kFormat, config_path.string(), ": chat_template list entries need string 'name' and 'template'");
        templates[item["name"].get<std::string>()] = item["template"].get<std::string>();
      }
    } else {
      fail(ErrorCode::kFormat, config_path.string(), ": chat_template must be a string or a list of named templates");
    }
  }
  MF_CHECK(!templates.empty(), kNotFound, folder.string(),
           " has no chat template (no chat_template.jinja and no chat_template in tokenizer_config.json)");

  // Transformers' special_tokens_map: the named attributes that are set, then model-specific names.
  std::vector<std::pair<std::string, std::string>> special;
  auto add = [&](const std::string& key, const nlohmann::ordered_json& v) {
    if (auto text = token_text(v, key, config_path)) {
      for (auto& [k, existing] : special)
        if (k == key) {
          existing = *text;
          return;
        }
      special.emplace_back(key, *text);
    }
  };
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (config.contains(key)) add(key, config[key]);
  if (config.contains("extra_special_tokens") && config["extra_special_tokens"].is_object())
    for (const auto& [k, v] : config["extra_special_tokens"].items()) add(k, v);
  for (const auto& [k, v] : config.items()) {
    bool named = k == "bos_token" || k == "eos_token" || k == "unk_token" || k == "sep_token" || k == "pad_token" ||
                 k == "cls_token" || k == "mask_token";
    if (!named && k.size() > 6 && k.compare(k.size() - 6, 6, "_token") == 0 &&
        (v.is_string() || (v.is_object() && v.contains("content"))))
      add(k, v);
  }
  return ChatTemplate(std::move(templates), std::move(special), source_name);
}

ChatTemplate::ChatTemplate(std::map<std::string, std::string> templates,
                           std::vector<std::pair<std::string, std::string>> special_tokens, std::string source_name)
    : sources_(std::move(templates)), special_tokens_(std::move(special_tokens)), source_name_(std::move(source_name)) {
  for (auto& [name, source] : sources_) {
    std::string label = sources_.size() == 1 ? source_name_ : source_name_ + "[" + name + "]";
    templates_.emplace(name, Template::parse(source, label));
  }
}

std::optional<ChatTemplate> ChatTemplate::training_variant() const {
  if (sources_.size() != 1) return std::nullopt;
  const TrainingTemplate* variant = training_template_for(sources_.begin()->second);
  if (variant == nullptr) return std::nullopt;
  return ChatTemplate({{"default", std::string(variant->source)}}, special_tokens_,
                      str_cat(kTrainingTemplatePrefix, variant->name));
}

const Template& ChatTemplate::select(bool has_tools) const {
  if (templates_.size() == 1 && templates_.count("default")) return templates_.at("default");
  if (has_tools && templates_.count("tool_use")) return templates_.at("tool_use");
  if (templates_.count("default")) return templates_.at("default");
  std::string names;
  for (const auto& [name, t] : templates_) names += (names.empty() ? "" : ", ") + name;
  fail(ErrorCode::kInvalidArgument, source_name_, " has several chat templates and no 'default' (", names, ")");
}

RenderResult ChatTemplate::render(const ChatRequest& request, const RenderLimits& limits) const {
  MF_CHECK(request.messages.is_array(), kInvalidArgument, "messages must be a JSON array");
  MF_CHECK(!request.messages.empty(), kInvalidArgument,
           "Cannot apply chat template to an empty conversation. Provide at least one message.");
  MF_CHECK(request.tools.is_null() || request.tools.is_array(), kInvalidArgument, "tools must be a JSON array");
  MF_CHECK(request.extra_variables.is_object(), kInvalidArgument, "extra template variables must be a JSON object");
  const bool has_tools = !request.tools.is_null();
  ValueDict variables;
  variables.set("messages", Value::from_json(request.messages));
  variables.set("tools", has_tools ? Value::from_json(request.tools) : Value::none());
  variables.set("documents", Value::none());
  variables.set("add_generation_prompt", Value(request.add_generation_prompt));
  for (const auto& [k, v] : special_tokens_) variables.set(k, Value(v));
  for (const auto& [k, v] : request.extra_variables.items()) variables.set(k, Value::from_json(v));
  return select(has_tools).render(variables, limits);
}

}  // namespace moeforge::chat
