#include "chat/jinja_builtins.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <set>

namespace moeforge::chat {

// ---- strings as Python sees them (code points) ----

namespace {

// A run of decimal digits as a size bounded by kMaxBuiltValueBytes (format widths, field numbers).
size_t bounded_number(const std::string& digits, const char* what) {
  size_t n = 0;
  for (char c : digits) {
    n = n * 10 + static_cast<size_t>(c - '0');
    if (n > static_cast<size_t>(kMaxBuiltValueBytes)) eval_fail(what, " ", digits, " is too large");
  }
  return n;
}

// A padding or indentation width given by the template, bounded like any built value.
size_t bounded_width(int64_t width) {
  if (width > kMaxBuiltValueBytes) eval_fail("width ", width, " is too large");
  return static_cast<size_t>(std::max<int64_t>(0, width));
}

std::vector<uint32_t> code_points(std::string_view s) {
  std::vector<uint32_t> cps;
  size_t pos = 0;
  while (pos < s.size()) cps.push_back(utf8_decode_at(s, pos));
  return cps;
}

std::string from_code_points(const std::vector<uint32_t>& cps, size_t begin = 0, size_t end = SIZE_MAX) {
  std::string out;
  end = std::min(end, cps.size());
  for (size_t i = begin; i < end; ++i) utf8_append(out, cps[i]);
  return out;
}

uint32_t upper_cp(uint32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if ((c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
  if (c == 0xff) return 0x178;
  if (c == 0xb5) return 0x39c;
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) return c & ~1u;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) return (c % 2 == 0) ? c - 1 : c;
  if (c == 0x131) return 'I';
  if (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) return c - 32;
  if (c == 0x3c2) return 0x3a3;
  if (c == 0x3ac) return 0x386;
  if (c >= 0x3ad && c <= 0x3af) return c - 37;
  if (c == 0x3cc) return 0x38c;
  if (c == 0x3cd || c == 0x3ce) return c - 63;
  if (c >= 0x430 && c <= 0x44f) return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  if ((c >= 0x460 && c <= 0x481) || (c >= 0x48a && c <= 0x4bf)) return c & ~1u;
  if (c >= 0xff41 && c <= 0xff5a) return c - 32;
  return c;
}

uint32_t lower_cp(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 32;
  if (c == 0x178) return 0xff;
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) return c | 1u;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) return (c % 2 == 1) ? c + 1 : c;
  if (c == 0x130) return 'i';
  if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 32;
  if (c == 0x386) return 0x3ac;
  if (c >= 0x388 && c <= 0x38a) return c + 37;
  if (c == 0x38c) return 0x3cc;
  if (c == 0x38e || c == 0x38f) return c + 63;
  if (c >= 0x410 && c <= 0x42f) return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  if ((c >= 0x460 && c <= 0x481) || (c >= 0x48a && c <= 0x4bf)) return c | 1u;
  if (c >= 0xff21 && c <= 0xff3a) return c + 32;
  return c;
}

bool is_cased(uint32_t c) { return upper_cp(c) != c || lower_cp(c) != c; }
bool is_upper_cp(uint32_t c) { return lower_cp(c) != c; }
bool is_lower_cp(uint32_t c) { return upper_cp(c) != c; }

std::string map_case(const std::string& s, uint32_t (*f)(uint32_t), bool sharp_s_to_ss) {
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    uint32_t c = utf8_decode_at(s, pos);
    if (sharp_s_to_ss && c == 0xdf) out += "SS";
    else utf8_append(out, f(c));
  }
  return out;
}

}  // namespace

std::string string_upper(const std::string& s) { return map_case(s, upper_cp, true); }
std::string string_lower(const std::string& s) { return map_case(s, lower_cp, false); }

namespace {

std::string python_title(const std::string& s) {  // str.title()
  std::string out;
  bool previous_cased = false;
  size_t pos = 0;
  while (pos < s.size()) {
    uint32_t c = utf8_decode_at(s, pos);
    utf8_append(out, previous_cased ? lower_cp(c) : upper_cp(c));
    previous_cased = is_cased(c);
  }
  return out;
}

std::string python_capitalize(const std::string& s) {
  auto cps = code_points(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) utf8_append(out, i == 0 ? upper_cp(cps[i]) : lower_cp(cps[i]));
  return out;
}

// Jinja2's title filter: each word (split at whitespace, '-', and opening brackets) gets its first
// character upper-cased and the rest lower-cased.
std::string jinja_title(const std::string& s) {
  auto cps = code_points(s);
  auto is_sep = [](uint32_t c) { return python_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  std::string out;
  bool word_start = true;
  for (uint32_t c : cps) {
    if (is_sep(c)) {
      utf8_append(out, c);
      word_start = true;
    } else {
      utf8_append(out, word_start ? upper_cp(c) : lower_cp(c));
      word_start = false;
    }
  }
  return out;
}

std::string strip_chars(const std::string& s, const Value* chars, bool left, bool right) {
  auto cps = code_points(s);
  std::vector<uint32_t> set;
  bool whitespace = chars == nullptr || chars->is_none();
  if (!whitespace) {
    if (!chars->is_string()) eval_fail("strip arg must be None or str");
    set = code_points(chars->as_string());
  }
  auto strip_this = [&](uint32_t c) {
    return whitespace ? python_isspace(c) : std::find(set.begin(), set.end(), c) != set.end();
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_this(cps[b])) ++b;
  if (right)
    while (e > b && strip_this(cps[e - 1])) --e;
  return from_code_points(cps, b, e);
}

int64_t int_arg(const Value* v, int64_t fallback, const char* what) {
  if (v == nullptr || v->is_none()) return fallback;
  if (!v->is_int() && !v->is_bool()) eval_fail(what, " must be an integer, not ", v->type_name());
  return v->as_int();
}

const std::string& string_arg(const Value* v, const char* what) {
  if (v == nullptr) eval_fail(what, " is missing");
  if (!v->is_string()) eval_fail(what, " must be str, not ", v->type_name());
  return v->as_string();
}

Value string_list(const std::vector<std::string>& parts) {
  ValueList items;
  for (const auto& p : parts) items.emplace_back(p);
  return Value::list(std::move(items));
}

std::vector<std::string> python_split(const std::string& s, const Value* sep_value, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep_value == nullptr || sep_value->is_none()) {
    // Runs of whitespace separate; leading and trailing whitespace yield nothing.
    auto cps = code_points(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && python_isspace(cps[i])) ++i;
      if (i == cps.size()) break;
      size_t start = i;
      while (i < cps.size() && !python_isspace(cps[i])) ++i;
      words.emplace_back(start, i);
    }
    if (maxsplit < 0 || static_cast<size_t>(maxsplit) + 1 >= words.size()) {
      for (auto [b, e] : words) parts.push_back(from_code_points(cps, b, e));
      return parts;
    }
    size_t n = static_cast<size_t>(maxsplit);
    if (!from_right) {
      for (size_t w = 0; w < n; ++w) parts.push_back(from_code_points(cps, words[w].first, words[w].second));
      size_t rest = words[n].first;
      size_t end = cps.size();
      parts.push_back(from_code_points(cps, rest, end));  // the remainder keeps its trailing whitespace
    } else {
      size_t first_kept = words.size() - n;
      parts.push_back(from_code_points(cps, 0, words[first_kept - 1].second));
      for (size_t w = first_kept; w < words.size(); ++w)
        parts.push_back(from_code_points(cps, words[w].first, words[w].second));
    }
    return parts;
  }
  const std::string& sep = string_arg(sep_value, "separator");
  if (sep.empty()) eval_fail("empty separator");
  if (!from_right) {
    size_t start = 0;
    int64_t splits = 0;
    while (maxsplit < 0 || splits < maxsplit) {
      size_t hit = s.find(sep, start);
      if (hit == std::string::npos) break;
      parts.push_back(s.substr(start, hit - start));
      start = hit + sep.size();
      ++splits;
    }
    parts.push_back(s.substr(start));
  } else {
    size_t end = s.size();
    int64_t splits = 0;
    std::vector<std::string> reversed;
    while (maxsplit < 0 || splits < maxsplit) {
      if (end < sep.size()) break;
      size_t hit = s.rfind(sep, end - sep.size());
      if (hit == std::string::npos) break;
      reversed.push_back(s.substr(hit + sep.size(), end - hit - sep.size()));
      end = hit;
      ++splits;
    }
    reversed.push_back(s.substr(0, end));
    parts.assign(reversed.rbegin(), reversed.rend());
  }
  return parts;
}

