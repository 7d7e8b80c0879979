// Typed errors. Library code throws moeforge::Error; only main() turns one into an exit code.
// The message names what failed and where (file, tensor, key, shape, line) so a user can act on it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moeforge {

enum class ErrorCode {
  kInvalidArgument,  // a bad flag, option value or API argument
  kNotFound,         // a missing file, key or tensor
  kIo,               // a read or write that the system refused
  kFormat,           // a malformed file: JSON, safetensors, tokenizer, template, dataset line
  kShape,            // tensors whose shapes do not fit together
  kUnsupported,      // a valid input we do not handle (architecture, dtype, tokenizer piece)
  kOutOfMemory,      // host or device allocation failed
  kBackend,          // CUDA, cuBLAS, cuDNN or NCCL reported an error
  kNumerical,        // NaN/Inf where the policy says stop
  kInternal,         // a broken invariant: a bug in moeforge
};

const char* error_code_name(ErrorCode code);

// Process exit code for an error, as documented in the README (0 success, 1 internal, 2 bad input, ...).
int exit_code_for(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message) : std::runtime_error(std::move(message)), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// Concatenates any streamable values: str_cat("tensor ", name, " has shape ", shape).
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, Args&&... args) {
  throw Error(code, str_cat(std::forward<Args>(args)...));
}

}  // namespace moeforge

// MF_CHECK(cond, code, message parts...): throws Error(code, message) when cond is false.
#define MF_CHECK(cond, code, ...)                                    \
  do {                                                               \
    if (!(cond)) ::moeforge::fail(::moeforge::ErrorCode::code, __VA_ARGS__); \
  } while (0)

// Internal invariants: a failure is a moeforge bug, reported with the source location.
#define MF_ASSERT(cond)                                                                    \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::moeforge::fail(::moeforge::ErrorCode::kInternal, "internal error: ", #cond, " (", \
                       __FILE__, ":", __LINE__, ")");                                      \
  } while (0)
