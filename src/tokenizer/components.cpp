// Normalizers, pre-tokenizers, post-processors and decoders, each following the Hugging Face
// tokenizers implementation of the same name (tokenizers/src/{normalizers,pre_tokenizers,processors,
// decoders}).
#include <algorithm>
#include <array>
#include <map>

#include "core/error.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace moeforge::tokenizer_detail {

// ---------------------------------------------------------------------------------------------
// NormalizedString and splitting

NormalizedString NormalizedString::slice(size_t begin, size_t end) const {
  NormalizedString out;
  out.text.assign(text, begin, end - begin);
  out.align.assign(align.begin() + static_cast<ptrdiff_t>(begin), align.begin() + static_cast<ptrdiff_t>(end));
  out.original_begin = out.align.empty() ? original_begin : out.align.front().begin;
  return out;
}

void NormalizedString::push(uint32_t code_point, Span span) {
  const size_t before = text.size();
  utf8_append(text, code_point);
  align.insert(align.end(), text.size() - before, span);
}

void NormalizedString::push_bytes(std::string_view bytes, Span span) {
  text.append(bytes);
  align.insert(align.end(), bytes.size(), span);
}

Span NormalizedString::span_of(size_t begin, size_t end) const {
  if (begin >= end) {
    const uint32_t at = begin < align.size() ? align[begin].begin : align.empty() ? original_begin : align.back().end;
    return {at, at};
  }
  Span s = align[begin];
  for (size_t i = begin; i < end; ++i) {
    s.begin = std::min(s.begin, align[i].begin);
    s.end = std::max(s.end, align[i].end);
  }
  return s;
}

void split_by(const NormalizedString& s, std::vector<Segment>& segments, SplitBehavior behavior,
              std::vector<NormalizedString>& out) {
  // (begin, end, remove) after applying the behaviour, as NormalizedString::split.
  std::vector<Segment> parts;  // is_match here means "remove"
  parts.reserve(segments.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& m : segments) parts.push_back({m.begin, m.end, false});
      break;
    case SplitBehavior::kRemoved:
      parts = segments;
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& m : segments) {
        if (m.is_match == previous_match && !parts.empty()) {
          parts.back().end = m.end;
        } else {
          parts.push_back({m.begin, m.end, false});
        }
        previous_match = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& m : segments) {
        if (m.is_match && !previous_match && !parts.empty()) {
          parts.back().end = m.end;
        } else {
          parts.push_back({m.begin, m.end, false});
        }
        previous_match = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !parts.empty()) {
          parts.back().begin = it->begin;
        } else {
          parts.push_back({it->begin, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (const auto& p : parts) {
    if (!p.is_match && p.end > p.begin) out.push_back(s.slice(p.begin, p.end));
  }
}

namespace {

// Fills `out` with the matched and unmatched ranges covering `text`, given the matches.
template <typename Matches>
void segments_from_matches(size_t text_size, const Matches& matches, bool invert, std::vector<Segment>& out) {
  out.clear();
  if (text_size == 0) {
    out.push_back({0, 0, invert});
    return;
  }
  uint32_t previous = 0;
  for (const auto& m : matches) {
    if (previous != m.begin) out.push_back({previous, m.begin, invert});
    out.push_back({m.begin, m.end, !invert});
    previous = m.end;
  }
  if (previous != text_size) out.push_back({previous, static_cast<uint32_t>(text_size), invert});
}

// HF's Pattern for Fn(char) -> bool: every matching character is its own match.
template <typename Predicate>
void char_segments(std::string_view text, Predicate is_match, std::vector<Segment>& out) {
  out.clear();
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  uint32_t last = 0;
  for (size_t i = 0; i < text.size();) {
    size_t len;
    const uint32_t c = utf8_decode(text, i, &len);
    if (is_match(c)) {
      if (last < i) out.push_back({last, static_cast<uint32_t>(i), false});
      out.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(i + len), true});
      last = static_cast<uint32_t>(i + len);
    }
    i += len;
  }
  if (last < text.size()) out.push_back({last, static_cast<uint32_t>(text.size()), false});
}

}  // namespace

