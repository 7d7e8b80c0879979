#include "io/json.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

namespace moeforge {
namespace {

// Error messages may quote bytes of a broken file; keep them printable ASCII.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

}  // namespace

const char* json_type_name(const Json& value) {
  switch (value.type()) {
    case Json::value_t::object: return "object";
    case Json::value_t::array: return "array";
    case Json::value_t::string: return "string";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "integer";
    case Json::value_t::number_float: return "number";
    case Json::value_t::boolean: return "boolean";
    case Json::value_t::null: return "null";
    default: return "binary";
  }
}

std::string json_excerpt(const Json& value) {
  if (value.is_array()) return str_cat("array of ", value.size());
  if (value.is_object()) return str_cat("object of ", value.size(), value.size() == 1 ? " key" : " keys");
  std::string shown = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
  return str_cat(json_type_name(value), " ", printable(shown));
}

namespace json_detail {

void fail_wrong_type(const Json& value, const std::string& what, const char* expected) {
  fail(ErrorCode::kFormat, what, " must be ", expected, ", got ", json_excerpt(value));
}

void fail_syntax(std::string_view text, const std::string& where, const nlohmann::json::parse_error& e) {
  // nlohmann counts the newline after a broken token as the start of the next line; report the
  // line and column (1-based) of the last byte it read instead, which is where the user looks.
  const size_t last = std::min<size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
  const std::string_view before = text.substr(0, last);
  const size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
  const size_t line_start = before.rfind('\n');
  const size_t column = line_start == std::string_view::npos ? last + 1 : last - line_start;
  // what() is "[json.exception.parse_error.101] parse error at line L, column C: <detail>".
  std::string_view detail = e.what();
  if (auto p = detail.find(": "); p != std::string_view::npos) detail.remove_prefix(p + 2);
  fail(ErrorCode::kFormat, where, ": invalid JSON at line ", line, ", column ", column, ": ", printable(detail));
}

void fail_too_deep(const std::string& where) {
  fail(ErrorCode::kFormat, where, ": JSON nested more than ", kMaxJsonDepth, " levels deep");
}

void fail_unrepresentable(const std::string& where, const nlohmann::json::exception& e) {
  // Not a syntax error but a value nlohmann cannot hold, e.g. a number past the double range
  // (out_of_range.406); found by fuzz_safetensors.
  fail(ErrorCode::kFormat, where, ": invalid JSON: ", printable(e.what()));
}

}  // namespace json_detail

Json parse_json(std::string_view text, const std::string& where) {
  // The callback tracks the keys of each open object.
  std::vector<std::set<std::string>> open_objects;
  auto track_keys = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case Json::parse_event_t::object_end: open_objects.pop_back(); break;
      case Json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        MF_CHECK(open_objects.back().insert(key).second, kFormat, where, ": key '",
                 printable(key), "' appears twice in one JSON object");
        break;
      }
      default: break;
    }
    return true;
  };
  return parse_json_text<Json>(text, where, track_keys);
}

Json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  MF_CHECK(std::filesystem::exists(path, ec), kNotFound, path.string(), ": no such file");
  MF_CHECK(!std::filesystem::is_directory(path, ec), kInvalidArgument, path.string(),
           ": is a directory, expected a JSON file");
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in, kIo, path.string(), ": cannot open for reading");
  std::ostringstream text;
  text << in.rdbuf();
  MF_CHECK(!in.bad(), kIo, path.string(), ": read failed");
  return parse_json(text.str(), path.string());
}

}  // namespace moeforge
