#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <regex>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"

namespace moeforge {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; a big-endian host would need byte swaps");

namespace fs = std::filesystem;

// ---- reading --------------------------------------------------------------------------------

namespace {

// A private copy-on-write mapping of a whole file: tensors borrow it without copying, and a caller
// that writes into one changes only this process's pages, never the file. (Read-only where the
// system refuses to reserve memory for the copies; see open().)
struct MappedFile {
  void* addr = nullptr;
  size_t size = 0;
  ~MappedFile() {
    if (addr != nullptr) ::munmap(addr, size);
  }
};

std::string offsets_str(uint64_t begin, uint64_t end) { return str_cat("[", begin, ", ", end, "]"); }

// Reads a JSON value that must be a non-negative integer fitting in uint64_t.
std::optional<uint64_t> as_uint64(const Json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

TensorInfo parse_entry(const std::string& name, const Json& entry, uint64_t data_size,
                       const std::string& file) {
  const std::string where = str_cat(file, ": tensor '", name, "'");
  MF_CHECK(entry.is_object(), kFormat, where, ": header entry must be an object, got ",
           json_type_name(entry));
  TensorInfo t;
  t.name = name;

  auto dtype_it = entry.find("dtype");
  MF_CHECK(dtype_it != entry.end(), kFormat, where, ": missing 'dtype'");
  MF_CHECK(dtype_it->is_string(), kFormat, where, ": 'dtype' must be a string, got ",
           json_type_name(*dtype_it));
  const auto& dtype_name = dtype_it->get_ref<const std::string&>();
  auto dtype = dtype_from_safetensors_name(dtype_name);
  // Names the format defines that moeforge has no DType for: a valid file we cannot load.
  static const std::set<std::string> unsupported = {"F4",  "F6_E2M3", "F6_E3M2", "F8_E8M0",
                                                    "U16", "U32",     "U64",     "C64"};
  MF_CHECK(dtype.has_value() || !unsupported.count(dtype_name), kUnsupported, where, ": dtype '",
           dtype_name, "' is not supported by moeforge");
  MF_CHECK(dtype.has_value(), kFormat, where, ": unknown dtype '", dtype_name,
           "' (known: F64, F32, BF16, F16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL)");
  t.dtype = *dtype;

  auto shape_it = entry.find("shape");
  MF_CHECK(shape_it != entry.end(), kFormat, where, ": missing 'shape'");
  MF_CHECK(shape_it->is_array(), kFormat, where, ": 'shape' must be a list, got ",
           json_type_name(*shape_it));
  // Tensor strides are products of trailing dimensions, so the product of the non-zero dimensions
  // must fit in int64 even when a zero dimension makes the tensor empty.
  uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (size_t i = 0; i < shape_it->size(); ++i) {
    auto dim = as_uint64((*shape_it)[i]);
    MF_CHECK(dim.has_value(), kFormat, where, ": shape must hold non-negative integers, but entry ",
             i, " is ", json_excerpt((*shape_it)[i]));
    MF_CHECK(!__builtin_mul_overflow(nonzero_product, *dim == 0 ? 1 : *dim, &nonzero_product) &&
                 nonzero_product <= static_cast<uint64_t>(INT64_MAX),
             kFormat, where, ": shape is too large (overflow at entry ", i, ")");
    has_zero = has_zero || *dim == 0;
    t.shape.push_back(static_cast<int64_t>(*dim));
  }
  const uint64_t numel = has_zero ? 0 : nonzero_product;
  uint64_t nbytes = 0;
  MF_CHECK(!__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes) &&
               nbytes <= static_cast<uint64_t>(INT64_MAX),
           kFormat, where, ": shape ", shape_str(t.shape), " is too large (overflow)");

  auto offsets_it = entry.find("data_offsets");
  MF_CHECK(offsets_it != entry.end(), kFormat, where, ": missing 'data_offsets'");
  const Json& offsets = *offsets_it;
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = as_uint64(offsets[0]);
    end = as_uint64(offsets[1]);
  }
  MF_CHECK(begin && end, kFormat, where, ": 'data_offsets' must be [begin, end] of non-negative ",
           "integers, got ", json_excerpt(offsets));
  MF_CHECK(*begin <= *end, kFormat, where, ": data_offsets ", offsets_str(*begin, *end),
           " end before they begin");
  MF_CHECK(*end <= data_size, kFormat, where, ": data_offsets ", offsets_str(*begin, *end),
           " run past the end of the data section (", data_size, " bytes)");
  MF_CHECK(*end - *begin == nbytes, kFormat, where, ": data_offsets ", offsets_str(*begin, *end),
           " hold ", *end - *begin, " bytes but dtype ", dtype_name, " and shape ",
           shape_str(t.shape), " need ", nbytes, " bytes");
  t.data_begin = *begin;
  t.data_end = *end;
  return t;
}

Metadata parse_metadata(const Json& value, const std::string& file) {
  MF_CHECK(value.is_object(), kFormat, file, ": __metadata__ must be a map of strings to strings, got ",
           json_type_name(value));
  Metadata metadata;
  for (const auto& [key, v] : value.items()) {
    MF_CHECK(v.is_string(), kFormat, file, ": __metadata__ must be a map of strings to strings, ",
             "but key '", key, "' holds ", json_type_name(v));
    metadata.emplace(key, v.get<std::string>());
  }
  return metadata;
}

}  // namespace