void regex_segments(const Regex& regex, std::string_view text, bool invert, std::vector<Segment>& out) {
  thread_local std::vector<MatchRange> matches;
  if (!text.empty()) regex.find_all(text, matches);
  else matches.clear();
  segments_from_matches(text.size(), matches, invert, out);
}

// ---------------------------------------------------------------------------------------------
// JSON access

const json& member(const json& j, const char* key, const std::string& where) {
  MF_CHECK(j.is_object(), kFormat, where, " must be a JSON object");
  auto it = j.find(key);
  MF_CHECK(it != j.end(), kFormat, where, ": missing key \"", key, "\"");
  return *it;
}

bool bool_member(const json& j, const char* key, bool fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  MF_CHECK(it->is_boolean(), kFormat, where, ": \"", key, "\" must be true or false");
  return it->get<bool>();
}

std::string string_member(const json& j, const char* key, const std::string& where) {
  const json& v = member(j, key, where);
  MF_CHECK(v.is_string(), kFormat, where, ": \"", key, "\" must be a string");
  return v.get<std::string>();
}

namespace {

std::string type_of(const json& j, const char* stage) {
  MF_CHECK(j.is_object(), kFormat, stage, " must be a JSON object or null");
  return string_member(j, "type", stage);
}

uint32_t single_char_member(const json& j, const char* key, const std::string& where) {
  const std::string s = string_member(j, key, where);
  size_t len = 0;
  MF_CHECK(!s.empty() && utf8_is_valid(s) && (utf8_decode(s, 0, &len), len == s.size()), kFormat, where,
           ": \"", key, "\" must be one character");
  return utf8_decode(s, 0, &len);
}

size_t count_member(const json& j, const char* key, size_t fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  MF_CHECK(it->is_number_unsigned(), kFormat, where, ": \"", key, "\" must be a non-negative integer");
  return it->get<size_t>();
}

SplitBehavior behavior_member(const json& j, const char* key, const std::string& where) {
  static const std::map<std::string, SplitBehavior> kNames = {
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous}};
  const std::string name = string_member(j, key, where);
  auto it = kNames.find(name);
  MF_CHECK(it != kNames.end(), kUnsupported, where, ": unsupported behavior \"", name, "\"");
  return it->second;
}

// A Split/Replace pattern: {"Regex": "..."} or {"String": "..."} (a literal, escaped into a regex
// as HF does).
std::unique_ptr<Regex> pattern_member(const json& j, const std::string& where) {
  const json& p = member(j, "pattern", where);
  MF_CHECK(p.is_object() && p.size() == 1, kFormat, where, ": \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
  if (p.contains("Regex") && p["Regex"].is_string())
    return std::make_unique<Regex>(p["Regex"].get<std::string>(), where);
  if (p.contains("String") && p["String"].is_string())
    return std::make_unique<Regex>(regex_escape(p["String"].get<std::string>()), where);
  fail(ErrorCode::kFormat, where, ": \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
}

// ---------------------------------------------------------------------------------------------
// Normalizers

// NFC, NFD, NFKC, NFKD: every output character is aligned as NormalizedString::transform aligns
// the (character, change) stream of unicode-normalization-alignments.
class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void normalize(NormalizedString& s) const override {
    if (is_normalized(s.text, form_)) return;  // every change would be 0: nothing moves
    std::vector<uint32_t> chars;
    std::vector<size_t> starts;  // byte offset of each input character
    for (size_t i = 0; i < s.text.size();) {
      size_t len;
      chars.push_back(utf8_decode(s.text, i, &len));
      starts.push_back(i);
      i += len;
    }
    starts.push_back(s.text.size());
    std::vector<CharChange> changes;
    normalize_with_changes(chars, form_, changes);
    NormalizedString out;
    out.original_begin = s.original_begin;
    out.text.reserve(s.text.size());
    size_t next_char = 0;  // the next input character a change consumes
    for (const auto& c : changes) {
      Span span;
      if (c.change > 0) {  // inserted: aligned like the byte before it
        const size_t at = starts[std::min(next_char, chars.size())];
        span = at == 0 ? Span{s.original_begin, s.original_begin} : s.align[at - 1];
      } else {
        MF_ASSERT(next_char < chars.size());
        span = s.align[starts[next_char]];
        next_char += 1 + static_cast<size_t>(-c.change);
      }
      out.push(c.code_point, span);
    }
    s = std::move(out);
  }

 private:
  NormalForm form_;
};

class Lowercase final : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    NormalizedString out;
    out.original_begin = s.original_begin;
    out.text.reserve(s.text.size());
    for (size_t i = 0; i < s.text.size();) {
      size_t len;
      const uint32_t c = utf8_decode(s.text, i, &len);
      const size_t before = out.text.size();
      append_lowercase(out.text, c);
      out.align.insert(out.align.end(), out.text.size() - before, s.align[i]);
      i += len;
    }
    s = std::move(out);
  }
};

