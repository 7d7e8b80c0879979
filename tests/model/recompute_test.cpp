// Activation recomputation reruns the same float32 CPU ops on the same inputs with the forward's
// routing, so every recompute policy must give bit-identical losses and gradients to none. The
// chunked training loss (the head and cross-entropy a few token rows at a time) must equal the
// whole-logits path up to float32 summation order.
#include <cmath>
#include <cstring>
#include <utility>

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
  // {policy, layers recomputed fully, layers offloaded}. Offloading copies activations out and back
  // (host copies on the CPU): the same bits, alone or under any policy, with none, some or every
  // layer offloaded.
  struct Case {
    Recompute policy;
    int64_t full_layers, offload_layers;
  };
  const Case cases[] = {{Recompute::kSelective, 0, 0}, {Recompute::kFull, 0, 0}, {Recompute::kSelective, 1, 0},
                        {Recompute::kNone, 0, 1},      {Recompute::kNone, 0, 64}, {Recompute::kSelective, 0, 64},
                        {Recompute::kFull, 0, 1},      {Recompute::kSelective, 1, 2}};
  for (const auto& [policy, full_layers, offload_layers] : cases) {
    ModelOptions mo;
    mo.recompute = policy;
    mo.recompute_full_layers = full_layers;
    mo.activation_offload_layers = offload_layers;
    CausalLM model = CausalLM::from_pretrained(dir, mo);
    const StepResult have = model.forward_backward(batch, true, false);
    EXPECT_EQ(have.loss, want.loss);
    EXPECT_EQ(have.aux_loss, want.aux_loss);
    EXPECT_EQ(have.expert_load, want.expert_load);
    const Tensor& g = model.params().flat_grads();
    const Tensor& r = reference.params().flat_grads();
    ASSERT_EQ(g.numel(), r.numel());
    EXPECT_EQ(std::memcmp(g.raw_data(), r.raw_data(), g.nbytes()), 0)
        << "gradients differ with recompute policy " << static_cast<int>(policy) << ", " << full_layers
        << " layers fully, " << offload_layers << " offloaded";
  }
}

INSTANTIATE_TEST_SUITE_P(Qwen3, Recomputation,
                         ::testing::Values("moe_untied_norm", "moe_tied_dense_aux_pad", "dense_qwen3"));
INSTANTIATE_TEST_SUITE_P(Olmoe, Recomputation, ::testing::Values("olmoe_qknorm_aux_pad"));
INSTANTIATE_TEST_SUITE_P(Mixtral, Recomputation, ::testing::Values("mixtral_top2_aux_pad"));
INSTANTIATE_TEST_SUITE_P(Qwen2Moe, Recomputation, ::testing::Values("qwen2_moe_shared_dense_aux_pad"));
INSTANTIATE_TEST_SUITE_P(DeepseekV3, Recomputation, ::testing::Values("deepseek_v3_q_lora_yarn_groups"));
INSTANTIATE_TEST_SUITE_P(GptOss, Recomputation, ::testing::Values("gpt_oss_sinks_windows_aux_pad"));
INSTANTIATE_TEST_SUITE_P(NemotronH, Recomputation, ::testing::Values("nemotron_h_all_kinds_pad", "nemotron_h_latent_moe"));

TEST(ChunkedLoss, EqualsTheWholeLogitsPath) {
  for (const char* fixture : {"moe_tied_dense_aux_pad", "moe_sparse_step_top1"}) {
    const auto dir = testing::test_data_dir() / "golden" / fixture;
    const Batch batch = read_batch(dir / "batch.safetensors");
    CausalLM whole = CausalLM::from_pretrained(dir, ModelOptions{});
    // keep_logits: the logits are returned, so the loss runs over all of them at once.
    const StepResult want = whole.forward_backward(batch, true, /*keep_logits=*/true);
    ModelOptions mo;
    mo.loss_chunk_tokens = 3;  // several chunks, the last one short
    CausalLM chunked = CausalLM::from_pretrained(dir, mo);
    const StepResult have = chunked.forward_backward(batch, true, /*keep_logits=*/false);
    EXPECT_NEAR(have.loss, want.loss, 1e-6 * std::abs(want.loss)) << fixture;
    EXPECT_FALSE(have.logits.defined());
    const double err = testing::rel_l2(chunked.params().flat_grads(), whole.params().flat_grads());
    EXPECT_LE(err, 1e-6) << fixture << ": gradients, relative L2";
  }
}

TEST(Recomputation, ParsesPolicyNames) {
  EXPECT_EQ(parse_recompute("none"), Recompute::kNone);
  EXPECT_EQ(parse_recompute("selective"), Recompute::kSelective);
  EXPECT_EQ(parse_recompute("full"), Recompute::kFull);
  EXPECT_THROW(parse_recompute("partial"), Error);
}

}  // namespace
}  // namespace moeforge
