// moeforge::AutoTokenizer: the tokenizer, special tokens and chat template of a Hugging Face folder,
// with Transformers' behaviour (ids equal to the `tokenizers` library, apply_chat_template with
// Transformers' variables and assistant masks).
//
//   moeforge::PreTrainedTokenizer tok = moeforge::AutoTokenizer::from_pretrained("Qwen/Qwen3-0.6B");
//   std::vector<int32_t> ids = tok.encode("Hello").ids;
//   std::string prompt = tok.apply_chat_template(messages, /*add_generation_prompt=*/true);
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/assistant_mask.h"
#include "chat/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moeforge {

class PreTrainedTokenizer {
 public:
  Encoding encode(const std::string& text, bool add_special_tokens = true) const;
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // The rendered conversation (tools: null for none; extra_variables: e.g. {"enable_thinking": false}).
  std::string apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                  const nlohmann::ordered_json& tools = nullptr,
                                  const nlohmann::ordered_json& extra_variables = nlohmann::ordered_json::object()) const;
  // The same, tokenized as Transformers' tokenize=True (no added special tokens), with the
  // assistant mask of return_assistant_tokens_mask=True ({% generation %} spans).
  chat::MaskedEncoding apply_chat_template_ids(
      const nlohmann::ordered_json& messages, bool add_generation_prompt, const nlohmann::ordered_json& tools = nullptr,
      const nlohmann::ordered_json& extra_variables = nlohmann::ordered_json::object()) const;
  bool has_chat_template() const { return chat_ != nullptr; }
  // Replaces the chat template (Transformers: tokenizer.chat_template = source), e.g. with a training
  // variant that has {% generation %} blocks. A template that does not parse is an Error naming where.
  void set_chat_template(const std::string& source);

  // Special tokens named in tokenizer_config.json (nullopt when unset).
  const std::optional<std::string>& eos_token() const { return eos_token_; }
  const std::optional<std::string>& pad_token() const { return pad_token_; }
  const std::optional<std::string>& bos_token() const { return bos_token_; }
  std::optional<int32_t> token_to_id(const std::string& token) const { return tokenizer_.token_to_id(token); }
  std::optional<int64_t> model_max_length() const { return model_max_length_; }
  std::string padding_side() const { return padding_side_; }  // "right" unless the config says "left"
  size_t vocab_size() const { return tokenizer_.vocab_size(); }

  const Tokenizer& tokenizer() const { return tokenizer_; }
  const chat::ChatTemplate* chat_template() const { return chat_.get(); }  // null without one
  const std::filesystem::path& folder() const { return folder_; }

  PreTrainedTokenizer(Tokenizer tokenizer, std::filesystem::path folder);
  PreTrainedTokenizer(PreTrainedTokenizer&&) noexcept;
  PreTrainedTokenizer& operator=(PreTrainedTokenizer&&) noexcept;
  ~PreTrainedTokenizer();

 private:
  const chat::ChatTemplate& require_chat_template() const;

  Tokenizer tokenizer_;
  std::filesystem::path folder_;
  std::unique_ptr<chat::ChatTemplate> chat_;
  std::optional<std::string> eos_token_, pad_token_, bos_token_;
  std::optional<int64_t> model_max_length_;
  std::string padding_side_ = "right";
};

struct AutoTokenizer {
  // A folder holding tokenizer.json (and tokenizer_config.json), or a model id in the local cache.
  static PreTrainedTokenizer from_pretrained(const std::string& path_or_id);
};

}  // namespace moeforge