class Replace final : public Normalizer {
 public:
  explicit Replace(const json& j)
      : regex_(pattern_member(j, "normalizer Replace")), content_(string_member(j, "content", "normalizer Replace")) {}
  void normalize(NormalizedString& s) const override {
    std::vector<Segment> segments;
    regex_segments(*regex_, s.text, false, segments);
    NormalizedString out;
    out.original_begin = s.original_begin;
    for (const auto& seg : segments) {
      if (seg.is_match) {
        // HF aligns the replacement to the last byte of the match.
        out.push_bytes(content_, seg.end == 0 ? Span{s.original_begin, s.original_begin} : s.align[seg.end - 1]);
      } else {
        out.text.append(s.text, seg.begin, seg.end - seg.begin);
        out.align.insert(out.align.end(), s.align.begin() + seg.begin, s.align.begin() + seg.end);
      }
    }
    s = std::move(out);
  }

 private:
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// Prepends `prefix`, aligned to the first character, to a non-empty string (HF's prepend).
void prepend(NormalizedString& s, std::string_view prefix) {
  if (s.text.empty()) return;
  s.text.insert(0, prefix);
  s.align.insert(s.align.begin(), prefix.size(), s.align.front());
}

class Prepend final : public Normalizer {
 public:
  explicit Prepend(const json& j) : prefix_(string_member(j, "prepend", "normalizer Prepend")) {}
  void normalize(NormalizedString& s) const override { prepend(s, prefix_); }

 private:
  std::string prefix_;
};

class Strip final : public Normalizer {
 public:
  explicit Strip(const json& j)
      : left_(bool_member(j, "strip_left", false, "normalizer Strip")),
        right_(bool_member(j, "strip_right", false, "normalizer Strip")) {}
  void normalize(NormalizedString& s) const override {
    size_t begin = 0, end = s.text.size();
    if (left_) {
      while (begin < end) {
        size_t len;
        if (!is_whitespace(utf8_decode(s.text, begin, &len))) break;
        begin += len;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(s.text[start]) & 0xC0) == 0x80) --start;
        size_t len;
        if (!is_whitespace(utf8_decode(s.text, start, &len))) break;
        end = start;
      }
    }
    if (begin != 0 || end != s.text.size()) {
      const uint32_t original_begin = s.original_begin;
      s = s.slice(begin, end);
      s.original_begin = original_begin;
    }
  }

 private:
  bool left_, right_;
};

class StripAccents final : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    NormalizedString out;
    out.original_begin = s.original_begin;
    for (size_t i = 0; i < s.text.size();) {
      size_t len;
      const uint32_t c = utf8_decode(s.text, i, &len);
      if (!is_combining_mark(c)) out.push_bytes(std::string_view(s.text).substr(i, len), s.align[i]);
      i += len;
    }
    s = std::move(out);
  }
};