std::string python_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {
    auto starts = utf8_char_starts(s);
    int64_t done = 0;
    for (size_t i = 0; i <= starts.size(); ++i) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (i < starts.size()) out.append(s, starts[i], (i + 1 < starts.size() ? starts[i + 1] : s.size()) - starts[i]);
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t hit = s.find(old, start);
    if (hit == std::string::npos) break;
    out.append(s, start, hit - start);
    out += repl;
    start = hit + old.size();
    ++done;
  }
  out.append(s, start);
  return out;
}

// Python's slice.indices(): clamps start/stop for a sequence of `length`.
std::vector<size_t> slice_positions(int64_t length, const Value* start_v, const Value* stop_v, int64_t step) {
  if (step == 0) eval_fail("slice step cannot be zero");
  auto bound = [&](const Value* v, int64_t fallback) -> int64_t {
    if (v == nullptr || v->is_none()) return fallback;
    int64_t i = int_arg(v, 0, "slice index");
    if (i < 0) i += length;
    if (step > 0) return std::clamp<int64_t>(i, 0, length);
    return std::clamp<int64_t>(i, -1, length - 1);
  };
  int64_t start = bound(start_v, step > 0 ? 0 : length - 1);
  int64_t stop = bound(stop_v, step > 0 ? length : -1);
  std::vector<size_t> positions;
  if (step > 0)
    for (int64_t i = start; i < stop; i += step) positions.push_back(static_cast<size_t>(i));
  else
    for (int64_t i = start; i > stop; i += step) positions.push_back(static_cast<size_t>(i));
  return positions;
}

// Code-point index range [start, end) of str.find-style optional arguments, as byte offsets.
std::pair<size_t, size_t> find_range(const std::string& s, const std::vector<size_t>& starts, const CallArgs& args) {
  int64_t n = static_cast<int64_t>(starts.size());
  auto clamp_index = [&](const Value* v, int64_t fallback) {
    int64_t i = int_arg(v, fallback, "index");
    if (i < 0) i = std::max<int64_t>(0, i + n);
    return std::min(i, n);
  };
  int64_t b = clamp_index(args.get(1, "start"), 0), e = clamp_index(args.get(2, "end"), n);
  auto byte_at = [&](int64_t i) { return i >= n ? s.size() : starts[static_cast<size_t>(i)]; };
  return {byte_at(b), byte_at(std::max(b, e))};
}

int64_t char_index(const std::vector<size_t>& starts, size_t byte) {
  return std::lower_bound(starts.begin(), starts.end(), byte) - starts.begin();
}

