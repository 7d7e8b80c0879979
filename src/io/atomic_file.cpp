#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"

namespace moeforge {
namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  static std::atomic<uint64_t> counter{0};
  // Hidden, and unlike any checkpoint file name, so a crash leaves nothing a reader would pick up.
  const std::string name = str_cat(".", path_.filename().string(), ".tmp.", ::getpid(), ".",
                                   counter.fetch_add(1));
  temp_path_ = path_.parent_path() / name;
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  MF_CHECK(fd_ >= 0, kIo, "cannot write ", path_.string(), ": creating ", temp_path_.string(),
           " failed: ", errno_text());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  MF_CHECK(fd_ >= 0, kInternal, "write to ", temp_path_.string(), " after it was finished");
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    // Large writes go in chunks: Linux moves at most about 2 GiB per call.
    ssize_t n = ::write(fd_, p, std::min<size_t>(bytes, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    MF_CHECK(n > 0, kIo, "writing ", path_.string(), " failed: ", n < 0 ? errno_text() : "no progress");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::finish() {
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  bool synced = ::fsync(fd) == 0;
  std::string sync_error = synced ? "" : errno_text();
  bool closed = ::close(fd) == 0;
  MF_CHECK(synced, kIo, "writing ", path_.string(), " failed at fsync: ", sync_error);
  MF_CHECK(closed, kIo, "writing ", path_.string(), " failed at close: ", errno_text());
}

void AtomicFile::commit() {
  finish();
  MF_CHECK(::rename(temp_path_.c_str(), path_.c_str()) == 0, kIo, "cannot write ", path_.string(),
           ": renaming ", temp_path_.string(), " failed: ", errno_text());
  committed_ = true;
}

}  // namespace moeforge
