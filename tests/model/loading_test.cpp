// Loading a checkpoint streams each tensor into its slice of the parameters: the same values as the
// file holds (in the parameters' layout where the checkpoint's differs), an expert-parallel rank
// holding and loading its own experts only, and load_weights into an existing model (what a
// resume does) leaving nothing of the old weights.
#include <algorithm>
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

// A rank of a group that loading never asks to communicate.
class SilentGroup final : public ProcessGroup {
 public:
  SilentGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(Tensor&) override { unexpected(); }
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>&) override { unexpected(); }
  Tensor all_to_all_rows(const Tensor&, const std::vector<int64_t>&, const std::vector<int64_t>&) override { unexpected(); }
  Tensor all_gather_rows(const Tensor&, const std::vector<int64_t>&) override { unexpected(); }
  void reduce_scatter_sum(Tensor&, const std::vector<int64_t>&) override { unexpected(); }
  void all_gather_parts(Tensor&, const std::vector<int64_t>&) override { unexpected(); }
  std::shared_ptr<ProcessGroup> split(int, int) override { unexpected(); }
  void barrier() override { unexpected(); }
  [[noreturn]] void abort(int) override { unexpected(); }

 private:
  [[noreturn]] static void unexpected() { fail(ErrorCode::kInternal, "loading communicated"); }
  int rank_, size_;
};

TEST(Loading, EveryParameterHoldsItsCheckpointTensor) {
  CausalLM model = CausalLM::from_pretrained(golden_model(), {});
  CheckpointReader reader(golden_model());
  ASSERT_EQ(model.checkpoint_tensors().size(), reader.tensor_names().size());
  for (const auto& t : model.checkpoint_tensors())
    EXPECT_TRUE(bytes_equal(slice_view(t.slice, model.params().param(t.slice.param)), reader.get(t.name))) << t.name;
}

// A rank holding half the experts computes, on average, the expert rows of its own tokens: its
// training FLOPs per token are one process's (the benchmark's and the trainer's TFLOP/s).
TEST(Loading, AnExpertParallelRankCountsTheFlopsOfItsTokens) {
  ModelOptions options;
  options.expert_group = std::make_shared<SilentGroup>(1, 2);
  const CausalLM rank = CausalLM::from_pretrained(golden_model(), options);
  const CausalLM whole = CausalLM::from_pretrained(golden_model(), {});
  EXPECT_DOUBLE_EQ(training_flops_per_token(rank, 16), training_flops_per_token(whole, 16));
}

TEST(Loading, AnExpertParallelRankHoldsAndLoadsItsExpertsOnly) {
  // 6 experts over 2 ranks: rank 1 holds experts 3, 4 and 5, as its experts 0, 1 and 2.
  ModelOptions options;
  options.expert_group = std::make_shared<SilentGroup>(1, 2);
  CausalLM model = CausalLM::from_pretrained(golden_model(), options);
  for (const auto& e : model.params().entries()) {
    if (e.shard_class == ShardClass::kExpert) {
      EXPECT_EQ(e.shape[0], 3) << e.name;
    }
  }
  CheckpointReader reader(golden_model());
  int remote = 0, held_experts = 0;
  for (const auto& t : model.checkpoint_tensors()) {
    const bool first_half = t.expert >= 0 && t.expert < 3;
    EXPECT_EQ(t.remote, first_half) << t.name;
    if (t.remote) {
      ++remote;
      continue;
    }
    if (t.expert >= 0) {
      ++held_experts;
      EXPECT_EQ(t.slice.expert, t.expert - 3) << t.name;
    }
    EXPECT_TRUE(bytes_equal(slice_view(t.slice, model.params().param(t.slice.param)), reader.get(t.name))) << t.name;
  }
  EXPECT_GT(remote, 0);
  EXPECT_EQ(held_experts, remote);
}