SafetensorsFile SafetensorsFile::parse(const void* data, size_t size, std::string source_name,
                                       std::shared_ptr<const void> owner) {
  const std::string& file = source_name;
  MF_CHECK(size >= 8, kFormat, file, ": file is ", size,
           " bytes, too short for a safetensors file (it starts with an 8-byte header length)");
  const auto* bytes = static_cast<const uint8_t*>(data);
  uint64_t header_size;
  std::memcpy(&header_size, bytes, 8);
  MF_CHECK(header_size <= kSafetensorsMaxHeaderBytes, kFormat, file, ": header length ", header_size,
           " exceeds the limit of ", kSafetensorsMaxHeaderBytes, " bytes (not a safetensors file?)");
  MF_CHECK(header_size <= size - 8, kFormat, file, ": header length ", header_size,
           " runs past the end of the file (", size, " bytes)");

  const std::string_view header_text(reinterpret_cast<const char*>(bytes + 8), header_size);
  Json header = parse_json(header_text, str_cat(file, ": header"));
  MF_CHECK(header.is_object(), kFormat, file, ": header must be a JSON object, got ",
           json_type_name(header));

  SafetensorsFile f;
  f.source_name_ = std::move(source_name);
  f.owner_ = std::move(owner);
  f.data_section_ = bytes + 8 + header_size;
  const uint64_t data_size = size - 8 - header_size;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__")
      f.metadata_ = parse_metadata(entry, f.source_name_);
    else
      f.tensors_.push_back(parse_entry(name, entry, data_size, f.source_name_));
  }

  // The tensors must tile the data section: sorted by offset, each begins where the previous ends.
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
  });
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : f.tensors_) {
    if (t.data_begin < covered)
      fail(ErrorCode::kFormat, f.source_name_, ": tensor '", t.name, "' (bytes ",
           offsets_str(t.data_begin, t.data_end), ") overlaps tensor '", previous->name, "' (bytes ",
           offsets_str(previous->data_begin, previous->data_end), ")");
    if (t.data_begin > covered)
      fail(ErrorCode::kFormat, f.source_name_, ": gap of ", t.data_begin - covered,
           " bytes in the data section before tensor '", t.name, "' (bytes ",
           offsets_str(t.data_begin, t.data_end), "), not covered by any tensor");
    covered = t.data_end;
    previous = &t;
  }
  MF_CHECK(covered == data_size, kFormat, f.source_name_, ": ", data_size - covered,
           " trailing bytes after the last tensor are not covered by any tensor (data section is ",
           data_size, " bytes)");
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  return f;
}

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  const std::string file = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    MF_CHECK(errno != ENOENT, kNotFound, file, ": no such file");
    fail(ErrorCode::kIo, file, ": cannot open: ", std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::kInvalidArgument, file, ": not a regular file");
  }
  auto mapping = std::make_shared<MappedFile>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    void* addr = ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE,
                        fd, 0);
    // Under strict overcommit (vm.overcommit_memory=2) a writable private mapping is charged in
    // full and may be refused; a read-only one never is (its tensors must then not be written).
    if (addr == MAP_FAILED && errno == ENOMEM)
      addr = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int mmap_errno = errno;
    ::close(fd);
    MF_CHECK(addr != MAP_FAILED, kIo, file, ": mmap failed: ", std::strerror(mmap_errno));
    mapping->addr = addr;
  } else {
    ::close(fd);
  }
  const void* data = mapping->addr;
  const size_t size = mapping->size;
  SafetensorsFile parsed = parse(data, size, file, std::move(mapping));
  parsed.mapped_ = true;
  return parsed;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  MF_CHECK(it != index_.end(), kNotFound, source_name_, ": no tensor named '", name, "'");
  return tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  // The bytes are only read, or written copy-on-write (see MappedFile), never through to the file.
  auto* bytes = const_cast<uint8_t*>(data(t));
  if (reinterpret_cast<uintptr_t>(bytes) % dtype_size(t.dtype) == 0)
    return Tensor::borrow(bytes, t.shape, t.dtype, Device::kCPU, owner_);
  Tensor copy = Tensor::empty(t.shape, t.dtype, Device::kCPU, "unaligned safetensors tensor");
  std::memcpy(copy.raw_data(), bytes, t.nbytes());
  return copy;
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo& t = info(name);
  if (!mapped_) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data(t));
  const uintptr_t first = (begin + page - 1) / page * page, last = (begin + t.nbytes()) / page * page;
  // Advice only: where it fails the pages stay resident, which costs memory, not correctness.
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

