// Activation recomputation reruns the same float32 CPU ops on the same inputs with the forward's
// routing, so every recompute policy must give bit-identical losses and gradients to none.
#include <cstring>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

Batch read_batch(const std::filesystem::path& path) {
  SafetensorsFile file = SafetensorsFile::open(path);
  Batch b;
  b.input_ids = file.get("input_ids");
  b.labels = file.contains("labels") ? file.get("labels") : b.input_ids;
  if (file.contains("attention_mask")) b.attention_mask = file.get("attention_mask");
  return b;
}

class Recomputation : public ::testing::TestWithParam<std::string> {};

TEST_P(Recomputation, EqualsKeepingEveryActivation) {
  const auto dir = testing::test_data_dir() / "golden" / GetParam();
  const Batch batch = read_batch(dir / "batch.safetensors");
  CausalLM reference = CausalLM::from_pretrained(dir, ModelOptions{});
  const StepResult want = reference.forward_backward(batch, true, false);
  for (Recompute policy : {Recompute::kSelective, Recompute::kFull}) {
    ModelOptions mo;
    mo.recompute = policy;
    CausalLM model = CausalLM::from_pretrained(dir, mo);
    const StepResult have = model.forward_backward(batch, true, false);
    EXPECT_EQ(have.loss, want.loss);
    EXPECT_EQ(have.aux_loss, want.aux_loss);
    EXPECT_EQ(have.expert_load, want.expert_load);
    const Tensor& g = model.params().flat_grads();
    const Tensor& r = reference.params().flat_grads();
    ASSERT_EQ(g.numel(), r.numel());
    EXPECT_EQ(std::memcmp(g.raw_data(), r.raw_data(), g.nbytes()), 0)
        << "gradients differ with recompute policy " << static_cast<int>(policy);
  }
}

INSTANTIATE_TEST_SUITE_P(Qwen3, Recomputation,
                         ::testing::Values("moe_untied_norm", "moe_tied_dense_aux_pad", "dense_qwen3"));

TEST(Recomputation, ParsesPolicyNames) {
  EXPECT_EQ(parse_recompute("none"), Recompute::kNone);
  EXPECT_EQ(parse_recompute("selective"), Recompute::kSelective);
  EXPECT_EQ(parse_recompute("full"), Recompute::kFull);
  EXPECT_THROW(parse_recompute("partial"), Error);
}

}  // namespace
}  // namespace moeforge
