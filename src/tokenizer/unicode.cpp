#include "tokenizer/unicode.h"

#include <algorithm>
#include <memory>

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/uniset.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>

#include "core/error.h"

namespace moeforge::tokenizer_detail {

void utf8_append(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

namespace {

// Length of the well-formed sequence at bytes[i], or 0 with *subpart set to the length of the
// maximal ill-formed subpart there (Unicode Table 3-7).
size_t well_formed_length(std::string_view bytes, size_t i, size_t* subpart) {
  const auto at = [&](size_t k) -> int {
    return i + k < bytes.size() ? static_cast<unsigned char>(bytes[i + k]) : -1;
  };
  const int lead = at(0);
  size_t need;
  int lo = 0x80, hi = 0xBF;  // range of the second byte
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    *subpart = 1;
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    const int b = at(k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *subpart = k;
      return 0;
    }
  }
  return need;
}

}  // namespace

bool utf8_is_valid(std::string_view bytes) {
  for (size_t i = 0; i < bytes.size();) {
    if (static_cast<unsigned char>(bytes[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t subpart = 0;
    const size_t n = well_formed_length(bytes, i, &subpart);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_repair(std::string_view bytes, std::vector<uint32_t>* source_begin,
                        std::vector<uint32_t>* source_end) {
  std::string out;
  out.reserve(bytes.size() + 8);
  source_begin->clear();
  source_end->clear();
  for (size_t i = 0; i < bytes.size();) {
    size_t subpart = 0;
    const size_t n = well_formed_length(bytes, i, &subpart);
    const size_t consumed = n ? n : subpart;
    if (n) {
      out.append(bytes.substr(i, n));
    } else {
      out.append("\xEF\xBF\xBD");
    }
    const size_t written = n ? n : 3;
    for (size_t k = 0; k < written; ++k) {
      source_begin->push_back(static_cast<uint32_t>(i));
      source_end->push_back(static_cast<uint32_t>(i + consumed));
    }
    i += consumed;
  }
  return out;
}

namespace {

// The Unicode versions of the tables that Hugging Face tokenizers 0.23.3 uses; ICU (Unicode 15.0 in
// ICU 72) answers for a later version, so its answers are cut back to what these versions assigned.
// Both were confirmed by probing every code point against the library. Its other properties here
// (char::is_whitespace, is_numeric, to_lowercase of the Rust 1.99 std that built the wheel) are of a
// later Unicode than ICU 72's and agree with ICU on every code point ICU knows.
struct UnicodeVersion {
  int major, minor;
};
// unicode-normalization-alignments 0.1.12 (NFC, NFD, NFKC, NFKD and StripAccents' combining marks):
// its tables.rs says UNICODE_VERSION = (9, 0, 0).
constexpr UnicodeVersion kNormalizationVersion{9, 0};
// unicode_categories 0.1.1 (the Punctuation and BertPreTokenizer punctuation test): its tables name
// no version; they are those of Unicode 8.0 (every P* character of 9.0 and later is missing).
constexpr UnicodeVersion kCategoriesVersion{8, 0};

// Whether `c` was assigned in Unicode `v` (u_charAge is 0.0 for unassigned code points).
bool assigned_in(uint32_t c, UnicodeVersion v) {
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(c), age);
  return age[0] != 0 && (age[0] < v.major || (age[0] == v.major && age[1] <= v.minor));
}

// ICU's normalizers restricted to the code points of kNormalizationVersion. Decompositions and
// combining classes never change once assigned (Unicode's normalization stability policy), so this
// is normalization as of that version: a later code point is an unassigned one there (combining
// class 0, no decomposition, composes with nothing), which is what FilteredNormalizer2 answers for
// code points outside its set.
class VersionedNormalizers {
 public:
  VersionedNormalizers() {
    UErrorCode status = U_ZERO_ERROR;
    // [:age=X:] is every code point assigned in version X or earlier.
    const std::string pattern = "[:age=" + std::to_string(kNormalizationVersion.major) + "." +
                                std::to_string(kNormalizationVersion.minor) + ":]";
    assigned_.applyPattern(icu::UnicodeString::fromUTF8(pattern), status);
    assigned_.freeze();  // read by many threads
    const icu::Normalizer2* full[] = {icu::Normalizer2::getNFCInstance(status),
                                      icu::Normalizer2::getNFDInstance(status),
                                      icu::Normalizer2::getNFKCInstance(status),
                                      icu::Normalizer2::getNFKDInstance(status)};
    MF_CHECK(U_SUCCESS(status), kInternal, "ICU normalization data unavailable: ", u_errorName(status));
    for (size_t i = 0; i < 4; ++i) filtered_[i] = std::make_unique<icu::FilteredNormalizer2>(*full[i], assigned_);
  }
  const icu::Normalizer2& get(NormalForm form) const { return *filtered_[static_cast<size_t>(form)]; }

 private:
  icu::UnicodeSet assigned_;
  std::unique_ptr<icu::FilteredNormalizer2> filtered_[4];  // in NormalForm order
};

const icu::Normalizer2& normalizer_for(NormalForm form) {
  static const VersionedNormalizers normalizers;
  return normalizers.get(form);
}

}  // namespace

bool is_normalized(std::string_view utf8, NormalForm form) {
  const icu::Normalizer2& n = normalizer_for(form);
  UErrorCode status = U_ZERO_ERROR;
  const bool yes = n.isNormalizedUTF8(icu::StringPiece(utf8.data(), static_cast<int32_t>(utf8.size())), status);
  return U_SUCCESS(status) && yes;
}

namespace {

// The full decomposition of one code point (Rust crate: ASCII never decomposes, then Hangul, then
// the canonical or compatibility tables).
void decompose(uint32_t c, NormalForm form, std::vector<uint32_t>& out) {
  if (c < 0x80) {
    out.push_back(c);
    return;
  }
  const bool compatible = form == NormalForm::kNFKC || form == NormalForm::kNFKD;
  const icu::Normalizer2& n = normalizer_for(compatible ? NormalForm::kNFKD : NormalForm::kNFD);
  icu::UnicodeString d;
  if (!n.getDecomposition(static_cast<UChar32>(c), d)) {
    out.push_back(c);
    return;
  }
  for (int32_t i = 0; i < d.length();) {
    const UChar32 cp = d.char32At(i);
    out.push_back(static_cast<uint32_t>(cp));
    i += U16_LENGTH(cp);
  }
}

int combining_class(uint32_t c) {
  return c < 0x300 ? 0 : normalizer_for(NormalForm::kNFD).getCombiningClass(static_cast<UChar32>(c));
}

// The canonical composite of a + b, or -1.
int64_t compose_pair(uint32_t a, uint32_t b) {
  const UChar32 r = normalizer_for(NormalForm::kNFC).composePair(static_cast<UChar32>(a), static_cast<UChar32>(b));
  return r < 0 ? -1 : r;
}

}  // namespace

void normalize_with_changes(const std::vector<uint32_t>& input, NormalForm form, std::vector<CharChange>& out) {
  out.clear();
  // Decomposition (decompose.rs): each character's first code point replaces it (change 0), the
  // others are inserted (+1); runs of non-starters are stably sorted by combining class.
  struct Decomposed {
    int ccc;
    CharChange c;
  };
  std::vector<Decomposed> decomposed;
  std::vector<uint32_t> parts;
  size_t pending = 0;  // start of the run not sorted yet
  auto sort_pending = [&] {
    std::stable_sort(decomposed.begin() + static_cast<ptrdiff_t>(pending), decomposed.end(),
                     [](const Decomposed& a, const Decomposed& b) { return a.ccc < b.ccc; });
    pending = decomposed.size();
  };
  for (uint32_t c : input) {
    parts.clear();
    decompose(c, form, parts);
    for (size_t k = 0; k < parts.size(); ++k) {
      const int ccc = combining_class(parts[k]);
      if (ccc == 0) sort_pending();
      decomposed.push_back({ccc, {parts[k], k == 0 ? 0 : 1}});
    }
  }
  sort_pending();
  if (form == NormalForm::kNFD || form == NormalForm::kNFKD) {
    for (const auto& d : decomposed) out.push_back(d.c);
    return;
  }

  // Recomposition (recompose.rs), whose composites take the changes of what they absorb, minus one
  // per absorbed character.
  bool has_composee = false, has_last_ccc = false;
  CharChange composee{0, 0};
  int last_ccc = 0;
  std::vector<CharChange> buffer;
  auto purge = [&] {
    out.insert(out.end(), buffer.begin(), buffer.end());
    buffer.clear();
  };
  for (const auto& d : decomposed) {
    const CharChange ch = d.c;
    const int ch_class = d.ccc;
    if (!has_composee) {
      if (ch_class != 0) {
        out.push_back(ch);
        continue;
      }
      composee = ch;
      has_composee = true;
      continue;
    }
    if (!has_last_ccc) {
      const int64_t r = compose_pair(composee.code_point, ch.code_point);
      if (r >= 0) {
        composee = {static_cast<uint32_t>(r), composee.change + ch.change - 1};
        continue;
      }
      if (ch_class == 0) {
        out.push_back(composee);
        composee = ch;
        continue;
      }
      buffer.push_back(ch);
      last_ccc = ch_class;
      has_last_ccc = true;
      continue;
    }
    if (last_ccc >= ch_class) {
      if (ch_class == 0) {
        out.push_back(composee);
        purge();
        composee = ch;
        has_last_ccc = false;
        continue;
      }
      buffer.push_back(ch);
      last_ccc = ch_class;
      continue;
    }
    const int64_t r = compose_pair(composee.code_point, ch.code_point);
    if (r >= 0) {
      composee = {static_cast<uint32_t>(r), composee.change + ch.change - 1};
      continue;
    }
    buffer.push_back(ch);
    last_ccc = ch_class;
  }
  if (has_composee) out.push_back(composee);
  purge();
}

void append_lowercase(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  // One code point alone, so no context (final sigma) applies, as in char::to_lowercase.
  UChar src[2];
  int32_t src_len = 0;
  U16_APPEND_UNSAFE(src, src_len, static_cast<UChar32>(c));
  UChar dst[8];
  UErrorCode status = U_ZERO_ERROR;
  const int32_t len = u_strToLower(dst, 8, src, src_len, "", &status);
  MF_CHECK(U_SUCCESS(status), kInternal, "ICU lowercase failed: ", u_errorName(status));
  for (int32_t i = 0; i < len;) {
    UChar32 cp;
    U16_NEXT(dst, i, len, cp);
    utf8_append(out, static_cast<uint32_t>(cp));
  }
}

bool is_whitespace(uint32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

bool is_numeric(uint32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const uint32_t mask = U_GET_GC_MASK(static_cast<UChar32>(c));
  return (mask & (U_GC_ND_MASK | U_GC_NL_MASK | U_GC_NO_MASK)) != 0;
}

bool is_punctuation(uint32_t c) {
  if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                       (c >= 0x7B && c <= 0x7E);
  // General_Category changes since kCategoriesVersion, where both were Po (the library splits on
  // them): U+166D CANADIAN SYLLABICS CHI SIGN is now So, U+111C9 SHARADA SANDHI MARK now Mn.
  if (c == 0x166D || c == 0x111C9) return true;
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_P_MASK) != 0 && assigned_in(c, kCategoriesVersion);
}

bool is_word_char(uint32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  const auto cp = static_cast<UChar32>(c);
  const uint32_t mask = U_GET_GC_MASK(cp);
  return u_hasBinaryProperty(cp, UCHAR_ALPHABETIC) || (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
         u_hasBinaryProperty(cp, UCHAR_JOIN_CONTROL);
}

bool is_combining_mark(uint32_t c) {
  // General_Category changes since kNormalizationVersion (the library's StripAccents agrees):
  // U+1CF2 and U+1CF3 VEDIC SIGN (ROTATED) ARDHAVISARGA were Mc, now Lo; U+111C9 SHARADA SANDHI
  // MARK was Po, now Mn.
  if (c == 0x1CF2 || c == 0x1CF3) return true;
  if (c == 0x111C9) return false;
  return c >= 0x80 && (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_M_MASK) != 0 &&
         assigned_in(c, kNormalizationVersion);
}

}  // namespace moeforge::tokenizer_detail
