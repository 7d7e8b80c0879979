// Typed, checked access to the keys of one JSON object of a config.json. Every error names the file
// and the key ("models/x/config.json: key 'hidden_size' must be an integer, got string \"4096\""), so
// a user can fix the file. A key whose value is null counts as absent, as in Transformers.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moeforge {

class ConfigReader {
 public:
  // `where` names the object in messages: the file, or "file (rope_scaling)" for a nested object.
  ConfigReader(const nlohmann::json& object, std::string where);

  const std::string& where() const { return where_; }
  const nlohmann::json& object() const { return *object_; }

  bool has(const std::string& key) const;  // present and not null
  // The first of several spellings of one setting that is present, or nullopt.
  std::optional<std::string> first_present(std::initializer_list<const char*> spellings) const;

  // Required values: kFormat naming the key (and its other spellings) when absent or mistyped.
  int64_t required_int(const std::string& key) const;
  int64_t required_int(std::initializer_list<const char*> spellings) const;
  int64_t required_positive_int(const std::string& key) const;
  int64_t required_positive_int(std::initializer_list<const char*> spellings) const;
  std::string required_string(const std::string& key) const;

  // Optional values: absent or null gives the fallback/nullopt; a present value of the wrong type is
  // still an error.
  std::optional<int64_t> optional_int(const std::string& key) const;
  int64_t int_or(const std::string& key, int64_t fallback) const;
  std::optional<double> optional_number(const std::string& key) const;
  double number_or(const std::string& key, double fallback) const;
  bool bool_or(const std::string& key, bool fallback) const;
  std::optional<std::string> optional_string(const std::string& key) const;
  std::vector<int64_t> int_list(const std::string& key) const;          // absent: empty
  std::vector<int64_t> int_or_int_list(const std::string& key) const;   // 2 or [2, 3]; absent: empty
  std::vector<std::string> string_list(const std::string& key) const;   // absent: empty
  // A nested object (rope_scaling, quantization_config); nullopt when absent or null.
  std::optional<ConfigReader> optional_object(const std::string& key) const;

  // Throws kFormat "<where>: key '<key>' <message...>".
  template <typename... Args>
  [[noreturn]] void fail_key(const std::string& key, Args&&... message) const {
    fail(ErrorCode::kFormat, where_, ": key '", key, "' ", std::forward<Args>(message)...);
  }

 private:
  const nlohmann::json* find(const std::string& key) const;
  int64_t to_int(const nlohmann::json& value, const std::string& key) const;
  double to_number(const nlohmann::json& value, const std::string& key) const;

  const nlohmann::json* object_;  // not owned: the document outlives its readers
  std::string where_;
};

}  // namespace moeforge