// Python's str.format with automatic or explicit field numbering and keyword fields; format specs
// and conversions are not supported.
std::string python_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '{') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
        out += '{';
        ++i;
        continue;
      }
      size_t close = fmt.find('}', i);
      if (close == std::string::npos) eval_fail("Single '{' encountered in format string");
      std::string field = fmt.substr(i + 1, close - i - 1);
      if (field.find_first_of(":!.[") != std::string::npos)
        eval_fail("str.format: the field '{", field, "}' uses a format spec or lookup, which is not supported");
      const Value* v = nullptr;
      if (field.empty()) {
        v = auto_index < args.positional.size() ? &args.positional[auto_index] : nullptr;
        ++auto_index;
      } else if (std::all_of(field.begin(), field.end(), [](char d) { return std::isdigit(static_cast<unsigned char>(d)); })) {
        size_t k = bounded_number(field, "format field");
        v = k < args.positional.size() ? &args.positional[k] : nullptr;
      } else {
        for (const auto& [name, value] : args.keyword)
          if (name == field) v = &value;
      }
      if (v == nullptr) eval_fail("str.format: no argument for '{", field, "}'");
      out += v->str();
      i = close;
    } else if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out += '}';
        ++i;
        continue;
      }
      eval_fail("Single '}' encountered in format string");
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string python_percent_format(const std::string& fmt, const Value& arg) {
  const bool tuple = arg.is_tuple();
  const bool mapping = arg.is_dict() && !arg.as_dict().is_namespace;
  size_t next_arg = 0;
  bool used_mapping_key = false;
  auto take = [&]() -> Value {
    if (!tuple) {
      if (next_arg++ > 0) eval_fail("not enough arguments for format string");
      return arg;
    }
    if (next_arg >= arg.as_list().size()) eval_fail("not enough arguments for format string");
    return arg.as_list()[next_arg++];
  };
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) eval_fail("incomplete format");
    Value value;
    bool have_value = false;
    if (fmt[i] == '(') {
      size_t close = fmt.find(')', i);
      if (close == std::string::npos) eval_fail("incomplete format key");
      if (!mapping) eval_fail("format requires a mapping");
      const Value* v = arg.as_dict().find(fmt.substr(i + 1, close - i - 1));
      if (v == nullptr) eval_fail("KeyError: '", fmt.substr(i + 1, close - i - 1), "'");
      value = *v;
      have_value = used_mapping_key = true;
      i = close + 1;
    }
    std::string flags;
    while (i < fmt.size() && std::string_view("-+ #0").find(fmt[i]) != std::string_view::npos) flags += fmt[i++];
    std::string width, precision;
    while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) width += fmt[i++];
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      precision = ".";
      while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) precision += fmt[i++];
    }
    if (i >= fmt.size()) eval_fail("incomplete format");
    char type = fmt[i];
    if (type == '%') {
      out += '%';
      continue;
    }
    if (!have_value) value = take();
    std::string text;
    if (type == 's' || type == 'r') {
      text = type == 's' ? value.str() : value.repr();
      if (precision.size() > 1) {
        auto starts = utf8_char_starts(text);
        size_t keep = bounded_number(precision.substr(1), "format precision");
        if (keep < starts.size()) text = text.substr(0, starts[keep]);
      }
      size_t len = utf8_length(text);
      size_t w = bounded_number(width, "format width");
      if (len < w) {
        std::string pad(w - len, ' ');
        text = flags.find('-') != std::string::npos ? text + pad : pad + text;
      }
    } else if (std::string_view("diouxXeEfFgGc").find(type) != std::string_view::npos) {
      if (!(value.is_number() || value.is_bool()))
        eval_fail("%", type, " format: a real number is required, not ", value.type_name());
      bounded_number(width, "format width");
      if (precision.size() > 1 && bounded_number(precision.substr(1), "format precision") > 300)
        eval_fail("format precision ", precision.substr(1), " is too large");
      std::string spec = "%" + flags + width + precision;
      char buf[512];
      if (flags.find('#') != std::string::npos) eval_fail("the '#' format flag is not supported");
      if (type == 'c') {
        if (value.is_float() || value.as_int() < 0 || value.as_int() > 0x10ffff) eval_fail("%c arg not in range(0x110000)");
        buf[0] = 0;
        std::string ch;
        utf8_append(ch, static_cast<uint32_t>(value.as_int()));
        std::snprintf(buf, sizeof(buf), (spec + "s").c_str(), ch.c_str());
      } else if (std::string_view("diouxX").find(type) != std::string_view::npos) {
        if (type != 'd' && type != 'i' && type != 'u' && value.is_float())
          eval_fail("%", type, " format: an integer is required, not float");
        double f = value.as_double();
        if (value.is_float() && !(std::fabs(f) < 9.2e18)) eval_fail("%", type, " format: number out of range");
        long long n = value.is_float() ? static_cast<long long>(f) : value.as_int();
        char conversion = type == 'i' || type == 'u' ? 'd' : type;
        if (n < 0 && conversion != 'd') {  // Python prints a sign, not two's complement
          if (n == LLONG_MIN) eval_fail("integer overflow in format");
          std::snprintf(buf, sizeof(buf), (spec + "ll" + conversion).c_str(), -n);
          text = std::string("-") + buf;
          out += text;
          continue;
        }
        std::snprintf(buf, sizeof(buf), (spec + "ll" + conversion).c_str(), n);
      } else {
        std::snprintf(buf, sizeof(buf), (spec + type).c_str(), value.as_double());
      }
      text = buf;
    } else {
      eval_fail("unsupported format character '", std::string(1, type), "'");
    }
    out += text;
  }
  if (tuple && next_arg < arg.as_list().size()) eval_fail("not all arguments converted during string formatting");
  // Python skips this check for any argument with __getitem__ other than str (dicts, lists).
  if (!tuple && !mapping && !arg.is_list() && next_arg == 0 && !used_mapping_key)
    eval_fail("not all arguments converted during string formatting");
  return out;
}

