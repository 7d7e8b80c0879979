#include "io/safetensors.h"

#include <signal.h>
#include <sys/resource.h>

#include <cstring>
#include <fstream>
#include <random>

#include "io/json.h"
#include "io_test_util.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::ScratchDir;

constexpr DType kAllDTypes[] = {DType::kF64, DType::kF32,  DType::kBF16, DType::kF16,
                                DType::kF8E4M3, DType::kF8E5M2, DType::kI64, DType::kI32,
                                DType::kI16, DType::kI8,   DType::kU8,   DType::kBool};

// A tensor of random bytes (booleans as 0/1) so that every bit pattern of the dtype round-trips.
Tensor random_tensor(Shape shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  std::mt19937 rng(seed);
  auto* bytes = t.data<uint8_t>();
  for (size_t i = 0; i < t.nbytes(); ++i)
    bytes[i] = static_cast<uint8_t>(dtype == DType::kBool ? rng() & 1 : rng());
  return t;
}

std::string bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes());
}

template <typename F>
Error catch_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no moeforge::Error was thrown";
  return Error(ErrorCode::kInternal, "");
}

Tensor f32s(const std::vector<float>& values, Shape shape) {
  return Tensor::from_vector(values, std::move(shape));
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(Safetensors, RoundTripsEveryDType) {
  ScratchDir dir;
  std::vector<NamedTensor> tensors;
  uint32_t seed = 1;
  for (DType d : kAllDTypes) {
    const std::string name(dtype_safetensors_name(d));
    tensors.emplace_back("t." + name, random_tensor({3, 5}, d, seed++));
    tensors.emplace_back("odd." + name, random_tensor({7}, d, seed++));  // odd sizes test alignment
  }
  tensors.emplace_back("scalar", random_tensor({}, DType::kF32, seed++));
  tensors.emplace_back("empty", random_tensor({0, 4}, DType::kBF16, seed++));
  const auto path = dir / "all.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "\"quoted\" \xc3\xa9"}});

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), (Metadata{{"format", "pt"}, {"note", "\"quoted\" \xc3\xa9"}}));
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const TensorInfo& info = f.info(name);
    EXPECT_EQ(info.dtype, t.dtype());
    EXPECT_EQ(info.shape, t.shape());
    Tensor back = f.get(name);
    EXPECT_EQ(back.dtype(), t.dtype());
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(bytes_of(back), bytes_of(t));
    // Data sorted largest element first after an 8-aligned header: every tensor is a zero-copy view.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data(info)) % t.element_size(), 0u);
    EXPECT_EQ(back.raw_data(), static_cast<const void*>(f.data(info)));
  }
  // Header length is a multiple of 8 (spaces pad it, as the Python library writes).
  std::ifstream in(path, std::ios::binary);
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);
  EXPECT_EQ(header_size % 8, 0u);
}

TEST(Safetensors, WritesNonContiguousViewsAsTheirValues) {
  ScratchDir dir;
  Tensor base = random_tensor({4, 6}, DType::kF32, 7);
  Tensor transposed = base.transpose(0, 1);              // [6, 4], strided
  Tensor sliced = base.slice(1, 1, 4);                   // [4, 3], row stride 6
  Tensor picked = random_tensor({3, 4, 5}, DType::kBF16, 8).select(1, 2);  // [3, 5]
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_FALSE(sliced.is_contiguous());
  ASSERT_FALSE(picked.is_contiguous());
  const auto path = dir / "views.safetensors";
  write_safetensors(path, {{"transposed", transposed}, {"sliced", sliced}, {"picked", picked}});
  SafetensorsFile f = SafetensorsFile::open(path);
  for (const auto& [name, view] : std::vector<NamedTensor>{
           {"transposed", transposed}, {"sliced", sliced}, {"picked", picked}}) {
    Tensor back = f.get(name);
    EXPECT_EQ(back.shape(), view.shape()) << name;
    EXPECT_EQ(back.to_float_vector(), view.to_float_vector()) << name;
  }
}

TEST(Safetensors, TensorsKeepTheMappingAliveAndNeverWriteTheFile) {
  ScratchDir dir;
  const auto path = dir / "w.safetensors";
  Tensor w = f32s({1, 2, 3, 4}, {2, 2});
  write_safetensors(path, {{"w", w}});
  Tensor view;
  {
    SafetensorsFile f = SafetensorsFile::open(path);
    view = f.get("w");
  }
  fs::remove(path);  // the mapping outlives the name
  EXPECT_EQ(view.to_float_vector(), (std::vector<float>{1, 2, 3, 4}));

  write_safetensors(path, {{"w", w}});
  {
    Tensor v = SafetensorsFile::open(path).get("w");
    v.data<float>()[0] = 42;  // copy-on-write: this process only
    EXPECT_EQ(v.item_float(0), 42.0f);
  }
  EXPECT_EQ(SafetensorsFile::open(path).get("w").item_float(0), 1.0f);
}