class NormalizerSequence final : public Normalizer {
 public:
  explicit NormalizerSequence(const json& j) {
    const json& list = member(j, "normalizers", "normalizer Sequence");
    MF_CHECK(list.is_array(), kFormat, "normalizer Sequence: \"normalizers\" must be a list");
    for (const auto& n : list) {
      auto normalizer = make_normalizer(n);
      if (normalizer) normalizers_.push_back(std::move(normalizer));
    }
  }
  void normalize(NormalizedString& s) const override {
    for (const auto& n : normalizers_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> normalizers_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "normalizer");
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Replace") return std::make_unique<Replace>(j);
  if (type == "Prepend") return std::make_unique<Prepend>(j);
  if (type == "Strip") return std::make_unique<Strip>(j);
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Sequence") return std::make_unique<NormalizerSequence>(j);
  fail(ErrorCode::kUnsupported, "unsupported normalizer type \"", type, "\"");
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

namespace {

// Replaces every piece still to tokenize by the pieces `split` makes of it.
template <typename SplitFn>
void split_pieces(std::vector<Piece>& pieces, const SplitFn& split) {
  std::vector<Piece> result;
  result.reserve(pieces.size() * 2);
  thread_local std::vector<NormalizedString> parts;
  for (auto& piece : pieces) {
    if (piece.added_id >= 0) {
      result.push_back(std::move(piece));
      continue;
    }
    parts.clear();
    split(piece.str, parts);
    for (auto& p : parts) result.push_back(Piece{std::move(p), -1});
  }
  pieces = std::move(result);
}

class Split final : public PreTokenizer {
 public:
  explicit Split(const json& j)
      : regex_(pattern_member(j, "pre_tokenizer Split")),
        behavior_(behavior_member(j, "behavior", "pre_tokenizer Split")),
        invert_(bool_member(j, "invert", false, "pre_tokenizer Split")) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](const NormalizedString& s, std::vector<NormalizedString>& out) {
      thread_local std::vector<Segment> segments;
      regex_segments(*regex_, s.text, invert_, segments);
      split_by(s, segments, behavior_, out);
    });
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100 onwards.
std::array<uint32_t, 256> byte_to_char_table() {
  std::array<uint32_t, 256> table{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = direct[b] ? static_cast<uint32_t>(b) : next++;
  return table;
}

const std::array<std::string, 256>& byte_to_utf8() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    const auto chars = byte_to_char_table();
    for (int b = 0; b < 256; ++b) utf8_append(t[b], chars[b]);
    return t;
  }();
  return table;
}

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  explicit ByteLevelPreTokenizer(const json& j)
      : add_prefix_space_(bool_member(j, "add_prefix_space", true, "pre_tokenizer ByteLevel")),
        use_regex_(bool_member(j, "use_regex", true, "pre_tokenizer ByteLevel")) {
    if (use_regex_) {
      regex_ = std::make_unique<Regex>(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "pre_tokenizer ByteLevel");
    }
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_ || use_regex_) {
      split_pieces(pieces, [&](const NormalizedString& s, std::vector<NormalizedString>& out) {
        NormalizedString prefixed;
        const NormalizedString* source = &s;
        if (add_prefix_space_ && (s.text.empty() || s.text[0] != ' ')) {
          prefixed = s;
          prepend(prefixed, " ");
          source = &prefixed;
        }
        if (!use_regex_) {
          out.push_back(*source);
          return;
        }
        thread_local std::vector<Segment> segments;
        regex_segments(*regex_, source->text, false, segments);
        split_by(*source, segments, SplitBehavior::kIsolated, out);
      });
    }
    const auto& table = byte_to_utf8();
    for (auto& piece : pieces) {
      if (piece.added_id >= 0) continue;
      NormalizedString mapped;
      mapped.original_begin = piece.str.original_begin;
      mapped.text.reserve(piece.str.text.size() * 2);
      mapped.align.reserve(piece.str.text.size() * 2);
      for (size_t i = 0; i < piece.str.text.size(); ++i) {
        mapped.push_bytes(table[static_cast<unsigned char>(piece.str.text[i])], piece.str.align[i]);
      }
      piece.str = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> regex_;
};

template <bool (*IsMatch)(uint32_t)>
class CharSplit final : public PreTokenizer {
 public:
  explicit CharSplit(SplitBehavior behavior) : behavior_(behavior) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](const NormalizedString& s, std::vector<NormalizedString>& out) {
      thread_local std::vector<Segment> segments;
      char_segments(s.text, IsMatch, segments);
      split_by(s, segments, behavior_, out);
    });
  }

 private:
  SplitBehavior behavior_;
};