TEST(Loading, LoadWeightsReplacesEveryWeightOfAnExistingModel) {
  const CausalLM loaded = CausalLM::from_pretrained(golden_model(), {});
  CausalLM model = CausalLM::from_config(load_model_config(golden_model()), {}, 11);
  ASSERT_FALSE(bytes_equal(model.params().flat_params(), loaded.params().flat_params()));
  model.load_weights(golden_model());
  EXPECT_TRUE(bytes_equal(model.params().flat_params(), loaded.params().flat_params()));
}

// A DeepSeek-V3 checkpoint with its multi-token-prediction layer (DeepSeek's release has one, model
// saved by Transformers has none): loading ignores it, as Transformers does, and save_pretrained
// carries it over from the source folder unchanged.
TEST(Loading, MtpLayersAreSkippedAndCarriedThroughSaving) {
  namespace fs = std::filesystem;
  const fs::path golden = testing::test_data_dir() / "golden" / "deepseek_v3_q_lora_yarn_groups";
  const fs::path dir = testing::unique_temp_path("mf_mtp_source"), out = testing::unique_temp_path("mf_mtp_saved");
  fs::remove_all(dir);
  fs::remove_all(out);
  fs::create_directories(dir);
  fs::copy_file(golden / "config.json", dir / "config.json");
  const ModelConfig config = load_model_config(dir);
  ASSERT_EQ(config.num_mtp_layers, 1);
  std::vector<NamedTensor> tensors;
  {
    SafetensorsFile f = SafetensorsFile::open(golden / "model.safetensors");
    for (const auto& n : f.names()) tensors.emplace_back(n, f.get(n).clone());
  }
  std::vector<NamedTensor> mtp;
  for (const CheckpointTensor& t : checkpoint_tensors(config)) {
    if (t.in_model()) continue;
    std::vector<float> values(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 17) * 0.01f - 0.08f;
    mtp.emplace_back(t.name, Tensor::from_vector(values, t.shape));
  }
  ASSERT_FALSE(mtp.empty());
  tensors.insert(tensors.end(), mtp.begin(), mtp.end());
  write_safetensors(dir / "model.safetensors", tensors);

  const CausalLM model = CausalLM::from_pretrained(dir, {});
  EXPECT_TRUE(bytes_equal(model.params().flat_params(), CausalLM::from_pretrained(golden, {}).params().flat_params()));
  model.save_pretrained(out, DType::kF32, dir);
  CheckpointReader saved(out);
  EXPECT_EQ(saved.tensor_names().size(), tensors.size());
  for (const auto& [name, value] : mtp) {
    ASSERT_TRUE(saved.contains(name)) << name;
    EXPECT_TRUE(bytes_equal(saved.get(name), value)) << name;
  }
  fs::remove_all(dir);
  fs::remove_all(out);
}

// GPT-OSS's experts are trained gate rows first and untransposed (ParamSlice transposed and
// interleaved): each checkpoint tensor read back from the parameters is the file's, byte for byte,
// and the stacked gate_up's row j of expert e is the checkpoint's column 2j (gate), row I + j its
// column 2j + 1 (up).
TEST(Loading, GptOssExpertLayoutsRoundTrip) {
  const std::filesystem::path golden = testing::test_data_dir() / "golden" / "gpt_oss_sinks_windows_aux_pad";
  CausalLM model = CausalLM::from_pretrained(golden, {});
  CheckpointReader reader(golden);
  for (const auto& t : model.checkpoint_tensors())
    EXPECT_TRUE(bytes_equal(read_slice(t.slice, model.params().param(t.slice.param)), reader.get(t.name))) << t.name;
  const std::string name = "model.layers.1.mlp.experts.gate_up_proj";
  const Tensor file = reader.get(name);  // [E, H, 2I]
  const auto& tensors = model.checkpoint_tensors();
  const auto it = std::find_if(tensors.begin(), tensors.end(), [&](const CheckpointTensor& t) { return t.name == name; });
  ASSERT_NE(it, tensors.end());
  const Tensor param = model.params().param(it->slice.param);  // [E, 2I, H]
  const int64_t experts = file.size(0), hidden = file.size(1), inter = file.size(2) / 2;
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t h = 0; h < hidden; ++h)
      for (int64_t j = 0; j < inter; ++j) {
        const float* f = file.data<float>() + (e * hidden + h) * 2 * inter;
        const float* p = param.data<float>() + e * 2 * inter * hidden;
        ASSERT_EQ(p[j * hidden + h], f[2 * j]) << e << ", " << h << ", " << j;
        ASSERT_EQ(p[(inter + j) * hidden + h], f[2 * j + 1]) << e << ", " << h << ", " << j;
      }
}

