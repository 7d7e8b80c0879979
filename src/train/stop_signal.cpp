#include "train/stop_signal.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace moeforge {
namespace {

std::atomic<int> g_received{0};
int g_scope_depth = 0;  // scopes are made and destroyed on the training thread only

extern "C" void record_stop_signal(int sig) { g_received = sig; }

extern "C" void exit_on_stop_signal(int sig) {
  // Only async-signal-safe calls here: write(2) and _exit(2).
  static const char kMessage[] = "moeforge: stopped by a signal before training began; nothing was written\n";
  ssize_t ignored = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  (void)ignored;
  ::_exit(128 + sig);
}

}  // namespace

void exit_on_stop_signals() {
  std::signal(SIGINT, exit_on_stop_signal);
  std::signal(SIGTERM, exit_on_stop_signal);
}

StopSignalScope::StopSignalScope() {
  if (g_scope_depth++ == 0) g_received = 0;
  previous_int_ = std::signal(SIGINT, record_stop_signal);
  previous_term_ = std::signal(SIGTERM, record_stop_signal);
}

StopSignalScope::~StopSignalScope() {
  std::signal(SIGINT, previous_int_);
  std::signal(SIGTERM, previous_term_);
  --g_scope_depth;
}

int StopSignalScope::received() { return g_received; }

}  // namespace moeforge