// Whitespace: the matches of \w+|[^\w\s]+ are the pieces; whitespace between them is dropped.
class Whitespace final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](const NormalizedString& s, std::vector<NormalizedString>& out) {
      enum Kind { kWord, kOther, kSpace };
      size_t run_begin = 0;
      Kind run_kind = kSpace;
      for (size_t i = 0; i <= s.text.size();) {
        Kind kind = kSpace;
        size_t len = 1;
        if (i < s.text.size()) {
          const uint32_t c = utf8_decode(s.text, i, &len);
          kind = is_word_char(c) ? kWord : is_whitespace(c) ? kSpace : kOther;
        }
        if (i == s.text.size() || kind != run_kind) {
          if (run_kind != kSpace && i > run_begin) out.push_back(s.slice(run_begin, i));
          run_begin = i;
          run_kind = kind;
        }
        i += len;
      }
    });
  }
};

class Metaspace final : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  explicit Metaspace(const json& j) {
    const std::string where = "pre_tokenizer Metaspace";
    replacement_ = single_char_member(j, "replacement", where);
    utf8_append(replacement_utf8_, replacement_);
    prepend_ = prepend_scheme(j, where);
    split_ = bool_member(j, "split", true, where);
  }
  static Prepend prepend_scheme(const json& j, const std::string& where) {
    Prepend scheme = Prepend::kAlways;
    if (j.contains("prepend_scheme")) {
      const std::string name = string_member(j, "prepend_scheme", where);
      if (name == "always") scheme = Prepend::kAlways;
      else if (name == "first") scheme = Prepend::kFirst;
      else if (name == "never") scheme = Prepend::kNever;
      else fail(ErrorCode::kUnsupported, where, ": unsupported prepend_scheme \"", name, "\"");
    }
    if (!bool_member(j, "add_prefix_space", true, where)) {
      MF_CHECK(scheme == Prepend::kNever, kFormat, where, ": add_prefix_space does not match declared prepend_scheme");
    }
    return scheme;
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](const NormalizedString& s, std::vector<NormalizedString>& out) {
      NormalizedString replaced;
      replaced.original_begin = s.original_begin;
      for (size_t i = 0; i < s.text.size(); ++i) {
        if (s.text[i] == ' ') replaced.push_bytes(replacement_utf8_, s.align[i]);
        else replaced.push_bytes(std::string_view(s.text).substr(i, 1), s.align[i]);
      }
      const bool starts_with_replacement = replaced.text.compare(0, replacement_utf8_.size(), replacement_utf8_) == 0;
      if (!starts_with_replacement &&
          (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && replaced.original_begin == 0))) {
        prepend(replaced, replacement_utf8_);
      }
      if (!split_) {
        out.push_back(std::move(replaced));
        return;
      }
      thread_local std::vector<Segment> segments;
      const uint32_t r = replacement_;
      char_segments(replaced.text, [r](uint32_t c) { return c == r; }, segments);
      split_by(replaced, segments, SplitBehavior::kMergedWithNext, out);
    });
  }

 private:
  uint32_t replacement_;
  std::string replacement_utf8_;
  Prepend prepend_;
  bool split_;
};

class PreTokenizerSequence final : public PreTokenizer {
 public:
  explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> stages) : stages_(std::move(stages)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : stages_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> stages_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "pre_tokenizer");
  if (type == "Split") return std::make_unique<Split>(j);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPreTokenizer>(j);
  if (type == "Digits") {
    const bool individual = bool_member(j, "individual_digits", false, "pre_tokenizer Digits");
    return std::make_unique<CharSplit<is_numeric>>(individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Punctuation") {
    const SplitBehavior behavior =
        j.contains("behavior") ? behavior_member(j, "behavior", "pre_tokenizer Punctuation") : SplitBehavior::kIsolated;
    return std::make_unique<CharSplit<is_punctuation>>(behavior);
  }
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "WhitespaceSplit") return std::make_unique<CharSplit<is_whitespace>>(SplitBehavior::kRemoved);
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> stages;
    stages.push_back(std::make_unique<CharSplit<is_whitespace>>(SplitBehavior::kRemoved));
    stages.push_back(std::make_unique<CharSplit<is_punctuation>>(SplitBehavior::kIsolated));
    return std::make_unique<PreTokenizerSequence>(std::move(stages));
  }
  if (type == "Metaspace") return std::make_unique<Metaspace>(j);
  if (type == "Sequence") {
    const json& list = member(j, "pretokenizers", "pre_tokenizer Sequence");
    MF_CHECK(list.is_array(), kFormat, "pre_tokenizer Sequence: \"pretokenizers\" must be a list");
    std::vector<std::unique_ptr<PreTokenizer>> stages;
    for (const auto& p : list) {
      auto stage = make_pre_tokenizer(p);
      if (stage) stages.push_back(std::move(stage));
    }
    return std::make_unique<PreTokenizerSequence>(std::move(stages));
  }
  fail(ErrorCode::kUnsupported, "unsupported pre_tokenizer type \"", type, "\"");
}

