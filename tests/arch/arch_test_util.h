// Shared by the tests of src/arch: where the bundled configs live and small JSON helpers.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "testing.h"

namespace moeforge::testing {

inline std::filesystem::path configs_dir() { return test_data_dir() / "configs"; }

// Names of the bundled config folders (tests/data/configs/<name>/config.json).
inline std::vector<std::string> bundled_config_names() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(configs_dir()))
    if (std::filesystem::exists(entry.path() / "config.json")) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline nlohmann::json read_json(const std::filesystem::path& path) { return nlohmann::json::parse(read_text(path)); }

}  // namespace moeforge::testing
