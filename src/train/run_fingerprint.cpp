#include "train/run_fingerprint.h"

#include <fstream>
#include <vector>

#include "core/error.h"
#include "data/token_corpus.h"
#include "io/sha256.h"

namespace moeforge {

std::string content_fingerprint(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  MF_CHECK(in.good(), kNotFound, "cannot read ", path.string());
  Sha256 hash;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    hash.update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  MF_CHECK(in.eof(), kIo, "reading ", path.string(), " failed");
  return "sha256:" + hash.hex_digest();
}

std::string token_fingerprint(const data::TokenCorpus& corpus) {
  Sha256 hash;
  for (uint64_t doc = 0; doc < corpus.num_documents(); ++doc) {
    const data::DocumentView d = corpus.document(doc);
    const uint64_t length = d.tokens.size();
    hash.update(&length, sizeof length);
    hash.update(d.tokens.data(), d.tokens.size_bytes());
    std::vector<uint8_t> loss(length);
    for (uint64_t t = 0; t < length; ++t) loss[t] = corpus.loss_bit(d.first_token + t);
    hash.update(loss.data(), loss.size());
  }
  return "sha256:" + hash.hex_digest();
}

namespace {

// A digest cut to its first 12 hex digits: enough to tell two apart in a message.
std::string shown(const nlohmann::json& value) {
  const std::string text = value.dump();
  return value.is_string() && value.get<std::string>().rfind("sha256:", 0) == 0 ? text.substr(0, 20) + "...\"" : text;
}

}  // namespace

std::vector<std::string> fingerprint_differences(const nlohmann::json& checkpoint, const nlohmann::json& current) {
  std::vector<std::string> differ;
  for (const auto& [name, value] : current.items()) {
    if (!checkpoint.contains(name) || checkpoint[name] == value) continue;
    differ.push_back(str_cat(name, " (checkpoint: ", shown(checkpoint[name]), ", this run: ", shown(value), ")"));
  }
  return differ;
}

}  // namespace moeforge
