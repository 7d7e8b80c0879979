#include "chat/assistant_mask.h"

#include <optional>

#include "chat/training_templates.h"
#include "core/error.h"

namespace moeforge::chat {

namespace {

// tokenizers' Encoding.char_to_token: the first token whose offsets contain the position.
std::optional<size_t> token_at(const Encoding& encoding, size_t byte) {
  for (size_t t = 0; t < encoding.offsets.size(); ++t) {
    if (encoding.offsets[t].first <= byte && byte < encoding.offsets[t].second) return t;
  }
  return std::nullopt;
}

}  // namespace

std::vector<uint8_t> mask_from_generation_spans(const std::string& text, const Encoding& encoding,
                                                const std::vector<std::pair<size_t, size_t>>& spans) {
  std::vector<uint8_t> mask(encoding.ids.size(), 0);
  for (auto [begin, end] : spans) {
    std::optional<size_t> start_token = token_at(encoding, begin);
    // The span's last character: the code point starting before `end` (char index end - 1).
    std::optional<size_t> end_token;
    if (end > 0 && end <= text.size()) {
      size_t last = end - 1;
      while (last > 0 && (static_cast<unsigned char>(text[last]) & 0xc0) == 0x80) --last;
      end_token = token_at(encoding, last);
    }
    if (!start_token) break;  // as Transformers: a span past the tokens (truncation) ends the scan
    size_t stop = end_token && *end_token != 0 ? *end_token + 1 : mask.size();
    for (size_t t = *start_token; t < stop; ++t) mask[t] = 1;
  }
  return mask;
}

MaskedEncoding generation_mask(const ChatTemplate& chat, const Tokenizer& tokenizer, const ChatRequest& request) {
  RenderResult rendered = chat.render(request);
  Encoding encoding = tokenizer.encode(rendered.text, /*add_special_tokens=*/false);
  MaskedEncoding out;
  out.assistant_mask = mask_from_generation_spans(rendered.text, encoding, rendered.generation_spans);
  out.ids = std::move(encoding.ids);
  return out;
}

MaskedEncoding prefix_mask(const ChatTemplate& chat, const Tokenizer& tokenizer, const ChatRequest& request) {
  ChatRequest full_request = request;
  full_request.add_generation_prompt = false;
  const std::string full = chat.render(full_request).text;

  std::vector<std::pair<size_t, size_t>> ranges;
  const auto& messages = request.messages;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || m["role"] != "assistant") continue;
    ChatRequest partial = request;
    std::string before;
    if (i > 0) {
      partial.messages = nlohmann::ordered_json(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(i));
      partial.add_generation_prompt = true;
      before = chat.render(partial).text;
    }
    partial.messages = nlohmann::ordered_json(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(i + 1));
    partial.add_generation_prompt = false;
    const std::string through = chat.render(partial).text;
    MF_CHECK(full.compare(0, before.size(), before) == 0 && full.compare(0, through.size(), through) == 0 &&
                 before.size() <= through.size(),
             kUnsupported, "the chat template renders the conversation up to message ", i,
             " (assistant) differently from the full conversation (Qwen3's, for one, drops earlier turns' "
             "thinking), so the prefix rule cannot place that message's tokens; pass a chat template with "
             "{% generation %} around each assistant turn (--chat_template FILE, or one moeforge ships: ",
             training_template_names(), ") for this data");
    ranges.emplace_back(before.size(), through.size());
  }

  Encoding encoding = tokenizer.encode(full, /*add_special_tokens=*/false);
  MaskedEncoding out;
  out.assistant_mask.assign(encoding.ids.size(), 0);
  for (size_t t = 0; t < encoding.ids.size(); ++t) {
    auto [b, e] = encoding.offsets[t];
    for (auto [rb, re] : ranges)
      if (b < re && rb < e) out.assistant_mask[t] = 1;
  }
  out.ids = std::move(encoding.ids);
  return out;
}

}  // namespace moeforge::chat
