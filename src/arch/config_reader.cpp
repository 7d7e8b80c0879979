#include "arch/config_reader.h"

#include <cmath>

namespace moeforge {
namespace {

// The value as written, shortened, for messages.
std::string shown(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

std::string spelling_list(std::initializer_list<const char*> spellings) {
  std::string list;
  for (const char* s : spellings) list += str_cat(list.empty() ? "'" : " or '", s, "'");
  return list;
}

}  // namespace

ConfigReader::ConfigReader(const nlohmann::json& object, std::string where)
    : object_(&object), where_(std::move(where)) {
  MF_CHECK(object_->is_object(), kFormat, where_, ": expected a JSON object, got ", object_->type_name());
}

const nlohmann::json* ConfigReader::find(const std::string& key) const {
  auto it = object_->find(key);
  if (it == object_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigReader::has(const std::string& key) const { return find(key) != nullptr; }

std::optional<std::string> ConfigReader::first_present(std::initializer_list<const char*> spellings) const {
  for (const char* s : spellings)
    if (has(s)) return std::string(s);
  return std::nullopt;
}

int64_t ConfigReader::to_int(const nlohmann::json& value, const std::string& key) const {
  // No size, count, id or length in a config.json reaches 2^31; the bound also keeps products of two
  // sizes (tensor dimensions such as heads * head_dim) far from int64 overflow.
  constexpr int64_t kLimit = int64_t{1} << 31;
  int64_t v = 0;
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() >= static_cast<uint64_t>(kLimit)) fail_key(key, "is out of range: ", shown(value));
    v = static_cast<int64_t>(value.get<uint64_t>());
  } else if (value.is_number_integer()) {
    v = value.get<int64_t>();
  } else if (value.is_number_float()) {
    // Some writers emit integral sizes as floats (4096.0); accept exactly integral values only.
    double d = value.get<double>();
    if (!(std::isfinite(d) && d == std::floor(d)))
      fail_key(key, "must be an integer, got ", value.type_name(), " ", shown(value));
    if (std::fabs(d) >= static_cast<double>(kLimit)) fail_key(key, "is out of range: ", shown(value));
    v = static_cast<int64_t>(d);
  } else {
    fail_key(key, "must be an integer, got ", value.type_name(), " ", shown(value));
  }
  if (v >= kLimit || v <= -kLimit) fail_key(key, "is out of range: ", shown(value));
  return v;
}

double ConfigReader::to_number(const nlohmann::json& value, const std::string& key) const {
  if (!value.is_number()) fail_key(key, "must be a number, got ", value.type_name(), " ", shown(value));
  return value.get<double>();
}

int64_t ConfigReader::required_int(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) fail_key(key, "is missing");
  return to_int(*v, key);
}

int64_t ConfigReader::required_int(std::initializer_list<const char*> spellings) const {
  std::optional<std::string> key = first_present(spellings);
  if (!key) fail(ErrorCode::kFormat, where_, ": key ", spelling_list(spellings), " is missing");
  return to_int(*find(*key), *key);
}

int64_t ConfigReader::required_positive_int(const std::string& key) const {
  int64_t v = required_int(key);
  if (v <= 0) fail_key(key, "must be positive, got ", v);
  return v;
}

int64_t ConfigReader::required_positive_int(std::initializer_list<const char*> spellings) const {
  int64_t v = required_int(spellings);
  if (v <= 0) fail_key(*first_present(spellings), "must be positive, got ", v);
  return v;
}

std::string ConfigReader::required_string(const std::string& key) const {
  std::optional<std::string> v = optional_string(key);
  if (!v) fail_key(key, "is missing");
  return *v;
}

std::optional<int64_t> ConfigReader::optional_int(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return std::nullopt;
  return to_int(*v, key);
}

int64_t ConfigReader::int_or(const std::string& key, int64_t fallback) const {
  return optional_int(key).value_or(fallback);
}

std::optional<double> ConfigReader::optional_number(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return std::nullopt;
  return to_number(*v, key);
}

double ConfigReader::number_or(const std::string& key, double fallback) const {
  return optional_number(key).value_or(fallback);
}

bool ConfigReader::bool_or(const std::string& key, bool fallback) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) fail_key(key, "must be true or false, got ", v->type_name(), " ", shown(*v));
  return v->get<bool>();
}

std::optional<std::string> ConfigReader::optional_string(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) fail_key(key, "must be a string, got ", v->type_name(), " ", shown(*v));
  return v->get<std::string>();
}

std::vector<int64_t> ConfigReader::int_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  std::vector<int64_t> out;
  if (v == nullptr) return out;
  if (!v->is_array()) fail_key(key, "must be a list of integers, got ", v->type_name(), " ", shown(*v));
  for (size_t i = 0; i < v->size(); ++i) out.push_back(to_int((*v)[i], str_cat(key, "[", i, "]")));
  return out;
}

std::vector<int64_t> ConfigReader::int_or_int_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v != nullptr && !v->is_array()) return {to_int(*v, key)};
  return int_list(key);
}

std::vector<std::string> ConfigReader::string_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  std::vector<std::string> out;
  if (v == nullptr) return out;
  if (!v->is_array()) fail_key(key, "must be a list of strings, got ", v->type_name(), " ", shown(*v));
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& item = (*v)[i];
    if (!item.is_string())
      fail_key(str_cat(key, "[", i, "]"), "must be a string, got ", item.type_name(), " ", shown(item));
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::optional<ConfigReader> ConfigReader::optional_object(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_object()) fail_key(key, "must be an object, got ", v->type_name(), " ", shown(*v));
  return ConfigReader(*v, str_cat(where_, " (", key, ")"));
}

}  // namespace moeforge
