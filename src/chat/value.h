// The values a chat template computes with: Python's object model as Jinja2 sees it, reduced to
// what templates use. Undefined, None, bool, int, float, str, list/tuple, dict (insertion-ordered,
// string keys), and callables (globals, macros, bound methods). Lists and dicts are shared by
// reference like Python objects; a namespace() is the one dict a template may change.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moeforge::chat {

class Value;
using ValueList = std::vector<Value>;

// The deepest nesting of lists and dicts that printing, tojson, comparison and JSON conversion walk
// (as deep as JSON input may nest, kMaxJsonDepth). Chat data nests a few levels; a template can
// build a list 100,000 deep one level per loop iteration, which would overflow the stack.
constexpr int kMaxValueDepth = 512;

// A Python dict with string keys, in insertion order. Lookups are linear: chat messages and tool
// schemas hold a handful of keys.
struct ValueDict {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;  // namespace(): attributes may be assigned with {% set ns.x = ... %}

  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;

  // The argument named `name` at position `index`, or nullptr when absent.
  const Value* get(size_t index, std::string_view name) const;
};

struct Function {
  std::string name;  // for error messages: "raise_exception", "str.split", "macro foo"
  std::function<Value(const CallArgs&)> call;
};

// Python's list-like types: list, tuple, and the dict views keys()/values()/items() return (which
// print as dict_keys([...]) and cannot be indexed or serialised).
enum class SequenceKind { kList, kTuple, kDictKeys, kDictValues, kDictItems };

class Value {
 public:
  enum class Type { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };

  Value() = default;  // undefined
  Value(const Value&) = default;
  Value(Value&&) noexcept = default;
  Value& operator=(const Value&) = default;
  Value& operator=(Value&&) noexcept = default;
  ~Value();
  static Value undefined(std::string hint = {});
  static Value none();
  Value(bool b);
  Value(int64_t i);
  Value(int i) : Value(static_cast<int64_t>(i)) {}
  Value(size_t i) : Value(static_cast<int64_t>(i)) {}
  Value(double f);
  Value(std::string s);
  Value(const char* s) : Value(std::string(s)) {}
  static Value list(ValueList items, SequenceKind kind = SequenceKind::kList);
  static Value dict(std::shared_ptr<ValueDict> d);
  static Value function(std::string name, std::function<Value(const CallArgs&)> call);
  static Value from_json(const nlohmann::ordered_json& j);  // errors past kMaxValueDepth

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::kUndefined; }
  bool is_none() const { return type_ == Type::kNone; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_int() const { return type_ == Type::kInt; }  // bool is not an int here; Python's is
  bool is_float() const { return type_ == Type::kFloat; }
  bool is_number() const { return type_ == Type::kInt || type_ == Type::kFloat; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_list() const { return type_ == Type::kList; }
  bool is_tuple() const { return type_ == Type::kList && kind_ == SequenceKind::kTuple; }
  bool is_dict_view() const { return type_ == Type::kList && kind_ >= SequenceKind::kDictKeys; }
  SequenceKind sequence_kind() const { return kind_; }
  bool is_dict() const { return type_ == Type::kDict; }
  bool is_function() const { return type_ == Type::kFunction; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }  // int or bool
  double as_double() const { return type_ == Type::kFloat ? f_ : static_cast<double>(i_); }
  const std::string& as_string() const { return *s_; }
  const ValueList& as_list() const { return *list_; }
  const ValueDict& as_dict() const { return *dict_; }
  ValueDict& mutable_dict() const { return *dict_; }
  const Function& as_function() const { return *fn_; }
  const std::string& undefined_hint() const { return *s_; }

  bool truthy() const;                 // Python's bool(x)
  // Python's str(x) (what {{ x }} prints) and repr(x). Shared lists can describe exponentially
  // long text, so both stop with an Error past max_bytes, as they do past kMaxValueDepth.
  std::string str(size_t max_bytes = SIZE_MAX) const;
  std::string repr(size_t max_bytes = SIZE_MAX) const;
  std::string type_name() const;       // Python's type name: "str", "dict", ...
  nlohmann::ordered_json to_json() const;  // errors on undefined, functions and kMaxValueDepth
  // Whether this is a namespace or a list or dict holding one at any depth: only such a value can
  // make a namespace contain itself when stored in one.
  bool may_hold_namespace() const { return holds_namespace_; }

 private:
  Type type_ = Type::kUndefined;
  SequenceKind kind_ = SequenceKind::kList;
  bool b_ = false;
  bool holds_namespace_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;  // string, or the undefined value's hint
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<ValueDict> dict_;
  std::shared_ptr<const Function> fn_;
};

// Python's ==, and the < of sorted() (numbers with numbers, strings with strings, lists
// lexicographically); compare_less throws for other pairs as Python does.
// Both fail (kInvalidArgument) on values nested deeper than kMaxValueDepth.
bool values_equal(const Value& a, const Value& b);
bool compare_less(const Value& a, const Value& b);

// Whether `v` is, or holds at any depth, the namespace `ns` (shared values are visited once).
bool value_holds(const Value& v, const ValueDict& ns);

// Python's repr(float): shortest round-trip digits, "1.0", "1e+20", "inf", "nan".
std::string python_float_repr(double f);

// Python's json.dumps(x, ensure_ascii=..., indent=..., separators=..., sort_keys=...), which
// Transformers' tojson filter calls (its defaults: ensure_ascii=False, the rest None/False).
struct JsonDumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // None: one line; else a newline and this per level
  std::optional<std::pair<std::string, std::string>> separators;  // default (", ", ": ") / (",", ": ")
  bool sort_keys = false;
  size_t max_bytes = SIZE_MAX;  // an Error past this
};
std::string python_json_dumps(const Value& v, const JsonDumpOptions& options);

// UTF-8 helpers for Python's code-point indexed strings. Invalid bytes count as one code point each.
std::vector<size_t> utf8_char_starts(std::string_view s);  // byte offset of each code point
size_t utf8_length(std::string_view s);
uint32_t utf8_decode_at(std::string_view s, size_t& pos);  // advances pos
void utf8_append(std::string& out, uint32_t cp);
bool python_isspace(uint32_t cp);

}  // namespace moeforge::chat