// ---------------------------------------------------------------------------------------------
// Post-processors

namespace {

// byte_level.rs process_offsets: offsets leave out the spaces at either end of a token, except a
// single leading space of the first token that add_prefix_space added.
void trim_offsets(std::vector<Token>& tokens, bool add_prefix_space) {
  constexpr uint32_t kSpaceChar = 0x120;  // 'Ġ', the byte-level form of ' '
  for (size_t i = 0; i < tokens.size(); ++i) {
    Token& t = tokens[i];
    std::vector<uint32_t> chars;
    for (size_t k = 0; k < t.text.size();) {
      size_t len;
      chars.push_back(utf8_decode(t.text, k, &len));
      k += len;
    }
    auto is_space = [](uint32_t c) { return c == kSpaceChar || is_whitespace(c); };
    size_t leading = 0, trailing = 0;
    while (leading < chars.size() && is_space(chars[leading])) ++leading;
    while (trailing < chars.size() && is_space(chars[chars.size() - 1 - trailing])) ++trailing;
    if (leading > 0) {
      const bool is_first = i == 0 || t.offsets.begin == 0;
      if (is_first && add_prefix_space && leading == 1) leading = 0;
      t.offsets.begin = static_cast<uint32_t>(std::min<size_t>(t.offsets.begin + leading, t.offsets.end));
    }
    if (trailing > 0 && t.offsets.end >= trailing) {
      t.offsets.end = static_cast<uint32_t>(std::max<size_t>(t.offsets.end - trailing, t.offsets.begin));
    }
  }
}

// ByteLevel changes no id; with trim_offsets it trims the offsets.
class ByteLevelProcessor final : public PostProcessor {
 public:
  explicit ByteLevelProcessor(const json& j)
      : trim_(bool_member(j, "trim_offsets", true, "post_processor ByteLevel")),
        add_prefix_space_(bool_member(j, "add_prefix_space", true, "post_processor ByteLevel")) {}
  void process(std::vector<Token>& tokens, bool) const override {
    if (trim_) trim_offsets(tokens, add_prefix_space_);
  }

 private:
  bool trim_, add_prefix_space_;
};

// Special tokens around the sequence: `before` + A + `after` when add_special_tokens is set;
// RobertaProcessing trims offsets first, as ByteLevel does.
class SurroundProcessor final : public PostProcessor {
 public:
  SurroundProcessor(std::vector<int32_t> before, std::vector<int32_t> after, bool trim = false,
                    bool add_prefix_space = false)
      : before_(std::move(before)), after_(std::move(after)), trim_(trim), add_prefix_space_(add_prefix_space) {}
  void process(std::vector<Token>& tokens, bool add_special_tokens) const override {
    if (trim_) trim_offsets(tokens, add_prefix_space_);
    if (!add_special_tokens) return;
    std::vector<Token> out;
    out.reserve(before_.size() + tokens.size() + after_.size());
    for (int32_t id : before_) out.push_back({id, {0, 0}, {}});
    out.insert(out.end(), tokens.begin(), tokens.end());
    for (int32_t id : after_) out.push_back({id, {0, 0}, {}});
    tokens = std::move(out);
  }

