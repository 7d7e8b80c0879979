// Oniguruma, the regex engine of the Hugging Face tokenizers library, with the same syntax, options
// and match iteration (the onig crate's find_iter), so look-ahead agrees; Unicode classes agree as
// spell_out_unicode_classes spells them out at the library's Unicode version.
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

// The pattern with each general-category class (\p{L}, \P{Lu}, \p{^N}, \p{Letter}, ...), \w, \W, \d
// and \D spelled out as a bracket of code point ranges of Unicode 16.0, the version of the
// library's Oniguruma (Debian 12's libonig has 14.0). Other properties (scripts, POSIX brackets),
// \s (White_Space, unchanged since 6.3), \b and the case pairs of (?i) stay with libonig's tables
// (16.0's new pairs such as U+1C89/U+1C8A are missing); (?x) comments are not recognised.
std::string spell_out_unicode_classes(std::string_view pattern);

// Rust regex::escape: the pattern that matches `literal` exactly.
std::string regex_escape(std::string_view literal);

}  // namespace moeforge::tokenizer_detail