// ---- checkpoints ----------------------------------------------------------------------------

struct CheckpointReader::State {
  fs::path path;
  fs::path description_file;
  bool sharded = false;
  std::vector<std::string> names;              // sorted
  std::map<std::string, size_t> shard_of_name;  // name -> index into shard_files
  std::vector<fs::path> shard_files;
  std::mutex mutex;
  std::vector<std::optional<SafetensorsFile>> shards;  // mapped on first use

  const SafetensorsFile& shard(size_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!shards[i]) {
      SafetensorsFile f = SafetensorsFile::open(shard_files[i]);
      if (sharded) {
        for (const auto& [name, index] : shard_of_name)
          MF_CHECK(index != i || f.contains(name), kFormat, description_file.string(),
                   ": weight_map puts tensor '", name, "' in ", shard_files[i].filename().string(),
                   ", but that shard has no such tensor");
      }
      shards[i] = std::move(f);
    }
    return *shards[i];
  }

  size_t shard_index(const std::string& name) const {
    auto it = shard_of_name.find(name);
    MF_CHECK(it != shard_of_name.end(), kNotFound, "tensor '", name, "' is not in the checkpoint ",
             description_file.string());
    return it->second;
  }
};

namespace {

// A shard named by the index must be a plain file name inside the checkpoint folder.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos;
}

}  // namespace