TEST(Safetensors, ParsesFromMemory) {
  ScratchDir dir;
  const auto path = dir / "m.safetensors";
  write_safetensors(path, {{"a", f32s({5, 6}, {2})}});
  std::ifstream in(path, std::ios::binary);
  auto bytes = std::make_shared<std::string>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  SafetensorsFile f = SafetensorsFile::parse(bytes->data(), bytes->size(), "in-memory", bytes);
  EXPECT_EQ(f.names(), std::vector<std::string>{"a"});
  EXPECT_EQ(f.get("a").to_float_vector(), (std::vector<float>{5, 6}));
  Error e = catch_error([&] { f.get("b"); });
  EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  EXPECT_STREQ(e.what(), "in-memory: no tensor named 'b'");
}

TEST(Safetensors, UnalignedTensorsAreCopied) {
  // Another writer may put an F32 tensor at an odd offset; reading it must not be misaligned.
  std::string header = R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("f":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})";
  std::string file(8, '\0');
  uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header;
  file += '\x07';
  float one = 1.5f;
  file.append(reinterpret_cast<const char*>(&one), 4);
  auto owner = std::make_shared<std::string>(file);
  SafetensorsFile f = SafetensorsFile::parse(owner->data(), owner->size(), "unaligned", owner);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"b", "f"}));  // the order of their data
  Tensor t = f.get("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 4, 0u);
  EXPECT_EQ(t.item_float(0), 1.5f);
}

TEST(Safetensors, UnsupportedButValidDTypeSaysSo) {
  std::string header = R"({"u":{"dtype":"U16","shape":[1],"data_offsets":[0,2]}})";
  std::string file(8, '\0');
  uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header + "xx";
  Error e = catch_error([&] { SafetensorsFile::parse(file.data(), file.size(), "u16.safetensors", nullptr); });
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  EXPECT_TRUE(contains(e.what(), "u16.safetensors: tensor 'u': dtype 'U16' is not supported")) << e.what();
}

std::string file_with_header(const std::string& header, const std::string& data) {
  std::string file(8, '\0');
  uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  return file + header + data;
}

TEST(Safetensors, EmptyTensorWithHugeDimensionsIsRejected) {
  // numel is 0, but the strides of [0, 2^62, 4] overflow int64; moeforge refuses such a shape.
  std::string file = file_with_header(
      R"({"e":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", "");
  Error e = catch_error([&] { SafetensorsFile::parse(file.data(), file.size(), "huge.safetensors", nullptr); });
  EXPECT_EQ(e.code(), ErrorCode::kFormat);
  EXPECT_TRUE(contains(e.what(), "huge.safetensors: tensor 'e': shape is too large")) << e.what();
  // An ordinary empty tensor is fine.
  file = file_with_header(R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]}})", "");
  EXPECT_EQ(SafetensorsFile::parse(file.data(), file.size(), "empty", nullptr).get("e").numel(), 0);
}