namespace {

bool all_code_points(const std::string& s, bool (*pred)(uint32_t)) {
  if (s.empty()) return false;
  size_t pos = 0;
  while (pos < s.size())
    if (!pred(utf8_decode_at(s, pos))) return false;
  return true;
}

bool is_alpha_cp(uint32_t c) { return (c < 0x80 && std::isalpha(static_cast<int>(c))) || is_cased(c); }
bool is_digit_cp(uint32_t c) { return c >= '0' && c <= '9'; }
bool is_alnum_cp(uint32_t c) { return is_alpha_cp(c) || is_digit_cp(c); }

Value string_method(const std::string& s, const std::string& name, const CallArgs& args) {
  auto starts_or_ends = [&](bool ends) {
    const Value* p = args.get(0, "prefix");
    if (p == nullptr) eval_fail("str.", name, "() takes at least 1 argument");
    if (args.positional.size() > 1) eval_fail("str.", name, "(): start/end arguments are not supported");
    auto test = [&](const std::string& x) {
      if (x.size() > s.size()) return false;
      return ends ? s.compare(s.size() - x.size(), x.size(), x) == 0 : s.compare(0, x.size(), x) == 0;
    };
    if (p->is_list() && p->is_tuple()) {
      for (const auto& x : p->as_list())
        if (test(string_arg(&x, "prefix"))) return true;
      return false;
    }
    return test(string_arg(p, ends ? "suffix" : "prefix"));
  };
  if (name == "startswith") return Value(starts_or_ends(false));
  if (name == "endswith") return Value(starts_or_ends(true));
  if (name == "strip") return Value(strip_chars(s, args.get(0, "chars"), true, true));
  if (name == "lstrip") return Value(strip_chars(s, args.get(0, "chars"), true, false));
  if (name == "rstrip") return Value(strip_chars(s, args.get(0, "chars"), false, true));
  if (name == "split" || name == "rsplit")
    return string_list(python_split(s, args.get(0, "sep"), int_arg(args.get(1, "maxsplit"), -1, "maxsplit"),
                                    name == "rsplit"));
  if (name == "replace")
    return Value(python_replace(s, string_arg(args.get(0, "old"), "old"), string_arg(args.get(1, "new"), "new"),
                                int_arg(args.get(2, "count"), -1, "count")));
  if (name == "upper") return Value(string_upper(s));
  if (name == "lower") return Value(string_lower(s));
  if (name == "title") return Value(python_title(s));
  if (name == "capitalize") return Value(python_capitalize(s));
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const std::string& sub = string_arg(args.get(0, "sub"), "substring");
    auto starts = utf8_char_starts(s);
    auto [b, e] = find_range(s, starts, args);
    std::string_view window = std::string_view(s).substr(b, e - b);
    if (name == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(utf8_length(window) + 1));
      int64_t n = 0;
      for (size_t p = window.find(sub); p != std::string_view::npos; p = window.find(sub, p + sub.size())) ++n;
      return Value(n);
    }
    size_t hit = (name == "find" || name == "index") ? window.find(sub) : window.rfind(sub);
    if (hit == std::string_view::npos) {
      if (name == "index" || name == "rindex") eval_fail("substring not found");
      return Value(int64_t{-1});
    }
    return Value(char_index(starts, b + hit));
  }
  if (name == "format") return Value(python_format(s, args));
  if (name == "join") {
    const Value* items = args.get(0, "iterable");
    if (items == nullptr) eval_fail("str.join() takes exactly one argument");
    std::string out;
    bool first = true;
    for (const auto& item : iterate(*items)) {
      if (!item.is_string()) eval_fail("sequence item: expected str instance, ", item.type_name(), " found");
      if (!first) out += s;
      first = false;
      out += item.as_string();
    }
    return Value(out);
  }
  if (name == "splitlines") {
    std::vector<std::string> lines;
    auto cps = code_points(s);
    size_t start = 0;
    for (size_t i = 0; i < cps.size(); ++i) {
      uint32_t c = cps[i];
      bool brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
                 c == 0x85 || c == 0x2028 || c == 0x2029;
      if (!brk) continue;
      lines.push_back(from_code_points(cps, start, i));
      if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
      start = i + 1;
    }
    if (start < cps.size()) lines.push_back(from_code_points(cps, start, cps.size()));
    return string_list(lines);
  }
  if (name == "isdigit") return Value(all_code_points(s, is_digit_cp));
  if (name == "isalpha") return Value(all_code_points(s, is_alpha_cp));
  if (name == "isalnum") return Value(all_code_points(s, is_alnum_cp));
  if (name == "isspace") return Value(all_code_points(s, python_isspace));
  if (name == "isupper" || name == "islower") {
    bool any_cased = false, ok = true;
    size_t pos = 0;
    while (pos < s.size()) {
      uint32_t c = utf8_decode_at(s, pos);
      if (name == "isupper" ? is_lower_cp(c) : is_upper_cp(c)) ok = false;
      if (is_cased(c)) any_cased = true;
    }
    return Value(ok && any_cased);
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const std::string& x = string_arg(args.get(0, "affix"), "affix");
    if (name == "removeprefix") return Value(s.compare(0, x.size(), x) == 0 ? s.substr(x.size()) : s);
    bool ends = x.size() <= s.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
    return Value(ends ? s.substr(0, s.size() - x.size()) : s);
  }
  eval_fail("'str' object has no method '", name, "'");
}

const std::set<std::string>& string_method_names() {
  static const std::set<std::string> names = {
      "startswith", "endswith", "strip",  "lstrip", "rstrip",  "split",   "rsplit",  "replace",
      "upper",      "lower",    "title",  "capitalize", "find", "rfind", "index",   "rindex", "count",
      "format",     "join",     "splitlines", "isdigit", "isalpha", "isalnum", "isspace", "isupper",
      "islower",    "removeprefix", "removesuffix"};
  return names;
}

Value items_of(const Value& dict) {
  ValueList items;
  for (const auto& [k, v] : dict.as_dict().items) items.push_back(Value::list({Value(k), v}, SequenceKind::kTuple));
  return Value::list(std::move(items));
}

Value dict_method(const Value& d, const std::string& name, const CallArgs& args) {
  if (name == "items") return Value::list(items_of(d).as_list(), SequenceKind::kDictItems);
  if (name == "keys" || name == "values") {
    ValueList out;
    for (const auto& [k, v] : d.as_dict().items) out.push_back(name == "keys" ? Value(k) : v);
    return Value::list(std::move(out), name == "keys" ? SequenceKind::kDictKeys : SequenceKind::kDictValues);
  }
  // get
  const Value* key = args.get(0, "key");
  if (key == nullptr) eval_fail("dict.get() takes at least 1 argument");
  if (key->is_string()) {
    if (const Value* v = d.as_dict().find(key->as_string())) return *v;
  }
  const Value* fallback = args.get(1, "default");
  return fallback ? *fallback : Value::none();
}

std::string object_description(const Value& obj) {  // Jinja2's object_type_repr
  if (obj.is_none()) return "None";
  return obj.type_name() + " object";
}

// list.count(x) / list.index(x) (also on tuples).
Value list_method(const Value& list, const std::string& name, const CallArgs& args) {
  const Value* x = args.get(0, "value");
  if (x == nullptr) eval_fail(list.type_name(), ".", name, "() takes exactly one argument");
  const auto& items = list.as_list();
  int64_t count = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!values_equal(items[i], *x)) continue;
    if (name == "index") return Value(static_cast<int64_t>(i));
    ++count;
  }
  if (name == "index") eval_fail(x->repr(), " is not in list");
  return Value(count);
}

Value bound_method(const Value& obj, const std::string& name) {
  return Value::function(obj.type_name() + "." + name, [obj, name](const CallArgs& args) {
    if (obj.is_string()) return string_method(obj.as_string(), name, args);
    if (obj.is_list()) return list_method(obj, name, args);
    return dict_method(obj, name, args);
  });
}

}  // namespace

[[noreturn]] void fail_undefined(const Value& undefined) {
  const std::string& hint = undefined.undefined_hint();
  eval_fail(hint.empty() ? std::string("value is undefined") : hint);
}