CheckpointReader::CheckpointReader(const fs::path& path) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.path = path;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    s.description_file = path;
  } else {
    MF_CHECK(fs::is_directory(path, ec), kNotFound, path.string(),
             ": no such checkpoint file or folder");
    // Transformers prefers the single file when both are present.
    if (fs::is_regular_file(path / kSafetensorsSingleFile, ec)) {
      s.description_file = path / kSafetensorsSingleFile;
    } else {
      MF_CHECK(fs::is_regular_file(path / kSafetensorsIndexFile, ec), kNotFound, path.string(),
               ": no ", kSafetensorsSingleFile, " or ", kSafetensorsIndexFile, " in this folder");
      s.description_file = path / kSafetensorsIndexFile;
      s.sharded = true;
    }
  }

  if (!s.sharded) {
    s.shard_files = {s.description_file};
    s.shards.resize(1);
    const SafetensorsFile& f = s.shard(0);
    for (const auto& t : f.tensors()) s.shard_of_name.emplace(t.name, 0);
  } else {
    const std::string index_file = s.description_file.string();
    Json index = read_json_file(s.description_file);
    MF_CHECK(index.is_object(), kFormat, index_file, ": must hold a JSON object, got ",
             json_type_name(index));
    auto map_it = index.find("weight_map");
    MF_CHECK(map_it != index.end(), kFormat, index_file, ": missing key 'weight_map'");
    MF_CHECK(map_it->is_object(), kFormat, index_file, ": 'weight_map' must be an object, got ",
             json_type_name(*map_it));
    std::map<std::string, size_t> shard_positions;
    const fs::path folder = s.description_file.parent_path();
    for (const auto& [name, shard] : map_it->items()) {
      MF_CHECK(shard.is_string(), kFormat, index_file, ": weight_map key '", name,
               "' must name a shard file, got ", json_type_name(shard));
      const auto& shard_name = shard.get_ref<const std::string&>();
      MF_CHECK(is_plain_file_name(shard_name), kFormat, index_file, ": weight_map key '", name,
               "' names shard '", shard_name, "', which is not a file name in the checkpoint folder");
      auto [it, inserted] = shard_positions.emplace(shard_name, s.shard_files.size());
      if (inserted) {
        const fs::path shard_path = folder / shard_name;
        MF_CHECK(fs::is_regular_file(shard_path, ec), kFormat, index_file, ": weight_map key '", name,
                 "' names shard '", shard_name, "', which does not exist in ", folder.string());
        s.shard_files.push_back(shard_path);
      }
      s.shard_of_name.emplace(name, it->second);
    }
    s.shards.resize(s.shard_files.size());
  }
  s.names.reserve(s.shard_of_name.size());
  for (const auto& entry : s.shard_of_name) s.names.push_back(entry.first);
}

CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;
CheckpointReader::~CheckpointReader() = default;

const fs::path& CheckpointReader::path() const { return state_->path; }
bool CheckpointReader::is_sharded() const { return state_->sharded; }
const fs::path& CheckpointReader::description_file() const { return state_->description_file; }
const std::vector<std::string>& CheckpointReader::tensor_names() const { return state_->names; }
const std::vector<fs::path>& CheckpointReader::shard_files() const { return state_->shard_files; }

bool CheckpointReader::contains(const std::string& name) const {
  return state_->shard_of_name.count(name) != 0;
}

const fs::path& CheckpointReader::shard_of(const std::string& name) const {
  return state_->shard_files[state_->shard_index(name)];
}

TensorInfo CheckpointReader::info(const std::string& name) const {
  return state_->shard(state_->shard_index(name)).info(name);
}

Tensor CheckpointReader::get(const std::string& name) const {
  return state_->shard(state_->shard_index(name)).get(name);
}

void CheckpointReader::release(const std::string& name) const {
  state_->shard(state_->shard_index(name)).release(name);
}

const SafetensorsFile& CheckpointReader::shard(const fs::path& shard_file) const {
  const auto& files = state_->shard_files;
  for (size_t i = 0; i < files.size(); ++i)
    if (files[i] == shard_file || files[i].filename() == shard_file) return state_->shard(i);
  fail(ErrorCode::kNotFound, "'", shard_file.string(), "' is not a shard of the checkpoint ",
       state_->description_file.string());
}

void CheckpointReader::validate() const {
  std::map<std::string, size_t> stored_in;
  for (size_t i = 0; i < state_->shard_files.size(); ++i) {
    for (const auto& t : state_->shard(i).tensors()) {
      auto [it, inserted] = stored_in.emplace(t.name, i);
      MF_CHECK(inserted, kFormat, state_->description_file.string(), ": tensor '", t.name,
               "' is stored in two shards, ", state_->shard_files[it->second].filename().string(),
               " and ", state_->shard_files[i].filename().string());
    }
  }
}

// ---- writing --------------------------------------------------------------------------------

