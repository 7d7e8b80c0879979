// LoRA on CUDA in bf16 against PEFT's float32 goldens (tests/data/lora, python/oracle/lora_fixtures.py):
// the base model and its adapter loaded in bf16, the float32 CPU run's expert choices reused (near
// ties flip top-k in bf16), two AdamW steps (fp32 master weights for the adapters). Limits: 2e-2
// relative error on logits, losses and every adapter gradient. Prints "ERR <case>/<tensor> <error>"
// for every comparison so a run records its measured errors.
#include <cmath>
#include <cstdio>

#include "core/allocator.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "optim/adamw.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

class GpuLora : public ::testing::TestWithParam<std::string> {};

CausalLM load(const fs::path& dir, Device device, DType dtype) {
  ModelOptions options;
  options.device = device;
  options.dtype = dtype;
  options.lora = LoraConfig::from_json(read_json_file(dir / "adapter" / "adapter_config.json"), "adapter_config.json");
  CausalLM model = CausalLM::from_pretrained(dir, options);
  model.load_adapter(dir / "adapter");
  return model;
}

Batch read_batch(const fs::path& file_path) {
  SafetensorsFile file = SafetensorsFile::open(file_path);
  Batch b;
  b.input_ids = file.get("input_ids").clone();
  b.labels = file.get("labels").clone();
  if (file.contains("attention_mask")) b.attention_mask = file.get("attention_mask").clone();
  return b;
}

void check(const std::string& tag, double err) {
  std::printf("ERR %s %.3e\n", tag.c_str(), err);
  EXPECT_LE(err, 2e-2) << tag;
  EXPECT_FALSE(std::isnan(err)) << tag;
}

double scalar_err(double have, double want) { return std::fabs(have - want) / std::max(std::fabs(want), 1e-12); }

TEST_P(GpuLora, Bf16StepsMatchPeftFloat32) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const fs::path dir = testing::test_data_dir() / "lora" / GetParam();
  SafetensorsFile want = SafetensorsFile::open(dir / "expected.safetensors");
  const auto& meta = want.metadata();
  const Batch batch = read_batch(dir / "batch.safetensors");

  CausalLM reference = load(dir, Device::kCPU, DType::kF32);
  reference.routing_hook().record = true;
  const std::vector<Tensor> routing = reference.forward_backward(batch, false, false).routing;

  CausalLM model = load(dir, Device::kCUDA, DType::kBF16);
  model.routing_hook().reuse = routing;
  ParameterSet& ps = model.params();
  std::vector<bool> trainable(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) trainable[i] = ps.trainable(static_cast<int>(i));
  AdamWConfig ac{std::stod(meta.at("lr")), std::stod(meta.at("adam_beta1")), std::stod(meta.at("adam_beta2")),
                 std::stod(meta.at("adam_epsilon")), std::stod(meta.at("weight_decay"))};
  AdamW opt(ps, ac, OptimizerPrecision::kFp32Master, std::vector<bool>(ps.size(), true), trainable);

  const std::string c = GetParam() + "/";
  StepResult r = model.forward_backward(batch, true, true);
  check(c + "logits", testing::rel_l2(r.logits.to(Device::kCPU).to(DType::kF32), want.get("logits")));
  check(c + "loss", scalar_err(r.loss, want.get("loss").item_float()));
  for (const AdapterTensor& t : model.adapter_tensors())
    check(c + "grad." + t.key, testing::rel_l2(adapter_to_file(t, ps.grad(t.param)), want.get("grad." + t.key)));
  opt.step(ac.lr);
  ps.zero_grads();
  r = model.forward_backward(batch, true, false);
  check(c + "loss_1", scalar_err(r.loss, want.get("loss_1").item_float()));
  for (const AdapterTensor& t : model.adapter_tensors())
    check(c + "grad1." + t.key, testing::rel_l2(adapter_to_file(t, ps.grad(t.param)), want.get("grad1." + t.key)));
  opt.step(ac.lr);
  r = model.forward_backward(batch, false, false);
  check(c + "loss_2", scalar_err(r.loss, want.get("loss_2").item_float()));
}

INSTANTIATE_TEST_SUITE_P(Qwen3Moe, GpuLora,
                         ::testing::Values("lora_attn", "lora_attn_experts", "lora_converted_mlp_names",
                                           "lora_all_linear"));

}  // namespace
}  // namespace moeforge
