// The stages of a Hugging Face tokenizer (normalizer, pre-tokenizer, model, post-processor,
// decoder) as read from tokenizer.json. Internal to the tokenizer module.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace moeforge::tokenizer_detail {

using nlohmann::json;

// Text being normalized, with, for every byte, the byte range of the caller's input it came from,
// so that token offsets point into the original text.
struct Span {
  uint32_t begin, end;
};

struct NormalizedString {
  std::string text;
  std::vector<Span> align;      // align.size() == text.size()
  uint32_t original_begin = 0;  // where this piece starts in the original text

  NormalizedString slice(size_t begin, size_t end) const;
  // Appends the UTF-8 of `code_point`, every byte aligned to `span`.
  void push(uint32_t code_point, Span span);
  void push_bytes(std::string_view bytes, Span span);
  Span span_of(size_t begin, size_t end) const;  // original range covering text[begin, end)
};

// A piece of the input: text still to tokenize, or an added token already recognised.
struct Piece {
  NormalizedString str;
  int32_t added_id = -1;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A partition of a string into matched and unmatched ranges, as HF's Pattern::find_matches.
struct Segment {
  uint32_t begin, end;
  bool is_match;
};

// Splits `s` along `segments` as NormalizedString::split does, appending the non-empty pieces.
void split_by(const NormalizedString& s, std::vector<Segment>& segments, SplitBehavior behavior,
              std::vector<NormalizedString>& out);
void regex_segments(const Regex& regex, std::string_view text, bool invert, std::vector<Segment>& out);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedString& s) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

// One token of the encoding: its id, its text (the vocabulary entry, or the piece an added token
// matched; empty for tokens the post-processor adds) and the original bytes it came from.
struct Token {
  int32_t id;
  Span offsets;
  std::string_view text;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<Token>& tokens, bool add_special_tokens) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Null JSON gives nullptr. Throws Error(kUnsupported) naming an unknown type, Error(kFormat) for
// a missing or mistyped key.
std::unique_ptr<Normalizer> make_normalizer(const json& j);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j);
std::unique_ptr<PostProcessor> make_post_processor(const json& j);
std::unique_ptr<Decoder> make_decoder(const json& j);

// Typed access to tokenizer.json members; `where` names the piece ("pre_tokenizer Split").
const json& member(const json& j, const char* key, const std::string& where);
bool bool_member(const json& j, const char* key, bool fallback, const std::string& where);
std::string string_member(const json& j, const char* key, const std::string& where);

}  // namespace moeforge::tokenizer_detail