Value get_attribute(const Value& obj, const std::string& name) {
  switch (obj.type()) {
    case Value::Type::kUndefined: fail_undefined(obj);
    case Value::Type::kDict: {
      const ValueDict& d = obj.as_dict();
      if (!d.is_namespace && (name == "items" || name == "keys" || name == "values" || name == "get"))
        return bound_method(obj, name);
      if (const Value* v = d.find(name)) return *v;
      break;
    }
    case Value::Type::kString:
      if (string_method_names().count(name)) return bound_method(obj, name);
      break;
    case Value::Type::kList:
      if (!obj.is_dict_view() && (name == "count" || name == "index")) return bound_method(obj, name);
      break;
    default: break;
  }
  return Value::undefined(str_cat("'", object_description(obj), "' has no attribute '", name, "'"));
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail_undefined(obj);
  if (obj.is_dict() && !obj.as_dict().is_namespace) {
    if (key.is_string()) {
      if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
      return get_attribute(obj, key.as_string());
    }
    return Value::undefined(str_cat("'", object_description(obj), "' has no attribute ", key.repr()));
  }
  if (obj.is_dict_view()) eval_fail("'", obj.type_name(), "' object is not subscriptable");
  if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t n = obj.is_list() ? static_cast<int64_t>(obj.as_list().size()) : static_cast<int64_t>(utf8_length(obj.as_string()));
    int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
    if (i < 0 || i >= n) return Value::undefined(str_cat(obj.type_name(), " object has no element ", key.as_int()));
    if (obj.is_list()) return obj.as_list()[static_cast<size_t>(i)];
    auto starts = utf8_char_starts(obj.as_string());
    size_t b = starts[static_cast<size_t>(i)];
    size_t e = static_cast<size_t>(i) + 1 < starts.size() ? starts[static_cast<size_t>(i) + 1] : obj.as_string().size();
    return Value(obj.as_string().substr(b, e - b));
  }
  if (key.is_string()) return get_attribute(obj, key.as_string());
  return Value::undefined(str_cat("'", object_description(obj), "' has no attribute ", key.repr()));
}

void check_string_size(size_t bytes) {
  if (bytes > static_cast<size_t>(kMaxBuiltValueBytes))
    eval_fail("a string of ", bytes, " bytes is longer than the limit of ", kMaxBuiltValueBytes);
}

void check_list_size(size_t items) {
  if (items > static_cast<size_t>(kMaxBuiltListItems))
    eval_fail("a list of ", items, " items is longer than the limit of ", kMaxBuiltListItems);
}

ValueList iterate(const Value& v) {
  switch (v.type()) {
    case Value::Type::kUndefined: return {};
    case Value::Type::kList: return v.as_list();
    case Value::Type::kDict: {
      ValueList keys;
      for (const auto& [k, e] : v.as_dict().items) keys.emplace_back(k);
      return keys;
    }
    case Value::Type::kString: {
      ValueList chars;
      const std::string& s = v.as_string();
      check_list_size(utf8_length(s));
      auto starts = utf8_char_starts(s);
      for (size_t i = 0; i < starts.size(); ++i)
        chars.emplace_back(s.substr(starts[i], (i + 1 < starts.size() ? starts[i + 1] : s.size()) - starts[i]));
      return chars;
    }
    default: eval_fail("'", v.type_name(), "' object is not iterable");
  }
}

Value slice_value(const Value& obj, const Value* start, const Value* stop, const Value* step_v) {
  if (obj.is_undefined()) fail_undefined(obj);
  int64_t step = int_arg(step_v, 1, "slice step");
  if (obj.is_list() && !obj.is_dict_view()) {
    const auto& items = obj.as_list();
    ValueList out;
    for (size_t i : slice_positions(static_cast<int64_t>(items.size()), start, stop, step)) out.push_back(items[i]);
    return Value::list(std::move(out), obj.sequence_kind());
  }
  if (obj.is_string()) {
    auto cps = code_points(obj.as_string());
    std::string out;
    for (size_t i : slice_positions(static_cast<int64_t>(cps.size()), start, stop, step)) utf8_append(out, cps[i]);
    return Value(out);
  }
  // Jinja2 compiles a slice to a plain Python subscript, so this is Python's TypeError.
  if (obj.is_dict()) eval_fail("unhashable type: 'slice'");
  eval_fail("'", obj.type_name(), "' object is not subscriptable");
}

// ---- filters ----

namespace {

// Jinja2's make_attrgetter: "a.b.0" looks up each part with getitem (digits as integers).
Value attribute_path(const Value& item, const std::string& path) {
  Value v = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    v = digits ? get_item(v, Value(static_cast<int64_t>(bounded_number(part, "index")))) : get_item(v, Value(part));
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

CallArgs rest_args(const CallArgs& args, size_t from) {
  CallArgs rest;
  for (size_t i = from; i < args.positional.size(); ++i) rest.positional.push_back(args.positional[i]);
  rest.keyword = args.keyword;
  return rest;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Sorting key of sort/unique/dictsort/min/max: strings lower-cased unless case-sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(string_lower(v.as_string()));
  return v;
}

Value python_round(const Value& v, int64_t precision, const std::string& method) {
  if (!v.is_number() && !v.is_bool()) eval_fail("round: expected a number, got ", v.type_name());
  if (method == "common") {
    if (!v.is_float()) return v.is_bool() ? Value(v.as_int()) : v;  // round(int, n) stays an int
    // Python rounds the exact binary value half-to-even, which printf also does.
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(std::clamp<int64_t>(precision, 0, 300)), v.as_double());
    return Value(std::strtod(buf, nullptr));
  }
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_double() * scale;
  if (method == "floor") x = std::floor(x);
  else if (method == "ceil") x = std::ceil(x);
  else eval_fail("method must be common, ceil or floor");
  return Value(x / scale);
}

std::string indent_filter(const std::string& s, const Value* width_v, bool first, bool blank) {
  std::string indention;
  if (width_v != nullptr && width_v->is_string()) indention = width_v->as_string();
  else indention = std::string(bounded_width(int_arg(width_v, 4, "width")), ' ');
  CallArgs none;
  Value lines_v = string_method(s + "\n", "splitlines", none);
  const auto& lines = lines_v.as_list();
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) rv += "\n" + indention;
      rv += lines[i].as_string();
    }
  } else {
    rv = lines.empty() ? "" : lines[0].as_string();
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += "\n";
      if (!lines[i].as_string().empty()) rv += indention;
      rv += lines[i].as_string();
    }
  }
  if (first) rv = indention + rv;
  return rv;
}

bool flag(const Value* v, bool fallback) { return v == nullptr ? fallback : v->truthy(); }