 private:
  std::vector<int32_t> before_, after_;
  bool trim_, add_prefix_space_;
};

int32_t id_of_pair(const json& j, const char* key, const std::string& where) {
  const json& pair = member(j, key, where);
  MF_CHECK(pair.is_array() && pair.size() == 2 && pair[1].is_number_integer(), kFormat, where, ": \"", key,
           "\" must be [token, id]");
  return pair[1].get<int32_t>();
}

std::unique_ptr<PostProcessor> make_template(const json& j) {
  const std::string where = "post_processor TemplateProcessing";
  const json& special = member(j, "special_tokens", where);
  MF_CHECK(special.is_object(), kFormat, where, ": \"special_tokens\" must be an object");
  const json& single = member(j, "single", where);
  MF_CHECK(single.is_array(), kFormat, where, ": \"single\" must be a list");
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (const auto& piece : single) {
    MF_CHECK(piece.is_object() && piece.size() == 1, kFormat, where, ": bad template piece ", piece.dump());
    if (piece.contains("Sequence")) {
      const std::string id = string_member(piece["Sequence"], "id", where);
      MF_CHECK(id == "A" && !seen_sequence, kFormat, where, ": the single template must hold sequence A once");
      seen_sequence = true;
    } else if (piece.contains("SpecialToken")) {
      const std::string name = string_member(piece["SpecialToken"], "id", where);
      MF_CHECK(special.contains(name), kFormat, where, ": missing special token \"", name, "\"");
      const json& ids = member(special[name], "ids", where);
      MF_CHECK(ids.is_array(), kFormat, where, ": \"ids\" of \"", name, "\" must be a list");
      for (const auto& id : ids) {
        MF_CHECK(id.is_number_integer(), kFormat, where, ": \"ids\" of \"", name, "\" must be integers");
        (seen_sequence ? after : before).push_back(id.get<int32_t>());
      }
    } else {
      fail(ErrorCode::kFormat, where, ": bad template piece ", piece.dump());
    }
  }
  MF_CHECK(seen_sequence, kFormat, where, ": the single template lacks sequence A");
  return std::make_unique<SurroundProcessor>(std::move(before), std::move(after));
}

class PostProcessorSequence final : public PostProcessor {
 public:
  explicit PostProcessorSequence(std::vector<std::unique_ptr<PostProcessor>> stages) : stages_(std::move(stages)) {}
  void process(std::vector<Token>& tokens, bool add_special_tokens) const override {
    for (const auto& p : stages_) p->process(tokens, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> stages_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "post_processor");
  if (type == "ByteLevel") return std::make_unique<ByteLevelProcessor>(j);
  if (type == "TemplateProcessing") return make_template(j);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const std::string where = "post_processor " + type;
    const bool roberta = type == "RobertaProcessing";
    return std::make_unique<SurroundProcessor>(std::vector<int32_t>{id_of_pair(j, "cls", where)},
                                               std::vector<int32_t>{id_of_pair(j, "sep", where)},
                                               roberta && bool_member(j, "trim_offsets", true, where),
                                               roberta && bool_member(j, "add_prefix_space", true, where));
  }
  if (type == "Sequence") {
    const json& list = member(j, "processors", "post_processor Sequence");
    MF_CHECK(list.is_array(), kFormat, "post_processor Sequence: \"processors\" must be a list");
    std::vector<std::unique_ptr<PostProcessor>> stages;
    for (const auto& p : list) {
      auto stage = make_post_processor(p);
      if (stage) stages.push_back(std::move(stage));
    }
    return std::make_unique<PostProcessorSequence>(std::move(stages));
  }
  fail(ErrorCode::kUnsupported, "unsupported post_processor type \"", type, "\"");
}

// ---------------------------------------------------------------------------------------------
// Decoders

namespace {

class ByteLevelDecoder final : public Decoder {
 public:
  ByteLevelDecoder() {
    const auto chars = byte_to_char_table();
    char_to_byte_.fill(-1);
    for (int b = 0; b < 256; ++b) char_to_byte_[chars[b]] = b;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      // A token with a character outside the table contributes its own UTF-8 bytes.
      const size_t start = bytes.size();
      bool mapped = true;
      for (size_t i = 0; i < t.size();) {
        size_t len;
        const uint32_t c = utf8_decode(t, i, &len);
        if (c >= char_to_byte_.size() || char_to_byte_[c] < 0) {
          mapped = false;
          break;
        }
        bytes += static_cast<char>(char_to_byte_[c]);
        i += len;
      }
      if (!mapped) {
        bytes.resize(start);
        bytes += t;
      }
    }
    std::vector<uint32_t> begin, end;
    tokens.assign(1, utf8_repair(bytes, &begin, &end));
  }

