// From one dataset example (a parsed JSONL line) to token ids and a per-token loss flag.
//
// Five forms, recognised by their keys (exactly one must be present):
//
//   {"text": "..."}        (the key is EncoderOptions::text_field, TRL's dataset_text_field)
//       tokenizer.encode(text, add_special_tokens=true): the post-processor adds what it adds (BOS for
//       DeepSeek-V3, nothing for Qwen3). Then, when tokenizer_config.json names an eos_token and the
//       last id is not already it, that EOS is appended, so the model learns where a document ends
//       (what TRL's SFTTrainer does for language-modelling data). Loss on every token.
//
//   {"messages": [{"role": ..., "content": ...}, ...], "tools": [...]}      ("tools" optional)
//       Rendered with the model's chat template (add_generation_prompt=false) and encoded without
//       added special tokens, as apply_chat_template(tokenize=True) does; when that template is one
//       moeforge ships a training variant of (chat/training_templates.h), with the variant instead.
//       Loss on assistant tokens only: the template's {% generation %} spans when it has such blocks
//       (Transformers' return_assistant_tokens_mask), else the prefix rule of chat/assistant_mask.h,
//       which includes each assistant turn's end-of-turn marker. No EOS is appended: the template
//       ends its turns.
//       Every message must be an object with a string "role" and a "content" (or "tool_calls").
//
//   {"prompt": ..., "completion": ...}
//       Strings: the plain concatenation prompt + completion is encoded with add_special_tokens=true
//       (no chat template, as TRL does for non-conversational prompt-completion data), then the EOS
//       rule of "text" applies. Loss on the tokens holding any byte of the completion, on special
//       tokens the post-processor added after the text and on the appended EOS; not on the prompt.
//       (Encoding the concatenation, not the parts, gives the ids the tokenizer produces for the whole
//       text; a token spanning the boundary counts as completion.)
//       Lists of messages (conversational, as TRL): rendered with the chat template as
//       prompt + completion; loss on the tokens after render(prompt, add_generation_prompt=true),
//       which must be a prefix of the full rendering. The model's own template, never a training
//       variant: earlier turns are context only, so they render as the model sees them at inference.
//
//   {"instruction": ..., "input": ..., "output": ...}                       (Alpaca; "input" optional)
//       The "messages" form with a user turn (the instruction, then a blank line and the input when
//       there is one) and an assistant turn (the output).
//
//   {"conversations": [{"from": "human", "value": ...}, ...]}                (ShareGPT)
//       The "messages" form, with `from` human / gpt / system as the roles user / assistant / system.
//
// EncoderOptions switch off the loss masks as TRL's SFTConfig does: assistant_only_loss = false
// trains on every token of a conversation (rendered with the model's own template, as
// apply_chat_template), completion_only_loss = false on the prompt too.
//
// Other keys are ignored. Errors are Error(kFormat) prefixed with `where` (FILE:LINE); a line in
// none of the forms names the forms and the keys it has.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moeforge::data {

struct EncodedExample {
  std::vector<uint32_t> ids;
  std::vector<uint8_t> loss_mask;  // 1 = trained on
};

// The id of tokenizer_config.json's eos_token (a string or an {"content": ...} object) in the folder
// holding `tokenizer_path` (a tokenizer.json or its folder); nullopt when there is no such file or key.
// An eos_token that is not in the vocabulary is an Error naming it.
std::optional<int32_t> eos_token_id_from_config(const std::filesystem::path& tokenizer_path, const Tokenizer& tokenizer);

// TRL SFTConfig's names and defaults (completion_only_loss None means true there).
struct EncoderOptions {
  std::string text_field = "text";
  bool assistant_only_loss = true;  // moeforge's default; TRL's is false
  bool completion_only_loss = true;
};

class ExampleEncoder {
 public:
  // `chat` may be null: "messages" and conversational prompt/completion lines are then errors.
  // Both must outlive the encoder.
  ExampleEncoder(const Tokenizer& tokenizer, const chat::ChatTemplate* chat, std::optional<int32_t> eos_token_id,
                 EncoderOptions options = {});

  EncodedExample encode(const nlohmann::ordered_json& example, const std::string& where) const;
  // One line of a plain text file: the "text" form's encoding of `text`.
  EncodedExample encode_text(const std::string& text, const std::string& where) const;

  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The template "messages" lines are rendered with: `chat`'s training variant (for the assistant
  // mask) or `chat`; null without.
  const chat::ChatTemplate* messages_template() const {
    return training_chat_ && options_.assistant_only_loss ? training_chat_.get() : chat_;
  }

 private:
  EncodedExample encode_messages(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                 const std::string& where) const;
  EncodedExample encode_prompt_completion(const nlohmann::ordered_json& example, const std::string& where) const;
  void append_eos(EncodedExample& out) const;

  const Tokenizer& tokenizer_;
  const chat::ChatTemplate* chat_;
  std::unique_ptr<const chat::ChatTemplate> training_chat_;
  std::optional<int32_t> eos_token_id_;
  EncoderOptions options_;
};

}  // namespace moeforge::data
