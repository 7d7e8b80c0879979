#include "data/token_corpus.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"

namespace moeforge::data {

static_assert(std::endian::native == std::endian::little, "the .mfbin format is little-endian");

namespace {

constexpr uint64_t kSectionAlignment = 64;

uint64_t align_up(uint64_t n) { return (n + kSectionAlignment - 1) / kSectionAlignment * kSectionAlignment; }

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }
};

uint64_t read_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

uint32_t read_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

struct CorpusBuilder::Storage {
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> doc_offsets{0};
  std::vector<uint8_t> loss_bits;
};

TokenCorpus::TokenCorpus() {
  static const uint64_t kZeroOffset = 0;
  doc_offsets_ = &kZeroOffset;
}

DocumentView TokenCorpus::document(uint64_t doc) const {
  MF_ASSERT(doc < num_documents_);
  const uint64_t begin = doc_offsets_[doc];
  return DocumentView{std::span<const uint32_t>(tokens_ + begin, doc_offsets_[doc + 1] - begin), begin};
}

void TokenCorpus::check_vocabulary(uint64_t vocab_size) const {
  MF_CHECK(vocab_size_ == 0 || vocab_size_ == vocab_size, kFormat, source_name_, " was made with a tokenizer of ",
           vocab_size_, " tokens, but the tokenizer in use has ", vocab_size);
  if (vocab_size_ == vocab_size) return;
  for (uint64_t d = 0; d < num_documents_; ++d)
    for (uint64_t t = doc_offsets_[d]; t < doc_offsets_[d + 1]; ++t)
      MF_CHECK(tokens_[t] < vocab_size, kFormat, source_name_, ": document ", d, " holds token id ", tokens_[t],
               ", outside the tokenizer's vocabulary of ", vocab_size);
}

TokenCorpus TokenCorpus::open_mfbin(const std::filesystem::path& path) {
  const std::string name = path.string();
  int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    MF_CHECK(err != ENOENT, kNotFound, "pre-tokenized dataset ", name, " does not exist");
    fail(ErrorCode::kIo, "cannot open ", name, ": ", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(ErrorCode::kIo, "cannot stat ", name, ": ", std::strerror(err));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kMfbinHeaderBytes) {
    ::close(fd);
    fail(ErrorCode::kFormat, name, ": ", file_size, " bytes is too short for a .mfbin header (",
         kMfbinHeaderBytes, " bytes)");
  }
  auto mapping = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, fd, 0);
  int mmap_errno = errno;
  ::close(fd);
  MF_CHECK(addr != MAP_FAILED, kIo, name, ": mmap failed: ", std::strerror(mmap_errno));
  mapping->addr = addr;
  mapping->size = file_size;
  const auto* bytes = static_cast<const uint8_t*>(addr);

  MF_CHECK(std::memcmp(bytes, kMfbinMagic, sizeof kMfbinMagic) == 0, kFormat, name,
           ": not a .mfbin file (the first 8 bytes are not \"MFTOKBIN\")");
  const uint32_t version = read_u32(bytes + 8);
  MF_CHECK(version == kMfbinVersion, kFormat, name, ": .mfbin version ", version, " (this build reads version ",
           kMfbinVersion, ")");
  const uint32_t dtype = read_u32(bytes + 12);
  MF_CHECK(dtype == kMfbinTokenU32, kFormat, name, ": unknown token dtype code ", dtype, " (1 = uint32)");

  TokenCorpus c;
  c.source_name_ = name;
  c.num_documents_ = read_u64(bytes + 16);
  c.num_tokens_ = read_u64(bytes + 24);
  c.vocab_size_ = read_u64(bytes + 32);
  const uint64_t offsets_at = read_u64(bytes + 40), tokens_at = read_u64(bytes + 48);
  const uint64_t bits_at = read_u64(bytes + 56), meta_at = read_u64(bytes + 64), meta_len = read_u64(bytes + 72);

  // Each section must lie inside the file; sizes are checked against overflow before multiplying.
  auto check_section = [&](const char* what, uint64_t at, uint64_t count, uint64_t elem, uint64_t align) {
    MF_CHECK(count <= (file_size / elem) && at >= kMfbinHeaderBytes && at <= file_size &&
                 count * elem <= file_size - at,
             kFormat, name, ": the ", what, " section (", count, " x ", elem, " bytes at offset ", at,
             ") does not fit in the file of ", file_size, " bytes (truncated?)");
    MF_CHECK(at % align == 0, kFormat, name, ": the ", what, " section at offset ", at, " is not aligned to ", align);
  };
  MF_CHECK(c.num_documents_ < file_size, kFormat, name, ": header claims ", c.num_documents_,
           " documents in a file of ", file_size, " bytes");
  check_section("doc_offsets", offsets_at, c.num_documents_ + 1, 8, 8);
  check_section("tokens", tokens_at, c.num_tokens_, 4, 4);
  check_section("loss_bits", bits_at, (c.num_tokens_ + 7) / 8, 1, 1);
  check_section("metadata", meta_at, meta_len, 1, 1);

  c.doc_offsets_ = reinterpret_cast<const uint64_t*>(bytes + offsets_at);
  c.tokens_ = reinterpret_cast<const uint32_t*>(bytes + tokens_at);
  c.loss_bits_ = bytes + bits_at;
  MF_CHECK(c.doc_offsets_[0] == 0 && c.doc_offsets_[c.num_documents_] == c.num_tokens_, kFormat, name,
           ": doc_offsets must run from 0 to num_tokens (", c.num_tokens_, "), got ", c.doc_offsets_[0], " .. ",
           c.doc_offsets_[c.num_documents_]);
  for (uint64_t d = 0; d < c.num_documents_; ++d)
    MF_CHECK(c.doc_offsets_[d] <= c.doc_offsets_[d + 1], kFormat, name, ": doc_offsets decrease at document ", d);
  c.metadata_ = parse_json_text(std::string_view(reinterpret_cast<const char*>(bytes + meta_at), meta_len),
                                 str_cat(name, ": the metadata section"));
  MF_CHECK(c.metadata_.is_object(), kFormat, name, ": the metadata section must be a JSON object");
  c.owner_ = std::move(mapping);
  return c;
}

