// Jinja2's object protocol and builtins (internal to src/chat): attribute and item lookup as
// Environment.getattr/getitem do them, the filters, tests, globals, and the str/dict methods.
#pragma once

#include <string>

#include "chat/value.h"
#include "core/error.h"

namespace moeforge::chat {

// The largest string a builtin may build (padding, repetition, indentation): larger requests are
// errors, not allocations.
constexpr int64_t kMaxBuiltValueBytes = int64_t{1} << 28;

// The most items a list built while rendering may hold: about 100 bytes each, so 100 MiB. Chat
// templates build lists of messages, tools or characters: thousands of items, not millions.
constexpr int64_t kMaxBuiltListItems = int64_t{1} << 20;

// An error raised while evaluating; the renderer adds the template position where it is caught.
struct EvalError {
  ErrorCode code;
  std::string message;
};

template <typename... Args>
[[noreturn]] void eval_fail(Args&&... args) {
  throw EvalError{ErrorCode::kFormat, str_cat(std::forward<Args>(args)...)};
}

// Throw EvalError when a string or list about to be built would exceed kMaxBuiltValueBytes or
// kMaxBuiltListItems.
void check_string_size(size_t bytes);
void check_list_size(size_t items);

// Throws Jinja2's UndefinedError for a use of an undefined value that needs a real object.
[[noreturn]] void fail_undefined(const Value& undefined);

// Jinja2's getattr (Python attribute first, then item) and getitem (item first, then attribute).
// A missing attribute or element gives an undefined value carrying Jinja2's hint.
Value get_attribute(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);

// obj[start:stop:step] for lists, tuples and strings (bounds may be null: None).
Value slice_value(const Value& obj, const Value* start, const Value* stop, const Value* step);

// Python's iteration: a list's items, a dict's keys, a string's characters, nothing for undefined.
ValueList iterate(const Value& v);

Value apply_filter(const std::string& name, const Value& input, const CallArgs& args);
bool apply_test(const std::string& name, const Value& input, const CallArgs& args);

// The globals Transformers' environment offers: range, dict, namespace, raise_exception,
// strftime_now. Undefined for other names.
Value lookup_global(const std::string& name);

// Python's printf-style `format % value` (a tuple supplies several values, a dict %(name)s keys).
std::string python_percent_format(const std::string& format, const Value& value);

// Python's str.upper()/str.lower() (Latin, Greek and Cyrillic case pairs).
std::string string_upper(const std::string& s);
std::string string_lower(const std::string& s);

}  // namespace moeforge::chat
