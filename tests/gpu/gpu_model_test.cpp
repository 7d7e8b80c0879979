// The model and the optimizer on CUDA against the float32 references.
//  - Golden fixtures: `moeforge step --device cuda --dtype bfloat16` reusing the float32 CPU run's
//    expert choices (near-ties flip top-k in bf16), against Transformers' float32 goldens and
//    against moeforge's float32 CPU step on the same bf16-rounded weights (see the test for the
//    limits of each; Transformers' own bf16 errors come from python/oracle/bf16_baseline.py, in
//    tests/data/golden/bf16_baseline.json). How often the bf16 run's own top-k agrees with the
//    CPU's is printed ("routing agreement").
//  - AdamW in each precision mode on CUDA against the CPU AdamW (float32) over three steps.
//  - Activation offloading changes no bits of a step.
// Prints "ERR <case>/<tensor> <error>" for every comparison so a run records its measured errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>

#include "core/allocator.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "params/parameter_set.h"
#include "ops/dense.h"
#include "ops/optim.h"
#include "optim/adamw.h"
#include "presummed_copies.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

class GpuGolden : public ::testing::TestWithParam<std::string> {};

// The AdamW flags of the fixture's step (its expected.safetensors metadata).
std::vector<std::string> optimizer_flags(const fs::path& fixture) {
  SafetensorsFile expected = SafetensorsFile::open(fixture / "expected.safetensors");
  const auto& meta = expected.metadata();
  return {"--lr", meta.at("lr"), "--adam-beta1", meta.at("adam_beta1"), "--adam-beta2",
          meta.at("adam_beta2"), "--adam-eps", meta.at("adam_epsilon"), "--weight-decay",
          meta.at("weight_decay")};
}

