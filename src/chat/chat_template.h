// Transformers' apply_chat_template in C++: the template and special tokens read from a tokenizer
// folder, rendered with the variables Transformers passes.
//
// Where the template comes from (as AutoTokenizer.from_pretrained): chat_template.jinja beside
// tokenizer_config.json (plus chat_templates/<name>.jinja for named ones) when present, else
// tokenizer_config.json's "chat_template" (a string, or a list of {"name", "template"}). With
// several named templates, "tool_use" is chosen when tools are given and it exists, else "default".
//
// The variables: messages, tools (None when absent), documents (None), add_generation_prompt, the
// named special tokens of tokenizer_config.json that are set (bos_token, eos_token, unk_token,
// sep_token, pad_token, cls_token, mask_token, and the names of an "extra_special_tokens" dict, as
// Transformers' special_tokens_map gives them), then any extra variables (enable_thinking, ...).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/jinja.h"

namespace moeforge::chat {

struct ChatRequest {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;  // null: no tools
  bool add_generation_prompt = false;
  nlohmann::ordered_json extra_variables = nlohmann::ordered_json::object();  // e.g. enable_thinking
};

class ChatTemplate {
 public:
  // Reads the folder's tokenizer_config.json (and chat_template.jinja / chat_templates/ if present).
  // A folder without any chat template is an Error(kNotFound) naming it. A `template_file` replaces
  // the folder's templates (Transformers: `tokenizer.chat_template = ...`), e.g. a training variant
  // with {% generation %} blocks; "moeforge:NAME" names one moeforge ships (training_templates.h).
  // The special tokens still come from the folder.
  static ChatTemplate from_folder(const std::filesystem::path& folder,
                                  const std::filesystem::path& template_file = {});

  // From explicit parts: named templates ("default" for a single one) and special tokens.
  ChatTemplate(std::map<std::string, std::string> templates,
               std::vector<std::pair<std::string, std::string>> special_tokens, std::string source_name);

  // Renders the conversation. An empty `messages` is an error, as in Transformers.
  RenderResult render(const ChatRequest& request, const RenderLimits& limits = {}) const;

  // The template chosen for a request with or without tools (Transformers' get_chat_template).
  const Template& select(bool has_tools) const;
  const std::vector<std::pair<std::string, std::string>>& special_tokens() const { return special_tokens_; }
  // Where the template came from: a file, "FOLDER/tokenizer_config.json chat_template", "moeforge:qwen3".
  const std::string& source_name() const { return source_name_; }

  // moeforge's training variant of this template with the same special tokens, when this is a
  // single template that one was made from (training_templates.h); else nullopt.
  std::optional<ChatTemplate> training_variant() const;

 private:
  std::map<std::string, Template> templates_;
  std::map<std::string, std::string> sources_;  // the text of each, to recognise a model's template
  std::vector<std::pair<std::string, std::string>> special_tokens_;
  std::string source_name_;
};

}  // namespace moeforge::chat
