#include "data/example_encoder.h"

#include <algorithm>
#include <utility>

#include "chat/assistant_mask.h"
#include "core/error.h"
#include "io/json.h"

namespace moeforge::data {

using nlohmann::ordered_json;

std::optional<int32_t> eos_token_id_from_config(const std::filesystem::path& tokenizer_path, const Tokenizer& tokenizer) {
  const std::filesystem::path folder =
      std::filesystem::is_directory(tokenizer_path) ? tokenizer_path : tokenizer_path.parent_path();
  const std::filesystem::path config_path = folder / "tokenizer_config.json";
  if (!std::filesystem::exists(config_path)) return std::nullopt;
  const Json config = read_json_file(config_path);
  MF_CHECK(config.is_object(), kFormat, config_path.string(), ": expected a JSON object");
  auto it = config.find("eos_token");
  if (it == config.end() || it->is_null()) return std::nullopt;
  std::string eos;
  if (it->is_string()) {
    eos = it->get<std::string>();
  } else {
    eos = require<std::string>(*it, "content", config_path.string() + " (eos_token)");
  }
  std::optional<int32_t> id = tokenizer.token_to_id(eos);
  MF_CHECK(id.has_value(), kFormat, config_path.string(), ": eos_token '", eos, "' is not in the tokenizer's vocabulary");
  return id;
}

namespace {

std::vector<uint32_t> to_unsigned(const std::vector<int32_t>& ids) { return {ids.begin(), ids.end()}; }

// Every message an object with a string role and a content (or tool calls), as chat templates read them.
void check_messages(const ordered_json& messages, const std::string& where, const char* key) {
  MF_CHECK(messages.is_array(), kFormat, where, ": '", key, "' must be a list of messages, got ", messages.type_name());
  MF_CHECK(!messages.empty(), kFormat, where, ": '", key, "' is an empty list");
  for (size_t i = 0; i < messages.size(); ++i) {
    const ordered_json& m = messages[i];
    MF_CHECK(m.is_object(), kFormat, where, ": ", key, "[", i, "] must be an object, got ", m.type_name());
    auto role = m.find("role");
    MF_CHECK(role != m.end(), kFormat, where, ": ", key, "[", i, "] has no 'role'");
    MF_CHECK(role->is_string(), kFormat, where, ": ", key, "[", i, "].role must be a string, got ", role->type_name());
    MF_CHECK(m.contains("content") || m.contains("tool_calls"), kFormat, where, ": ", key, "[", i,
             "] (role '", role->get<std::string>(), "') has no 'content'");
  }
}

// Re-throws an error of the template engine or the mask rule with the line's location in front.
template <typename F>
auto with_location(const std::string& where, F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error(e.code(), str_cat(where, ": ", e.what()));
  }
}

}  // namespace

ExampleEncoder::ExampleEncoder(const Tokenizer& tokenizer, const chat::ChatTemplate* chat,
                               std::optional<int32_t> eos_token_id, EncoderOptions options)
    : tokenizer_(tokenizer), chat_(chat), eos_token_id_(eos_token_id), options_(std::move(options)) {
  MF_CHECK(!options_.text_field.empty(), kInvalidArgument, "dataset_text_field must not be empty");
  if (chat_ == nullptr) return;
  if (std::optional<chat::ChatTemplate> variant = chat_->training_variant())
    training_chat_ = std::make_unique<const chat::ChatTemplate>(std::move(*variant));
}