// A GPT-OSS checkpoint in MXFP4 (OpenAI's release format) saves dense under the bf16 names, without
// its quantization_config, in bfloat16 unless its config names a dtype (the fixture's names float32,
// so it is dropped here), and the saved folder loads the same expert weights (E2M1 values times a
// power of two are exact in bfloat16).
TEST(Loading, Mxfp4CheckpointSavesDense) {
  namespace fs = std::filesystem;
  const fs::path golden = testing::test_data_dir() / "golden" / "gpt_oss_mxfp4_tied";
  const fs::path out = testing::unique_temp_path("mf_mxfp4_saved");
  fs::remove_all(out);
  ModelConfig config = load_model_config(golden);
  EXPECT_EQ(default_save_dtype(config), DType::kF32);
  config.dtype.reset();
  ASSERT_EQ(default_save_dtype(config), DType::kBF16);
  const CausalLM model = CausalLM::from_pretrained(golden, {});
  model.save_pretrained(out, default_save_dtype(config), golden);
  CheckpointReader saved(out);
  for (const auto& t : model.checkpoint_tensors()) {
    ASSERT_TRUE(saved.contains(t.name)) << t.name;
    EXPECT_EQ(saved.get(t.name).dtype(), DType::kBF16) << t.name;
  }
  EXPECT_EQ(saved.tensor_names().size(), model.checkpoint_tensors().size());
  EXPECT_FALSE(load_model_config(out).raw.contains("quantization_config"));
  const CausalLM reloaded = CausalLM::from_pretrained(out, {});
  int experts = 0;
  for (const auto& t : model.checkpoint_tensors()) {
    if (!t.name.ends_with("gate_up_proj") && !t.name.ends_with("down_proj")) continue;
    ++experts;
    EXPECT_TRUE(bytes_equal(model.params().param(t.slice.param), reloaded.params().param(t.slice.param))) << t.name;
  }
  EXPECT_EQ(experts, 4);
  fs::remove_all(out);
}

// Saved as released (SavedWeights::kMxfp4AsReleased), the experts' weights are MXFP4 blocks and
// scales again, the rest dense, with the release's quantization_config; loading that folder gives
// the same parameters, the experts bit for bit (E2M1 values times a power of two per block quantise
// to themselves).
TEST(Loading, Mxfp4SavedAsReleasedLoadsTheSameWeights) {
  namespace fs = std::filesystem;
  const fs::path golden = testing::test_data_dir() / "golden" / "gpt_oss_mxfp4_tied";
  const fs::path out = testing::unique_temp_path("mf_mxfp4_released");
  fs::remove_all(out);
  const CausalLM model = CausalLM::from_pretrained(golden, {});
  model.save_pretrained(out, DType::kF32, golden, CausalLM::kMaxShardBytes, CausalLM::SavedWeights::kMxfp4AsReleased);
  CheckpointReader saved(out), source(golden);
  std::vector<std::string> want = source.tensor_names(), have = saved.tensor_names();
  std::sort(want.begin(), want.end());
  std::sort(have.begin(), have.end());
  EXPECT_EQ(have, want);
  EXPECT_EQ(load_model_config(out).checkpoint_quantization, "mxfp4");
  const CausalLM reloaded = CausalLM::from_pretrained(out, {});
  EXPECT_TRUE(bytes_equal(model.params().flat_params(), reloaded.params().flat_params()));
  fs::remove_all(out);
}

}  // namespace
}  // namespace moeforge
