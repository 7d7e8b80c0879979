// Oniguruma, the regex engine of the Hugging Face tokenizers library, with the same syntax, options
// and match iteration (the onig crate's find_iter), so Unicode classes and look-ahead agree.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moeforge::tokenizer_detail {

struct MatchRange {
  uint32_t begin, end;
};

class Regex {
 public:
  // `where` names the tokenizer.json piece for error messages.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The non-overlapping matches, left to right; an empty match right after the previous match is
  // skipped, as the onig crate's find_iter does. Safe to call concurrently.
  void find_all(std::string_view text, std::vector<MatchRange>& out) const;

 private:
  // Throws for a negative onig_search result: kOutOfMemory, kFormat (a match limit) or kInternal.
  [[noreturn]] void fail_search(int onig_code, size_t text_bytes) const;

  void* regex_;  // OnigRegex
  std::string where_;
};

// Rust regex::escape: the pattern that matches `literal` exactly.
std::string regex_escape(std::string_view literal);

}  // namespace moeforge::tokenizer_detail
