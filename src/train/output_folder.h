// OutputFolder: a training run's ownership of its output_dir for as long as it runs.
// - One run at a time: an exclusive flock on <dir>/.moeforge.lock (the kernel releases it when the
//   process dies, however it dies); a second run is refused with the first run's process id.
// - Leftovers of earlier killed runs (.tmp-checkpoint-* folders, .*.tmp.* files) are removed: under
//   the lock nobody else can be writing them.
// - A folder holding another run's checkpoints or metrics is refused unless the run resumes
//   (resume_from_checkpoint) or overwrite_output_dir is set, which removes checkpoint-*,
//   metrics.jsonl and the TensorBoard runs/ folder first.
// Bad paths (empty, a file, under a file) are bad input; a folder the system refuses is an I/O error.
// A folder the claim created and nothing else wrote to is removed on release: a run that fails
// while loading leaves nothing behind.
#pragma once

#include <filesystem>
#include <memory>

namespace moeforge {

struct OutputFolderPolicy {
  bool resuming = false;   // the run continues a checkpoint: its files are this run's history
  bool overwrite = false;  // overwrite_output_dir: an earlier run's checkpoints and metrics go
  // Written into the lock file when not 0: how the other processes of a run recognise the folder
  // (join).
  int64_t run_token = 0;
};

class OutputFolder {
 public:
  static std::shared_ptr<OutputFolder> claim(const std::filesystem::path& dir, OutputFolderPolicy policy);
  // The folder the first process of a run of several claimed with `run_token` (expert-parallel
  // ranks but the first): checked to be that folder, seen from here (a path that is not on a file
  // system every node shares names another folder or none), without a lock of its own.
  static std::shared_ptr<OutputFolder> join(const std::filesystem::path& dir, int64_t run_token);
  ~OutputFolder();
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  OutputFolder(std::filesystem::path path, int lock_fd, bool created)
      : path_(std::move(path)), lock_fd_(lock_fd), created_(created) {}
  std::filesystem::path path_;
  int lock_fd_;
  bool created_;  // the claim made the folder
};

}  // namespace moeforge
