#include "tokenizer/regex.h"

#include <oniguruma.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>

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

struct CodeRange {
  uint32_t first, last;
};
struct Category {
  std::string_view names[3];  // short, long and (where there is one) another alias
  std::span<const CodeRange> ranges;
};
#include "tokenizer/regex_unicode.inc"

// Oniguruma's matching of property names: case, spaces, '-' and '_' do not count.
std::string loose_name(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c != ' ' && c != '-' && c != '_') out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
  return out;
}

const Category* find_category(std::string_view name) {
  const std::string key = loose_name(name);
  for (const Category& category : kCategories) {
    for (std::string_view n : category.names) {
      if (!n.empty() && loose_name(n) == key) return &category;
    }
  }
  return nullptr;
}

void append_class(std::string& out, std::span<const CodeRange> ranges, bool negated) {
  out += negated ? "[^" : "[";
  char buffer[32];
  for (const CodeRange& r : ranges) {
    const int n = r.first == r.last ? std::snprintf(buffer, sizeof buffer, "\\x{%X}", r.first)
                                    : std::snprintf(buffer, sizeof buffer, "\\x{%X}-\\x{%X}", r.first, r.last);
    out.append(buffer, static_cast<size_t>(n));
  }
  out += ']';
}

// onig_new as the library calls it: ONIG_NORMAL, or an Oniguruma error code.
int compile(const std::string& pattern, OnigRegex* compiled, OnigErrorInfo* info) {
  const auto* begin = reinterpret_cast<const OnigUChar*>(pattern.data());
  // The onig crate's Regex::new: no options, the default (Oniguruma) syntax, UTF-8.
  return onig_new(compiled, begin, begin + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                  ONIG_SYNTAX_ONIGURUMA, info);
}

}  // namespace

std::string spell_out_unicode_classes(std::string_view pattern) {
  std::string out;
  int depth = 0;  // of brackets
  for (size_t i = 0; i < pattern.size();) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      std::span<const CodeRange> ranges;
      bool negated = false;
      size_t length = 2;
      if (e == 'w' || e == 'W' || e == 'd' || e == 'D') {
        ranges = e == 'w' || e == 'W' ? std::span<const CodeRange>(kWord) : std::span<const CodeRange>(kNd);
        negated = e == 'W' || e == 'D';
      } else if ((e == 'p' || e == 'P') && pattern.substr(i + 2, 1) == "{") {
        const size_t close = pattern.find('}', i + 3);
        if (close != std::string_view::npos) {
          std::string_view name = pattern.substr(i + 3, close - i - 3);
          negated = e == 'P';
          if (name.starts_with('^')) {  // \p{^L} is \P{L}
            negated = !negated;
            name.remove_prefix(1);
          }
          if (const Category* category = find_category(name)) {
            ranges = category->ranges;
            length = close + 1 - i;
          }
        }
      }
      if (ranges.empty()) {
        out.append(pattern.substr(i, 2));  // any other escape (\\, \[, \p{Han}, ...) stays
      } else {
        // Oniguruma folds case (?i) over a bracket's classes but not over a bare \p or \w, so a
        // bare one becomes a bracket with case folding off.
        if (depth == 0) out += "(?-i:";
        append_class(out, ranges, negated);
        if (depth == 0) out += ')';
      }
      i += length;
      continue;
    }
    if (c == '[') {
      out += c;
      ++i;
      ++depth;
      if (i < pattern.size() && pattern[i] == '^') out += pattern[i++];
      if (i < pattern.size() && pattern[i] == ']') out += pattern[i++];  // first in a bracket: a literal ]
      continue;
    }
    if (c == ']' && depth > 0) {
      --depth;
    } else if (depth == 0 && pattern.substr(i, 3) == "(?#") {  // a comment, up to the first )
      const size_t close = pattern.find(')', i);
      const size_t end = close == std::string_view::npos ? pattern.size() : close + 1;
      out.append(pattern.substr(i, end - i));
      i = end;
      continue;
    }
    out += c;
    ++i;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& where) : regex_(nullptr), where_(where) {
  initialize_oniguruma();
  OnigRegex compiled = nullptr;
  OnigErrorInfo info;
  // The pattern as written first, so that it is refused where the library refuses it (spelled
  // out, [\w-.] would be accepted: a nested bracket may be followed by '-').
  int rc = compile(pattern, &compiled, &info);
  if (rc != ONIG_NORMAL) {
    fail(ErrorCode::kFormat, where, ": invalid regex \"", pattern, "\": ", onig_message(rc, &info));
  }
  const std::string spelled = spell_out_unicode_classes(pattern);
  if (spelled != pattern) {
    onig_free(compiled);
    rc = compile(spelled, &compiled, &info);
    MF_CHECK(rc == ONIG_NORMAL, kInternal, where, ": regex \"", pattern, "\" with its Unicode classes spelled out: ",
             onig_message(rc, &info));
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
