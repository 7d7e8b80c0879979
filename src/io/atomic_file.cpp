#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/fault_injection.h"

namespace moeforge {
namespace {

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* p, size_t bytes, const std::filesystem::path& path) {
  while (bytes > 0) {
    // Large writes go in chunks: Linux moves at most about 2 GiB per call.
    ssize_t n = ::write(fd, p, std::min<size_t>(bytes, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    MF_CHECK(n > 0, kIo, "writing ", path.string(), " failed: ", n < 0 ? errno_text() : "no progress");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

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
  const Fault fault = fault_at("file_write");
  if (fault != Fault::kNone) {  // half of the buffer reaches the file first, as a real failure would leave it
    const size_t half = bytes / 2;
    write_all(fd_, p, half, path_);
    p += half;
    bytes -= half;
    MF_CHECK(fault != Fault::kNoSpace, kIo, "writing ", path_.string(), " failed: ", std::strerror(ENOSPC));
    raise_signal_fault(fault);
  }
  write_all(fd_, p, bytes, path_);
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

void append_line(const std::filesystem::path& path, std::string_view line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  MF_CHECK(fd >= 0, kIo, "cannot append to ", path.string(), ": ", errno_text());
  struct stat before {};
  const bool sized = ::fstat(fd, &before) == 0;
  std::string text(line);
  text += '\n';
  try {
    const Fault fault = fault_at("metrics");
    if (fault == Fault::kNoSpace) {  // a partial line first, as a disk filling up mid-write leaves it
      write_all(fd, text.data(), text.size() / 2, path);
      fail(ErrorCode::kIo, "appending to ", path.string(), " failed: ", std::strerror(ENOSPC));
    }
    write_all(fd, text.data(), text.size(), path);
  } catch (const Error&) {
    // Whole lines only: cut the file back to where this line began.
    if (sized && ::ftruncate(fd, before.st_size) != 0) {
      // Nothing better to do: the write error being thrown is what the user needs to see.
    }
    ::close(fd);
    throw;
  }
  MF_CHECK(::close(fd) == 0, kIo, "appending to ", path.string(), " failed at close: ", errno_text());
}

}  // namespace moeforge
