// moeforge-load-bench: how a large checkpoint loads onto one GPU. Two runs, two processes, so the
// loader's host memory is measured alone:
//
//   moeforge-load-bench write DIR --config bench/configs/qwen3-30b-a3b.json --layers 24 [--shard-gb 4]
//       random bf16 weights saved as a Hugging Face folder in shards of at most --shard-gb GB
//   moeforge-load-bench load DIR [--seq 4096]
//       CausalLM::from_pretrained onto the GPU in bf16, then one forward pass with loss on --seq
//       random tokens; prints one JSON object: checkpoint bytes, load seconds and GB/s, the peak
//       resident host memory of the process (VmHWM), peak device memory, the loss.
// The write leaves the files in the page cache, so the load rate is that of the page cache, not of
// the disk.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arch/model_config.h"
#include "bench_main.h"
#include "core/allocator.h"
#include "core/error.h"
#include "io/json.h"
#include "model/causal_lm.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

// Peak resident set size of this process (/proc/self/status VmHWM), in bytes.
uint64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // "VmHWM:  1234 kB"
  fail(ErrorCode::kIo, "/proc/self/status has no VmHWM line");
}

uint64_t folder_bytes(const fs::path& dir) {
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") total += e.file_size();
  return total;
}

int write(const fs::path& dir, const std::string& config_path, int64_t layers, double shard_gb) {
  Json doc = read_json_file(config_path);
  doc["num_hidden_layers"] = layers;
  doc["torch_dtype"] = "bfloat16";
  const ModelConfig config = parse_model_config(doc, config_path);
  const ModelOptions options{.device = Device::kCUDA, .dtype = DType::kBF16};
  const auto t0 = std::chrono::steady_clock::now();
  CausalLM::from_config(config, options, /*seed=*/1)
      .save_pretrained(dir, DType::kBF16, {}, static_cast<uint64_t>(shard_gb * 1e9));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::ordered_json r;
  r["written_bytes"] = folder_bytes(dir);
  r["write_seconds"] = seconds;
  std::printf("%s\n", r.dump().c_str());
  return 0;
}

int load(const fs::path& dir, int64_t seq) {
  const ModelOptions options{.device = Device::kCUDA, .dtype = DType::kBF16};
  const auto t0 = std::chrono::steady_clock::now();
  CausalLM model = CausalLM::from_pretrained(dir, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t load_rss = peak_rss_bytes();
  const uint64_t bytes = folder_bytes(dir);

  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> token(0, model.config().vocab_size - 1);
  std::vector<int64_t> ids(static_cast<size_t>(seq));
  for (auto& id : ids) id = token(rng);
  Batch batch;
  batch.input_ids = Tensor::from_vector(ids, {1, seq});
  batch.labels = batch.input_ids;
  const double loss = model.forward_backward(batch, /*backward=*/false, /*keep_logits=*/false).loss;

  nlohmann::ordered_json r;
  r["layers"] = model.config().num_hidden_layers;
  r["parameters"] = model.params().numel();
  r["checkpoint_bytes"] = bytes;
  r["load_seconds"] = seconds;
  r["load_gb_per_s"] = static_cast<double>(bytes) / 1e9 / seconds;
  r["peak_rss_bytes_after_load"] = load_rss;
  r["peak_rss_bytes"] = peak_rss_bytes();
  r["peak_device_bytes"] = cuda_memory_stats().peak_in_use;
  r["seq"] = seq;
  r["loss"] = loss;
  std::printf("%s\n", r.dump().c_str());
  return 0;
}

int run(int argc, char** argv) {
  MF_CHECK(argc >= 3, kInvalidArgument, "usage: moeforge-load-bench write|load DIR [options]");
  const std::string mode = argv[1];
  const fs::path dir = argv[2];
  std::string config;
  int64_t layers = 24, seq = 4096;
  double shard_gb = 4;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    MF_CHECK(i + 1 < argc, kInvalidArgument, a, " needs a value");
    const std::string v = argv[++i];
    if (a == "--config") config = v;
    else if (a == "--layers") layers = std::stoll(v);
    else if (a == "--shard-gb") shard_gb = std::stod(v);
    else if (a == "--seq") seq = std::stoll(v);
    else fail(ErrorCode::kInvalidArgument, "unknown argument ", a);
  }
  if (mode == "write") {
    MF_CHECK(!config.empty(), kInvalidArgument, "write needs --config");
    return write(dir, config, layers, shard_gb);
  }
  MF_CHECK(mode == "load", kInvalidArgument, "mode must be write or load, got ", mode);
  return load(dir, seq);
}

}  // namespace
}  // namespace moeforge

int main(int argc, char** argv) { return moeforge::bench_main("moeforge-load-bench", moeforge::run, argc, argv); }