// `moeforge step` of `model` on `batch` with further flags, written to a temp file whose path is
// returned; its stderr goes to *log.
fs::path run_step(const fs::path& model, const fs::path& batch, const std::vector<std::string>& flags,
                  const std::string& tag, std::string* log = nullptr) {
  const fs::path out = testing::unique_temp_path("mf_gpu_step_" + tag).concat(".safetensors");
  std::vector<std::string> args = {"step", "--model", model.string(), "--batch", batch.string(),
                                   "--out", out.string()};
  args.insert(args.end(), flags.begin(), flags.end());
  auto r = testing::run_moeforge(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (log != nullptr) *log = r.err;
  return out;
}

const std::vector<std::string> kCpuFloat32 = {"--device", "cpu", "--dtype", "float32"};
const std::vector<std::string> kCudaBf16 = {"--device", "cuda", "--dtype", "bfloat16", "--reuse-cpu-routing"};

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Relative error of every tensor of `want` in `have` (scalars: relative difference; logits: at the
// positions the attention mask of `batch` keeps), printed.
std::vector<std::pair<std::string, double>> compare(const fs::path& have_path, const fs::path& want_path,
                                                    const fs::path& batch, const std::string& tag) {
  SafetensorsFile want = SafetensorsFile::open(want_path), have = SafetensorsFile::open(have_path);
  SafetensorsFile inputs = SafetensorsFile::open(batch);
  const Tensor mask = inputs.contains("attention_mask") ? inputs.get("attention_mask") : Tensor();
  std::vector<std::pair<std::string, double>> errors;
  for (const auto& name : want.names()) {
    EXPECT_TRUE(have.contains(name)) << tag << ": " << name;
    if (!have.contains(name)) continue;
    Tensor w = want.get(name), h = have.get(name);
    EXPECT_EQ(shape_str(w.shape()), shape_str(h.shape())) << tag << ": " << name;
    if (name == "logits") {
      w = testing::real_token_logits(w, mask);
      h = testing::real_token_logits(h, mask);
    }
    const double err = w.dim() == 0 ? std::fabs(h.item_float() - w.item_float()) /
                                          std::max<double>(std::fabs(w.item_float()), 1e-12)
                                    : testing::rel_l2(h, w);
    EXPECT_FALSE(std::isnan(err)) << tag << ": " << name;
    errors.emplace_back(name, err);
  }
  return errors;
}

// The fixture's model with every weight rounded to bf16 (kept in float32 files): the weights a
// bf16 run holds, so a float32 run on them isolates the bf16 engine's arithmetic.
fs::path bf16_rounded_copy(const fs::path& fixture, const std::string& tag) {
  const fs::path dir = testing::unique_temp_path("mf_gpu_rounded_" + tag);
  fs::create_directories(dir);
  fs::copy_file(fixture / "config.json", dir / "config.json");
  SafetensorsFile weights = SafetensorsFile::open(fixture / "model.safetensors");
  std::vector<NamedTensor> rounded;
  for (const auto& name : weights.names()) {
    Tensor t = weights.get(name);
    rounded.emplace_back(name, t.dtype() == DType::kF32 ? t.to(DType::kBF16).to(DType::kF32) : t);
  }
  write_safetensors(dir / "model.safetensors", rounded, weights.metadata());
  return dir;
}

// Two references, both float32: Transformers' goldens (the fixture's float32 weights), and
// moeforge's CPU step on the same bf16-rounded weights, which isolates the engine's own bf16
// arithmetic. Limits: each tensor (logits, losses, the loss after the AdamW step, each gradient)
// 2e-2, or 2.5x the error Transformers' own bf16 step makes on that tensor where that is larger
// (the project's rule; Transformers' logits on the GPT-OSS sinks fixture are 0.17 away, its loss
// after the step measured since 2026-12-04). Why not 2e-2 for every gradient, as issue 6 asks:
//  - Rounding the weights to bf16 alone, with exact float32 arithmetic, moves some gradients by
//    more than 2e-2 (moe_sparse_step_top1: 2.45e-2; moe_untied_norm's router: 2.36e-2), and
//    Transformers' bf16 step is up to 9.7e-2 away (tests/data/golden/bf16_baseline.json).
//  - The worst tensors (q/k-norm weights, an expert that gets two tokens, the routers) are sums
//    that nearly cancel on these tiny random models, so bf16 rounding noise anywhere upstream is
//    amplified. Rounding every op's output to bf16 in the CPU backend (an uncommitted experiment,
//    2026-11-28) reproduces the GPU's errors, and skipping the rounding at any single op does not
//    lower the worst one (it moves it, by up to 2x: the error is spread over every op). Folding
//    the routing weights into SwiGLU, the same sum in another order, moved
//    moe_tied_dense_aux_pad's layer-2 k_norm from 2.7e-2 to 3.7e-2 on the GPU and 2.5e-2 to
//    3.4e-2 in that CPU emulation. A limit proportional to a second bf16 implementation's error on
//    the same tensor tracks that noise; a real defect shows as errors of 1e-1 and more.
//  - That error is one sample: Transformers' bf16 step is deterministic on a GPU but differs between
//    GPUs (nemotron_h_all_kinds_pad's layer-0 dt_bias: 1.21e-2 in the baseline, 1.67e-2 on one H100 and
//    1.21e-2 on another, 2026-12-07). python/oracle/bf16_arithmetic.py sets its arithmetic beside ours
//    (ERR_SAME_WEIGHTS).
//  - python/oracle/rounding_sensitivity.py rounds one module's weights at a time (CPU, float32): that
//    dt_bias gradient moves by 0.1% or more for each of 17 modules (the embeddings 1.3%, layer 0's conv
//    1.25% the other way), so no single op's precision sets it.
double error_limit(const Json& transformers_errors, const std::string& tensor) {
  const double theirs = transformers_errors.contains(tensor) ? transformers_errors.at(tensor).get<double>() : 0.0;
  return std::max(2e-2, 2.5 * theirs);
}

TEST_P(GpuGolden, Bf16StepMatchesFloat32References) {
  SKIP_WITHOUT_GPU();
  const fs::path fixture = testing::test_data_dir() / "golden" / GetParam();
  const fs::path batch = fixture / "batch.safetensors";
  const std::vector<std::string> adamw = optimizer_flags(fixture);

  std::string log;
  const fs::path out = run_step(fixture, batch, concat(kCudaBf16, adamw), GetParam(), &log);
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);)
    if (line.find("routing agreement") != std::string::npos)
      std::printf("ROUTING %s: %s\n", GetParam().c_str(), line.c_str());
  const Json baseline = read_json_file(testing::test_data_dir() / "golden" / "bf16_baseline.json");
  const Json& theirs = baseline.at(GetParam()).at("errors");
  for (const auto& [name, err] : compare(out, fixture / "expected.safetensors", batch, GetParam())) {
    const double limit = error_limit(theirs, name);
    std::printf("ERR %s/%s %.3e (limit %.3e; Transformers bf16: %s)\n", GetParam().c_str(), name.c_str(),
                err, limit, theirs.contains(name) ? str_cat(theirs.at(name).get<double>()).c_str() : "-");
    EXPECT_LE(err, limit) << name << " relative error";
  }

  const fs::path rounded = bf16_rounded_copy(fixture, GetParam());
  const fs::path cpu_ref = run_step(rounded, batch, concat(kCpuFloat32, adamw), GetParam() + "_cpu");
  const fs::path cuda_out = run_step(rounded, batch, concat(kCudaBf16, adamw), GetParam() + "_cuda");
  for (const auto& [name, err] : compare(cuda_out, cpu_ref, batch, GetParam() + " (same bf16 weights)")) {
    std::printf("ERR_SAME_WEIGHTS %s/%s %.3e\n", GetParam().c_str(), name.c_str(), err);
    EXPECT_LE(err, error_limit(theirs, name))
        << name << " relative error against float32 on the same bf16 weights";
  }
  for (const fs::path& f : {out, cpu_ref, cuda_out}) fs::remove(f);
  fs::remove_all(rounded);
}