Value select_filter(const Value& input, const CallArgs& args, bool select, bool by_attribute) {
  ValueList out;
  std::string attribute;
  size_t test_index = 0;
  if (by_attribute) {
    attribute = string_arg(args.get(0, "attribute"), "attribute");
    test_index = 1;
  }
  const Value* test = test_index < args.positional.size() ? &args.positional[test_index] : nullptr;
  CallArgs test_args = rest_args(args, test_index + 1);
  for (const auto& item : iterate(input)) {
    Value subject = by_attribute ? attribute_path(item, attribute) : item;
    bool ok = test ? apply_test(string_arg(test, "test name"), subject, test_args) : subject.truthy();
    if (ok == select) out.push_back(item);
  }
  return Value::list(std::move(out));
}

}  // namespace

bool is_known_filter(const std::string& name) {
  static const std::set<std::string> names = {
      "abs",   "attr",  "capitalize", "center", "count",  "d",       "default", "dictsort", "e",
      "escape", "first", "float",     "indent", "int",    "items",   "join",    "last",     "length",
      "list",  "lower", "map",        "max",    "min",    "reject",  "rejectattr", "replace", "reverse",
      "round", "safe",  "select",     "selectattr", "sort", "string", "sum",    "title",    "tojson",
      "trim",  "unique", "upper",     "wordcount"};
  return names.count(name) > 0;
}

