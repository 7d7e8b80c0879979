// Hugging Face Transformers is the oracle: `moeforge step` on each fixture of tests/data/golden
// (made by python/oracle/golden_fixtures.py: Qwen3, Qwen3-MoE, OLMoE, Mixtral, Qwen2-MoE,
// DeepSeek-V3, GPT-OSS, Nemotron-H) must
// reproduce the logits (of the positions the attention mask keeps), loss, every gradient and the
// loss after one AdamW step of Transformers 5.17 in float32.
#include <cmath>
#include <set>

#include "io/safetensors.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

class Golden : public ::testing::TestWithParam<std::string> {};

double rel_diff(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-12); }

TEST_P(Golden, StepMatchesTransformers) {
  const fs::path dir = testing::test_data_dir() / "golden" / GetParam();
  SafetensorsFile expected = SafetensorsFile::open(dir / "expected.safetensors");
  const auto& meta = expected.metadata();
  const fs::path out = testing::unique_temp_path("mf_golden_" + GetParam()).concat(".safetensors");
  auto r = testing::run_moeforge({"step", "--model", dir.string(), "--batch",
                                  (dir / "batch.safetensors").string(), "--out", out.string(),
                                  "--lr", meta.at("lr"), "--adam-beta1", meta.at("adam_beta1"),
                                  "--adam-beta2", meta.at("adam_beta2"), "--adam-eps",
                                  meta.at("adam_epsilon"), "--weight-decay", meta.at("weight_decay")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  SafetensorsFile got = SafetensorsFile::open(out);
  SafetensorsFile batch = SafetensorsFile::open(dir / "batch.safetensors");
  const Tensor mask = batch.contains("attention_mask") ? batch.get("attention_mask") : Tensor();

  std::set<std::string> want_names, got_names;
  for (const auto& n : expected.names()) want_names.insert(n);
  for (const auto& n : got.names()) got_names.insert(n);
  EXPECT_EQ(want_names, got_names);

  for (const auto& name : expected.names()) {
    if (!got.contains(name)) continue;
    Tensor want = expected.get(name), have = got.get(name);
    ASSERT_EQ(shape_str(want.shape()), shape_str(have.shape())) << name;
    if (want.dim() == 0) {
      double w = want.item_float(), h = have.item_float();
      EXPECT_LE(rel_diff(h, w), 1e-5) << name << ": moeforge " << h << ", Transformers " << w;
      continue;
    }
    if (name == "logits") {
      have = testing::real_token_logits(have, mask);
      want = testing::real_token_logits(want, mask);
    }
    double err = testing::rel_l2(have, want);
    EXPECT_FALSE(std::isnan(err)) << name;
    EXPECT_LE(err, 1e-4) << name << " relative L2 error";
  }
  fs::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Qwen3, Golden,
                         ::testing::Values("moe_untied_norm", "moe_tied_dense_aux_pad",
                                           "moe_sparse_step_top1", "dense_qwen3", "moe_yarn_rope"));
INSTANTIATE_TEST_SUITE_P(Olmoe, Golden, ::testing::Values("olmoe_qknorm_aux_pad"));
INSTANTIATE_TEST_SUITE_P(Mixtral, Golden, ::testing::Values("mixtral_top2_aux_pad", "mixtral_tied_top3"));
INSTANTIATE_TEST_SUITE_P(Qwen2Moe, Golden,
                         ::testing::Values("qwen2_moe_shared_dense_aux_pad", "qwen2_moe_sparse_step_norm_tied"));
INSTANTIATE_TEST_SUITE_P(DeepseekV3, Golden,
                         ::testing::Values("deepseek_v3_q_lora_yarn_groups", "deepseek_v3_no_q_lora_tied",
                                           "deepseek_v3_fp8_blocks"));
INSTANTIATE_TEST_SUITE_P(GptOss, Golden, ::testing::Values("gpt_oss_sinks_windows_aux_pad", "gpt_oss_mxfp4_tied"));
INSTANTIATE_TEST_SUITE_P(NemotronH, Golden,
                         ::testing::Values("nemotron_h_all_kinds_pad", "nemotron_h_tied_clamped_dt",
                                           "nemotron_h_latent_moe", "nemotron_h_packed_docs"));

}  // namespace
}  // namespace moeforge