INSTANTIATE_TEST_SUITE_P(Qwen3, GpuGolden,
                         ::testing::Values("moe_untied_norm", "moe_tied_dense_aux_pad",
                                           "moe_sparse_step_top1", "dense_qwen3"));
INSTANTIATE_TEST_SUITE_P(Olmoe, GpuGolden, ::testing::Values("olmoe_qknorm_aux_pad"));
INSTANTIATE_TEST_SUITE_P(Mixtral, GpuGolden, ::testing::Values("mixtral_top2_aux_pad", "mixtral_tied_top3"));
INSTANTIATE_TEST_SUITE_P(Qwen2Moe, GpuGolden,
                         ::testing::Values("qwen2_moe_shared_dense_aux_pad", "qwen2_moe_sparse_step_norm_tied"));
INSTANTIATE_TEST_SUITE_P(DeepseekV3, GpuGolden,
                         ::testing::Values("deepseek_v3_q_lora_yarn_groups", "deepseek_v3_no_q_lora_tied",
                                           "deepseek_v3_fp8_blocks"));
INSTANTIATE_TEST_SUITE_P(GptOss, GpuGolden, ::testing::Values("gpt_oss_sinks_windows_aux_pad", "gpt_oss_mxfp4_tied"));
INSTANTIATE_TEST_SUITE_P(NemotronH, GpuGolden,
                         ::testing::Values("nemotron_h_all_kinds_pad", "nemotron_h_tied_clamped_dt",
                                           "nemotron_h_latent_moe", "nemotron_h_packed_docs"));

// A packed batch as the trainer makes it (position_ids restart at each document; row 1 ends in a
// padded tail whose positions restart too) goes through the variable-length attention on CUDA;
// the reference is the same step in float32 on the CPU with the same bf16-rounded weights.
// Limits: logits and losses 2e-2, gradients 3e-2 (no Transformers baseline for this batch; worst
// measured on Qwen3 1.7e-2, a k_norm).
class GpuPackedBatch : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuPackedBatch, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  const fs::path fixture = testing::test_data_dir() / "golden" / GetParam();
  const int64_t B = 2, T = 24;
  const std::vector<std::vector<int64_t>> documents = {{7, 10, 7}, {12, 8, 4}};  // row 1: 4 padding
  std::vector<int64_t> ids(B * T), positions(B * T), mask(B * T, 1);
  std::mt19937 rng(5);
  // Below 100 as the Qwen3 batch always was, and inside a smaller vocabulary (Nemotron's 97).
  const int64_t vocab = read_json_file(fixture / "config.json").at("vocab_size").get<int64_t>();
  for (int64_t& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(std::min<int64_t>(100, vocab)));
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
  const fs::path rounded = bf16_rounded_copy(fixture, "packed_" + GetParam());
  const fs::path cpu_out = run_step(rounded, batch, kCpuFloat32, "packed_cpu_" + GetParam());
  const fs::path cuda_out = run_step(rounded, batch, kCudaBf16, "packed_cuda_" + GetParam());
  for (const auto& [name, err] : compare(cuda_out, cpu_out, batch, "packed " + GetParam())) {
    std::printf("ERR packed %s/%s %.3e\n", GetParam().c_str(), name.c_str(), err);
    EXPECT_LE(err, name.rfind("grad.", 0) == 0 ? 3e-2 : 2e-2) << name << " relative error";
  }
  for (const fs::path& f : {batch, cpu_out, cuda_out}) fs::remove(f);
  fs::remove_all(rounded);
}

