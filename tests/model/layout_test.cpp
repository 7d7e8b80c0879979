// Every trainable family's weight map binds each checkpoint tensor to a parameter slice of its
// shape, and the real Qwen3-30B-A3B, DeepSeek-V3 and GPT-OSS-20B config.json build the right
// parameters without allocating.
#include <map>

#include "arch/architecture.h"
#include "arch/weight_map.h"
#include "model/blocks/mla_attention.h"
#include "model/causal_lm.h"
#include "model/rope.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(Layout, Qwen3_30B_A3B_WithoutAllocating) {
  const auto path = testing::test_data_dir() / "configs" / "qwen3-30b-a3b" / "config.json";
  ModelConfig config = load_model_config(path);
  const size_t before = cpu_memory_stats().in_use;
  const ModelDescription d = describe_model(config);
  EXPECT_EQ(cpu_memory_stats().in_use, before);  // nothing allocated
  ASSERT_TRUE(d.trainable());

  std::map<std::string, Shape> bound;
  for (const CheckpointTensor& t : d.tensors)
    bound[t.name] = slice_shape(t.slice, d.weights.params.entry(t.slice.param).shape);
  std::map<std::string, Shape> want;
  for (const auto& t : checkpoint_tensors(config)) want[t.name] = t.shape;
  EXPECT_TRUE(bound == want) << "a checkpoint tensor is bound to a slice of another shape";
  EXPECT_EQ(d.weights.params.numel(), count_parameters(config).total);
  EXPECT_EQ(d.weights.params.numel(), 30532122624);  // Transformers 5.17 num_parameters() (tests/data/configs/param_counts.json)
  EXPECT_EQ(bound.at("model.layers.47.mlp.experts.127.down_proj.weight"), (Shape{2048, 768}));
  EXPECT_EQ(d.weights.layers.size(), 48u);
}

// Each checkpoint tensor is a distinct slice: no two tensors share a parameter's elements, and every
// element of every parameter belongs to exactly one tensor (so load fills, and save writes, all).
TEST(Layout, EveryParameterElementIsExactlyOneCheckpointTensor) {
  for (const char* name : {"qwen3-30b-a3b", "qwen3-8b", "tiny-qwen3-moe-tied", "tiny-olmoe", "mixtral-8x7b", "tiny-mixtral",
                           "tiny-qwen2-moe", "deepseek-v3", "tiny-deepseek-v3-no-q-lora", "gpt-oss-20b",
                           "gpt-oss-120b", "tiny-gpt-oss"}) {
    const auto path = testing::test_data_dir() / "configs" / name / "config.json";
    SCOPED_TRACE(name);
    const ModelDescription d = describe_model(load_model_config(path));
    ASSERT_TRUE(d.trainable());
    std::vector<int64_t> covered(d.weights.params.size(), 0);
    for (const CheckpointTensor& t : d.tensors)
      if (t.in_model()) covered[t.slice.param] += shape_numel(t.shape);
    for (size_t i = 0; i < covered.size(); ++i)
      EXPECT_EQ(covered[i], d.weights.params.entry(static_cast<int>(i)).numel()) << d.weights.params.entry(static_cast<int>(i)).name;
  }
}

// DeepSeek-V3 as Transformers 5.17 builds it: its parameters plus one e_score_correction_bias buffer
// per MoE layer (a frozen parameter here, no gradient), the MTP layer listed but bound to nothing.
TEST(Layout, DeepseekV3WithoutAllocating) {
  const ModelConfig config = load_model_config(testing::test_data_dir() / "configs" / "deepseek-v3" / "config.json");
  const ModelDescription d = describe_model(config);
  ASSERT_TRUE(d.trainable());
  const ParamCounts counts = count_parameters(config);
  const int64_t model_buffers = 58 * 256;  // the MoE layers' biases; the MTP layer has one more
  EXPECT_EQ(counts.buffers, model_buffers + 256);
  EXPECT_EQ(d.weights.params.numel(), counts.total + model_buffers);
  int64_t frozen = 0, mtp = 0;
  for (const ParamEntry& e : d.weights.params.entries()) frozen += e.shard_class == ShardClass::kFrozen ? e.numel() : 0;
  for (const CheckpointTensor& t : d.tensors) {
    mtp += t.mtp;
    EXPECT_EQ(t.slice.param >= 0, t.in_model()) << t.name;
  }
  EXPECT_EQ(frozen, model_buffers);
  EXPECT_GT(mtp, 0);
  ASSERT_EQ(d.weights.layers.size(), 61u);
  EXPECT_FALSE(d.weights.layers[2].is_moe());
  EXPECT_TRUE(d.weights.layers[3].is_moe());
  EXPECT_TRUE(d.weights.layers[3].mla.on());
  EXPECT_GE(d.weights.layers[3].mla.q_a.weight, 0);
  EXPECT_EQ(d.weights.layers[3].mla.q.weight, -1);
}

