#include "chat/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <unordered_set>

#include "core/error.h"

namespace moeforge::chat {

namespace {

// Throws when a recursive walk over a value reaches `depth` levels of lists and dicts.
void check_depth(int depth) {
  MF_CHECK(depth <= kMaxValueDepth, kInvalidArgument, "a value nests more than ", kMaxValueDepth,
           " lists or dicts deep");
}

// The worklist of the outermost ~Value on this thread that is freeing containers, if any. A plain
// pointer, not a thread_local vector: that would be destroyed before static Values are.
thread_local std::vector<std::shared_ptr<const void>>* containers_to_free = nullptr;

}  // namespace

// Containers are freed from a worklist rather than by nested destructors, whose recursion a list
// nested 100,000 deep (a template can build one, a level per loop iteration) would overflow.
Value::~Value() {
  if (!list_ && !dict_) return;
  std::vector<std::shared_ptr<const void>> worklist;
  const bool outermost = containers_to_free == nullptr;
  if (outermost) containers_to_free = &worklist;
  // A container someone else still owns is not freed here: dropping one reference cannot recurse.
  if (list_ && list_.use_count() == 1) containers_to_free->push_back(std::move(list_));
  if (dict_ && dict_.use_count() == 1) containers_to_free->push_back(std::move(dict_));
  if (!outermost) return;
  while (!worklist.empty()) {
    std::shared_ptr<const void> last = std::move(worklist.back());
    worklist.pop_back();
    last.reset();  // its items' destructors add their own containers to the worklist
  }
  containers_to_free = nullptr;
}

const Value* ValueDict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void ValueDict::set(const std::string& key, Value value) {
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(key, std::move(value));
}

const Value* CallArgs::get(size_t index, std::string_view name) const {
  for (const auto& [k, v] : keyword)
    if (k == name) return &v;
  if (index < positional.size()) return &positional[index];
  return nullptr;
}

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}

Value Value::none() {
  Value v;
  v.type_ = Type::kNone;
  return v;
}

Value::Value(bool b) : type_(Type::kBool), b_(b), i_(b ? 1 : 0) {}
Value::Value(int64_t i) : type_(Type::kInt), i_(i) {}
Value::Value(double f) : type_(Type::kFloat), f_(f) {}
Value::Value(std::string s) : type_(Type::kString), s_(std::make_shared<const std::string>(std::move(s))) {}

Value Value::list(ValueList items, SequenceKind kind) {
  Value v;
  v.type_ = Type::kList;
  v.kind_ = kind;
  v.holds_namespace_ = std::any_of(items.begin(), items.end(), [](const Value& e) { return e.holds_namespace_; });
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}

Value Value::dict(std::shared_ptr<ValueDict> d) {
  Value v;
  v.type_ = Type::kDict;
  // A namespace may gain a namespace later; other dicts are not changed after this.
  v.holds_namespace_ = d->is_namespace || std::any_of(d->items.begin(), d->items.end(),
                                                      [](const auto& item) { return item.second.holds_namespace_; });
  v.dict_ = std::move(d);
  return v;
}

Value Value::function(std::string name, std::function<Value(const CallArgs&)> call) {
  Value v;
  v.type_ = Type::kFunction;
  v.fn_ = std::make_shared<const Function>(Function{std::move(name), std::move(call)});
  return v;
}

namespace {

Value value_from_json(const nlohmann::ordered_json& j, int depth) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      MF_CHECK(u <= static_cast<uint64_t>(INT64_MAX), kUnsupported, "integer ", u,
               " in chat template data is larger than int64");
      return Value(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      check_depth(depth + 1);
      ValueList items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(value_from_json(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      check_depth(depth + 1);
      auto d = std::make_shared<ValueDict>();
      for (const auto& [k, e] : j.items()) d->items.emplace_back(k, value_from_json(e, depth + 1));
      return Value::dict(std::move(d));
    }
    default: fail(ErrorCode::kUnsupported, "chat template data holds a JSON value of unsupported type");
  }
}

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) { return value_from_json(j, 0); }