TEST(Safetensors, WriterRejectsBadInputBeforeWriting) {
  ScratchDir dir;
  Tensor t = f32s({1}, {1});
  EXPECT_EQ(catch_error([&] { write_safetensors(dir / "x.safetensors", {{"a", t}, {"a", t}}); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(catch_error([&] { write_safetensors(dir / "x.safetensors", {{"__metadata__", t}}); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(catch_error([&] { write_safetensors(dir / "x.safetensors", {{"a", Tensor()}}); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(catch_error([&] { write_safetensors(dir / "x.safetensors", {{"bad\xff", t}}); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(Safetensors, WriteIntoMissingFolderFailsCleanly) {
  ScratchDir dir;
  const auto path = dir / "missing" / "x.safetensors";
  Error e = catch_error([&] { write_safetensors(path, {{"a", f32s({1}, {1})}}); });
  EXPECT_EQ(e.code(), ErrorCode::kIo);
  EXPECT_TRUE(contains(e.what(), path.string())) << e.what();
  EXPECT_TRUE(contains(e.what(), "No such file or directory")) << e.what();
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(Safetensors, WriteIntoReadOnlyFolderFailsCleanly) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
  ScratchDir dir;
  fs::create_directory(dir / "ro");
  fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  Error e = catch_error([&] { write_safetensors(dir / "ro" / "x.safetensors", {{"a", f32s({1}, {1})}}); });
  fs::permissions(dir / "ro", fs::perms::owner_all);
  EXPECT_EQ(e.code(), ErrorCode::kIo);
  EXPECT_TRUE(contains(e.what(), "x.safetensors")) << e.what();
  EXPECT_TRUE(list_dir(dir / "ro").empty());
}

// Makes writes past `bytes` fail with EFBIG (instead of a signal) until destroyed.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  sighandler_t old_handler_;
};

TEST(Safetensors, FailedWriteLeavesNothingBehind) {
  ScratchDir dir;
  const auto path = dir / "big.safetensors";
  Tensor big = Tensor::zeros({4096}, DType::kF32);  // 16 KiB of data
  {
    FileSizeLimit limit(8192);
    Error e = catch_error([&] { write_safetensors(path, {{"big", big}}); });
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_TRUE(contains(e.what(), path.string())) << e.what();
  }
  EXPECT_TRUE(list_dir(dir.path()).empty());

  // A sharded write whose second shard fails keeps neither the first shard nor any temporary.
  const auto folder = dir / "ckpt";
  {
    FileSizeLimit limit(8192);
    Tensor small = Tensor::zeros({16}, DType::kF32);
    EXPECT_THROW(write_sharded_checkpoint(folder, {{"small", small}, {"big", big}}, 1024), Error);
  }
  EXPECT_TRUE(list_dir(folder).empty());
}

TEST(Safetensors, ShardedCheckpointRoundTrip) {
  ScratchDir dir;
  std::vector<NamedTensor> tensors;
  for (int i = 0; i < 5; ++i)
    tensors.emplace_back("model.layers." + std::to_string(i) + ".weight",
                         random_tensor({8, 8}, DType::kBF16, 100 + i));  // 128 bytes each
  tensors.emplace_back("lm_head.weight", random_tensor({40, 8}, DType::kF32, 200));  // 1280 bytes
  tensors.emplace_back("norm.weight", random_tensor({8}, DType::kF32, 201));         // 32 bytes
  const auto folder = dir / "ckpt";
  auto written = write_sharded_checkpoint(folder, tensors, 300);

  // huggingface_hub's split: [l0 l1] [l2 l3] [lm_head, alone: over the limit] [l4 norm]
  const std::vector<std::string> shard_names = {
      "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"};
  std::set<std::string> expected_files(shard_names.begin(), shard_names.end());
  expected_files.insert(kSafetensorsIndexFile);
  EXPECT_EQ(list_dir(folder), expected_files);
  EXPECT_EQ(written.size(), 5u);

  Json index = read_json_file(folder / kSafetensorsIndexFile);
  uint64_t total = 0, params = 0;
  for (const auto& [name, t] : tensors) {
    total += t.nbytes();
    params += t.numel();
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["metadata"]["total_parameters"].get<uint64_t>(), params);
  EXPECT_EQ(index["weight_map"]["model.layers.0.weight"], shard_names[0]);
  EXPECT_EQ(index["weight_map"]["model.layers.1.weight"], shard_names[0]);
  EXPECT_EQ(index["weight_map"]["model.layers.2.weight"], shard_names[1]);
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], shard_names[2]);
  EXPECT_EQ(index["weight_map"]["model.layers.4.weight"], shard_names[3]);
  EXPECT_EQ(index["weight_map"]["norm.weight"], shard_names[3]);

  CheckpointReader reader(folder);
  EXPECT_TRUE(reader.is_sharded());
  reader.validate();
  EXPECT_EQ(reader.tensor_names().size(), tensors.size());
  EXPECT_TRUE(std::is_sorted(reader.tensor_names().begin(), reader.tensor_names().end()));
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(bytes_of(reader.get(name)), bytes_of(t)) << name;
    EXPECT_EQ(reader.info(name).shape, t.shape());
  }
  EXPECT_EQ(SafetensorsFile::open(folder / shard_names[0]).metadata(), (Metadata{{"format", "pt"}}));
  Error e = catch_error([&] { reader.get("model.embed_tokens.weight"); });
  EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  EXPECT_TRUE(contains(e.what(), "'model.embed_tokens.weight'")) << e.what();
  EXPECT_TRUE(contains(e.what(), kSafetensorsIndexFile)) << e.what();

  // Saving again as one file removes the old shards and index.
  write_sharded_checkpoint(folder, tensors, 1 << 20);
  EXPECT_EQ(list_dir(folder), std::set<std::string>{kSafetensorsSingleFile});
  CheckpointReader single(folder);
  EXPECT_FALSE(single.is_sharded());
  for (const auto& [name, t] : tensors) EXPECT_EQ(bytes_of(single.get(name)), bytes_of(t)) << name;

  // And back to shards: the lone model.safetensors goes.
  write_sharded_checkpoint(folder, tensors, 300);
  EXPECT_EQ(list_dir(folder), expected_files);
}

TEST(Safetensors, CheckpointReaderAcceptsASingleFileAndNamesMissingCheckpoints) {
  ScratchDir dir;
  write_safetensors(dir / "w.safetensors", {{"w", f32s({3}, {1})}});
  CheckpointReader reader(dir / "w.safetensors");
  EXPECT_EQ(reader.tensor_names(), std::vector<std::string>{"w"});
  EXPECT_EQ(reader.get("w").item_float(0), 3.0f);

  Error e = catch_error([&] { CheckpointReader r(dir.path()); });
  EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  EXPECT_TRUE(contains(e.what(), dir.path().string())) << e.what();
  EXPECT_TRUE(contains(e.what(), kSafetensorsIndexFile)) << e.what();
  EXPECT_EQ(catch_error([&] { CheckpointReader r(dir / "nothing"); }).code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace moeforge
