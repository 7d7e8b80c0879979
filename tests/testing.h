// Shared helpers of the C++ tests: where the repository and the reference assets are, relative
// errors, and running the moeforge binary.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace moeforge::testing {

// The environment may override where the tree and the binary are (a build carried to another machine).
inline std::filesystem::path source_dir() {
  const char* env = std::getenv("MOEFORGE_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? env : MOEFORGE_SOURCE_DIR;
}
inline std::filesystem::path test_data_dir() { return source_dir() / "tests" / "data"; }
// ../shared/assets beside the checkout: CI has it, a user's fresh clone may not.
inline std::filesystem::path shared_assets_dir() { return source_dir().parent_path() / "shared" / "assets"; }

// Skips the current test when `path` is missing, naming it.
#define MF_SKIP_IF_MISSING(path)                                                     \
  do {                                                                               \
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << (path).string(); \
  } while (0)

// ||a - b|| / ||b|| over all elements (float64 accumulation); NaN anywhere gives NaN.
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline double rel_l2(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  return rel_l2(a.to_float_vector(), b.to_float_vector());
}

// Logits [B, T, V] at the positions `attention_mask` [B, T] keeps (every one when it is undefined), as
// [kept, V] float32: the MoE blocks do not route padding (model/blocks/routed_rows.h), so the logits
// of padded positions are not Transformers' and are not compared.
inline Tensor real_token_logits(const Tensor& logits, const Tensor& attention_mask) {
  const Tensor all = logits.to(Device::kCPU).to(DType::kF32).contiguous();
  if (!attention_mask.defined()) return all;
  const std::vector<float> mask = attention_mask.to_float_vector();
  const int64_t V = all.size(-1);
  std::vector<float> kept;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i] != 0.0f) kept.insert(kept.end(), all.data<float>() + i * V, all.data<float>() + (i + 1) * V);
  return Tensor::from_vector(kept, {static_cast<int64_t>(kept.size()) / V, V});
}

// A path under the system temp folder that no other test process uses: stem + this process's id
// (test binaries of two build trees may run at once on one machine).
std::filesystem::path unique_temp_path(const std::string& stem);

struct CommandResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs the moeforge binary with the given arguments (each shell-quoted here).
CommandResult run_moeforge(const std::vector<std::string>& args, const std::string& stdin_text = "");

// Runs `fn`, expecting a moeforge::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a moeforge::Error";
  } catch (const Error& e) {
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << part << "\"";
  }
}

}  // namespace moeforge::testing
