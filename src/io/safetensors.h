// safetensors files: reading (memory-mapped, zero-copy, fully validated), writing (atomic), and
// Hugging Face checkpoints made of one file or of shards with a model.safetensors.index.json.
//
// File layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the data section that follows the header) plus an optional "__metadata__"
// string->string map, then the data. Like the reference library we require the tensors to tile the
// data section exactly: no overlap, no gap, no trailing bytes.
//
// Every error is a moeforge::Error naming the file and, where one is at fault, the tensor:
// kFormat for a malformed file, kNotFound for a missing file or tensor, kIo for a refused read/write.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moeforge {

// The reference library's limit on the header length.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t data_begin = 0;  // byte range within the data section (after the header)
  uint64_t data_end = 0;

  uint64_t nbytes() const { return data_end - data_begin; }
};

using Metadata = std::map<std::string, std::string>;

// One parsed safetensors file. Cheap to copy: copies share the mapping, which lives as long as any
// copy or any tensor returned by get().
class SafetensorsFile {
 public:
  // Maps `path` read-only and validates its header. The data is not read until used.
  static SafetensorsFile open(const std::filesystem::path& path);

  // Parses `size` bytes at `data` as a safetensors file; `source_name` names it in errors.
  // `owner` keeps the bytes alive for the tensors returned by get(); it may be null when the
  // caller guarantees the bytes outlive every use (the fuzz target does).
  static SafetensorsFile parse(const void* data, size_t size, std::string source_name,
                               std::shared_ptr<const void> owner);

  const std::string& source_name() const { return source_name_; }
  // The tensors in the order of their data in the file.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // kNotFound naming the tensor
  const Metadata& metadata() const { return metadata_; }

  // A CPU tensor over the file's bytes (zero-copy; it keeps the mapping alive). Files from open()
  // are mapped copy-on-write: writing into the tensor never changes the file. (Under strict memory
  // overcommit the mapping is read-only, so copy a tensor before modifying it in place.) A tensor
  // whose data is not aligned to its element size (possible in files from other writers) is copied.
  Tensor get(const std::string& name) const;
  // The raw bytes of a tensor inside the mapping.
  const uint8_t* data(const TensorInfo& info) const { return data_section_ + info.data_begin; }
  // Drops the pages that lie wholly inside tensor `name` from this process's memory (the page cache
  // keeps them; a later get() reads them again): a loader that has copied a tensor out keeps its
  // resident memory at one tensor. What was written into tensors from get() is lost. No effect on
  // files from parse().
  void release(const std::string& name) const;

 private:
  std::string source_name_;
  std::shared_ptr<const void> owner_;
  const uint8_t* data_section_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  Metadata metadata_;
  bool mapped_ = false;  // the bytes are this object's own file mapping (open())
};

// A Hugging Face checkpoint: a folder holding model.safetensors, or shards listed by
// model.safetensors.index.json ("weight_map": tensor name -> shard file). A path to a single
// .safetensors file is accepted too, as a one-file checkpoint.
//
// Opening reads the index and checks that every shard it names exists; shards are mapped when first
// used, and each shard's header is checked against the index then (every tensor the index puts in
// it must be there). validate() does that for all shards at once and also rejects a tensor stored
// in two shards. Thread-safe.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::filesystem::path& path);
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;
  ~CheckpointReader();

  const std::filesystem::path& path() const;
  bool is_sharded() const;  // has an index file
  // The index file, or the single .safetensors file.
  const std::filesystem::path& description_file() const;
  // All tensor names, sorted.
  const std::vector<std::string>& tensor_names() const;
  bool contains(const std::string& name) const;
  // The shard file holding `name`; kNotFound naming the tensor and the checkpoint.
  const std::filesystem::path& shard_of(const std::string& name) const;
  const std::vector<std::filesystem::path>& shard_files() const;

  TensorInfo info(const std::string& name) const;
  Tensor get(const std::string& name) const;  // zero-copy view into the mapped shard
  void release(const std::string& name) const;  // SafetensorsFile::release in its shard
  const SafetensorsFile& shard(const std::filesystem::path& shard_file) const;

  // Maps every shard and checks the whole checkpoint (see above).
  void validate() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

using NamedTensor = std::pair<std::string, Tensor>;

// Writes a safetensors file: the header padded with spaces to a multiple of 8 bytes (as the Python
// library does), then each tensor's bytes in row-major order. Tensors may be views of any dtype on
// any device (non-contiguous views are written as their contiguous bytes). Tensors are stored by
// element size, largest first (keeping the given order otherwise), so every tensor's data stays
// aligned. The file is written to a temporary name in the same folder and renamed into place;
// on any error the temporary is removed and nothing is left behind.
void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const Metadata& metadata = {});

// Writes a checkpoint folder the way Transformers' save_pretrained does: one model.safetensors when
// all tensors fit in `max_shard_bytes`, else model-00001-of-0000N.safetensors shards (filled in the
// given order, a new shard started when the next tensor would overflow the current one; a tensor
// larger than the limit gets a shard of its own) and model.safetensors.index.json with
// "metadata": {"total_size": bytes} and the "weight_map". Creates the folder if needed. Files of an
// earlier checkpoint in the folder that the new one does not use (an old index, old shards, an old
// model.safetensors) are removed after the new files are in place. Returns the files written.
std::vector<std::filesystem::path> write_sharded_checkpoint(
    const std::filesystem::path& folder, const std::vector<NamedTensor>& tensors,
    uint64_t max_shard_bytes, const Metadata& metadata = {{"format", "pt"}});

// A checkpoint that several processes write together, each its own tensors (expert parallelism:
// no process gathers the model). Every process passes the same `parts`: parts[r] names rank r's
// tensors in order with their sizes; rank `rank` passes the data of parts[rank] as `tensors`. The
// shards are write_sharded_checkpoint's split of each rank's list in turn, numbered across ranks
// (so no shard mixes ranks); rank 0 also writes the index. Returns every file of the checkpoint
// (each rank computes all names). Once every rank has returned (the caller synchronises), rank 0
// removes an earlier checkpoint's files with remove_stale_checkpoint_files.
struct TensorSize {
  std::string name;
  uint64_t bytes = 0, numel = 0;
};
std::vector<TensorSize> tensor_sizes(const std::vector<NamedTensor>& tensors);
std::vector<std::filesystem::path> write_checkpoint_part(
    const std::filesystem::path& folder, const std::vector<std::vector<TensorSize>>& parts, int rank,
    const std::vector<NamedTensor>& tensors, uint64_t max_shard_bytes, const Metadata& metadata = {{"format", "pt"}});
// Removes the checkpoint files in `folder` (model.safetensors, its index, model-*-of-*.safetensors)
// that are not among `keep`.
void remove_stale_checkpoint_files(const std::filesystem::path& folder, const std::vector<std::filesystem::path>& keep);

inline constexpr const char* kSafetensorsSingleFile = "model.safetensors";
inline constexpr const char* kSafetensorsIndexFile = "model.safetensors.index.json";

}  // namespace moeforge
