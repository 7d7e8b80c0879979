// Nemotron-H beyond the goldens: packed documents, which Transformers' torch path does not take
// (it carries the Mamba state across the whole row), must each see nothing of the others; and the
// float32 tensors of its bf16 release stay float32 when saved in bf16; LoRA targets PEFT refuses on
// Mamba models are refused.
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "io/safetensors.h"

#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

const std::filesystem::path kFixture = testing::test_data_dir() / "golden" / "nemotron_h_all_kinds_pad";

Batch one_row(const std::vector<int64_t>& ids, const std::vector<int64_t>& labels, const std::vector<int64_t>& positions) {
  const int64_t t = static_cast<int64_t>(ids.size());
  return Batch{.input_ids = Tensor::from_vector(ids, {1, t}),
               .labels = Tensor::from_vector(labels, {1, t}),
               .position_ids = Tensor::from_vector(positions, {1, t})};
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

// Two documents packed in one row (position_ids restart at the second) give each token the logits
// it has with its document alone, and the loss and gradients of the two runs' sums. The label
// across the boundary is -100, so both sides count the same targets.
TEST(NemotronH, PackedDocumentsMatchEachDocumentAlone) {
  const std::vector<int64_t> first = {5, 17, 42, 8, 63, 21, 9}, second = {33, 2, 71, 50, 14};
  std::vector<int64_t> ids = first, positions = iota(7), labels = first;
  ids.insert(ids.end(), second.begin(), second.end());
  const std::vector<int64_t> second_positions = iota(5);
  positions.insert(positions.end(), second_positions.begin(), second_positions.end());
  labels.insert(labels.end(), second.begin(), second.end());
  labels[first.size()] = -100;  // the first document's last token does not predict the second's first
  std::vector<int64_t> second_labels = second;
  second_labels[0] = -100;      // the same target uncounted alone (a first label is never a target anyway)

  CausalLM packed_model = CausalLM::from_pretrained(kFixture, ModelOptions{});
  const StepResult packed = packed_model.forward_backward(one_row(ids, labels, positions), true, true);
  const Tensor packed_grads = packed_model.params().flat_grads().clone();

  std::vector<float> want_logits, want_grads(static_cast<size_t>(packed_grads.numel()), 0.0f);
  double want_loss_sum = 0;
  int64_t want_tokens = 0;
  for (const auto& [doc, doc_labels] : {std::pair{first, first}, std::pair{second, second_labels}}) {
    CausalLM model = CausalLM::from_pretrained(kFixture, ModelOptions{});
    const StepResult alone = model.forward_backward(one_row(doc, doc_labels, iota(doc.size())), true, true);
    const std::vector<float> logits = alone.logits.to_float_vector();
    want_logits.insert(want_logits.end(), logits.begin(), logits.end());
    // Each run's gradients are of its mean loss: scaled back to sums.
    const std::vector<float> grads = model.params().flat_grads().to_float_vector();
    for (size_t i = 0; i < grads.size(); ++i) want_grads[i] += grads[i] * static_cast<float>(alone.num_label_tokens);
    want_loss_sum += alone.loss * static_cast<double>(alone.num_label_tokens);
    want_tokens += alone.num_label_tokens;
  }
  ASSERT_EQ(packed.num_label_tokens, want_tokens);
  EXPECT_NEAR(packed.loss, want_loss_sum / static_cast<double>(want_tokens), 1e-6 * std::fabs(packed.loss));
  EXPECT_LE(testing::rel_l2(packed.logits.to_float_vector(), want_logits), 1e-6);
  std::vector<float> have_grads = packed_grads.to_float_vector();
  for (float& g : have_grads) g *= static_cast<float>(packed.num_label_tokens);
  EXPECT_LE(testing::rel_l2(have_grads, want_grads), 1e-5);
}

// A checkpoint declared bfloat16 that stores A_log, D, the norms and e_score_correction_bias in
// float32 (as NVIDIA's release does): trained in float32 on the CPU and saved in bfloat16, those
// stay float32 with their values, the rest is bfloat16.
TEST(NemotronH, SavesTheReleasesFloat32TensorsInFloat32) {
  namespace fs = std::filesystem;
  const fs::path source = testing::unique_temp_path("mf_nemotron_mixed"), out = testing::unique_temp_path("mf_nemotron_saved");
  fs::create_directories(source);
  std::stringstream config;
  config << std::ifstream(kFixture / "config.json").rdbuf();
  std::string text = config.str();
  const std::string declared = "\"dtype\": \"float32\"";
  ASSERT_NE(text.find(declared), std::string::npos);
  text.replace(text.find(declared), declared.size(), "\"dtype\": \"bfloat16\"");
  std::ofstream(source / "config.json") << text;
  auto kept_f32 = [](const std::string& name) {
    for (const char* suffix : {".A_log", ".D", "norm.weight", "norm_f.weight", ".e_score_correction_bias"})
      if (name.ends_with(suffix)) return true;
    return false;
  };
  const SafetensorsFile fixture = SafetensorsFile::open(kFixture / "model.safetensors");
  std::vector<NamedTensor> mixed;
  for (const std::string& name : fixture.names()) {
    const Tensor t = fixture.get(name);
    mixed.emplace_back(name, kept_f32(name) ? t.clone() : t.to(DType::kBF16));
  }
  write_safetensors(source / "model.safetensors", mixed);

  CausalLM::from_pretrained(source, ModelOptions{}).save_pretrained(out, DType::kBF16, source);
  const SafetensorsFile saved = SafetensorsFile::open(out / "model.safetensors");
  int64_t f32_count = 0;
  for (const auto& [name, want] : mixed) {
    const Tensor have = saved.get(name);
    EXPECT_EQ(have.dtype(), want.dtype()) << name;
    EXPECT_EQ(testing::rel_l2(have, want), 0.0) << name;
    f32_count += kept_f32(name);
  }
  EXPECT_GT(f32_count, 10);
  fs::remove_all(source);
  fs::remove_all(out);
}

// PEFT 0.21 refuses out_proj and conv1d on Mamba models, and so "all-linear", which includes out_proj.
TEST(NemotronH, LoraOnTheMambaOutProjIsRefusedAsPeftRefusesIt) {
  auto refusal = [](LoraConfig lora) {
    ModelOptions options;
    options.lora = lora;
    try {
      CausalLM::from_pretrained(kFixture, options);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
      return std::string(e.what());
    }
    return std::string("(built)");
  };
  const std::string out_proj = refusal(LoraConfig{.target_modules = {"q_proj", "out_proj"}});
  EXPECT_NE(out_proj.find("backbone.layers.0.mixer.out_proj: PEFT 0.21 refuses out_proj and conv1d on Mamba models"),
            std::string::npos)
      << out_proj;
  const std::string all_linear = refusal(LoraConfig{.all_linear = true});
  EXPECT_NE(all_linear.find("\"all-linear\" on nemotron_h includes the Mamba mixers' out_proj"), std::string::npos)
      << all_linear;
}

}  // namespace
}  // namespace moeforge