// Not GPT-OSS's fixture: its bf16 gradients are 3-7e-2 from the float32 run here (2026-12-06, with the
// CPU's routing), where Transformers' own bf16 error on its golden is up to 0.19; its GpuGolden runs
// sinks and windows over padding through the same kernels against that baseline. Not Nemotron-H's
// either: its packed documents have a golden of their own (nemotron_h_packed_docs, Transformers running
// a document a row), so GpuGolden holds them to Transformers' bf16 error rather than a fixed limit.
INSTANTIATE_TEST_SUITE_P(Families, GpuPackedBatch, ::testing::Values("moe_untied_norm"));

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
    ps.add("w", {1000, 37}, ParamGroup::kAttention, true, ShardClass::kReplicated);
    ps.add("big", {7, 10001}, ParamGroup::kExperts, true, ShardClass::kExpert);
    ps.add("norm", {37}, ParamGroup::kNorm, false, ShardClass::kReplicated);
    ps.add("frozen", {300}, ParamGroup::kRouter, true, ShardClass::kReplicated);
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
  const std::vector<bool> decay = {true, true, false, true}, trainable = {true, true, true, false};
  const AdamWConfig ac{1e-2, 0.9, 0.95, 1e-8, 0.1};
  AdamW ref(cpu, ac, OptimizerPrecision::kFp32Master, decay, trainable);
  AdamW dut(gpu, ac, GetParam(), decay, trainable);
  const Tensor frozen_before = gpu.param(3).to(Device::kCPU).to(DType::kF32);
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
  // One kind of state (exp_avg, exp_avg_sq, master) over every parameter, as float32 on the host.
  auto all_of = [&](const AdamW& opt, const char* kind) {
    std::vector<float> out;
    for (const auto& e : cpu.entries()) {
      std::vector<float> v = opt.state().at(e.name + "." + kind).to(Device::kCPU).to(DType::kF32).to_float_vector();
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  };
  for (const char* key : {"exp_avg", "exp_avg_sq"}) {
    const double e = testing::rel_l2(all_of(dut, key), all_of(ref, key));
    std::printf("ERR adamw-%s/%s %.3e\n", mode.c_str(), key, e);
    EXPECT_LE(e, 1e-2) << mode << " " << key;
  }
  if (GetParam() == OptimizerPrecision::kFp32Master) {
    std::vector<float> weights;
    for (int i = 0; i < static_cast<int>(cpu.size()); ++i) {
      std::vector<float> v = cpu.param(i).to_float_vector();
      weights.insert(weights.end(), v.begin(), v.end());
    }
    const double e = testing::rel_l2(all_of(dut, "master"), weights);
    std::printf("ERR adamw-%s/master %.3e\n", mode.c_str(), e);
    EXPECT_LE(e, 1e-6);
  }
  EXPECT_EQ(testing::rel_l2(gpu.param(3).to(Device::kCPU).to(DType::kF32), frozen_before), 0.0)
      << "a frozen parameter changed";
  EXPECT_EQ(dut.state_bytes(), (GetParam() == OptimizerPrecision::kFp32Master ? 12 :
                                GetParam() == OptimizerPrecision::kBf16Weights ? 8 : 4) * gpu.numel());
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuAdamW,
                         ::testing::Values(OptimizerPrecision::kFp32Master,
                                           OptimizerPrecision::kBf16Weights,
                                           OptimizerPrecision::kBf16State));