namespace {

// The forms of example_encoder.h, for the message of a line in none of them.
std::string accepted_forms(const std::string& text_field) {
  return str_cat("{\"", text_field, "\": ...}, {\"messages\": [...]}, {\"prompt\": ..., \"completion\": ...}, ",
                 "Alpaca {\"instruction\": ..., \"input\": ..., \"output\": ...} or ShareGPT ",
                 "{\"conversations\": [{\"from\": ..., \"value\": ...}, ...]}");
}

std::string key_list(const ordered_json& example) {
  std::string keys;
  for (const auto& [key, value] : example.items()) keys += str_cat(keys.empty() ? "" : ", ", "'", key, "'");
  return keys.empty() ? "none" : keys;
}

const ordered_json& string_field(const ordered_json& example, const char* key, const std::string& where) {
  auto it = example.find(key);
  MF_CHECK(it != example.end(), kFormat, where, ": an Alpaca line needs '", key, "'");
  MF_CHECK(it->is_string(), kFormat, where, ": '", key, "' must be a string, got ", it->type_name());
  return *it;
}

// Alpaca's instruction (and input) as the user's turn, its output as the assistant's.
ordered_json alpaca_messages(const ordered_json& example, const std::string& where) {
  std::string user = string_field(example, "instruction", where).get<std::string>();
  if (example.contains("input") && !example["input"].is_null()) {
    const std::string input = string_field(example, "input", where).get<std::string>();
    if (!input.empty()) user += "\n\n" + input;
  }
  const std::string output = string_field(example, "output", where).get<std::string>();
  return ordered_json::array({{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", output}}});
}

// ShareGPT's turns with their roles renamed as chat templates read them.
ordered_json sharegpt_messages(const ordered_json& conversations, const std::string& where) {
  MF_CHECK(conversations.is_array(), kFormat, where, ": 'conversations' must be a list of turns, got ",
           conversations.type_name());
  ordered_json messages = ordered_json::array();
  for (size_t i = 0; i < conversations.size(); ++i) {
    const ordered_json& turn = conversations[i];
    const std::string at = str_cat(where, ": conversations[", i, "]");
    MF_CHECK(turn.is_object(), kFormat, at, " must be an object, got ", turn.type_name());
    auto from = turn.find("from");
    auto value = turn.find("value");
    MF_CHECK(from != turn.end() && from->is_string(), kFormat, at, " needs a string 'from'");
    MF_CHECK(value != turn.end() && value->is_string(), kFormat, at, " needs a string 'value'");
    static const std::pair<const char*, const char*> kRoles[] = {
        {"human", "user"}, {"gpt", "assistant"}, {"system", "system"}};
    const std::string speaker = from->get<std::string>();
    const char* role = nullptr;
    for (const auto& [name, mapped] : kRoles)
      if (speaker == name) role = mapped;
    MF_CHECK(role != nullptr, kFormat, at, ": 'from' is '", speaker, "'; ShareGPT turns are from 'human', 'gpt' or 'system'");
    messages.push_back({{"role", role}, {"content", *value}});
  }
  return messages;
}

}  // namespace

EncodedExample ExampleEncoder::encode(const ordered_json& example, const std::string& where) const {
  MF_CHECK(example.is_object(), kFormat, where, ": expected a JSON object, got ", example.type_name());
  const bool has_text = example.contains(options_.text_field), has_messages = example.contains("messages");
  const bool has_prompt = example.contains("prompt") || example.contains("completion");
  const bool has_alpaca = example.contains("instruction") || example.contains("output");
  const bool has_sharegpt = example.contains("conversations");
  const int forms = int{has_text} + int{has_messages} + int{has_prompt} + int{has_alpaca} + int{has_sharegpt};
  MF_CHECK(forms > 0, kFormat, where, ": not a dataset line moeforge reads; expected ", accepted_forms(options_.text_field),
           "; this line's keys: ", key_list(example));
  MF_CHECK(forms == 1, kFormat, where, ": holds keys of more than one form (", key_list(example),
           "); each line must be one of ", accepted_forms(options_.text_field));
  if (has_text) {
    const ordered_json& text = example[options_.text_field];
    MF_CHECK(text.is_string(), kFormat, where, ": '", options_.text_field, "' must be a string, got ", text.type_name());
    return encode_text(text.get<std::string>(), where);
  }
  const ordered_json no_tools;
  if (has_messages) {
    const ordered_json& tools = example.contains("tools") ? example["tools"] : no_tools;
    return encode_messages(example["messages"], tools, where);
  }
  if (has_alpaca) return encode_messages(alpaca_messages(example, where), no_tools, where);
  if (has_sharegpt) return encode_messages(sharegpt_messages(example["conversations"], where), no_tools, where);
  return encode_prompt_completion(example, where);
}

void ExampleEncoder::append_eos(EncodedExample& out) const {
  if (!eos_token_id_) return;
  const auto eos = static_cast<uint32_t>(*eos_token_id_);
  if (!out.ids.empty() && out.ids.back() == eos) return;
  out.ids.push_back(eos);
  out.loss_mask.push_back(1);
}

EncodedExample ExampleEncoder::encode_text(const std::string& text, const std::string& where) const {
  Encoding encoding = with_location(where, [&] { return tokenizer_.encode(text, /*add_special_tokens=*/true); });
  EncodedExample out{to_unsigned(encoding.ids), std::vector<uint8_t>(encoding.ids.size(), 1)};
  append_eos(out);
  return out;
}

EncodedExample ExampleEncoder::encode_messages(const ordered_json& messages, const ordered_json& tools,
                                               const std::string& where) const {
  const chat::ChatTemplate* chat = messages_template();
  MF_CHECK(chat != nullptr, kFormat, where, ": a conversation needs a chat template, and the tokenizer has none");
  check_messages(messages, where, "messages");
  chat::ChatRequest request;
  request.messages = messages;
  if (!tools.is_null()) {
    MF_CHECK(tools.is_array(), kFormat, where, ": 'tools' must be a list, got ", tools.type_name());
    request.tools = tools;
  }
  if (!options_.assistant_only_loss) {
    // As apply_chat_template(tokenize=True): every token trains.
    Encoding encoding = with_location(where, [&] { return tokenizer_.encode(chat->render(request).text, false); });
    return EncodedExample{to_unsigned(encoding.ids), std::vector<uint8_t>(encoding.ids.size(), 1)};
  }
  chat::MaskedEncoding masked = with_location(where, [&] {
    const bool generation_blocks = chat->select(!request.tools.is_null()).has_generation_blocks();
    return generation_blocks ? chat::generation_mask(*chat, tokenizer_, request)
                             : chat::prefix_mask(*chat, tokenizer_, request);
  });
  return EncodedExample{to_unsigned(masked.ids), std::move(masked.assistant_mask)};
}

EncodedExample ExampleEncoder::encode_prompt_completion(const ordered_json& example, const std::string& where) const {
  MF_CHECK(example.contains("prompt"), kFormat, where, ": has 'completion' but no 'prompt'");
  MF_CHECK(example.contains("completion"), kFormat, where, ": has 'prompt' but no 'completion'");
  const ordered_json& prompt = example["prompt"];
  const ordered_json& completion = example["completion"];

  if (prompt.is_string() && completion.is_string()) {
    const std::string prompt_text = prompt.get<std::string>();
    const std::string text = prompt_text + completion.get<std::string>();
    Encoding encoding = with_location(where, [&] { return tokenizer_.encode(text, /*add_special_tokens=*/true); });
    EncodedExample out{to_unsigned(encoding.ids), std::vector<uint8_t>(encoding.ids.size(), 0)};
    bool after_text = false;  // past the first token taken from the text
    for (size_t t = 0; t < encoding.ids.size(); ++t) {
      auto [begin, end] = encoding.offsets[t];
      const bool added_by_post_processor = begin == 0 && end == 0;
      if (added_by_post_processor) {
        out.loss_mask[t] = after_text && text.size() > prompt_text.size();
      } else {
        after_text = true;
        out.loss_mask[t] = end > prompt_text.size();
      }
    }
    if (!options_.completion_only_loss) std::fill(out.loss_mask.begin(), out.loss_mask.end(), 1);
    append_eos(out);
    return out;
  }

  MF_CHECK(prompt.is_array() && completion.is_array(), kFormat, where,
           ": 'prompt' and 'completion' must both be strings or both be lists of messages, got ", prompt.type_name(),
           " and ", completion.type_name());
  MF_CHECK(chat_ != nullptr, kFormat, where,
           ": conversational prompt/completion needs a chat template, and the tokenizer has none");
  check_messages(prompt, where, "prompt");
  check_messages(completion, where, "completion");
  chat::ChatRequest request;
  if (example.contains("tools") && !example["tools"].is_null()) {
    MF_CHECK(example["tools"].is_array(), kFormat, where, ": 'tools' must be a list, got ", example["tools"].type_name());
    request.tools = example["tools"];
  }
  return with_location(where, [&] {
    request.messages = prompt;
    request.add_generation_prompt = true;
    const std::string prompt_text = chat_->render(request).text;
    for (const auto& m : completion) request.messages.push_back(m);
    request.add_generation_prompt = false;
    const std::string full = chat_->render(request).text;
    MF_CHECK(full.compare(0, prompt_text.size(), prompt_text) == 0, kUnsupported,
             "the chat template renders the prompt (with the generation prompt) differently from the start of "
             "prompt + completion, so the completion's tokens cannot be told apart");
    Encoding encoding = tokenizer_.encode(full, /*add_special_tokens=*/false);
    EncodedExample out{to_unsigned(encoding.ids), std::vector<uint8_t>(encoding.ids.size(), 0)};
    for (size_t t = 0; t < encoding.ids.size(); ++t)
      out.loss_mask[t] = !options_.completion_only_loss || encoding.offsets[t].second > prompt_text.size();
    return out;
  });
}

}  // namespace moeforge::data
