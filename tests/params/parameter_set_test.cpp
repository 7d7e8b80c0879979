// Parameters are laid out by sharding class: each class one contiguous span of the flat buffers, in
// declaration order within it; frozen parameters have no gradient and no optimizer state.
#include "core/error.h"
#include "optim/adamw.h"
#include "params/parameter_set.h"
#include "testing.h"

namespace moeforge {
namespace {

// Declared interleaved, as a model declares them layer by layer.
ParameterSet interleaved() {
  ParameterSet set;
  set.add("embed", {10, 4}, ParamGroup::kEmbedding, true, ShardClass::kReplicated);
  set.add("base", {3, 4}, ParamGroup::kAttention, true, ShardClass::kFrozen);
  set.add("experts.0", {2, 8, 4}, ParamGroup::kExperts, true, ShardClass::kExpert);
  set.add("norm", {4}, ParamGroup::kNorm, false, ShardClass::kReplicated);
  set.add("experts.1", {2, 4, 8}, ParamGroup::kExperts, true, ShardClass::kExpert);
  set.allocate(Device::kCPU, DType::kF32, DType::kF32);
  return set;
}

TEST(ParameterSet, EachShardingClassIsOneSpanInDeclarationOrder) {
  const ParameterSet set = interleaved();
  std::vector<int64_t> offsets;
  for (const auto& e : set.entries()) offsets.push_back(e.offset);
  // replicated: embed [0, 40) padded to 64, norm at 64; expert: experts.0 at 128, experts.1 at 192;
  // frozen: base at 256.
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 256, 128, 64, 192}));
  EXPECT_EQ(set.span(ShardClass::kReplicated).begin, 0);
  EXPECT_EQ(set.span(ShardClass::kReplicated).end, 128);
  EXPECT_EQ(set.span(ShardClass::kExpert).begin, 128);
  EXPECT_EQ(set.span(ShardClass::kExpert).end, 256);
  EXPECT_EQ(set.span(ShardClass::kFrozen).begin, 256);
  EXPECT_EQ(set.numel(), 320);
  EXPECT_EQ(set.trainable_numel(), 256);
  EXPECT_EQ(set.flat_grads().numel(), 256);
  EXPECT_FALSE(set.grad(1).defined());
  EXPECT_EQ(shape_str(set.grad(2).shape()), "[2, 8, 4]");
  // Views into the flat buffer at their offsets.
  EXPECT_EQ(set.param(2).raw_data(), static_cast<const float*>(set.flat_params().raw_data()) + 128);
}

// DeepSeek's e_score_correction_bias stays float32 in a bf16 model, as Transformers keeps it.
TEST(ParameterSet, AFrozenParameterKeptInFloat32LivesInItsOwnBuffer) {
  ParameterSet set;
  set.add("embed", {10, 4}, ParamGroup::kEmbedding, true, ShardClass::kReplicated);
  const int bias = set.add("bias", {8}, ParamGroup::kRouter, false, ShardClass::kFrozen);
  set.add("norm", {4}, ParamGroup::kNorm, false, ShardClass::kFrozen);
  set.keep_in_fp32(bias);
  set.allocate(Device::kCPU, DType::kBF16, DType::kBF16);
  EXPECT_EQ(set.param(bias).dtype(), DType::kF32);
  EXPECT_EQ(set.param(2).dtype(), DType::kBF16);
  EXPECT_EQ(set.numel(), 128);  // embed and norm, each padded to 64
  EXPECT_EQ(set.span(ShardClass::kFrozen).size(), 64);
  ASSERT_TRUE(set.flat_fp32_params().defined());
  EXPECT_EQ(set.flat_fp32_params().numel(), 64);
  EXPECT_EQ(set.param(bias).raw_data(), set.flat_fp32_params().raw_data());
  // LoRA freezes every base parameter again; the bias stays where it is.
  ParameterSet lora;
  const int b = lora.add("bias", {8}, ParamGroup::kRouter, false, ShardClass::kFrozen);
  lora.keep_in_fp32(b);
  lora.set_shard_class(b, ShardClass::kFrozen);
  lora.allocate(Device::kCPU, DType::kBF16, DType::kBF16);
  EXPECT_EQ(lora.param(b).dtype(), DType::kF32);
}

