#include "tokenizer/regex.h"

#include <oniguruma.h>

#include <cstring>
#include <memory>
#include <mutex>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace moeforge::tokenizer_detail {

namespace {

std::string onig_message(int code, OnigErrorInfo* info) {
  OnigUChar buffer[ONIG_MAX_ERROR_MESSAGE_LEN];
  const int n = info ? onig_error_code_to_str(buffer, code, info) : onig_error_code_to_str(buffer, code);
  return std::string(reinterpret_cast<const char*>(buffer), n > 0 ? static_cast<size_t>(n) : 0);
}

void initialize_oniguruma() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

struct RegionDeleter {
  void operator()(OnigRegion* r) const { onig_region_free(r, 1); }
};

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) : regex_(nullptr), where_(where) {
  initialize_oniguruma();
  OnigRegex compiled = nullptr;
  OnigErrorInfo info;
  const auto* begin = reinterpret_cast<const OnigUChar*>(pattern.data());
  // The onig crate's Regex::new: no options, the default (Oniguruma) syntax, UTF-8.
  const int rc = onig_new(&compiled, begin, begin + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                          ONIG_SYNTAX_ONIGURUMA, &info);
  if (rc != ONIG_NORMAL) {
    fail(ErrorCode::kFormat, where, ": invalid regex \"", pattern, "\": ", onig_message(rc, &info));
  }
  regex_ = compiled;
}

Regex::~Regex() { onig_free(static_cast<OnigRegex>(regex_)); }

void Regex::fail_search(int onig_code, size_t text_bytes) const {
  // Oniguruma's match stack grows with the text a repetition covers (a 48 MB run of letters needs
  // gigabytes): out of memory is exit 4 and a limit of the engine is the input's fault, not a bug.
  const ErrorCode code = onig_code == ONIGERR_MEMORY ? ErrorCode::kOutOfMemory
                         : onig_code == ONIGERR_MATCH_STACK_LIMIT_OVER ||
                                 onig_code == ONIGERR_RETRY_LIMIT_IN_MATCH_OVER ||
                                 onig_code == ONIGERR_RETRY_LIMIT_IN_SEARCH_OVER
                             ? ErrorCode::kFormat
                             : ErrorCode::kInternal;
  fail(code, where_, ": regex search over ", text_bytes, " bytes of text failed: ", onig_message(onig_code, nullptr));
}

void Regex::find_all(std::string_view text, std::vector<MatchRange>& out) const {
  out.clear();
  std::unique_ptr<OnigRegion, RegionDeleter> region(onig_region_new());
  const auto* str = reinterpret_cast<const OnigUChar*>(text.data());
  const auto* end = str + text.size();
  size_t search_from = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    const int pos = onig_search(static_cast<OnigRegex>(regex_), str, end, str + search_from, end,
                                region.get(), ONIG_OPTION_NONE);
    if (pos == ONIG_MISMATCH) break;
    if (pos < 0) fail_search(pos, text.size());
    const auto s = static_cast<size_t>(region->beg[0]);
    const auto e = static_cast<size_t>(region->end[0]);
    if (s == e && have_last && last_match_end == e) {
      // Step over one character so an empty match cannot repeat forever.
      search_from += search_from < text.size() ? utf8_length(static_cast<unsigned char>(text[search_from])) : 1;
      continue;
    }
    search_from = e;
    have_last = true;
    last_match_end = e;
    out.push_back({static_cast<uint32_t>(s), static_cast<uint32_t>(e)});
  }
}

std::string regex_escape(std::string_view literal) {
  static constexpr std::string_view kMeta = "\\.+*?()|[]{}^$#&-~";
  std::string out;
  for (char c : literal) {
    if (kMeta.find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace moeforge::tokenizer_detail
