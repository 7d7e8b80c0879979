// DeepSeek-V3's auxiliary-loss-free balancing (CausalLM::update_router_biases), by its definition in
// the DeepSeek-V3 technical report (section 2.1.2; Transformers does not train the bias): each
// expert's bias moves by the rate towards balance, up when the expert took fewer tokens than the
// mean, down when more, not at all when exactly the mean.
#include "core/error.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

std::vector<float> values(const CausalLM& model, const std::string& name) {
  for (const CheckpointTensor& t : model.checkpoint_tensors())
    if (t.name == name) return slice_view(t.slice, model.params().param(t.slice.param)).to_float_vector();
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

TEST(RouterBiasUpdate, MovesEachBiasByTheRateTowardsBalance) {
  // MoE layers 1 and 2 (first_k_dense_replace 1) of 8 experts.
  CausalLM model = CausalLM::from_pretrained(testing::test_data_dir() / "golden" / "deepseek_v3_q_lora_yarn_groups", {});
  ASSERT_TRUE(model.has_router_biases());
  const std::string first = "model.layers.1.mlp.gate.e_score_correction_bias";
  const std::string second = "model.layers.2.mlp.gate.e_score_correction_bias";
  const std::vector<float> before1 = values(model, first), before2 = values(model, second);
  // Layer 1 balanced (no change); layer 2 with mean 34 / 8 = 4.25.
  model.update_router_biases({{3, 3, 3, 3, 3, 3, 3, 3}, {0, 1, 2, 3, 4, 5, 6, 13}}, 0.01);
  EXPECT_EQ(values(model, first), before1);
  const std::vector<float> after2 = values(model, second);
  const float signs[] = {1, 1, 1, 1, 1, -1, -1, -1};
  for (int e = 0; e < 8; ++e) EXPECT_EQ(after2[e], before2[e] + 0.01f * signs[e]) << "expert " << e;
  EXPECT_THROW(model.update_router_biases({{3, 3, 3, 3, 3, 3, 3, 3}}, 0.01), Error);  // one layer's loads
}

// Transformers keeps the bias in float32 whatever the model's dtype (_keep_in_fp32_modules_strict),
// and so does a bf16 model here: in memory, and in the folder it saves in bf16.
TEST(RouterBiasUpdate, TheBiasStaysFloat32InABf16Save) {
  const auto fixture = testing::test_data_dir() / "golden" / "deepseek_v3_q_lora_yarn_groups";
  CausalLM model = CausalLM::from_pretrained(fixture, {});
  const std::string bias = "model.layers.1.mlp.gate.e_score_correction_bias";
  const auto folder = testing::unique_temp_path("mf_router_bias_save");
  model.save_pretrained(folder, DType::kBF16);
  SafetensorsFile saved = SafetensorsFile::open(folder / "model.safetensors");
  EXPECT_EQ(saved.get(bias).dtype(), DType::kF32);
  EXPECT_EQ(saved.get(bias).to_float_vector(), values(model, bias));
  EXPECT_EQ(saved.get("model.layers.1.mlp.gate.weight").dtype(), DType::kBF16);
  std::filesystem::remove_all(folder);
}

TEST(RouterBiasUpdate, SoftmaxRoutersHaveNoBias) {
  CausalLM model = CausalLM::from_pretrained(testing::test_data_dir() / "golden" / "moe_untied_norm", {});
  EXPECT_FALSE(model.has_router_biases());
  EXPECT_THROW(model.update_router_biases({{1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1}}, 0.01), Error);
}

}  // namespace
}  // namespace moeforge
