// UTF-8 and the Unicode properties the tokenizer pieces need, with the semantics of the Rust
// functions the Hugging Face library calls (char::is_whitespace, char::is_numeric, ...). Tables come
// from ICU, cut back to the older Unicode versions of the library's normalization and category
// crates where those differ (unicode.cpp names them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moeforge::tokenizer_detail {

// Byte length of the UTF-8 sequence starting with `lead` (valid UTF-8 assumed).
inline size_t utf8_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Decodes the code point at s[i] of valid UTF-8; sets *length to its byte length.
inline uint32_t utf8_decode(std::string_view s, size_t i, size_t* length) {
  const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
  const uint32_t lead = b(0);
  if (lead < 0x80) return *length = 1, lead;
  if (lead < 0xE0) return *length = 2, ((lead & 0x1F) << 6) | (b(1) & 0x3F);
  if (lead < 0xF0) return *length = 3, ((lead & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  *length = 4;
  return ((lead & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

void utf8_append(std::string& out, uint32_t code_point);

// Replaces every maximal ill-formed subsequence by U+FFFD (Python's errors="replace", Rust's
// from_utf8_lossy). `source_begin[k]`/`source_end[k]` receive, for each output byte k, the input
// byte range its character came from.
std::string utf8_repair(std::string_view bytes, std::vector<uint32_t>* source_begin,
                        std::vector<uint32_t>* source_end);
bool utf8_is_valid(std::string_view bytes);

// Normalization as of Unicode 9.0, the version of the unicode-normalization-alignments tables.
enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
bool is_normalized(std::string_view utf8, NormalForm form);

// One character of normalized output and how it relates to the input, as the
// unicode-normalization-alignments crate (used by Hugging Face) yields them: change 0 replaces one
// input character, change -n replaces 1 + n input characters, change +1 is inserted after the
// previous one.
struct CharChange {
  uint32_t code_point;
  int change;
};
void normalize_with_changes(const std::vector<uint32_t>& input, NormalForm form, std::vector<CharChange>& out);

// Rust's char::to_lowercase: the full lowercase mapping of one code point, without context.
void append_lowercase(std::string& out, uint32_t code_point);

bool is_whitespace(uint32_t c);        // White_Space (char::is_whitespace, regex \s)
bool is_numeric(uint32_t c);           // Nd, Nl, No (char::is_numeric)
bool is_punctuation(uint32_t c);       // ASCII punctuation or P* of Unicode 8.0 (unicode_categories)
bool is_word_char(uint32_t c);         // Rust regex \w: Alphabetic, M*, Nd, Pc, Join_Control
bool is_combining_mark(uint32_t c);    // M* of Unicode 9.0 (StripAccents)

}  // namespace moeforge::tokenizer_detail
