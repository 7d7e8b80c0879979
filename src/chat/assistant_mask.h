// Which tokens of a rendered conversation the assistant wrote: the loss mask of chat fine-tuning.
//
// Two rules:
//
// 1. generation_mask (Transformers' rule, for templates with {% generation %} blocks): exactly
//    apply_chat_template(..., tokenize=True, return_dict=True, return_assistant_tokens_mask=True).
//    The text is encoded without added special tokens; for each span a generation block rendered,
//    the tokens from the one holding the span's first character through the one holding its last
//    character get 1 (Transformers' char_to_token, including its quirks: a span whose start lies
//    past the last token stops the scan, and an end landing on token 0 extends to the last token).
//    For a template without generation blocks this gives all zeros, as Transformers does.
//
// 2. prefix_mask (our rule, for any template; what the data pipeline uses when a template has no
//    generation blocks): for each message i whose role is "assistant", the assistant's characters
//    are those between
//        P_i = render(messages[:i], add_generation_prompt=True)   (empty when i == 0)
//        Q_i = render(messages[:i+1], add_generation_prompt=False)
//    i.e. what appending message i adds after the generation prompt, which includes the template's
//    end-of-turn marker (<|im_end|>, <｜end▁of▁sentence｜>, ...) so the model learns to stop. Both
//    P_i and Q_i must be prefixes of the full rendering; a template that renders earlier turns
//    differently once later turns exist (Qwen3 drops the <think> block of assistant turns before
//    the last user message) breaks this, and the function then throws Error(kUnsupported) naming
//    the message rather than guess. A token gets 1 when any byte of it lies in an assistant range.
#pragma once

#include <cstdint>
#include <vector>

#include "chat/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moeforge::chat {

struct MaskedEncoding {
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant_mask;  // one 0/1 per id
};

// Rule 1: renders `request` and encodes it (no added special tokens), marking generation spans.
MaskedEncoding generation_mask(const ChatTemplate& chat, const Tokenizer& tokenizer, const ChatRequest& request);

// Rule 2: renders the full conversation (add_generation_prompt=False) and marks assistant turns.
MaskedEncoding prefix_mask(const ChatTemplate& chat, const Tokenizer& tokenizer, const ChatRequest& request);

// Rule 1's token mapping, given the rendered text, its encoding and byte spans.
std::vector<uint8_t> mask_from_generation_spans(const std::string& text, const Encoding& encoding,
                                                const std::vector<std::pair<size_t, size_t>>& spans);

}  // namespace moeforge::chat
