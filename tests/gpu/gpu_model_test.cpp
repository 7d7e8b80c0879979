// The model and the optimizer on CUDA against the float32 references.
//  - Golden fixtures (Transformers 5.17, float32): `moeforge step --device cuda --dtype bfloat16`
//    reusing the float32 CPU run's expert choices (near-ties flip top-k in bf16) must give logits,
//    loss and the loss after one AdamW step within relative L2 2e-2, and every gradient within
//    2e-2 or within 1.5x the worst error of Transformers' own bf16 step on that fixture (measured by
//    python/oracle/bf16_baseline.py into tests/data/golden/bf16_baseline.json: on these tiny
//    fixtures bf16 storage alone puts Transformers' gradients up to 9.7e-2 from its float32 ones);
//    no NaN. How often the bf16 run's own top-k agrees with the CPU's is printed ("routing agreement").
//  - AdamW in each precision mode on CUDA against the CPU AdamW (float32) over three steps.
// Prints "ERR <case>/<tensor> <error>" for every comparison so a run records its measured errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>

#include "core/allocator.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/parameters.h"
#include "ops/ops.h"
#include "optim/adamw.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

class GpuGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuGolden, Bf16StepMatchesTransformers) {
  SKIP_WITHOUT_GPU();
  const fs::path dir = testing::test_data_dir() / "golden" / GetParam();
  SafetensorsFile expected = SafetensorsFile::open(dir / "expected.safetensors");
  const auto& meta = expected.metadata();
  const fs::path out = testing::unique_temp_path("mf_gpu_golden_" + GetParam()).concat(".safetensors");
  auto r = testing::run_moeforge({"step", "--model", dir.string(), "--batch",
                                  (dir / "batch.safetensors").string(), "--out", out.string(),
                                  "--device", "cuda", "--dtype", "bfloat16", "--reuse-cpu-routing",
                                  "--lr", meta.at("lr"), "--adam-beta1", meta.at("adam_beta1"),
                                  "--adam-beta2", meta.at("adam_beta2"), "--adam-eps",
                                  meta.at("adam_epsilon"), "--weight-decay", meta.at("weight_decay")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.err);
  for (std::string line; std::getline(lines, line);)
    if (line.find("routing agreement") != std::string::npos)
      std::printf("ROUTING %s: %s\n", GetParam().c_str(), line.c_str());
  SafetensorsFile got = SafetensorsFile::open(out);
  const Json baseline = read_json_file(testing::test_data_dir() / "golden" / "bf16_baseline.json");
  const double transformers_worst = baseline.at(GetParam()).at("max_error").get<double>();
  const double grad_limit = std::max(2e-2, 1.5 * transformers_worst);
  std::printf("LIMIT %s: gradients %.3e (Transformers bf16 worst %.3e)\n", GetParam().c_str(), grad_limit,
              transformers_worst);
  for (const auto& name : expected.names()) {
    ASSERT_TRUE(got.contains(name)) << name;
    Tensor want = expected.get(name), have = got.get(name);
    ASSERT_EQ(shape_str(want.shape()), shape_str(have.shape())) << name;
    double err;
    if (want.dim() == 0) {
      const double w = want.item_float(), h = have.item_float();
      err = std::fabs(h - w) / std::max(std::fabs(w), 1e-12);
    } else {
      err = testing::rel_l2(have, want);
    }
    const bool is_grad = name.rfind("grad.", 0) == 0;
    const auto& theirs = baseline.at(GetParam()).at("errors");
    std::printf("ERR %s/%s %.3e (Transformers bf16: %s)\n", GetParam().c_str(), name.c_str(), err,
                theirs.contains(name) ? str_cat(theirs.at(name).get<double>()).c_str() : "-");
    EXPECT_FALSE(std::isnan(err)) << name;
    EXPECT_LE(err, is_grad ? grad_limit : 2e-2) << name << " relative error";
  }
  fs::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Qwen3, GpuGolden,
                         ::testing::Values("moe_untied_norm", "moe_tied_dense_aux_pad",
                                           "moe_sparse_step_top1", "dense_qwen3"));

// A packed batch as the trainer makes it (position_ids restart at each document; row 1 ends in a
// padded tail whose positions restart too) goes through the variable-length attention on CUDA;
// the same step in float32 on the CPU is the reference, held to the limits of the fixture's model.
TEST(GpuModel, PackedBatchMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::string fixture = "moe_untied_norm";
  const fs::path dir = testing::test_data_dir() / "golden" / fixture;
  const int64_t B = 2, T = 24;
  const std::vector<std::vector<int64_t>> documents = {{7, 10, 7}, {12, 8, 4}};  // row 1: 4 padding
  std::vector<int64_t> ids(B * T), positions(B * T), mask(B * T, 1);
  std::mt19937 rng(5);
  for (int64_t& id : ids) id = static_cast<int64_t>(rng() % 100);
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    for (int64_t length : documents[b])
      for (int64_t p = 0; p < length; ++p, ++t) positions[b * T + t] = p;
  }
  for (int64_t t = T - 4; t < T; ++t) mask[T + t] = 0;
  const fs::path batch = testing::unique_temp_path("mf_gpu_packed_batch").concat(".safetensors");
  write_safetensors(batch, {{"input_ids", Tensor::from_vector(ids, {B, T})},
                            {"position_ids", Tensor::from_vector(positions, {B, T})},
                            {"attention_mask", Tensor::from_vector(mask, {B, T})}});
  auto step = [&](const std::vector<std::string>& device_args, const std::string& name) {
    const fs::path out = testing::unique_temp_path("mf_gpu_packed_" + name).concat(".safetensors");
    std::vector<std::string> args = {"step", "--model", dir.string(), "--batch", batch.string(),
                                     "--out", out.string()};
    args.insert(args.end(), device_args.begin(), device_args.end());
    auto r = testing::run_moeforge(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return out;
  };
  const fs::path cpu_out = step({"--device", "cpu", "--dtype", "float32"}, "cpu");
  const fs::path cuda_out =
      step({"--device", "cuda", "--dtype", "bfloat16", "--reuse-cpu-routing"}, "cuda");
  SafetensorsFile want = SafetensorsFile::open(cpu_out), have = SafetensorsFile::open(cuda_out);
  const Json baseline = read_json_file(testing::test_data_dir() / "golden" / "bf16_baseline.json");
  const double grad_limit =
      std::max(2e-2, 1.5 * baseline.at(fixture).at("max_error").get<double>());
  for (const auto& name : want.names()) {
    ASSERT_TRUE(have.contains(name)) << name;
    const Tensor w = want.get(name), h = have.get(name);
    const double err = w.dim() == 0 ? std::fabs(h.item_float() - w.item_float()) /
                                          std::max<double>(std::fabs(w.item_float()), 1e-12)
                                    : testing::rel_l2(h, w);
    std::printf("ERR packed/%s %.3e\n", name.c_str(), err);
    EXPECT_FALSE(std::isnan(err)) << name;
    EXPECT_LE(err, name.rfind("grad.", 0) == 0 ? grad_limit : 2e-2) << name << " relative error";
  }
  for (const fs::path& f : {batch, cpu_out, cuda_out}) fs::remove(f);
}

// Two parameter sets with the same bf16-representable weights: one float32 on the CPU, one in
// `dtype` on CUDA.
void fill_params(ParameterSet& ps, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(ps.numel()), 0.0f);
  for (const auto& e : ps.entries())
    for (int64_t j = e.offset; j < e.offset + e.numel(); ++j) v[j] = dist(rng);
  Tensor host = Tensor::from_vector(v, {ps.numel()}).to(DType::kBF16).to(DType::kF32);
  Tensor dst = ps.flat_params();
  dst.copy_from(host);
}