// The real config's rotary table and softmax scale, as Transformers 5.17 computes them
// (DeepseekV3RotaryEmbedding(config).inv_freq / .attention_scaling and yarn_apply_mscale).
TEST(Layout, DeepseekV3YarnRopeAndSoftmaxScale) {
  const ModelConfig config = load_model_config(testing::test_data_dir() / "configs" / "deepseek-v3" / "config.json");
  const RotaryTable table = make_rotary_table(*config.rope, config.attention.head_dim);
  ASSERT_EQ(table.inv_freq.numel(), 32);
  EXPECT_EQ(table.attention_scaling, 1.0f);
  const float* inv = table.inv_freq.data<float>();
  const std::map<int, float> want = {{0, 1.0f}, {5, 0.23713736236095428f}, {10, 0.05623412877321243f},
                                     {15, 0.0083345090970397f}, {20, 0.0007905694073997438f},
                                     {31, 3.3338035336782923e-06f}};
  for (const auto& [i, v] : want) EXPECT_FLOAT_EQ(inv[i], v) << "inv_freq[" << i << "]";
  EXPECT_FLOAT_EQ(mla_softmax_scale(config), 0.1352337788608801f);
}

// GPT-OSS-20B as Transformers 5.17 builds it (num_parameters() 20,914,757,184 in
// tests/data/configs/param_counts.json), its layers alternating sliding (window 128) and full,
// without allocating; its YaRN table (factor 32, not truncated) as GptOssRotaryEmbedding(config)
// computes inv_freq and attention_scaling.
TEST(Layout, GptOss20bWithoutAllocatingAndItsYarnRope) {
  const ModelConfig config = load_model_config(testing::test_data_dir() / "configs" / "gpt-oss-20b" / "config.json");
  const size_t before = cpu_memory_stats().in_use;
  const ModelDescription d = describe_model(config);
  EXPECT_EQ(cpu_memory_stats().in_use, before);
  ASSERT_TRUE(d.trainable());
  int64_t declared = 0;  // params.numel() also counts the padding that aligns each parameter
  for (const ParamEntry& e : d.weights.params.entries()) declared += e.numel();
  EXPECT_EQ(declared, 20914757184);
  ASSERT_EQ(d.weights.layers.size(), 24u);
  EXPECT_GE(d.weights.layers[0].attention.sinks, 0);
  EXPECT_GE(d.weights.layers[0].moe.router_bias, 0);
  EXPECT_GE(d.weights.layers[0].moe.experts.down_bias, 0);
  EXPECT_EQ(config.layers[0].window, AttentionWindow::kSliding);
  EXPECT_EQ(config.layers[1].window, AttentionWindow::kFull);

  const RotaryTable table = make_rotary_table(*config.rope, config.attention.head_dim);
  ASSERT_EQ(table.inv_freq.numel(), 32);
  EXPECT_FLOAT_EQ(table.attention_scaling, 1.3465735902799727f);
  const float* inv = table.inv_freq.data<float>();
  const std::map<int, float> want = {{0, 1.0f}, {5, 0.15532298386096954f}, {10, 0.019334999844431877f},
                                     {15, 0.00105260219424963f}, {20, 1.818833698052913e-05f},
                                     {31, 3.023511396804679e-07f}};
  for (const auto& [i, v] : want) EXPECT_FLOAT_EQ(inv[i], v) << "inv_freq[" << i << "]";
}

// Attention FLOPs per token grow with the sequence by 3 x layers x heads x (query/key + value head
// sizes): for latent attention qk_nope + qk_rope (8 + 6) and v_head_dim (12), not head_dim (6).
TEST(Layout, TrainingFlopsCountLatentAttentionHeadSizes) {
  const CausalLM model =
      CausalLM::from_pretrained(testing::test_data_dir() / "golden" / "deepseek_v3_no_q_lora_tied", {});
  EXPECT_DOUBLE_EQ(training_flops_per_token(model, 2) - training_flops_per_token(model, 1), 3.0 * 2 * 4 * (14 + 12));
}

// Nemotron-H (pattern ME*-ME): attention FLOPs grow with the sequence on its one attention layer
// only (4 heads of 8); its two Mamba layers add 3 x 4 x heads x head_dim x state (4 x 6 x 8) each.
TEST(Layout, TrainingFlopsCountNemotronHAttentionAndScanLayers) {
  const CausalLM model = CausalLM::from_pretrained(testing::test_data_dir() / "golden" / "nemotron_h_all_kinds_pad", {});
  EXPECT_DOUBLE_EQ(training_flops_per_token(model, 2) - training_flops_per_token(model, 1), 3.0 * 1 * 4 * (8 + 8));
  double matrix_params = 0;
  for (const auto& e : model.params().entries()) {
    if (e.group == ParamGroup::kEmbedding || e.group == ParamGroup::kNorm) continue;
    matrix_params += static_cast<double>(e.numel()) * (e.group == ParamGroup::kExperts ? 2.0 / 6.0 : 1.0);
  }
  EXPECT_DOUBLE_EQ(training_flops_per_token(model, 1) - 6 * matrix_params - 3.0 * 4 * (8 + 8), 2 * 3.0 * 4 * (4 * 6 * 8));
}

}  // namespace
}  // namespace moeforge