bool Value::truthy() const {
  switch (type_) {
    case Type::kUndefined:
    case Type::kNone: return false;
    case Type::kBool: return b_;
    case Type::kInt: return i_ != 0;
    case Type::kFloat: return f_ != 0;
    case Type::kString: return !s_->empty();
    case Type::kList: return !list_->empty();
    case Type::kDict: return !dict_->items.empty();
    case Type::kFunction: return true;
  }
  return false;
}

std::string Value::type_name() const {
  switch (type_) {
    case Type::kUndefined: return "Undefined";
    case Type::kNone: return "NoneType";
    case Type::kBool: return "bool";
    case Type::kInt: return "int";
    case Type::kFloat: return "float";
    case Type::kString: return "str";
    case Type::kList:
      switch (kind_) {
        case SequenceKind::kList: return "list";
        case SequenceKind::kTuple: return "tuple";
        case SequenceKind::kDictKeys: return "dict_keys";
        case SequenceKind::kDictValues: return "dict_values";
        case SequenceKind::kDictItems: return "dict_items";
      }
      return "list";
    case Type::kDict: return dict_->is_namespace ? "Namespace" : "dict";
    case Type::kFunction: return "function";
  }
  return "?";
}

std::string python_float_repr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in scientific form, then Python's layout: fixed notation for
  // exponents in [-4, 16), scientific with a two-digit exponent otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exponent = std::stoi(sci.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    } else {
      size_t int_digits = static_cast<size_t>(exponent) + 1;
      if (digits.size() <= int_digits) {
        out += digits + std::string(int_digits - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_digits) + "." + digits.substr(int_digits);
      }
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp_buf;
  }
  return out;
}

namespace {

bool is_repr_printable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) return false;
  if ((cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
      (cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff || cp == 0x1680)
    return false;
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  return true;
}

std::string string_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  size_t pos = 0;
  while (pos < s.size()) {
    uint32_t cp = utf8_decode_at(s, pos);
    if (cp == '\\') {
      out += "\\\\";
    } else if (cp == static_cast<uint32_t>(quote)) {
      out += '\\';
      out += quote;
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (!is_repr_printable(cp)) {
      char buf[16];
      if (cp < 0x100) std::snprintf(buf, sizeof(buf), "\\x%02x", cp);
      else std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
      out += buf;
    } else {
      utf8_append(out, cp);
    }
  }
  out += quote;
  return out;
}

}  // namespace

namespace {

void append_repr(std::string& out, const Value& v, size_t max_bytes, int depth) {
  switch (v.type()) {
    case Value::Type::kUndefined: break;
    case Value::Type::kNone: out += "None"; break;
    case Value::Type::kBool: out += v.as_bool() ? "True" : "False"; break;
    case Value::Type::kInt: out += std::to_string(v.as_int()); break;
    case Value::Type::kFloat: out += python_float_repr(v.as_double()); break;
    case Value::Type::kString: out += string_repr(v.as_string()); break;
    case Value::Type::kList: {
      check_depth(depth + 1);
      const auto& items = v.as_list();
      if (v.is_dict_view()) out += v.type_name() + "(";
      out += v.is_tuple() ? "(" : "[";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ", ";
        append_repr(out, items[i], max_bytes, depth + 1);
      }
      if (v.is_tuple() && items.size() == 1) out += ",";
      out += v.is_tuple() ? ")" : "]";
      if (v.is_dict_view()) out += ")";
      break;
    }
    case Value::Type::kDict: {
      check_depth(depth + 1);
      bool ns = v.as_dict().is_namespace;
      out += ns ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, e] : v.as_dict().items) {
        if (!first) out += ", ";
        first = false;
        out += string_repr(k) + ": ";
        append_repr(out, e, max_bytes, depth + 1);
      }
      out += ns ? "}>" : "}";
      break;
    }
    case Value::Type::kFunction: out += "<function " + v.as_function().name + ">"; break;
  }
  MF_CHECK(out.size() <= max_bytes, kInvalidArgument, "a value's text is longer than ", max_bytes, " bytes");
}

}  // namespace

std::string Value::str(size_t max_bytes) const {
  if (type_ == Type::kUndefined) return "";
  if (type_ == Type::kString) return *s_;
  return repr(max_bytes);
}

std::string Value::repr(size_t max_bytes) const {
  std::string out;
  append_repr(out, *this, max_bytes, 0);
  return out;
}

