// moeforge safetensors: checks a safetensors file or checkpoint folder (every header rule, every
// index entry) and lists its tensors with a SHA-256 of each one's bytes, or re-writes it through
// moeforge's writer. The tests compare both directions against the Python safetensors library.
#include <cstdio>
#include <optional>

#include "command.h"
#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/sha256.h"

namespace moeforge::cli {
namespace {

namespace fs = std::filesystem;

// Transformers' default max_shard_size ("50GB").
constexpr int64_t kDefaultMaxShardBytes = 50'000'000'000;

int run_check(const fs::path& path) {
  CheckpointReader reader(path);
  reader.validate();
  Json tensors = Json::array();
  for (const auto& name : reader.tensor_names()) {
    const TensorInfo info = reader.info(name);
    const Tensor t = reader.get(name);
    tensors.push_back({{"name", name},
                       {"dtype", std::string(dtype_safetensors_name(info.dtype))},
                       {"shape", info.shape},
                       {"shard", reader.shard_of(name).filename().string()},
                       {"sha256", sha256_hex(t.raw_data(), t.nbytes())}});
  }
  Json out = {{"path", path.string()},
              {"sharded", reader.is_sharded()},
              {"metadata", reader.shard(reader.shard_files().front()).metadata()},
              {"tensors", tensors}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

int run_copy(const fs::path& source, const fs::path& out, std::optional<int64_t> max_shard_bytes) {
  CheckpointReader reader(source);
  reader.validate();
  std::vector<NamedTensor> tensors;
  for (const auto& name : reader.tensor_names()) tensors.emplace_back(name, reader.get(name));
  const Metadata metadata = reader.shard(reader.shard_files().front()).metadata();
  if (fs::is_directory(source) || max_shard_bytes) {
    auto files = write_sharded_checkpoint(out, tensors, max_shard_bytes.value_or(kDefaultMaxShardBytes),
                                          metadata);
    std::printf("wrote %zu tensors to %s (%zu files)\n", tensors.size(), out.string().c_str(),
                files.size());
  } else {
    write_safetensors(out, tensors, metadata);
    std::printf("wrote %zu tensors to %s\n", tensors.size(), out.string().c_str());
  }
  return 0;
}

int run(const ParsedOptions& options) {
  const bool checking = options.has("check"), copying = options.has("copy");
  MF_CHECK(checking != copying, kInvalidArgument,
           "moeforge safetensors: give exactly one of --check PATH or --copy PATH --out PATH");
  if (checking) return run_check(options.str("check"));
  MF_CHECK(options.has("out"), kInvalidArgument, "moeforge safetensors: --copy needs --out PATH");
  std::optional<int64_t> max_shard_bytes;
  if (options.has("max_shard_size")) max_shard_bytes = options.integer("max_shard_size");
  return run_copy(options.str("copy"), options.str("out"), max_shard_bytes);
}

CommandSpec spec() {
  return {
      .name = "safetensors",
      .summary = "check a safetensors file or checkpoint, or re-write it",
      .description =
          "--check PATH validates a .safetensors file or a checkpoint folder (model.safetensors, or\n"
          "shards with model.safetensors.index.json) and prints its tensors as JSON: name, dtype,\n"
          "shape, shard and the SHA-256 of the tensor's bytes.\n"
          "--copy SRC --out DST re-writes it with moeforge's writer: a folder (or any source given\n"
          "--max_shard_size) becomes a checkpoint folder, sharded as Transformers shards; a file\n"
          "becomes a file.",
      .options =
          {
              {.name = "check", .type = OptionType::kPath,
               .help = "file or checkpoint folder to validate and list"},
              {.name = "copy", .type = OptionType::kPath, .help = "file or checkpoint folder to re-write"},
              {.name = "out", .type = OptionType::kPath, .help = "where --copy writes"},
              {.name = "max_shard_size", .type = OptionType::kInt,
               .help = "largest shard in bytes when writing a checkpoint folder [default: 50000000000]",
               .range = NumericRange{.min = 1}},
          },
      .run = run,
  };
}

const CommandRegistration registration{spec()};

}  // namespace
}  // namespace moeforge::cli