TEST(ParameterSet, AnExpertParameterNeedsAnExpertDimension) {
  ParameterSet set;
  EXPECT_THROW(set.add("scalar", {}, ParamGroup::kExperts, true, ShardClass::kExpert), Error);
}

TEST(ParameterSet, FrozenParametersHaveNoOptimizerState) {
  ParameterSet set = interleaved();
  const std::vector<bool> decay(set.size(), true);
  std::vector<bool> trainable(set.size(), true);
  EXPECT_THROW(AdamW(set, {}, OptimizerPrecision::kFp32Master, decay, trainable), Error);
  trainable[1] = false;
  AdamW optimizer(set, {}, OptimizerPrecision::kFp32Master, decay, trainable);
  EXPECT_EQ(optimizer.state_bytes(), 2 * 256 * 4);
  for (const auto& [key, tensor] : optimizer.state(/*with_weights=*/true))
    EXPECT_NE(key.rfind("base.", 0), 0u) << key;
  // A step leaves the frozen weights alone.
  Tensor base = set.param(1);
  base.fill_zero();
  Tensor grads = set.flat_grads();
  for (int64_t i = 0; i < grads.numel(); ++i) grads.data<float>()[i] = 1.0f;
  optimizer.step(0.1);
  for (float v : set.param(1).to_float_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_NE(set.param(0).to_float_vector()[0], 0.0f);
}

// Every stored gradient filled with `value`, through the flat buffer.
void fill_grads(const ParameterSet& set, float value) {
  Tensor grads = set.flat_grads();
  for (int64_t i = 0; i < grads.numel(); ++i) grads.data<float>()[i] = value;
}

// zero_grads() leaves the memory as it is; each gradient reads zero until something writes it.
TEST(ParameterSet, ZeroedGradientsReadZeroWhateverTheirMemoryHeld) {
  ParameterSet set = interleaved();
  fill_grads(set, 7.0f);
  set.zero_grads();
  for (float v : set.flat_grads().to_float_vector()) EXPECT_EQ(v, 0.0f);
  fill_grads(set, 7.0f);
  set.zero_grads();
  for (int i : {0, 2, 3, 4})
    for (float v : set.grad(i).to_float_vector()) EXPECT_EQ(v, 0.0f) << set.entry(i).name;
  fill_grads(set, 7.0f);
  set.zero_grads();
  for (float v : set.mutable_grad(3).to_float_vector()) EXPECT_EQ(v, 0.0f);  // an op adds to zero
}

// The first op of a step that writes a gradient whole is told not to read it (beta 0); later ones add.
TEST(ParameterSet, TheFirstWholeWriteOfAStepOverwrites) {
  ParameterSet set = interleaved();
  fill_grads(set, 7.0f);
  set.zero_grads();
  float beta = -1.0f;
  Tensor& experts = set.grad_to_write(2, beta);
  EXPECT_EQ(beta, 0.0f);
  for (int64_t i = 0; i < experts.numel(); ++i) experts.data<float>()[i] = 3.0f;  // the op's write
  set.grad_to_write(2, beta);
  EXPECT_EQ(beta, 1.0f);
  // Reading one gradient zeroes no other; the written one keeps its values.
  for (float v : set.grad(4).to_float_vector()) EXPECT_EQ(v, 0.0f);
  for (float v : set.grad(2).to_float_vector()) EXPECT_EQ(v, 3.0f);
  const std::vector<float> flat = set.flat_grads().to_float_vector();
  for (int i : {0, 2, 3, 4}) {
    const ParamEntry& e = set.entry(i);
    for (int64_t j = e.offset; j < e.offset + e.numel(); ++j) EXPECT_EQ(flat[j], i == 2 ? 3.0f : 0.0f) << e.name;
  }
  // A gradient read (or added to) first is zero, and written from then on.
  fill_grads(set, 7.0f);
  set.zero_grads();
  set.mutable_grad(4);
  set.grad_to_write(4, beta);
  EXPECT_EQ(beta, 1.0f);
}

}  // namespace
}  // namespace moeforge