Value apply_filter(const std::string& name, const Value& input, const CallArgs& args) {
  auto need_defined = [&] {
    if (input.is_undefined()) fail_undefined(input);
  };
  if (name == "abs") {
    need_defined();
    if (input.is_float()) return Value(std::fabs(input.as_double()));
    if (input.is_int() || input.is_bool()) {
      if (input.as_int() == INT64_MIN) eval_fail("integer overflow in abs");
      return Value(input.as_int() < 0 ? -input.as_int() : input.as_int());
    }
    eval_fail("bad operand type for abs(): '", input.type_name(), "'");
  }
  if (name == "attr") {
    // Python's getattr only: a dict's keys are not attributes (its methods are).
    const std::string& attribute = string_arg(args.get(0, "name"), "attribute name");
    bool dict_method = attribute == "items" || attribute == "keys" || attribute == "values" || attribute == "get";
    if (input.is_dict() && !input.as_dict().is_namespace && !dict_method)
      return Value::undefined(str_cat("'dict object' has no attribute '", attribute, "'"));
    return get_attribute(input, attribute);
  }
  if (name == "capitalize") return Value(python_capitalize(input.str()));
  if (name == "center") {
    int64_t width = static_cast<int64_t>(bounded_width(int_arg(args.get(0, "width"), 80, "width")));
    std::string s = input.str();
    int64_t len = static_cast<int64_t>(utf8_length(s));
    if (width <= len) return Value(s);
    int64_t total = width - len;
    int64_t left = total / 2 + (total & width & 1);  // CPython's centering rule
    return Value(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(total - left), ' '));
  }
  if (name == "default" || name == "d") {
    const Value* fallback = args.get(0, "default_value");
    bool boolean = flag(args.get(1, "boolean"), false);
    if (input.is_undefined() || (boolean && !input.truthy())) return fallback ? *fallback : Value(std::string());
    return input;
  }
  if (name == "dictsort") {
    if (!input.is_dict()) eval_fail("dictsort: expected a dict, got ", input.type_name());
    bool case_sensitive = flag(args.get(0, "case_sensitive"), false);
    const Value* by_v = args.get(1, "by");
    std::string by = by_v ? string_arg(by_v, "by") : "key";
    if (by != "key" && by != "value") eval_fail("You can only sort by either \"key\" or \"value\"");
    bool reverse = flag(args.get(2, "reverse"), false);
    ValueList items = items_of(input).as_list();
    size_t pos = by == "key" ? 0 : 1;
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      Value ka = sort_key(a.as_list()[pos], case_sensitive), kb = sort_key(b.as_list()[pos], case_sensitive);
      return reverse ? compare_less(kb, ka) : compare_less(ka, kb);
    });
    return Value::list(std::move(items));
  }
  if (name == "escape" || name == "e") return Value(html_escape(input.str()));
  if (name == "first" || name == "last") {
    ValueList items = iterate(input);
    if (items.empty()) return Value::undefined(str_cat("No ", name, " item, sequence was empty."));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "float") {
    need_defined();  // Undefined.__float__ raises
    const Value* fallback = args.get(0, "default");
    if (input.is_number() || input.is_bool()) return Value(input.as_double());
    if (input.is_string()) {
      std::string s = strip_chars(input.as_string(), nullptr, true, true);
      char* end = nullptr;
      double f = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value(f);
    }
    return fallback ? *fallback : Value(0.0);
  }
  if (name == "int") {
    need_defined();  // Undefined.__int__ raises
    const Value* fallback = args.get(0, "default");
    int64_t base = int_arg(args.get(1, "base"), 10, "base");
    if (input.is_int() || input.is_bool()) return Value(input.as_int());
    if (input.is_float()) {
      double f = input.as_double();
      if (std::isfinite(f) && std::fabs(f) < 9.2e18) return Value(static_cast<int64_t>(f));
    } else if (input.is_string()) {
      std::string s = strip_chars(input.as_string(), nullptr, true, true);
      std::string digits;
      for (char c : s)
        if (c != '_') digits += c;
      char* end = nullptr;
      errno = 0;
      long long i = std::strtoll(digits.c_str(), &end, static_cast<int>(base));
      if (!digits.empty() && end == digits.c_str() + digits.size() && errno == 0) return Value(static_cast<int64_t>(i));
      double f = std::strtod(digits.c_str(), &end);
      if (!digits.empty() && end == digits.c_str() + digits.size() && std::isfinite(f) && std::fabs(f) < 9.2e18)
        return Value(static_cast<int64_t>(f));
    }
    return fallback ? *fallback : Value(int64_t{0});
  }
  if (name == "indent") {
    // Jinja2 appends "\n" to the value itself, so anything but a string is Python's TypeError.
    need_defined();
    if (!input.is_string()) eval_fail("unsupported operand type(s) for +=: '", input.type_name(), "' and 'str'");
    return Value(indent_filter(input.as_string(), args.get(0, "width"), flag(args.get(1, "first"), false),
                               flag(args.get(2, "blank"), false)));
  }
  if (name == "items") {
    if (input.is_undefined()) return Value::list({});
    if (!input.is_dict()) eval_fail("items: expected a dict, got ", input.type_name());
    return items_of(input);
  }
  if (name == "join") {
    const Value* sep_v = args.get(0, "d");
    std::string sep = sep_v ? sep_v->str() : "";
    const Value* attribute = args.get(1, "attribute");
    std::string out;
    bool first = true;
    for (const auto& item : iterate(input)) {
      if (!first) out += sep;
      first = false;
      out += (attribute ? attribute_path(item, string_arg(attribute, "attribute")) : item).str();
    }
    return Value(out);
  }
  if (name == "length" || name == "count") {
    switch (input.type()) {
      case Value::Type::kUndefined: return Value(int64_t{0});
      case Value::Type::kString: return Value(static_cast<int64_t>(utf8_length(input.as_string())));
      case Value::Type::kList: return Value(static_cast<int64_t>(input.as_list().size()));
      case Value::Type::kDict: return Value(static_cast<int64_t>(input.as_dict().items.size()));
      default: eval_fail("object of type '", input.type_name(), "' has no len()");
    }
  }
  if (name == "list") return Value::list(iterate(input));  // an undefined value iterates as empty
  if (name == "lower") return Value(string_lower(input.str()));
  if (name == "upper") return Value(string_upper(input.str()));
  if (name == "title") return Value(jinja_title(input.str()));
  if (name == "map") {
    ValueList out;
    const Value* attribute = nullptr;
    for (const auto& [k, v] : args.keyword)
      if (k == "attribute") attribute = &v;
    if (attribute) {
      const Value* fallback = nullptr;
      for (const auto& [k, v] : args.keyword)
        if (k == "default") fallback = &v;
      for (const auto& item : iterate(input)) {
        Value v = attribute_path(item, string_arg(attribute, "attribute"));
        out.push_back(v.is_undefined() && fallback ? *fallback : v);
      }
    } else {
      const std::string& filter = string_arg(args.get(0, "filter"), "map filter name");
      if (!is_known_filter(filter)) eval_fail("No filter named '", filter, "'.");
      CallArgs filter_args = rest_args(args, 1);
      for (const auto& item : iterate(input)) out.push_back(apply_filter(filter, item, filter_args));
    }
    return Value::list(std::move(out));
  }
  if (name == "max" || name == "min" || name == "unique" || name == "sort") {
    bool case_sensitive = flag(args.get(name == "sort" ? 1 : 0, "case_sensitive"), false);
    const Value* attribute = args.get(name == "sort" ? 2 : 1, "attribute");
    ValueList items = iterate(input);
    auto key = [&](const Value& v) {
      return sort_key(attribute ? attribute_path(v, string_arg(attribute, "attribute")) : v, case_sensitive);
    };
    if (name == "unique") {
      ValueList out, seen;
      for (const auto& item : items) {
        Value k = key(item);
        if (k.is_dict() || (k.is_list() && !k.is_tuple())) eval_fail("unhashable type: '", k.type_name(), "'");
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return values_equal(s, k); })) {
          seen.push_back(k);
          out.push_back(item);
        }
      }
      return Value::list(std::move(out));
    }
    if (name == "sort") {
      bool reverse = flag(args.get(0, "reverse"), false);
      std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
        return reverse ? compare_less(key(b), key(a)) : compare_less(key(a), key(b));
      });
      return Value::list(std::move(items));
    }
    if (items.empty()) return Value::undefined(str_cat("No aggregated item, sequence was empty."));
    size_t best = 0;
    for (size_t i = 1; i < items.size(); ++i) {
      bool better = name == "max" ? compare_less(key(items[best]), key(items[i])) : compare_less(key(items[i]), key(items[best]));
      if (better) best = i;
    }
    return items[best];
  }
  if (name == "reject" || name == "select") return select_filter(input, args, name == "select", false);
  if (name == "rejectattr" || name == "selectattr") return select_filter(input, args, name == "selectattr", true);
  if (name == "replace") {
    return Value(python_replace(input.str(), string_arg(args.get(0, "old"), "old"), args.get(1, "new") ? args.get(1, "new")->str() : "",
                                int_arg(args.get(2, "count"), -1, "count")));
  }
  if (name == "reverse") {
    if (input.is_string()) {
      auto cps = code_points(input.as_string());
      std::reverse(cps.begin(), cps.end());
      return Value(from_code_points(cps));
    }
    ValueList items = iterate(input);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "round") {
    const Value* method = args.get(1, "method");
    return python_round(input, int_arg(args.get(0, "precision"), 0, "precision"), method ? string_arg(method, "method") : "common");
  }
  if (name == "safe") return input;
  if (name == "string") return Value(input.str());
  if (name == "sum") {
    const Value* attribute = args.get(0, "attribute");
    const Value* start = args.get(1, "start");
    Value total = start ? *start : Value(int64_t{0});
    for (const auto& item : iterate(input)) {
      Value v = attribute ? attribute_path(item, string_arg(attribute, "attribute")) : item;
      if (!(v.is_number() || v.is_bool()) || !(total.is_number() || total.is_bool()))
        eval_fail("sum: unsupported operand types '", total.type_name(), "' and '", v.type_name(), "'");
      if (total.is_float() || v.is_float()) {
        total = Value(total.as_double() + v.as_double());
      } else {
        int64_t r;
        if (__builtin_add_overflow(total.as_int(), v.as_int(), &r)) eval_fail("integer overflow in sum");
        total = Value(r);
      }
    }
    return total;
  }
  if (name == "tojson") {
    // Transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
    need_defined();
    JsonDumpOptions options;
    options.ensure_ascii = flag(args.get(0, "ensure_ascii"), false);
    if (const Value* indent = args.get(1, "indent"); indent && !indent->is_none()) {
      if (indent->is_string()) options.indent = indent->as_string();
      else options.indent = std::string(bounded_width(int_arg(indent, 0, "indent")), ' ');
    }
    if (const Value* sep = args.get(2, "separators"); sep && !sep->is_none()) {
      if (!sep->is_list() || sep->as_list().size() != 2) eval_fail("tojson: separators must be a pair of strings");
      options.separators = std::make_pair(string_arg(&sep->as_list()[0], "item separator"),
                                          string_arg(&sep->as_list()[1], "key separator"));
    }
    options.sort_keys = flag(args.get(3, "sort_keys"), false);
    options.max_bytes = size_t{1} << 28;
    try {
      return Value(python_json_dumps(input, options));
    } catch (const Error& e) {
      throw EvalError{e.code(), e.what()};
    }
  }
  if (name == "trim") return Value(strip_chars(input.str(), args.get(0, "chars"), true, true));
  if (name == "wordcount") {
    // len(re.findall(r"\w+", s)): runs of letters, digits and underscores.
    int64_t words = 0;
    bool in_word = false;
    std::string s = input.str();
    size_t pos = 0;
    while (pos < s.size()) {
      uint32_t c = utf8_decode_at(s, pos);
      bool w = c == '_' || is_alnum_cp(c) || (c >= 0x80 && !python_isspace(c));
      if (w && !in_word) ++words;
      in_word = w;
    }
    return Value(words);
  }
  eval_fail("No filter named '", name, "'.");
}

