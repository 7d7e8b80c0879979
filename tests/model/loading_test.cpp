// Loading a checkpoint streams each tensor into its slice of the parameters: the same values as the
// file holds, a filter that loads only some tensors (what an expert-parallel rank does), and
// load_weights into an existing model (what a resume does) leaving nothing of the old weights.
#include <cstring>

#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

const std::filesystem::path& golden_model() {
  static const std::filesystem::path path = testing::test_data_dir() / "golden" / "moe_untied_norm";
  return path;
}

bool bytes_equal(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.shape() == y.shape() && x.dtype() == y.dtype() && std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

bool all_zero(const Tensor& t) {
  const Tensor c = t.contiguous();
  for (int64_t i = 0; i < c.numel(); ++i)
    if (c.data<float>()[i] != 0.0f) return false;
  return true;
}

TEST(Loading, EveryParameterHoldsItsCheckpointTensor) {
  CausalLM model = CausalLM::from_pretrained(golden_model(), {});
  CheckpointReader reader(golden_model());
  ASSERT_EQ(model.checkpoint_tensors().size(), reader.tensor_names().size());
  for (const auto& t : model.checkpoint_tensors())
    EXPECT_TRUE(bytes_equal(slice_view(t.slice, model.params().param(t.slice.param)), reader.get(t.name))) << t.name;
}

TEST(Loading, AFilterLoadsOnlyTheChosenTensors) {
  auto is_expert_1 = [](const std::string& name) { return name.find(".mlp.experts.1.") != std::string::npos; };
  ModelOptions options;
  options.load_filter = [&](const std::string& name) { return !is_expert_1(name); };
  CausalLM model = CausalLM::from_pretrained(golden_model(), options);
  CheckpointReader reader(golden_model());
  int skipped = 0;
  for (const auto& t : model.checkpoint_tensors()) {
    const Tensor have = slice_view(t.slice, model.params().param(t.slice.param));
    if (is_expert_1(t.name)) {
      ++skipped;
      EXPECT_TRUE(all_zero(have)) << t.name;
    } else {
      EXPECT_TRUE(bytes_equal(have, reader.get(t.name))) << t.name;
    }
  }
  EXPECT_GT(skipped, 0);
}

TEST(Loading, LoadWeightsReplacesEveryWeightOfAnExistingModel) {
  const CausalLM loaded = CausalLM::from_pretrained(golden_model(), {});
  CausalLM model = CausalLM::from_config(load_model_config(golden_model()), {}, 11);
  ASSERT_FALSE(bytes_equal(model.params().flat_params(), loaded.params().flat_params()));
  model.load_weights(golden_model());
  EXPECT_TRUE(bytes_equal(model.params().flat_params(), loaded.params().flat_params()));
}

}  // namespace
}  // namespace moeforge