namespace {

// Appends `s` as a JSON string literal.
void append_json_string(std::string& out, const std::string& s) { out += Json(s).dump(); }

// Writes one safetensors file to a temporary name and returns it, finished but not yet renamed.
std::unique_ptr<AtomicFile> write_uncommitted(const fs::path& path,
                                              const std::vector<const NamedTensor*>& tensors,
                                              const Metadata& metadata) {
  // Largest elements first keeps every tensor aligned to its element size (the header is padded to
  // a multiple of 8); the order is otherwise the caller's.
  std::vector<const NamedTensor*> order = tensors;
  std::stable_sort(order.begin(), order.end(), [](const NamedTensor* a, const NamedTensor* b) {
    return a->second.element_size() > b->second.element_size();
  });

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ",";
      first = false;
      append_json_string(header, k);
      header += ":";
      append_json_string(header, v);
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const NamedTensor* nt : order) {
    const Tensor& t = nt->second;
    if (header.size() > 1) header += ",";
    append_json_string(header, nt->first);
    header += str_cat(":{\"dtype\":\"", dtype_safetensors_name(t.dtype()), "\",\"shape\":[");
    for (int64_t d = 0; d < t.dim(); ++d) header += str_cat(d ? "," : "", t.shape()[d]);
    header += str_cat("],\"data_offsets\":[", offset, ",", offset + t.nbytes(), "]}");
    offset += t.nbytes();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // as the Python library pads
  MF_CHECK(header.size() <= kSafetensorsMaxHeaderBytes, kInvalidArgument, "cannot write ",
           path.string(), ": its header would be ", header.size(), " bytes, over the limit of ",
           kSafetensorsMaxHeaderBytes);

  auto file = std::make_unique<AtomicFile>(path);
  const uint64_t header_size = header.size();
  file->write(&header_size, 8);
  file->write(header.data(), header.size());
  for (const NamedTensor* nt : order) {
    Tensor t = nt->second.to(Device::kCPU).contiguous();
    file->write(t.raw_data(), t.nbytes());
  }
  file->finish();
  return file;
}

bool is_valid_utf8(const std::string& s) {
  try {
    (void)Json(s).dump();
    return true;
  } catch (const Json::type_error&) {
    return false;
  }
}

void check_tensors_to_write(const fs::path& path, const std::vector<NamedTensor>& tensors,
                            const Metadata& metadata) {
  for (const auto& [key, value] : metadata)
    MF_CHECK(is_valid_utf8(key) && is_valid_utf8(value), kInvalidArgument, "cannot write ",
             path.string(), ": metadata entry '", key, "' is not valid UTF-8");
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    MF_CHECK(is_valid_utf8(name), kInvalidArgument, "cannot write ", path.string(),
             ": a tensor name is not valid UTF-8");
    MF_CHECK(!name.empty(), kInvalidArgument, "cannot write ", path.string(),
             ": a tensor has an empty name");
    MF_CHECK(name != "__metadata__", kInvalidArgument, "cannot write ", path.string(),
             ": '__metadata__' is reserved and cannot name a tensor");
    MF_CHECK(seen.insert(name).second, kInvalidArgument, "cannot write ", path.string(),
             ": tensor '", name, "' is given twice");
    MF_CHECK(t.defined(), kInvalidArgument, "cannot write ", path.string(), ": tensor '", name,
             "' is undefined");
  }
}

}  // namespace

void write_safetensors(const fs::path& path, const std::vector<NamedTensor>& tensors,
                       const Metadata& metadata) {
  check_tensors_to_write(path, tensors, metadata);
  std::vector<const NamedTensor*> all;
  for (const auto& nt : tensors) all.push_back(&nt);
  write_uncommitted(path, all, metadata)->commit();
}

namespace {

// huggingface_hub's split: fill shards in order, a new one when the next tensor would overflow the
// current; a tensor over the limit gets a shard of its own at once (the current one continues).
// Returns each shard's tensor indices.
std::vector<std::vector<size_t>> split_shards(const std::vector<TensorSize>& sizes, uint64_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const uint64_t bytes = sizes[i].bytes;
    if (bytes > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + bytes > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += bytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));
  return shards;
}

}  // namespace

std::vector<TensorSize> tensor_sizes(const std::vector<NamedTensor>& tensors) {
  std::vector<TensorSize> sizes;
  for (const auto& [name, t] : tensors)
    sizes.push_back({name, static_cast<uint64_t>(t.nbytes()), static_cast<uint64_t>(t.numel())});
  return sizes;
}

