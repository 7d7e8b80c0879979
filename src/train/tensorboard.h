// TensorBoard event files (report_to: tensorboard): scalars written as TFRecord-framed `Event`
// protocol buffers, the format TensorBoard's own summary writer produces, with no TensorFlow or
// protobuf library: the three messages involved are encoded by hand.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace moeforge {

class TensorBoardWriter {
 public:
  // Creates `log_dir`/events.out.tfevents.<seconds>.moeforge and writes the file-version event.
  explicit TensorBoardWriter(const std::string& log_dir);
  void add_scalar(const std::string& tag, double value, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::ofstream out_;
};

}  // namespace moeforge