namespace {

nlohmann::ordered_json value_to_json(const Value& v, int depth) {
  switch (v.type()) {
    case Value::Type::kNone: return nullptr;
    case Value::Type::kBool: return v.as_bool();
    case Value::Type::kInt: return v.as_int();
    case Value::Type::kFloat: return v.as_double();
    case Value::Type::kString: return v.as_string();
    case Value::Type::kList: {
      MF_CHECK(!v.is_dict_view(), kInvalidArgument, "Object of type ", v.type_name(), " is not JSON serializable");
      check_depth(depth + 1);
      auto arr = nlohmann::ordered_json::array();
      for (const auto& e : v.as_list()) arr.push_back(value_to_json(e, depth + 1));
      return arr;
    }
    case Value::Type::kDict: {
      check_depth(depth + 1);
      auto obj = nlohmann::ordered_json::object();
      for (const auto& [k, e] : v.as_dict().items) obj[k] = value_to_json(e, depth + 1);
      return obj;
    }
    default:
      fail(ErrorCode::kInvalidArgument, "Object of type ", v.type_name(), " is not JSON serializable");
  }
}

bool equal_at(const Value& a, const Value& b, int depth) {
  using T = Value::Type;
  if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
  bool a_num = a.is_number() || a.is_bool(), b_num = b.is_number() || b.is_bool();
  if (a_num && b_num) {
    if (a.is_float() || b.is_float()) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case T::kNone: return true;
    case T::kString: return a.as_string() == b.as_string();
    case T::kList: {
      if (a.sequence_kind() != b.sequence_kind()) return false;
      const auto &x = a.as_list(), &y = b.as_list();
      if (&x == &y) return true;
      if (x.size() != y.size()) return false;
      check_depth(depth + 1);
      for (size_t i = 0; i < x.size(); ++i)
        if (!equal_at(x[i], y[i], depth + 1)) return false;
      return true;
    }
    case T::kDict: {
      const auto &x = a.as_dict(), &y = b.as_dict();
      if (&x == &y) return true;
      if (x.items.size() != y.items.size()) return false;
      check_depth(depth + 1);
      for (const auto& [k, v] : x.items) {
        const Value* other = y.find(k);
        if (other == nullptr || !equal_at(v, *other, depth + 1)) return false;
      }
      return true;
    }
    case T::kFunction: return &a.as_function() == &b.as_function();
    default: return false;
  }
}

bool less_at(const Value& a, const Value& b, int depth) {
  bool a_num = a.is_number() || a.is_bool(), b_num = b.is_number() || b.is_bool();
  if (a_num && b_num) {
    if (a.is_float() || b.is_float()) return a.as_double() < b.as_double();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8 order = code point order
  if (a.is_list() && b.is_list() && a.sequence_kind() == b.sequence_kind() && !a.is_dict_view()) {
    const auto &x = a.as_list(), &y = b.as_list();
    check_depth(depth + 1);
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equal_at(x[i], y[i], depth + 1)) return less_at(x[i], y[i], depth + 1);
    }
    return x.size() < y.size();
  }
  fail(ErrorCode::kInvalidArgument, "'<' not supported between instances of '", a.type_name(), "' and '",
       b.type_name(), "'");
}

}  // namespace

nlohmann::ordered_json Value::to_json() const { return value_to_json(*this, 0); }

bool values_equal(const Value& a, const Value& b) { return equal_at(a, b, 0); }

bool compare_less(const Value& a, const Value& b) { return less_at(a, b, 0); }

bool value_holds(const Value& v, const ValueDict& ns) {
  // Depth-first with an explicit stack, as the value may nest deeper than recursion allows; shared
  // containers are visited once, as a list doubled 60 times holds 2^60 paths but 60 lists.
  std::vector<const Value*> pending{&v};
  std::unordered_set<const void*> visited;
  while (!pending.empty()) {
    const Value* x = pending.back();
    pending.pop_back();
    if (!x->may_hold_namespace()) continue;
    if (x->is_dict()) {
      if (&x->as_dict() == &ns) return true;
      if (!visited.insert(&x->as_dict()).second) continue;
      for (const auto& item : x->as_dict().items) pending.push_back(&item.second);
    } else if (x->is_list()) {
      if (!visited.insert(&x->as_list()).second) continue;
      for (const auto& item : x->as_list()) pending.push_back(&item);
    }
  }
  return false;
}

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    uint32_t cp = utf8_decode_at(s, pos);
    char buf[16];
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (cp < 0x20 || (ensure_ascii && cp >= 0x7f)) {
          if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
          } else {
            std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
          }
          out += buf;
        } else {
          out.append(s, start, pos - start);
        }
    }
  }
  out += '"';
}

