#include "train/output_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLockFile = ".moeforge.lock";

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// The path's nearest existing ancestor (or itself) must be a folder: output_dir "a/b" under a file "a"
// is bad input, not an I/O error.
void check_path_shape(const fs::path& dir) {
  MF_CHECK(!dir.empty(), kInvalidArgument, "output_dir is empty: name the folder for checkpoints and the model");
  std::error_code ec;
  for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
    const fs::file_status st = fs::status(p, ec);
    if (ec || st.type() == fs::file_type::not_found) {
      if (p == p.parent_path()) break;
      continue;
    }
    MF_CHECK(fs::is_directory(st), kInvalidArgument, "output_dir ", dir.string(), ": ", p.string(),
             p == dir ? " is a file, not a folder" : " is a file, so no folder can be made under it");
    return;
  }
}

std::string read_lock_owner(int fd) {
  char buf[256] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string owner = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
  return owner.empty() ? "a process that has not written its id yet" : owner;
}

// Artifacts of an earlier run that a new run would mix with its own.
std::vector<fs::path> earlier_run_files(const fs::path& dir) {
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if ((e.is_directory() && starts_with(name, "checkpoint-")) || name == "metrics.jsonl") found.push_back(e.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

std::shared_ptr<OutputFolder> OutputFolder::claim(const fs::path& dir, OutputFolderPolicy policy) {
  check_path_shape(dir);
  std::error_code ec;
  const bool created = fs::create_directories(dir, ec);
  MF_CHECK(!ec, kIo, "cannot create output_dir ", dir.string(), ": ", ec.message());

  const fs::path lock_path = dir / kLockFile;
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  MF_CHECK(fd >= 0, kIo, "cannot use output_dir ", dir.string(), ": creating ", lock_path.string(), " failed: ",
           std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string owner = read_lock_owner(fd);
    ::close(fd);
    MF_CHECK(err != EWOULDBLOCK, kInvalidArgument, "output_dir ", dir.string(),
             " is in use by another moeforge run (", owner,
             "); wait for it to finish or choose another output_dir");
    fail(ErrorCode::kIo, "cannot lock ", lock_path.string(), ": ", std::strerror(err));
  }
  std::shared_ptr<OutputFolder> folder(new OutputFolder(dir, fd, created));
  const std::string owner = policy.run_token == 0 ? str_cat("process ", ::getpid(), "\n")
                                                  : str_cat("process ", ::getpid(), " (run ", policy.run_token, ")\n");
  MF_CHECK(::ftruncate(fd, 0) == 0 && ::pwrite(fd, owner.data(), owner.size(), 0) == static_cast<ssize_t>(owner.size()),
           kIo, "cannot write ", lock_path.string(), ": ", std::strerror(errno));

  // Leftovers of killed runs: half-written checkpoints and temporary files (see AtomicFile).
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (starts_with(name, ".tmp-checkpoint-") || (starts_with(name, ".") && name.find(".tmp.") != std::string::npos)) {
      fs::remove_all(e.path(), ec);
      MF_CHECK(!ec, kIo, "cannot remove the leftover ", e.path().string(), " of an earlier run: ", ec.message());
      MF_LOG_INFO("removed ", e.path().string(), ", left by an earlier run that did not finish");
    }
  }

  if (!policy.resuming) {
    std::vector<fs::path> earlier = earlier_run_files(dir);
    if (!earlier.empty() && !policy.overwrite) {
      std::string list;
      for (size_t i = 0; i < earlier.size() && i < 4; ++i) list += (i ? ", " : "") + earlier[i].filename().string();
      if (earlier.size() > 4) list += str_cat(" and ", earlier.size() - 4, " more");
      fail(ErrorCode::kInvalidArgument, "output_dir ", dir.string(), " holds an earlier run's files (", list,
           "); continue it with resume_from_checkpoint 'latest', start over with overwrite_output_dir, "
           "or choose another output_dir");
    }
    if (!earlier.empty()) earlier.push_back(dir / "runs");
    for (const fs::path& p : earlier) {
      fs::remove_all(p, ec);
      MF_CHECK(!ec, kIo, "overwrite_output_dir: cannot remove ", p.string(), ": ", ec.message());
    }
    if (!earlier.empty()) MF_LOG_INFO("overwrite_output_dir: removed the earlier run's checkpoints and metrics in ", dir.string());
  }
  return folder;
}

std::shared_ptr<OutputFolder> OutputFolder::join(const fs::path& dir, int64_t run_token) {
  const fs::path lock_path = dir / kLockFile;
  const int fd = ::open(lock_path.c_str(), O_RDONLY | O_CLOEXEC);
  std::string owner = fd >= 0 ? read_lock_owner(fd) : std::string();
  if (fd >= 0) ::close(fd);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  MF_CHECK(owner.find(str_cat("(run ", run_token, ")")) != std::string::npos, kInvalidArgument, "output_dir ",
           dir.string(), " as seen from ", host, " is not the folder the run's first process claimed",
           fd < 0 ? " (it has no lock file here)" : str_cat(" (its lock file names ", owner, ")"),
           ": every process of a run needs output_dir on a file system they all share");
  return std::shared_ptr<OutputFolder>(new OutputFolder(dir, -1, false));
}

OutputFolder::~OutputFolder() {
  std::error_code ec;
  if (created_) {
    // Only the lock file inside: the run wrote nothing, so the folder goes (rmdir refuses anything else).
    fs::directory_iterator it(path_, ec);
    bool only_lock = !ec && it != fs::directory_iterator() && it->path().filename() == kLockFile;
    if (only_lock) {
      it.increment(ec);
      only_lock = !ec && it == fs::directory_iterator();
    }
    if (only_lock) {
      fs::remove(path_ / kLockFile, ec);
      fs::remove(path_, ec);
    }
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

}  // namespace moeforge