// ---- tests ----

bool is_known_test(const std::string& name) {
  static const std::set<std::string> names = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "escaped", "even", "false",
      "float", "ge", ">=", "gt", "greaterthan", ">", "in", "integer", "iterable", "le", "<=", "lower",
      "lt", "lessthan", "<", "mapping", "ne", "!=", "none", "number", "odd", "sameas", "sequence",
      "string", "true", "undefined", "upper"};
  return names.count(name) > 0;
}

bool apply_test(const std::string& name, const Value& v, const CallArgs& args) {
  auto other = [&]() -> const Value& {
    const Value* o = args.get(0, "b");
    if (o == nullptr) eval_fail("test '", name, "' needs an argument");
    return *o;
  };
  auto integer = [&](const Value& x) {
    if (!x.is_int() && !x.is_bool()) eval_fail("test '", name, "' needs an integer, got ", x.type_name());
    return x.as_int();
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number() || v.is_bool();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict() && !v.as_dict().is_namespace;
  if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "sequence") return v.is_undefined() || v.is_string() || (v.is_list() && !v.is_dict_view()) || (v.is_dict() && !v.as_dict().is_namespace);
  if (name == "callable") return v.is_function();
  if (name == "escaped") return false;
  if (name == "lower" || name == "upper") {  // str(value).islower() / .isupper()
    CallArgs none;
    return string_method(v.str(), name == "lower" ? "islower" : "isupper", none).as_bool();
  }
  if (name == "even" || name == "odd") {  // value % 2 == 0 / == 1, with Python's modulo
    if (v.is_undefined()) fail_undefined(v);
    if (v.is_float()) {
      double r = std::fmod(v.as_double(), 2.0);
      if (r < 0) r += 2.0;
      return r == (name == "even" ? 0.0 : 1.0);
    }
    if (!v.is_int() && !v.is_bool()) eval_fail("unsupported operand type(s) for %: '", v.type_name(), "' and 'int'");
    return (((v.as_int() % 2) + 2) % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") {
    int64_t d = integer(other());
    if (d == 0) eval_fail("integer division or modulo by zero");
    return integer(v) % d == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return values_equal(v, other());
  if (name == "ne" || name == "!=") return !values_equal(v, other());
  if (name == "lt" || name == "lessthan" || name == "<") return compare_less(v, other());
  if (name == "le" || name == "<=") return !compare_less(other(), v);
  if (name == "gt" || name == "greaterthan" || name == ">") return compare_less(other(), v);
  if (name == "ge" || name == ">=") return !compare_less(v, other());
  if (name == "sameas") {
    const Value& o = other();
    if (v.is_none() || v.is_bool() || o.is_none() || o.is_bool()) return v.type() == o.type() && values_equal(v, o);
    if (v.is_list() && o.is_list()) return &v.as_list() == &o.as_list();
    if (v.is_dict() && o.is_dict()) return &v.as_dict() == &o.as_dict();
    return false;
  }
  if (name == "in") {
    const Value& container = other();
    if (container.is_string()) return v.is_string() && container.as_string().find(v.as_string()) != std::string::npos;
    for (const auto& item : iterate(container))
      if (values_equal(item, v)) return true;
    return false;
  }
  eval_fail("No test named '", name, "'.");
}

// ---- globals ----

Value lookup_global(const std::string& name) {
  if (name == "range") {
    return Value::function("range", [](const CallArgs& args) {
      if (args.positional.empty() || args.positional.size() > 3 || !args.keyword.empty())
        eval_fail("range expected 1 to 3 positional arguments");
      int64_t start = 0, stop, step = 1;
      if (args.positional.size() == 1) {
        stop = int_arg(&args.positional[0], 0, "range bound");
      } else {
        start = int_arg(&args.positional[0], 0, "range bound");
        stop = int_arg(&args.positional[1], 0, "range bound");
        if (args.positional.size() == 3) step = int_arg(&args.positional[2], 1, "range step");
      }
      if (step == 0) eval_fail("range() arg 3 must not be zero");
      ValueList out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (out.size() >= 100000) eval_fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        out.emplace_back(i);
      }
      return Value::list(std::move(out));
    });
  }
  if (name == "namespace" || name == "dict") {
    bool is_namespace = name == "namespace";
    return Value::function(name, [is_namespace](const CallArgs& args) {
      auto d = std::make_shared<ValueDict>();
      d->is_namespace = is_namespace;
      for (const auto& a : args.positional) {
        if (!a.is_dict()) eval_fail(is_namespace ? "namespace" : "dict", "() positional argument must be a dict");
        for (const auto& [k, v] : a.as_dict().items) d->set(k, v);
      }
      for (const auto& [k, v] : args.keyword) d->set(k, v);
      return Value::dict(std::move(d));
    });
  }
  if (name == "raise_exception") {
    return Value::function("raise_exception", [](const CallArgs& args) -> Value {
      const Value* message = args.get(0, "message");
      throw EvalError{ErrorCode::kInvalidArgument,
                      str_cat("the chat template raised an exception: ", message ? message->str() : "")};
    });
  }
  if (name == "strftime_now") {
    return Value::function("strftime_now", [](const CallArgs& args) {
      const std::string& format = string_arg(args.get(0, "format"), "format");
      std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      std::vector<char> buf(256 + format.size() * 16);
      size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &local);
      return Value(std::string(buf.data(), n));
    });
  }
  return Value::undefined(str_cat("'", name, "' is undefined"));
}

}  // namespace moeforge::chat
