#include "core/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace moeforge {
namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("MOEFORGE_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "warning") == 0) return LogLevel::kWarning;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  if (std::strcmp(env, "silent") == 0) return LogLevel::kSilent;
  return LogLevel::kInfo;
}

std::atomic<LogLevel> g_level{level_from_env()};
std::atomic<int> g_rank{-1};
std::mutex g_write_mutex;

}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }
void set_log_rank(int rank) { g_rank = rank; }

void log_line(LogLevel level, const std::string& message) {
  static constexpr const char* kTags[] = {"D", "I", "W", "E", ""};
  std::lock_guard<std::mutex> lock(g_write_mutex);
  int rank = g_rank;
  if (rank >= 0) std::fprintf(stderr, "[rank %d] ", rank);
  if (level != LogLevel::kInfo) std::fprintf(stderr, "%s: ", kTags[static_cast<int>(level)]);
  std::fprintf(stderr, "%s\n", message.c_str());
}

}  // namespace moeforge
