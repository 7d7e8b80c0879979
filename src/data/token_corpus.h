// TokenCorpus: tokenized documents, each a run of uint32 token ids with a per-token loss flag, held
// either in memory (built from a JSONL dataset) or memory-mapped from a pre-tokenized .mfbin file.
// Both share one layout, so the packer reads them alike:
//
//   tokens       uint32[num_tokens]               every document's ids, back to back
//   doc_offsets  uint64[num_documents + 1]        document d is tokens[doc_offsets[d], doc_offsets[d+1])
//   loss_bits    uint8[ceil(num_tokens / 8)]      bit t (LSB first: byte t/8, bit t%8) = 1 when token t
//                                                 is trained on (numpy.packbits(..., bitorder="little"))
//
// The .mfbin file (all integers little-endian; every section starts on a 64-byte boundary):
//
//   offset 0   char[8]  magic "MFTOKBIN"
//          8   uint32   version (1)
//         12   uint32   token dtype: 1 = uint32 (the only one so far)
//         16   uint64   num_documents
//         24   uint64   num_tokens
//         32   uint64   vocab_size of the tokenizer that made it (0 = unknown)
//         40   uint64   byte offset of doc_offsets
//         48   uint64   byte offset of tokens
//         56   uint64   byte offset of loss_bits
//         64   uint64   byte offset of the metadata (UTF-8 JSON object: source, tokenizer, ...)
//         72   uint64   metadata length in bytes
//         80   zeros up to 128 (reserved)
//
// Opening validates the header, the section bounds and that doc_offsets rise from 0 to num_tokens,
// so a truncated or foreign file is an Error naming it. check_vocabulary() (called by load_dataset
// with the tokenizer's size) compares the recorded vocab_size, and scans the ids only when the file
// records none: reading a multi-gigabyte corpus at every start would cost more than it guards, and
// the model rejects an out-of-range id in any batch anyway.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moeforge::data {

inline constexpr char kMfbinMagic[8] = {'M', 'F', 'T', 'O', 'K', 'B', 'I', 'N'};
inline constexpr uint32_t kMfbinVersion = 1;
inline constexpr uint32_t kMfbinTokenU32 = 1;
inline constexpr uint64_t kMfbinHeaderBytes = 128;

// One document as views into the corpus.
struct DocumentView {
  std::span<const uint32_t> tokens;
  uint64_t first_token = 0;  // index of tokens[0] in the corpus (for loss_bit)
};

class TokenCorpus {
 public:
  TokenCorpus();  // empty: no documents

  // Maps a .mfbin file read-only and validates it (Error kNotFound / kIo / kFormat naming the file).
  static TokenCorpus open_mfbin(const std::filesystem::path& path);

  uint64_t num_documents() const { return num_documents_; }
  uint64_t num_tokens() const { return num_tokens_; }
  uint64_t vocab_size() const { return vocab_size_; }  // 0 = unknown
  const nlohmann::json& metadata() const { return metadata_; }
  const std::string& source_name() const { return source_name_; }

  uint64_t document_length(uint64_t doc) const { return doc_offsets_[doc + 1] - doc_offsets_[doc]; }
  DocumentView document(uint64_t doc) const;
  bool loss_bit(uint64_t token) const { return (loss_bits_[token >> 3] >> (token & 7)) & 1; }

  // Throws kFormat when the corpus was made with a tokenizer of another size, or (when its size is
  // unknown) naming the first document holding an id >= vocab_size.
  void check_vocabulary(uint64_t vocab_size) const;

  // Writes the corpus as .mfbin (atomically: a temporary file renamed into place).
  void write_mfbin(const std::filesystem::path& path) const;

 private:
  friend class CorpusBuilder;
  std::shared_ptr<const void> owner_;  // the mapping or the builder's vectors
  const uint32_t* tokens_ = nullptr;
  const uint64_t* doc_offsets_ = nullptr;
  const uint8_t* loss_bits_ = nullptr;
  uint64_t num_documents_ = 0;
  uint64_t num_tokens_ = 0;
  uint64_t vocab_size_ = 0;
  nlohmann::json metadata_ = nlohmann::json::object();
  std::string source_name_;
};

// Appends documents in memory, then hands them over as a TokenCorpus.
class CorpusBuilder {
 public:
  CorpusBuilder();
  // `loss_mask` holds one 0/1 per id.
  void add_document(std::span<const uint32_t> ids, std::span<const uint8_t> loss_mask);
  uint64_t num_documents() const;
  TokenCorpus finish(std::string source_name, uint64_t vocab_size, nlohmann::json metadata = nlohmann::json::object());

 private:
  struct Storage;
  std::shared_ptr<Storage> storage_;
};

}  // namespace moeforge::data