 private:
  std::array<int, 512> char_to_byte_;
};

class ReplaceDecoder final : public Decoder {
 public:
  explicit ReplaceDecoder(const json& j)
      : regex_(pattern_member(j, "decoder Replace")), content_(string_member(j, "content", "decoder Replace")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<Segment> segments;
    for (auto& t : tokens) {
      regex_segments(*regex_, t, false, segments);
      std::string out;
      for (const auto& s : segments) {
        if (s.is_match) out += content_;
        else out.append(t, s.begin, s.end - s.begin);
      }
      t = std::move(out);
    }
  }

 private:
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;  // bytes of consecutive <0xXX> tokens
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_is_valid(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (auto& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') byte = hex_byte(t[3], t[4]);
      if (byte >= 0) {
        pending += static_cast<char>(byte);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int hex_byte(char hi, char lo) {
    const int h = hex_digit(hi), l = hex_digit(lo);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const auto& t : tokens) joined += t;
    tokens.assign(1, std::move(joined));
  }
};

class StripDecoder final : public Decoder {
 public:
  explicit StripDecoder(const json& j)
      : content_(single_char_member(j, "content", "decoder Strip")),
        start_(count_member(j, "start", 0, "decoder Strip")),
        stop_(count_member(j, "stop", 0, "decoder Strip")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<uint32_t> chars;
      for (size_t i = 0; i < t.size();) {
        size_t len;
        chars.push_back(utf8_decode(t, i, &len));
        i += len;
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, chars.size()) && chars[i] == content_; ++i) start_cut = i + 1;
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < std::min(stop_, chars.size()) && chars[chars.size() - 1 - i] == content_; ++i)
        stop_cut = chars.size() - 1 - i;
      std::string out;
      for (size_t i = start_cut; i < stop_cut; ++i) utf8_append(out, chars[i]);
      t = std::move(out);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  explicit MetaspaceDecoder(const json& j)
      : replacement_(single_char_member(j, "replacement", "decoder Metaspace")),
        prepend_(Metaspace::prepend_scheme(j, "decoder Metaspace")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      for (size_t i = 0; i < t.size();) {
        size_t len;
        const uint32_t c = utf8_decode(t, i, &len);
        if (c != replacement_) out.append(t, i, len);
        else if (!(k == 0 && prepend_ != Metaspace::Prepend::kNever)) out += ' ';
        i += len;
      }
      tokens[k] = std::move(out);
    }
  }

 private:
  uint32_t replacement_;
  Metaspace::Prepend prepend_;
};

class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(const json& j)
      : suffix_(j.contains("suffix") ? string_member(j, "suffix", "decoder BPEDecoder") : "</w>") {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (suffix_.empty()) continue;
      const std::string replacement = k + 1 == tokens.size() ? "" : " ";
      std::string out;
      const std::string& t = tokens[k];
      for (size_t i = 0; i < t.size();) {
        if (t.compare(i, suffix_.size(), suffix_) == 0) {
          out += replacement;
          i += suffix_.size();
        } else {
          out += t[i++];
        }
      }
      tokens[k] = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

class DecoderSequence final : public Decoder {
 public:
  explicit DecoderSequence(const json& j) {
    const json& list = member(j, "decoders", "decoder Sequence");
    MF_CHECK(list.is_array(), kFormat, "decoder Sequence: \"decoders\" must be a list");
    for (const auto& d : list) {
      auto decoder = make_decoder(d);
      if (decoder) decoders_.push_back(std::move(decoder));
    }
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : decoders_) d->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> decoders_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "decoder");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") return std::make_unique<StripDecoder>(j);
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(j);
  if (type == "BPEDecoder") return std::make_unique<BpeDecoder>(j);
  if (type == "Sequence") return std::make_unique<DecoderSequence>(j);
  fail(ErrorCode::kUnsupported, "unsupported decoder type \"", type, "\"");
}

}  // namespace moeforge::tokenizer_detail
