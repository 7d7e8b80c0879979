// JSON helpers over nlohmann::json for the files moeforge reads (config.json, tokenizer.json,
// model.safetensors.index.json, ...). Every error names the file, and the line and column of a
// syntax error or the key of a missing or mistyped value, so a user can fix the file.
//
//   Json config = read_json_file(folder / "config.json");
//   int64_t hidden = require<int64_t>(config, "hidden_size", folder / "config.json");
//   double theta = get_optional<double>(config, "rope_theta", path).value_or(1e6);
//
// `where` is the file (a std::filesystem::path converts implicitly) or any context such as
// "config.json (rope_scaling)". Type checks are strict: 3.5 is not an integer, "1" is not a number,
// and an integer outside the range of T is an error, not a silent wrap.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moeforge {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;  // keeps keys in file order (chat messages, tool schemas)

// The deepest nesting of arrays and objects any parse accepts: real configs, tokenizers and chat
// messages nest fewer than 20 levels, while input nested thousands deep would overflow the stack
// of the recursive code that later walks, converts or prints the document.
inline constexpr int kMaxJsonDepth = 512;

namespace json_detail {

// nlohmann parser callback that keeps every value.
struct KeepEveryValue {
  template <typename... Args>
  bool operator()(Args&&...) const { return true; }
};

// Throw kFormat naming `where`: a syntax error with its line and column in `text`, nesting deeper
// than kMaxJsonDepth, or a value nlohmann cannot hold.
[[noreturn]] void fail_syntax(std::string_view text, const std::string& where, const nlohmann::json::parse_error& e);
[[noreturn]] void fail_too_deep(const std::string& where);
[[noreturn]] void fail_unrepresentable(const std::string& where, const nlohmann::json::exception& e);

}  // namespace json_detail

// Parses JSON text as BasicJson (Json or OrderedJson); `where` names its source in errors ("file",
// "file:line"). Every parse of outside input goes through here so that none can nest deeper than
// kMaxJsonDepth. `filter` is an nlohmann parser callback (return false to drop a value); the depth
// check runs before it, when an array or object opens, so a too-deep value is never built.
template <typename BasicJson = Json, typename Filter = json_detail::KeepEveryValue>
BasicJson parse_json_text(std::string_view text, const std::string& where, Filter filter = {}) {
  using Event = typename BasicJson::parse_event_t;
  auto limit_depth = [&](int depth, Event event, BasicJson& parsed) {
    // `depth` counts the containers already open around this one.
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxJsonDepth)
      json_detail::fail_too_deep(where);
    return filter(depth, event, parsed);
  };
  try {
    return BasicJson::parse(text.begin(), text.end(), limit_depth);
  } catch (const nlohmann::json::parse_error& e) {
    json_detail::fail_syntax(text, where, e);
  } catch (const nlohmann::json::exception& e) {
    json_detail::fail_unrepresentable(where, e);
  }
}

// Reads and parses a JSON file. Throws kNotFound (missing), kIo (unreadable) or kFormat (syntax
// error, with line and column, a key repeated within one object, or nesting past kMaxJsonDepth).
Json read_json_file(const std::filesystem::path& path);

// parse_json_text for moeforge's own formats (config.json, safetensors headers), where a key
// repeated in an object is an error too (nlohmann would silently keep the last one).
Json parse_json(std::string_view text, const std::string& where);

// "object", "array", "string", "integer", "number", "boolean", "null".
const char* json_type_name(const Json& value);

// A short description of a value for an error message: a scalar as JSON (long strings cut),
// a container as "array of 3" / "object of 2 keys" (never walked, however deep it nests).
std::string json_excerpt(const Json& value);

namespace json_detail {

// Throws kFormat: "<what> must be <expected>, got <json_excerpt(value)>".
[[noreturn]] void fail_wrong_type(const Json& value, const std::string& what, const char* expected);

template <typename T>
struct is_vector : std::false_type {};
template <typename T>
struct is_vector<std::vector<T>> : std::true_type {};

template <typename T>
struct is_string_map : std::false_type {};
template <typename T>
struct is_string_map<std::map<std::string, T>> : std::true_type {};

// Converts `value` to T, checking its JSON type strictly; `what` names it in an error
// ("config.json: key 'hidden_size'").
template <typename T>
T convert(const Json& value, const std::string& what) {
  auto wrong = [&](const char* expected) { fail_wrong_type(value, what, expected); };
  if constexpr (std::is_same_v<T, bool>) {
    if (!value.is_boolean()) wrong("a boolean");
    return value.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!value.is_number_integer()) wrong("an integer");
    if (value.is_number_unsigned()) {
      auto v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) wrong("an integer in range");
      return static_cast<T>(v);
    }
    auto v = value.get<int64_t>();
    if constexpr (std::is_signed_v<T>) {
      if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          v > static_cast<int64_t>(std::numeric_limits<T>::max()))
        wrong("an integer in range");
    } else {
      if (v < 0 || static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        wrong("a non-negative integer in range");
    }
    return static_cast<T>(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!value.is_number()) wrong("a number");
    return value.get<T>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!value.is_string()) wrong("a string");
    return value.get<std::string>();
  } else if constexpr (std::is_same_v<T, Json>) {
    return value;
  } else if constexpr (is_vector<T>::value) {
    if (!value.is_array()) wrong("an array");
    T out;
    out.reserve(value.size());
    for (size_t i = 0; i < value.size(); ++i)
      out.push_back(convert<typename T::value_type>(value[i], str_cat(what, "[", i, "]")));
    return out;
  } else if constexpr (is_string_map<T>::value) {
    if (!value.is_object()) wrong("an object");
    T out;
    for (const auto& [k, v] : value.items())
      out.emplace(k, convert<typename T::mapped_type>(v, str_cat(what, ".", k)));
    return out;
  } else {
    static_assert(sizeof(T) == 0, "unsupported type for moeforge JSON getters");
  }
}

}  // namespace json_detail

// The value of `key` in the object `j`; kNotFound when absent (or null), kFormat when mistyped or
// when `j` is not an object.
template <typename T>
T require(const Json& j, const std::string& key, const std::string& where) {
  MF_CHECK(j.is_object(), kFormat, where, ": expected an object holding key '", key, "', got ",
           json_type_name(j));
  auto it = j.find(key);
  MF_CHECK(it != j.end() && !it->is_null(), kNotFound, where, ": missing key '", key, "'");
  return json_detail::convert<T>(*it, str_cat(where, ": key '", key, "'"));
}

// The value of `key`, or nullopt when absent or null; kFormat when present with the wrong type.
template <typename T>
std::optional<T> get_optional(const Json& j, const std::string& key, const std::string& where) {
  MF_CHECK(j.is_object(), kFormat, where, ": expected an object holding key '", key, "', got ",
           json_type_name(j));
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return json_detail::convert<T>(*it, str_cat(where, ": key '", key, "'"));
}

}  // namespace moeforge