std::vector<fs::path> write_checkpoint_part(const fs::path& folder, const std::vector<std::vector<TensorSize>>& parts,
                                            int rank, const std::vector<NamedTensor>& tensors,
                                            uint64_t max_shard_bytes, const Metadata& metadata) {
  check_tensors_to_write(folder, tensors, metadata);
  MF_CHECK(max_shard_bytes > 0, kInvalidArgument, "cannot write ", folder.string(),
           ": the maximum shard size must be positive");
  MF_ASSERT(rank >= 0 && rank < static_cast<int>(parts.size()));
  const std::vector<TensorSize>& mine = parts[static_cast<size_t>(rank)];
  MF_ASSERT(mine.size() == tensors.size());
  for (size_t i = 0; i < mine.size(); ++i) MF_ASSERT(mine[i].name == tensors[i].first);

  // Every rank's shards, numbered in rank order: the same plan on every rank.
  std::vector<std::vector<std::vector<size_t>>> plan;
  size_t total_shards = 0, first_shard = 0;
  uint64_t total_bytes = 0, total_parameters = 0;
  for (size_t r = 0; r < parts.size(); ++r) {
    // A rank with no tensors writes no shard (a single process always writes one file).
    plan.push_back(parts[r].empty() && parts.size() > 1 ? std::vector<std::vector<size_t>>{}
                                                        : split_shards(parts[r], max_shard_bytes));
    if (static_cast<int>(r) == rank) first_shard = total_shards;
    total_shards += plan.back().size();
    for (const TensorSize& t : parts[r]) {
      total_bytes += t.bytes;
      total_parameters += t.numel;
    }
  }
  auto file_name = [&](size_t shard) -> std::string {
    if (total_shards == 1) return kSafetensorsSingleFile;
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", shard + 1, total_shards);
    return name;
  };

  std::error_code ec;
  fs::create_directories(folder, ec);
  MF_CHECK(!ec, kIo, "cannot create the checkpoint folder ", folder.string(), ": ", ec.message());
  const std::vector<std::vector<size_t>>& own = plan[static_cast<size_t>(rank)];
  std::vector<std::unique_ptr<AtomicFile>> files;
  for (size_t s = 0; s < own.size(); ++s) {
    std::vector<const NamedTensor*> shard;
    for (size_t i : own[s]) shard.push_back(&tensors[i]);
    files.push_back(write_uncommitted(folder / file_name(first_shard + s), shard, metadata));
  }
  // Every shard is complete on disk before any replaces a file of an earlier checkpoint.
  for (auto& f : files) f->commit();

  std::vector<fs::path> all_files;
  Json weight_map = Json::object();
  for (size_t r = 0, shard = 0; r < parts.size(); ++r)
    for (size_t s = 0; s < plan[r].size(); ++s, ++shard) {
      all_files.push_back(folder / file_name(shard));
      for (size_t i : plan[r][s]) weight_map[parts[r][i].name] = file_name(shard);
    }
  if (total_shards > 1) {
    all_files.push_back(folder / kSafetensorsIndexFile);
    if (rank == 0) {
      Json index = {{"metadata", {{"total_parameters", total_parameters}, {"total_size", total_bytes}}},
                    {"weight_map", weight_map}};
      AtomicFile index_file(folder / kSafetensorsIndexFile);
      const std::string text = index.dump(2) + "\n";  // as Transformers writes it (sorted keys)
      index_file.write(text.data(), text.size());
      index_file.commit();
    }
  }
  return all_files;
}

void remove_stale_checkpoint_files(const fs::path& folder, const std::vector<fs::path>& keep) {
  // What an earlier save left that the new checkpoint does not use, or readers would mix them (an
  // old index beside a new model.safetensors, say).
  static const std::regex shard_pattern(R"(model-\d{5}-of-\d{5}\.safetensors)");
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == kSafetensorsSingleFile || name == kSafetensorsIndexFile ||
                      std::regex_match(name, shard_pattern);
    if (ours && std::find(keep.begin(), keep.end(), entry.path()) == keep.end()) stale.push_back(entry.path());
  }
  for (const auto& path : stale) fs::remove(path, ec);
}

std::vector<fs::path> write_sharded_checkpoint(const fs::path& folder, const std::vector<NamedTensor>& tensors,
                                               uint64_t max_shard_bytes, const Metadata& metadata) {
  const std::vector<fs::path> written =
      write_checkpoint_part(folder, {tensor_sizes(tensors)}, 0, tensors, max_shard_bytes, metadata);
  remove_stale_checkpoint_files(folder, written);
  return written;
}

}  // namespace moeforge
