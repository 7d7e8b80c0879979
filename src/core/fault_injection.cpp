#include "core/fault_injection.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace moeforge {
namespace {

struct Request {
  Fault fault;
  std::string point;
  long long pass;
};

// Parsed once: the variable is set by the test that starts this process. A malformed request is
// ignored, never an error: this is not a user-facing setting.
std::vector<Request> parse_requests(const char* text) {
  std::vector<Request> out;
  std::string all = text == nullptr ? "" : text;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find(',', start);
    if (end == std::string::npos) end = all.size();
    const std::string item = all.substr(start, end - start);
    start = end + 1;
    const size_t at = item.find('@'), colon = item.rfind(':');
    if (at == std::string::npos || colon == std::string::npos || colon < at) continue;
    const std::string kind = item.substr(0, at);
    const Fault fault = kind == "kill" ? Fault::kKill : kind == "sigterm" ? Fault::kSigterm
                        : kind == "enospc" ? Fault::kNoSpace : kind == "hang" ? Fault::kHang : Fault::kNone;
    if (fault == Fault::kNone) continue;
    out.push_back({fault, item.substr(at + 1, colon - at - 1), std::atoll(item.c_str() + colon + 1)});
  }
  return out;
}

}  // namespace

Fault fault_at(std::string_view point) {
  static const std::vector<Request> requests = parse_requests(std::getenv("MOEFORGE_FAULT"));
  if (requests.empty()) return Fault::kNone;
  static std::mutex mutex;
  static std::map<std::string, long long, std::less<>> passes;
  std::lock_guard<std::mutex> lock(mutex);
  const long long pass = ++passes[std::string(point)];
  for (const Request& r : requests)
    if (r.point == point && r.pass == pass) return r.fault;
  return Fault::kNone;
}

void raise_signal_fault(Fault fault) {
  if (fault == Fault::kKill) std::raise(SIGKILL);
  if (fault == Fault::kSigterm) std::raise(SIGTERM);
  while (fault == Fault::kHang) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace moeforge