struct JsonWriter {
  const JsonDumpOptions& options;
  std::string item_separator, key_separator;
  std::string out;

  void newline(int level) {
    out += '\n';
    for (int i = 0; i < level; ++i) out += *options.indent;
  }

  void dump(const Value& v, int depth) {
    switch (v.type()) {
      case Value::Type::kNone: out += "null"; break;
      case Value::Type::kBool: out += v.as_bool() ? "true" : "false"; break;
      case Value::Type::kInt: out += std::to_string(v.as_int()); break;
      case Value::Type::kFloat: {
        double f = v.as_double();
        if (std::isnan(f)) out += "NaN";
        else if (std::isinf(f)) out += f > 0 ? "Infinity" : "-Infinity";
        else out += python_float_repr(f);
        break;
      }
      case Value::Type::kString: json_string(out, v.as_string(), options.ensure_ascii); break;
      case Value::Type::kList: {
        MF_CHECK(!v.is_dict_view(), kInvalidArgument, "Object of type ", v.type_name(), " is not JSON serializable");
        check_depth(depth + 1);
        const auto& items = v.as_list();
        if (items.empty()) {
          out += "[]";
          break;
        }
        out += '[';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += item_separator;
          if (options.indent) newline(depth + 1);
          dump(items[i], depth + 1);
        }
        if (options.indent) newline(depth);
        out += ']';
        break;
      }
      case Value::Type::kDict: {
        check_depth(depth + 1);
        std::vector<const std::pair<std::string, Value>*> items;
        for (const auto& item : v.as_dict().items) items.push_back(&item);
        if (items.empty()) {
          out += "{}";
          break;
        }
        if (options.sort_keys)
          std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
        out += '{';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += item_separator;
          if (options.indent) newline(depth + 1);
          json_string(out, items[i]->first, options.ensure_ascii);
          out += key_separator;
          dump(items[i]->second, depth + 1);
        }
        if (options.indent) newline(depth);
        out += '}';
        break;
      }
      default:
        fail(ErrorCode::kInvalidArgument, "Object of type ", v.type_name(), " is not JSON serializable");
    }
    MF_CHECK(out.size() <= options.max_bytes, kInvalidArgument, "tojson output is longer than ",
             options.max_bytes, " bytes");
  }
};

}  // namespace

std::string python_json_dumps(const Value& v, const JsonDumpOptions& options) {
  JsonWriter writer{options, options.indent ? "," : ", ", ": ", {}};
  if (options.separators) {
    writer.item_separator = options.separators->first;
    writer.key_separator = options.separators->second;
  }
  writer.dump(v, 0);
  return std::move(writer.out);
}

uint32_t utf8_decode_at(std::string_view s, size_t& pos) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  unsigned char c = byte(pos);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || pos + static_cast<size_t>(len) > s.size()) {
    ++pos;
    return c;  // an invalid byte stands for itself
  }
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
  for (int i = 1; i < len; ++i) {
    unsigned char cc = byte(pos + static_cast<size_t>(i));
    if ((cc & 0xc0) != 0x80) {
      ++pos;
      return c;
    }
    cp = (cp << 6) | (cc & 0x3f);
  }
  pos += static_cast<size_t>(len);
  return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::vector<size_t> utf8_char_starts(std::string_view s) {
  std::vector<size_t> starts;
  size_t pos = 0;
  while (pos < s.size()) {
    starts.push_back(pos);
    utf8_decode_at(s, pos);
  }
  return starts;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0, pos = 0;
  while (pos < s.size()) {
    utf8_decode_at(s, pos);
    ++n;
  }
  return n;
}

bool python_isspace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
         cp == 0x205f || cp == 0x3000;
}

}  // namespace moeforge::chat
