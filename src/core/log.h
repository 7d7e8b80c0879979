// Leveled logging to stderr. Every line carries the process rank once distributed runs set it,
// so interleaved Slurm logs stay readable: "[rank 3] W: ...".
#pragma once

#include "core/error.h"

namespace moeforge {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kSilent = 4 };

// The level starts from $MOEFORGE_LOG_LEVEL (debug, info, warning, error, silent); default info.
void set_log_level(LogLevel level);
LogLevel log_level();
void set_log_rank(int rank);  // -1: single process, no prefix
void log_line(LogLevel level, const std::string& message);

template <typename... Args>
void log_at(LogLevel level, Args&&... args) {
  if (level >= log_level()) log_line(level, str_cat(std::forward<Args>(args)...));
}

}  // namespace moeforge

#define MF_LOG_DEBUG(...) ::moeforge::log_at(::moeforge::LogLevel::kDebug, __VA_ARGS__)
#define MF_LOG_INFO(...) ::moeforge::log_at(::moeforge::LogLevel::kInfo, __VA_ARGS__)
#define MF_LOG_WARN(...) ::moeforge::log_at(::moeforge::LogLevel::kWarning, __VA_ARGS__)
#define MF_LOG_ERROR(...) ::moeforge::log_at(::moeforge::LogLevel::kError, __VA_ARGS__)
