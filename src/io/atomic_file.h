// A file written under a temporary name in its destination folder and renamed into place by
// commit(), so that no reader ever sees it half-written. Destroying an AtomicFile that was not
// committed removes the temporary: an error anywhere leaves nothing behind.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

namespace moeforge {

class AtomicFile {
 public:
  // Creates the temporary file next to `path`; kIo naming `path` when the folder refuses it.
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  // Flushes the data to disk and closes the temporary; commit() then only renames. Splitting the two
  // lets a multi-file checkpoint finish every file before any of them replaces an old one.
  void finish();
  void commit();  // finish() if needed, then rename to the final path

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }

 private:
  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Appends `line` and a newline to `path` (created if absent), checked at every write and at close.
// On failure the file is cut back to its previous length, so it only ever holds whole lines.
void append_line(const std::filesystem::path& path, std::string_view line);

}  // namespace moeforge