void TokenCorpus::write_mfbin(const std::filesystem::path& path) const {
  const std::string meta = metadata_.dump();
  const uint64_t offsets_at = kMfbinHeaderBytes;
  const uint64_t tokens_at = align_up(offsets_at + (num_documents_ + 1) * 8);
  const uint64_t bits_at = align_up(tokens_at + num_tokens_ * 4);
  const uint64_t meta_at = align_up(bits_at + (num_tokens_ + 7) / 8);

  uint8_t header[kMfbinHeaderBytes] = {};
  std::memcpy(header, kMfbinMagic, sizeof kMfbinMagic);
  auto put32 = [&](size_t at, uint32_t v) { std::memcpy(header + at, &v, sizeof v); };
  auto put64 = [&](size_t at, uint64_t v) { std::memcpy(header + at, &v, sizeof v); };
  put32(8, kMfbinVersion);
  put32(12, kMfbinTokenU32);
  put64(16, num_documents_);
  put64(24, num_tokens_);
  put64(32, vocab_size_);
  put64(40, offsets_at);
  put64(48, tokens_at);
  put64(56, bits_at);
  put64(64, meta_at);
  put64(72, meta.size());

  AtomicFile file(path);
  uint64_t written = 0;
  auto write = [&](const void* data, uint64_t n) {
    if (n > 0) file.write(data, n);
    written += n;
  };
  auto pad_to = [&](uint64_t at) {
    static const uint8_t kZeros[kSectionAlignment] = {};
    MF_ASSERT(at >= written && at - written <= kSectionAlignment);
    write(kZeros, at - written);
  };
  write(header, sizeof header);
  write(doc_offsets_, (num_documents_ + 1) * 8);
  pad_to(tokens_at);
  write(tokens_, num_tokens_ * 4);
  pad_to(bits_at);
  write(loss_bits_, (num_tokens_ + 7) / 8);
  pad_to(meta_at);
  write(meta.data(), meta.size());
  file.commit();
}

CorpusBuilder::CorpusBuilder() : storage_(std::make_shared<Storage>()) {}

uint64_t CorpusBuilder::num_documents() const { return storage_->doc_offsets.size() - 1; }

void CorpusBuilder::add_document(std::span<const uint32_t> ids, std::span<const uint8_t> loss_mask) {
  MF_ASSERT(ids.size() == loss_mask.size());
  Storage& s = *storage_;
  uint64_t t = s.tokens.size();
  s.tokens.insert(s.tokens.end(), ids.begin(), ids.end());
  s.loss_bits.resize((s.tokens.size() + 7) / 8, 0);
  for (uint8_t m : loss_mask) {
    if (m) s.loss_bits[t >> 3] |= static_cast<uint8_t>(1u << (t & 7));
    ++t;
  }
  s.doc_offsets.push_back(s.tokens.size());
}

TokenCorpus CorpusBuilder::finish(std::string source_name, uint64_t vocab_size, nlohmann::json metadata) {
  TokenCorpus c;
  c.tokens_ = storage_->tokens.data();
  c.doc_offsets_ = storage_->doc_offsets.data();
  c.loss_bits_ = storage_->loss_bits.data();
  c.num_documents_ = storage_->doc_offsets.size() - 1;
  c.num_tokens_ = storage_->tokens.size();
  c.vocab_size_ = vocab_size;
  c.metadata_ = std::move(metadata);
  c.source_name_ = std::move(source_name);
  c.owner_ = std::move(storage_);
  storage_ = std::make_shared<Storage>();
  return c;
}

}  // namespace moeforge::data
