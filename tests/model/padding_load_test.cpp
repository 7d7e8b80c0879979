// Padding (attention_mask 0) reaches neither the router nor the experts (issue 21): the MoE blocks
// compute the kept tokens alone, so a padded batch's routing holds one row per kept token and its
// expert loads are the kept tokens' choices; and the kept tokens' logits, losses and every gradient
// are those of the same tokens packed into one row without padding (each row a document), which the
// blocks compute with no compaction at all.
#include "io/safetensors.h"
#include "model/batch_inputs.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

Batch fixture_batch(const std::filesystem::path& dir) {
  SafetensorsFile file = SafetensorsFile::open(dir / "batch.safetensors");
  return Batch{.input_ids = file.get("input_ids").to(DType::kI64).clone(),
               .labels = file.get("labels").to(DType::kI64).clone(),
               .attention_mask = file.get("attention_mask").to(DType::kI64).clone()};
}

// The batch's kept tokens as one row: each of its rows a document whose positions restart at 0, so
// every token attends to what it attends to in the padded batch. Its rows must be right-padded.
Batch packed_without_padding(const Batch& padded) {
  const int64_t B = padded.input_ids.size(0), T = padded.input_ids.size(1);
  const int64_t* ids = padded.input_ids.data<int64_t>();
  const int64_t* labels = padded.labels.data<int64_t>();
  const int64_t* mask = padded.attention_mask.data<int64_t>();
  std::vector<int64_t> row_ids, row_labels, positions;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      if (mask[b * T + t] == 0) {
        EXPECT_EQ(labels[b * T + t], -100) << "a padded position's label is trained on";
        continue;
      }
      EXPECT_TRUE(t == 0 || mask[b * T + t - 1] != 0) << "row " << b << " is not right-padded";
      row_ids.push_back(ids[b * T + t]);
      // A document's first label is no target in the padded row; here it would be the last token's of
      // the document before.
      row_labels.push_back(t == 0 ? -100 : labels[b * T + t]);
      positions.push_back(t);
    }
  const int64_t n = static_cast<int64_t>(row_ids.size());
  return Batch{.input_ids = Tensor::from_vector(row_ids, {1, n}), .labels = Tensor::from_vector(row_labels, {1, n}),
               .position_ids = Tensor::from_vector(positions, {1, n})};
}

struct Step {
  StepResult result;
  std::vector<std::vector<float>> grads;  // by parameter
};

Step train_step(CausalLM& model, const Batch& batch) {
  model.params().zero_grads();
  Step s{.result = model.forward_backward(batch, /*backward=*/true, /*keep_logits=*/true)};
  for (size_t i = 0; i < model.params().size(); ++i)
    s.grads.push_back(model.params().grad(static_cast<int>(i)).to(DType::kF32).to_float_vector());
  return s;
}

class PaddingNeverRouted : public ::testing::TestWithParam<const char*> {};