// Gradient sharding on CUDA: each span's gradients, written on the compute stream, are summed on the
// communication stream into this rank's slice while the compute stream goes on. Over copies whose
// gradients are already the sum (presummed), two micro-batches of bf16 gradients through open/close
// step rank 0's slices to the weights and state of an optimizer that keeps the whole buffer, bit for
// bit (the same bf16 additions in the same order), over two steps.
TEST(GpuAdamWSharded, GradientsSummedOnTheCommunicationStreamStepAsTheWholeBuffer) {
  SKIP_WITHOUT_GPU();
  auto declare = [](ParameterSet& ps) {
    ps.add("w", {1000, 37}, ParamGroup::kAttention, true, ShardClass::kReplicated);
    ps.add("norm", {37}, ParamGroup::kNorm, false, ShardClass::kReplicated);
    ps.add("big", {7, 10001}, ParamGroup::kExperts, true, ShardClass::kExpert);
  };
  ParameterSet cpu, whole, sharded;
  for (ParameterSet* ps : {&cpu, &whole, &sharded}) declare(*ps);
  cpu.allocate(Device::kCPU, DType::kF32, DType::kF32);
  whole.allocate(Device::kCUDA, DType::kBF16, DType::kBF16);
  sharded.allocate(Device::kCUDA, DType::kBF16, DType::kBF16);
  std::mt19937 rng(5);
  fill_params(cpu, rng);
  for (ParameterSet* ps : {&whole, &sharded}) {
    Tensor flat = ps->flat_params();
    flat.copy_from(cpu.flat_params().to(DType::kBF16).to(Device::kCUDA));
  }
  const std::vector<bool> decay = {true, false, true}, trainable = {true, true, true};
  const AdamWConfig ac{1e-2, 0.9, 0.95, 1e-8, 0.1};
  testing::PresummedCopies copies(0, 2);
  AdamW reference(whole, ac, OptimizerPrecision::kBf16State, decay, trainable);
  AdamW dut(sharded, ac, OptimizerPrecision::kBf16State, decay, trainable,
            OptimizerSharding{&copies, &copies, nullptr, /*shard_gradients=*/true});
  ASSERT_TRUE(dut.shards_gradients());
  for (int step = 0; step < 2; ++step) {
    reference.zero_grad();
    dut.zero_grad();
    for (int micro = 0; micro < 2; ++micro)
      for (int i = 0; i < 3; ++i) {
        const ParamEntry& e = sharded.entry(i);
        std::normal_distribution<float> g(0.0f, 1e-2f);
        std::vector<float> values(static_cast<size_t>(e.numel()));
        for (float& v : values) v = g(rng);
        const Tensor grads = Tensor::from_vector(values, e.shape).to(DType::kBF16).to(Device::kCUDA);
        ops::add_inplace(whole.mutable_grad(i), grads);
        const FlatSpan span{e.offset, e.offset + e.padded_numel()};
        dut.open(span);
        ops::add_inplace(sharded.mutable_grad(i), grads);
        dut.close(span);
      }
    reference.step(1e-2);
    dut.step(1e-2);
  }
  const std::map<std::string, Tensor> want = reference.state(), have = dut.state();
  for (const auto& [name, range] : dut.owned_ranges()) {
    const int i = name == "w" ? 0 : name == "norm" ? 1 : 2;
    auto elements = [&](const Tensor& t) {
      const std::vector<float> all = t.to(Device::kCPU).to(DType::kF32).to_float_vector();
      return std::vector<float>(all.begin() + range.begin, all.begin() + range.end);
    };
    EXPECT_EQ(elements(sharded.param(i).contiguous().view({sharded.entry(i).numel()})),
              elements(whole.param(i).contiguous().view({whole.entry(i).numel()})))
        << name << " weights";
    for (const char* kind : {".exp_avg", ".exp_avg_sq"}) {
      const std::vector<float> mine = have.at(name + kind).to(Device::kCPU).to(DType::kF32).to_float_vector();
      EXPECT_EQ(mine, elements(want.at(name + kind).contiguous().view({whole.entry(i).numel()}))) << name << kind;
    }
  }
}

