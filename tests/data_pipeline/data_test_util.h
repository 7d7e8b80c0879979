// Helpers of the data-pipeline tests: synthetic corpora and scratch files.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/token_corpus.h"

namespace moeforge::data::testing {

// Document d has `lengths[d]` tokens with ids 1000*d + k (so every token names its document and
// place) and loss on the tokens where (d + k) % 3 != 0.
inline TokenCorpus synthetic_corpus(const std::vector<uint64_t>& lengths) {
  CorpusBuilder builder;
  for (size_t d = 0; d < lengths.size(); ++d) {
    std::vector<uint32_t> ids(lengths[d]);
    std::vector<uint8_t> mask(lengths[d]);
    for (uint64_t k = 0; k < lengths[d]; ++k) {
      ids[k] = static_cast<uint32_t>(1000 * d + k);
      mask[k] = (d + k) % 3 != 0;
    }
    builder.add_document(ids, mask);
  }
  return builder.finish("synthetic", 0);
}

// A fresh folder under the system temp dir, removed with the object.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("moeforge_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::string& contents) const {
    std::ofstream(path_ / name, std::ios::binary) << contents;
    return path_ / name;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace moeforge::data::testing
