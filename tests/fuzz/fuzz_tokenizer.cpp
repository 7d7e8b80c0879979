// Two targets in one: the input bytes as a tokenizer.json (a malformed one must end in a
// moeforge::Error; if it loads, a fixed text is encoded and decoded), and the input bytes as text to
// encode and decode with a small fixed byte-level tokenizer (any bytes, invalid UTF-8 included,
// must encode). Anything else (another exception, an out-of-bounds read, UB, a hang) is a bug.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

// The GPT-2 byte-to-character table, as UTF-8.
std::string byte_char(int b) {
  const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int code = b;
  if (!direct) {
    code = 256;
    for (int k = 0; k < b; ++k)
      if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF))) ++code;
  }
  std::string s;
  if (code < 0x80) {
    s += static_cast<char>(code);
  } else {
    s += static_cast<char>(0xC0 | (code >> 6));
    s += static_cast<char>(0x80 | (code & 0x3F));
  }
  return s;
}

// A byte-level BPE over all 256 bytes with a few merges, the Qwen pre-tokenizer, NFC, and added
// tokens with every flag.
const moeforge::Tokenizer& fixed_tokenizer() {
  static const moeforge::Tokenizer tokenizer = [] {
    using nlohmann::json;
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
    json merges = json::array();
    const char* pairs[][2] = {{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"i", "n"}, {"Ġ", "Ġ"}, {"ĠĠ", "ĠĠ"}, {"1", "2"}};
    for (const auto& p : pairs) {
      merges.push_back(json::array({p[0], p[1]}));
      vocab[std::string(p[0]) + p[1]] = static_cast<int>(vocab.size());
    }
    json spec = {
        {"version", "1.0"},
        {"normalizer", {{"type", "NFC"}}},
        {"pre_tokenizer",
         {{"type", "Sequence"},
          {"pretokenizers",
           json::array({{{"type", "Split"},
                         {"pattern",
                          {{"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
                                     "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                         {"behavior", "Isolated"},
                         {"invert", false}},
                        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
        {"post_processor", {{"type", "ByteLevel"}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
        {"added_tokens",
         json::array({{{"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}},
                      {{"content", "<mask>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}},
                      {{"content", "word"}, {"single_word", true}, {"normalized", true}}})}};
    return moeforge::Tokenizer::from_json(spec.dump(), "fixed");
  }();
  return tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeforge;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);

  const Encoding fixed = fixed_tokenizer().encode(bytes);
  (void)fixed_tokenizer().decode(fixed.ids);

  try {
    const Tokenizer t = Tokenizer::from_json(bytes, "fuzz input");
    const Encoding e = t.encode("Hello, world! 123 héllo\n\t<|endoftext|> 😀 ");
    (void)t.decode(e.ids, /*skip_special_tokens=*/false);
    (void)t.decode(e.ids, /*skip_special_tokens=*/true);
  } catch (const Error&) {
  }
  return 0;
}