TEST_P(PaddingNeverRouted, RoutesTheKeptTokensAloneAndComputesWhatTheyComputeUnpadded) {
  const auto dir = testing::test_data_dir() / "golden" / GetParam();
  const Batch padded = fixture_batch(dir);
  const std::vector<float> mask = padded.attention_mask.to(DType::kF32).to_float_vector();
  int64_t kept = 0;
  for (float v : mask) kept += v != 0.0f;
  ASSERT_LT(kept, static_cast<int64_t>(mask.size())) << "the fixture has no padding: nothing tested";
  CausalLM model = CausalLM::from_pretrained(dir, ModelOptions{});
  model.routing_hook().record = true;
  const Step with_padding = train_step(model, padded);
  const Step unpadded = train_step(model, packed_without_padding(padded));

  // The routers saw the kept tokens alone, and the experts computed k rows for each of them.
  const int64_t k = model.config().moe->num_experts_per_tok;
  const StepResult& r = with_padding.result;
  ASSERT_FALSE(r.routing.empty());
  ASSERT_EQ(r.expert_load.size(), r.routing.size());
  for (size_t l = 0; l < r.routing.size(); ++l) {
    EXPECT_EQ(r.routing[l].size(0), kept) << "MoE layer " << l;
    std::vector<int64_t> chosen(r.expert_load[l].size(), 0);
    for (int64_t i = 0; i < r.routing[l].numel(); ++i) ++chosen[r.routing[l].data<int32_t>()[i]];
    EXPECT_EQ(r.expert_load[l], chosen) << "MoE layer " << l;
    int64_t rows = 0;
    for (int64_t v : r.expert_load[l]) rows += v;
    EXPECT_EQ(rows, kept * k) << "MoE layer " << l;
    EXPECT_TRUE(r.routing[l].to_float_vector() == unpadded.result.routing[l].to_float_vector()) << "MoE layer " << l;
  }
  EXPECT_EQ(r.expert_load, unpadded.result.expert_load);

  // The same tokens unpadded: the same losses, logits and gradients, up to float32 summation order
  // (a tenth of the tolerance against Transformers).
  EXPECT_NEAR(r.lm_loss, unpadded.result.lm_loss, 1e-6 * std::fabs(unpadded.result.lm_loss));
  EXPECT_NEAR(r.aux_loss, unpadded.result.aux_loss, 1e-6 * std::fabs(unpadded.result.aux_loss));
  EXPECT_LE(testing::rel_l2(testing::real_token_logits(r.logits, padded.attention_mask).to_float_vector(),
                            unpadded.result.logits.to_float_vector()),
            1e-5);
  for (size_t i = 0; i < with_padding.grads.size(); ++i)
    EXPECT_LE(testing::rel_l2(with_padding.grads[i], unpadded.grads[i]), 1e-5)
        << model.params().entry(static_cast<int>(i)).name;

  // Other padded tokens change nothing.
  Batch other = padded;
  other.input_ids = padded.input_ids.clone();
  int64_t* ids = other.input_ids.data<int64_t>();
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i] == 0.0f) ids[i] = (ids[i] + 1) % model.config().vocab_size;
  const Step again = train_step(model, other);
  EXPECT_EQ(again.result.loss, r.loss);
  EXPECT_TRUE(again.grads == with_padding.grads);
}

// Padded queries attend only where a label reads a padded row's prediction (ops/attention.h,
// AttentionMask::padded_queries_attend): otherwise their blocks are dropped from the mask's documents.
TEST(PaddedQueries, AttendOnlyWhereALabelReadsAPaddedRow) {
  const auto dir = testing::test_data_dir() / "golden" / "moe_tied_dense_aux_pad";
  const ModelConfig config = CausalLM::from_pretrained(dir, ModelOptions{}).config();
  Batch batch{.input_ids = Tensor::from_vector(std::vector<int64_t>{5, 6, 7, 8, 0, 0}, {1, 6}),
              .labels = Tensor::from_vector(std::vector<int64_t>{-100, 6, 7, 8, -100, -100}, {1, 6}),
              .attention_mask = Tensor::from_vector(std::vector<int64_t>{1, 1, 1, 1, 0, 0}, {1, 6})};
  EXPECT_FALSE(prepare_batch(batch, config, Device::kCPU, /*backward=*/true).mask.padded_queries_attend);
  EXPECT_FALSE(prepare_batch(batch, config, Device::kCPU, /*backward=*/false).mask.padded_queries_attend);
  // labels[5] is the target of padded row 4.
  batch.labels.data<int64_t>()[5] = 9;
  EXPECT_TRUE(prepare_batch(batch, config, Device::kCPU, /*backward=*/true).mask.padded_queries_attend);

  const std::vector<uint8_t> valid = {1, 1, 1, 1, 0, 0};
  const ops::AttentionDocuments attending = ops::attention_documents(1, 6, nullptr, valid.data(), Device::kCPU);
  const ops::AttentionDocuments idle =
      ops::attention_documents(1, 6, nullptr, valid.data(), Device::kCPU, /*padded_queries_attend=*/false);
  EXPECT_EQ(attending.full.count, 1);
  EXPECT_FALSE(idle.full.table.defined());
  EXPECT_EQ(idle.causal.count, 1);
  EXPECT_FALSE(idle.covers_all_tokens);
}

INSTANTIATE_TEST_SUITE_P(PaddedFixtures, PaddingNeverRouted,
                         ::testing::Values("moe_tied_dense_aux_pad", "qwen2_moe_shared_dense_aux_pad",
                                           "mixtral_top2_aux_pad", "olmoe_qknorm_aux_pad",
                                           "gpt_oss_sinks_windows_aux_pad", "deepseek_v3_q_lora_yarn_groups",
                                           "nemotron_h_all_kinds_pad"));

}  // namespace
}  // namespace moeforge
