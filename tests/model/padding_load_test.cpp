// Padding (attention_mask 0) never counts as load: a step's expert loads are the expert choices of
// the kept tokens alone, k per kept token in every MoE layer (issue 21: the loads counted padding).
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(ExpertLoad, CountsOnlyTheTokensTheAttentionMaskKeeps) {
  const auto dir = testing::test_data_dir() / "golden" / "moe_tied_dense_aux_pad";
  SafetensorsFile file = SafetensorsFile::open(dir / "batch.safetensors");
  Batch batch{.input_ids = file.get("input_ids"), .labels = file.get("labels"),
              .attention_mask = file.get("attention_mask")};
  CausalLM model = CausalLM::from_pretrained(dir, ModelOptions{});
  model.routing_hook().record = true;
  const StepResult r = model.forward_backward(batch, false, false);
  const std::vector<float> mask = batch.attention_mask.to(DType::kF32).to_float_vector();
  int64_t kept = 0;
  for (float v : mask) kept += v != 0.0f;
  ASSERT_LT(kept, static_cast<int64_t>(mask.size())) << "the fixture has no padding: nothing tested";
  ASSERT_EQ(r.expert_load.size(), r.routing.size());
  const int64_t k = model.config().moe->num_experts_per_tok;
  for (size_t l = 0; l < r.routing.size(); ++l) {
    std::vector<int64_t> want(r.expert_load[l].size(), 0);
    const Tensor& choices = r.routing[l];  // [N, k]
    for (int64_t n = 0; n < choices.size(0); ++n)
      for (int64_t j = 0; j < k && mask[n] != 0.0f; ++j) ++want[choices.data<int32_t>()[n * k + j]];
    EXPECT_EQ(r.expert_load[l], want) << "MoE layer " << l;
    int64_t total = 0;
    for (int64_t v : r.expert_load[l]) total += v;
    EXPECT_EQ(total, kept * k) << "MoE layer " << l;
  }
}

}  // namespace
}  // namespace moeforge