class GpuAdamW : public ::testing::TestWithParam<OptimizerPrecision> {};

TEST_P(GpuAdamW, MatchesCpuFloat32) {
  SKIP_WITHOUT_GPU();
  auto declare = [](ParameterSet& ps) {
    ps.add("w", {1000, 37}, ParamGroup::kAttention, true);
    ps.add("norm", {37}, ParamGroup::kNorm, false);
    ps.add("frozen", {300}, ParamGroup::kRouter, true);
    ps.add("big", {70001}, ParamGroup::kExperts, true);
  };
  ParameterSet cpu, gpu;
  declare(cpu);
  declare(gpu);
  cpu.allocate(Device::kCPU, DType::kF32, DType::kF32);
  gpu.allocate(Device::kCUDA, DType::kBF16, DType::kBF16);
  std::mt19937 rng(3);
  fill_params(cpu, rng);
  Tensor gpu_flat = gpu.flat_params();
  gpu_flat.copy_from(cpu.flat_params().to(DType::kBF16).to(Device::kCUDA));
  const std::vector<bool> decay = {true, false, true, true}, trainable = {true, true, false, true};
  const AdamWConfig ac{1e-2, 0.9, 0.95, 1e-8, 0.1};
  AdamW ref(cpu, ac, OptimizerPrecision::kFp32Master, decay, trainable);
  AdamW dut(gpu, ac, GetParam(), decay, trainable);
  const Tensor frozen_before = gpu.param(2).to(Device::kCPU).to(DType::kF32);
  for (int step = 0; step < 3; ++step) {
    std::normal_distribution<float> g(0.0f, 1e-2f);
    std::vector<float> grads(static_cast<size_t>(cpu.numel()), 0.0f);
    for (const auto& e : cpu.entries())
      for (int64_t j = e.offset; j < e.offset + e.numel(); ++j) grads[j] = g(rng);
    Tensor gh = Tensor::from_vector(grads, {cpu.numel()}).to(DType::kBF16).to(DType::kF32);
    Tensor cg = cpu.flat_grads(), gg = gpu.flat_grads();
    cg.copy_from(gh);
    gg.copy_from(gh.to(DType::kBF16).to(Device::kCUDA));
    const double want_sq = ops::sum_of_squares(cg), have_sq = ops::sum_of_squares(gg);
    EXPECT_NEAR(have_sq, want_sq, 1e-5 * want_sq) << "sum_of_squares";
    ref.step(1e-2);
    dut.step(1e-2);
  }
  const std::string mode = optimizer_precision_name(GetParam());
  Tensor have = gpu.flat_params().to(Device::kCPU).to(DType::kF32);
  const double err = testing::rel_l2(have, cpu.flat_params());
  std::printf("ERR adamw-%s/params %.3e\n", mode.c_str(), err);
  EXPECT_LE(err, 5e-3) << mode;
  for (const char* key : {"exp_avg", "exp_avg_sq"}) {
    Tensor h = dut.state().at(key).to(Device::kCPU).to(DType::kF32);
    const double e = testing::rel_l2(h, ref.state().at(key));
    std::printf("ERR adamw-%s/%s %.3e\n", mode.c_str(), key, e);
    EXPECT_LE(e, 1e-2) << mode << " " << key;
  }
  if (GetParam() == OptimizerPrecision::kFp32Master) {
    Tensor master = dut.state().at("master").to(Device::kCPU);
    const double e = testing::rel_l2(master, cpu.flat_params());
    std::printf("ERR adamw-%s/master %.3e\n", mode.c_str(), e);
    EXPECT_LE(e, 1e-6);
  }
  EXPECT_EQ(testing::rel_l2(gpu.param(2).to(Device::kCPU).to(DType::kF32), frozen_before), 0.0)
      << "a frozen parameter changed";
  EXPECT_EQ(dut.state_bytes(), (GetParam() == OptimizerPrecision::kFp32Master ? 12 :
                                GetParam() == OptimizerPrecision::kBf16Weights ? 8 : 4) * gpu.numel());
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuAdamW,
                         ::testing::Values(OptimizerPrecision::kFp32Master,
                                           OptimizerPrecision::kBf16Weights,
                                           OptimizerPrecision::kBf16State));