// Activation offloading moves layers' activations to page-locked host memory on a stream of its
// own and back before their backward: no bit of the step may change (bf16, both layers offloaded,
// with and without selective recomputation, two steps so the host buffers are reused). A gradient
// two plain runs give bit for bit (float atomics reorder some sums from run to run) must be the
// offloaded runs' bit for bit; the others within 1e-2.
TEST(GpuModel, ActivationOffloadingChangesNoBits) {
  SKIP_WITHOUT_GPU();
  const fs::path fixture = testing::test_data_dir() / "golden" / "moe_untied_norm";
  // 2,048 tokens: the activations pass ActivationOffload::kMinCudaBytes, so they do move.
  const int64_t B = 4, T = 512;
  std::vector<int64_t> ids(B * T);
  std::mt19937 rng(11);
  // Below 100 as the Qwen3 batch always was, and inside a smaller vocabulary (Nemotron's 97).
  const int64_t vocab = read_json_file(fixture / "config.json").at("vocab_size").get<int64_t>();
  for (int64_t& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(std::min<int64_t>(100, vocab)));
  Batch batch;
  batch.input_ids = Tensor::from_vector(ids, {B, T});
  batch.labels = batch.input_ids;
  struct Run {
    std::vector<double> losses;
    std::vector<std::pair<std::string, Tensor>> grads;  // per parameter, on the CPU
  };
  auto run = [&](Recompute policy, int64_t offload_layers) {
    ModelOptions mo;
    mo.device = Device::kCUDA;
    mo.dtype = DType::kBF16;
    mo.recompute = policy;
    mo.activation_offload_layers = offload_layers;
    CausalLM model = CausalLM::from_pretrained(fixture, mo);
    Run r;
    for (int step = 0; step < 2; ++step) r.losses.push_back(model.forward_backward(batch, true, false).loss);
    const Tensor flat = model.params().flat_grads().to(Device::kCPU);
    for (const auto& e : model.params().entries())
      r.grads.emplace_back(e.name, flat.slice(0, e.offset, e.offset + e.numel()).clone());
    return r;
  };
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
  };
  const Run a = run(Recompute::kNone, 0), b = run(Recompute::kNone, 0);
  for (const Recompute policy : {Recompute::kNone, Recompute::kSelective}) {
    const Run offloaded = run(policy, 2);
    if (a.losses == b.losses) {
      EXPECT_EQ(offloaded.losses, a.losses);
    }
    for (size_t i = 0; i < a.losses.size(); ++i) EXPECT_NEAR(offloaded.losses[i], a.losses[i], 1e-5 * a.losses[i]);
    int bitwise = 0;
    for (size_t i = 0; i < a.grads.size(); ++i) {
      const auto& [name, want] = a.grads[i];
      const Tensor& have = offloaded.grads[i].second;
      if (same_bits(want, b.grads[i].second)) {
        ++bitwise;
        EXPECT_TRUE(same_bits(have, want)) << name << " differs with its activations offloaded";
      } else {
        EXPECT_LE(testing::rel_l2(have, want), 1e-2) << name;
      }
    }
    std::printf("OFFLOAD recompute %d: %d of %zu gradients bitwise run to run and offloaded\n",
                static_cast<int>(policy), bitwise, a.grads.size());
    EXPECT_GT(bitwise, 0);
  }
}

// Random weights are drawn on the device (ops::init_normal) with the host's function, in double
// precision and rounded once: a bf16 model made on CUDA holds the bf16 roundings of the float32
// model made on the CPU, bit for bit, adapters included. (Two libm's could differ only where a
// draw lies within a couple of double ulps of a rounding boundary: about 2^-28 of draws.)
TEST(GpuModel, RandomWeightsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  const ModelConfig config = load_model_config(testing::test_data_dir() / "golden" / "moe_untied_norm");
  ModelOptions cpu, cuda;
  cuda.device = Device::kCUDA;
  cuda.dtype = DType::kBF16;
  for (ModelOptions* mo : {&cpu, &cuda}) {
    LoraConfig lora;
    lora.r = 4;
    lora.target_modules = {"q_proj", "v_proj"};
    mo->lora = lora;
  }
  const CausalLM a = CausalLM::from_config(config, cpu, 5), b = CausalLM::from_config(config, cuda, 5);
  const Tensor want = a.params().flat_params().to(DType::kBF16), have = b.params().flat_params().to(Device::kCPU);
  ASSERT_EQ(a.params().size(), b.params().size());
  for (size_t i = 0; i < a.params().size(); ++i) {  // each layout its own offsets (alignment is per dtype)
    const ParamEntry &ea = a.params().entry(static_cast<int>(i)), &eb = b.params().entry(static_cast<int>(i));
    const Tensor x = want.slice(0, ea.offset, ea.offset + ea.numel()), y = have.slice(0, eb.offset, eb.offset + eb.numel());
    EXPECT_EQ(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()), 0) << ea.name;
  }
}

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
