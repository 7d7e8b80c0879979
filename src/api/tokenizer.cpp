#include "moeforge/tokenizer.h"

#include "core/error.h"
#include "io/hf_folder.h"
#include "io/json.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

// A special token of tokenizer_config.json: a string or an AddedToken object {"content": ...}.
std::optional<std::string> special_token(const Json& config, const char* key, const std::string& where) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  return require<std::string>(*it, "content", where + " (" + key + ")");
}

std::unique_ptr<chat::ChatTemplate> load_chat_template(const fs::path& folder) {
  if (!fs::exists(folder / "tokenizer_config.json") && !fs::exists(folder / "chat_template.jinja")) return nullptr;
  try {
    return std::make_unique<chat::ChatTemplate>(chat::ChatTemplate::from_folder(folder));
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kNotFound) throw;
    return nullptr;  // no chat template: apply_chat_template says so when called
  }
}

chat::ChatRequest chat_request(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                               const nlohmann::ordered_json& tools, const nlohmann::ordered_json& extra_variables) {
  MF_CHECK(messages.is_array(), kInvalidArgument, "messages must be a list of {'role', 'content'} dicts");
  MF_CHECK(extra_variables.is_object(), kInvalidArgument, "chat template variables must be a dict");
  return chat::ChatRequest{messages, tools, add_generation_prompt, extra_variables};
}

}  // namespace

PreTrainedTokenizer::PreTrainedTokenizer(Tokenizer tokenizer, fs::path folder)
    : tokenizer_(std::move(tokenizer)), folder_(std::move(folder)), chat_(load_chat_template(folder_)) {
  const fs::path config_path = folder_ / "tokenizer_config.json";
  if (!fs::exists(config_path)) return;
  const Json config = read_json_file(config_path);
  const std::string where = config_path.string();
  MF_CHECK(config.is_object(), kFormat, where, ": expected a JSON object");
  eos_token_ = special_token(config, "eos_token", where);
  pad_token_ = special_token(config, "pad_token", where);
  bos_token_ = special_token(config, "bos_token", where);
  // Tokenizers without a limit carry a huge float (int(1e30)); that means none.
  if (std::optional<double> limit = get_optional<double>(config, "model_max_length", where); limit && *limit < 1e15)
    model_max_length_ = static_cast<int64_t>(*limit);
  if (std::optional<std::string> side = get_optional<std::string>(config, "padding_side", where)) {
    MF_CHECK(*side == "left" || *side == "right", kFormat, where, ": padding_side '", *side,
             "' is neither 'left' nor 'right'");
    padding_side_ = *side;
  }
}

PreTrainedTokenizer::PreTrainedTokenizer(PreTrainedTokenizer&&) noexcept = default;
PreTrainedTokenizer& PreTrainedTokenizer::operator=(PreTrainedTokenizer&&) noexcept = default;
PreTrainedTokenizer::~PreTrainedTokenizer() = default;

PreTrainedTokenizer AutoTokenizer::from_pretrained(const std::string& path_or_id) {
  fs::path folder = resolve_model_folder(path_or_id);
  return PreTrainedTokenizer(Tokenizer::from_file(folder), folder);
}

Encoding PreTrainedTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  return tokenizer_.encode(text, add_special_tokens);
}

std::vector<Encoding> PreTrainedTokenizer::encode_batch(const std::vector<std::string>& texts,
                                                        bool add_special_tokens) const {
  return tokenizer_.encode_batch(texts, add_special_tokens);
}

std::string PreTrainedTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return tokenizer_.decode(ids, skip_special_tokens);
}

void PreTrainedTokenizer::set_chat_template(const std::string& source) {
  std::vector<std::pair<std::string, std::string>> special;
  if (chat_ != nullptr) {
    special = chat_->special_tokens();
  } else {
    for (const auto& [name, token] : {std::pair{"bos_token", bos_token_}, std::pair{"eos_token", eos_token_},
                                      std::pair{"pad_token", pad_token_}})
      if (token) special.emplace_back(name, *token);
  }
  chat_ = std::make_unique<chat::ChatTemplate>(std::map<std::string, std::string>{{"default", source}},
                                               std::move(special), "chat_template (set by the caller)");
}

const chat::ChatTemplate& PreTrainedTokenizer::require_chat_template() const {
  MF_CHECK(chat_ != nullptr, kInvalidArgument, folder_.string(),
           ": this tokenizer has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja)");
  return *chat_;
}

std::string PreTrainedTokenizer::apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                                     const nlohmann::ordered_json& tools,
                                                     const nlohmann::ordered_json& extra_variables) const {
  return require_chat_template().render(chat_request(messages, add_generation_prompt, tools, extra_variables)).text;
}

chat::MaskedEncoding PreTrainedTokenizer::apply_chat_template_ids(const nlohmann::ordered_json& messages,
                                                                  bool add_generation_prompt,
                                                                  const nlohmann::ordered_json& tools,
                                                                  const nlohmann::ordered_json& extra_variables) const {
  return chat::generation_mask(require_chat_template(), tokenizer_,
                               chat_request(messages, add_generation_prompt, tools, extra_variables));
}

}  // namespace moeforge