// A CUDA allocation the device cannot hold fails with an error that names what was being
// allocated, the memory in use, and the flags that use less; the allocator stays usable.
TEST(GpuModel, OutOfMemoryErrorNamesAllocationUseAndFlags) {
  SKIP_WITHOUT_GPU();
  const Tensor held = Tensor::empty({1 << 20}, DType::kF32, Device::kCUDA, "held");
  try {
    Tensor huge = Tensor::empty({int64_t{1} << 44}, DType::kU8, Device::kCUDA, "expert activations");
    FAIL() << "a 16 TiB allocation succeeded";
  } catch (const Error& e) {
    const std::string message = e.what();
    std::printf("OOM message: %s\n", message.c_str());
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    for (const char* part : {"CUDA out of memory allocating", "16.00 TiB", "for expert activations",
                             "moeforge holds", "--gradient_checkpointing full",
                             "--per_device_train_batch_size", "--optimizer_precision bf16-state"})
      EXPECT_NE(message.find(part), std::string::npos) << "missing '" << part << "' in: " << message;
  }
  const Tensor after = Tensor::zeros({1024}, DType::kF32, Device::kCUDA);
  EXPECT_EQ(after.to(Device::kCPU).to_float_vector()[0], 0.0f);
}

}  // namespace
}  // namespace moeforge
