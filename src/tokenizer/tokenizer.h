// A Hugging Face tokenizer read from tokenizer.json, giving the same ids as the Python `tokenizers`
// library (`Tokenizer.from_file(path).encode(text, add_special_tokens).ids`).
//
// Supported pieces: model BPE (byte-level or not, byte_fallback, ignore_merges, unk_token,
// continuing_subword_prefix, end_of_word_suffix); normalizers NFC, NFD, NFKC, NFKD, Lowercase,
// Replace, Prepend, Strip, StripAccents, Sequence; pre-tokenizers Split, ByteLevel, Digits,
// Whitespace, WhitespaceSplit, Metaspace, Punctuation, BertPreTokenizer, Sequence; post-processors
// ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing, Sequence; decoders ByteLevel,
// Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace, BPEDecoder; added tokens with all their
// flags. Anything else in the file is an Error naming the piece, never an approximation.
//
// Invalid UTF-8 input: Python strings cannot hold it, so the library has no behaviour to copy. We
// replace each maximal ill-formed subsequence with U+FFFD, exactly as Python's
// `bytes.decode("utf-8", errors="replace")` does, and encode the result; offsets still point into
// the caller's bytes.
//
// All const methods are safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeforge {

struct Encoding {
  std::vector<int32_t> ids;
  // Per token, the byte range [first, second) of the input text it came from, as the Python
  // library's offsets (which count characters instead of bytes), trim_offsets included; (0, 0)
  // for tokens the post-processor added (BOS, EOS, ...).
  std::vector<std::pair<size_t, size_t>> offsets;
};

namespace tokenizer_detail {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // PATH is a tokenizer.json or a folder holding one (tokenizer_config.json is not read).
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json_or_folder);
  // The same from the file's text; `source_name` names it in error messages.
  static Tokenizer from_json(std::string_view json_text, std::string_view source_name = "tokenizer.json");

  Encoding encode(std::string_view text, bool add_special_tokens = true) const;
  // One Encoding per text, in order, spread over the machine's cores.
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts,
                                     bool add_special_tokens = true) const;
  // Ids outside the vocabulary are skipped, as the Python library does.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  size_t vocab_size() const;  // including added tokens, as len(tokenizer) in Python
  // Whether `id` is an added token marked special (what skip_special_tokens drops).
  bool is_special(int32_t id) const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  explicit Tokenizer(std::unique_ptr<tokenizer_detail::TokenizerImpl> impl);
  std::unique_ptr<tokenizer_detail::TokenizerImpl> impl_;
};

}  // namespace moeforge
