// LoRA against Hugging Face PEFT 0.21 + Transformers 5.17 (the oracle): each fixture of
// tests/data/lora (python/oracle/lora_fixtures.py) holds a tiny Qwen3-MoE, DeepSeek-V3, Nemotron-H or GPT-OSS, a PEFT adapter with random
// A and B, a batch, and PEFT's logits, loss, every adapter gradient and the losses of two AdamW steps.
// moeforge loads the same adapter folder, takes the same two steps on the CPU in float32, and must
// agree within 1e-4 (tensors, relative L2) and 1e-5 (losses); its saved adapter has PEFT's keys and
// shapes, and its merged model equals PEFT's merge_and_unload.
#include <algorithm>
#include <cmath>
#include <set>

#include "io/json.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "optim/adamw.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

class LoraGolden : public ::testing::TestWithParam<std::string> {
 protected:
  fs::path dir() const { return testing::test_data_dir() / "lora" / GetParam(); }

  CausalLM load_model() const {
    ModelOptions options;
    options.lora = LoraConfig::from_json(read_json_file(dir() / "adapter" / "adapter_config.json"), "adapter_config.json");
    CausalLM model = CausalLM::from_pretrained(dir(), options);
    model.load_adapter(dir() / "adapter");
    return model;
  }

  Batch batch() const {
    SafetensorsFile file = SafetensorsFile::open(dir() / "batch.safetensors");
    Batch b;
    b.input_ids = file.get("input_ids").clone();
    b.labels = file.get("labels").clone();
    if (file.contains("attention_mask")) b.attention_mask = file.get("attention_mask").clone();
    return b;
  }
};

void expect_scalar(const SafetensorsFile& want, const std::string& name, double have) {
  const double w = want.get(name).item_float();
  EXPECT_LE(std::fabs(have - w) / std::max(std::fabs(w), 1e-12), 1e-5) << name << ": moeforge " << have
                                                                        << ", PEFT " << w;
}

// Every adapter tensor of `source` (gradients or weights) in the file's layout against `prefix`<key>.
void expect_adapter_tensors(const CausalLM& model, const SafetensorsFile& want, const std::string& prefix,
                            bool gradients) {
  for (const AdapterTensor& t : model.adapter_tensors()) {
    const std::string name = prefix + t.key;
    ASSERT_TRUE(want.contains(name)) << name;
    const Tensor& ours = gradients ? model.params().grad(t.param) : model.params().param(t.param);
    const double err = testing::rel_l2(adapter_to_file(t, ours), want.get(name));
    EXPECT_LE(err, 1e-4) << name << " relative L2 error";
  }
}

TEST_P(LoraGolden, TwoStepsMatchPeft) {
  SafetensorsFile want = SafetensorsFile::open(dir() / "expected.safetensors");
  const auto& meta = want.metadata();
  CausalLM model = load_model();
  const Batch b = batch();
  AdamWConfig ac{std::stod(meta.at("lr")), std::stod(meta.at("adam_beta1")), std::stod(meta.at("adam_beta2")),
                 std::stod(meta.at("adam_epsilon")), std::stod(meta.at("weight_decay"))};
  ParameterSet& ps = model.params();
  std::vector<bool> trainable(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) trainable[i] = ps.trainable(static_cast<int>(i));
  // torch.optim.AdamW over the trainable parameters: every adapter weight decays.
  AdamW opt(ps, ac, OptimizerPrecision::kFp32Master, std::vector<bool>(ps.size(), true), trainable);
  const Tensor base_before = ps.flat_params().slice(0, ps.trainable_numel(), ps.numel()).clone();

  StepResult r = model.forward_backward(b, /*backward=*/true, /*keep_logits=*/true);
  EXPECT_LE(testing::rel_l2(testing::real_token_logits(r.logits, b.attention_mask),
                            testing::real_token_logits(want.get("logits"), b.attention_mask)),
            1e-4)
      << "logits";
  expect_scalar(want, "loss", r.loss);
  if (want.contains("aux_loss")) expect_scalar(want, "aux_loss", r.aux_loss);
  expect_adapter_tensors(model, want, "grad.", /*gradients=*/true);
  opt.step(ac.lr);

  ps.zero_grads();
  r = model.forward_backward(b, /*backward=*/true, /*keep_logits=*/false);
  expect_scalar(want, "loss_1", r.loss);
  expect_adapter_tensors(model, want, "grad1.", /*gradients=*/true);
  opt.step(ac.lr);

  r = model.forward_backward(b, /*backward=*/false, /*keep_logits=*/false);
  expect_scalar(want, "loss_2", r.loss);
  expect_adapter_tensors(model, want, "weight2.", /*gradients=*/false);
  // The base weights are frozen: bit for bit what was loaded.
  const Tensor base_after = ps.flat_params().slice(0, ps.trainable_numel(), ps.numel());
  EXPECT_EQ(testing::rel_l2(base_after, base_before), 0.0);
}

// What PEFT saved (tests/data/lora/<case>/adapter_keys.json): moeforge's adapter folder has the same
// keys and shapes, and an adapter_config.json with the same targets, ranks and scales.
TEST_P(LoraGolden, SavedAdapterHasPeftKeys) {
  const Json peft = read_json_file(dir() / "adapter_keys.json");
  CausalLM model = load_model();
  const fs::path out = testing::unique_temp_path("mf_lora_adapter_" + GetParam());
  model.save_adapter(out, DType::kF32);

  SafetensorsFile saved = SafetensorsFile::open(out / "adapter_model.safetensors");
  std::map<std::string, std::string> want, have;
  for (const auto& [key, shape] : peft.at("keys").items()) want[key] = shape.dump();
  for (const auto& info : saved.tensors()) have[info.name] = Json(saved.get(info.name).shape()).dump();
  EXPECT_EQ(have, want);
  // The saved tensors are the loaded ones, unchanged (a round trip through PEFT's layout).
  SafetensorsFile original = SafetensorsFile::open(dir() / "adapter" / "adapter_model.safetensors");
  for (const auto& info : original.tensors())
    EXPECT_EQ(testing::rel_l2(saved.get(info.name), original.get(info.name)), 0.0) << info.name;

  const Json config = read_json_file(out / "adapter_config.json"), expected = peft.at("adapter_config");
  auto as_set = [](const Json& list) {
    std::set<std::string> s;
    if (list.is_array()) for (const auto& v : list) s.insert(v.get<std::string>());
    return s;
  };
  EXPECT_EQ(as_set(config.at("target_modules")), as_set(expected.at("target_modules")));
  EXPECT_EQ(as_set(config.at("target_parameters")), as_set(expected.at("target_parameters")));
  for (const char* key : {"r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "peft_type"})
    EXPECT_EQ(config.at(key), expected.at(key)) << key;
  fs::remove_all(out);
}

// merge_adapters then save_pretrained: PEFT's merge_and_unload of the same adapter, tensor by tensor,
// and the same logits as the model with its adapters.
TEST_P(LoraGolden, MergedModelEqualsPeftMerge) {
  CausalLM model = load_model();
  const Batch b = batch();
  const Tensor before = model.forward_backward(b, false, true).logits;
  model.merge_adapters();
  const Tensor after = model.forward_backward(b, false, true).logits;
  EXPECT_LE(testing::rel_l2(after, before), 1e-5);
  const fs::path out = testing::unique_temp_path("mf_lora_merged_" + GetParam());
  model.save_pretrained(out, DType::kF32, dir());
  SafetensorsFile mine = SafetensorsFile::open(out / "model.safetensors");
  SafetensorsFile peft = SafetensorsFile::open(dir() / "merged" / "model.safetensors");
  const std::vector<std::string> mine_names = mine.names(), peft_names = peft.names();
  EXPECT_EQ(std::set<std::string>(mine_names.begin(), mine_names.end()),
            std::set<std::string>(peft_names.begin(), peft_names.end()));
  for (const auto& n : peft.names()) {
    if (!mine.contains(n)) continue;
    EXPECT_LE(testing::rel_l2(mine.get(n), peft.get(n)), 1e-5) << n;
  }
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Qwen3Moe, LoraGolden,
                         ::testing::Values("lora_attn", "lora_attn_experts", "lora_converted_mlp_names",
                                           "lora_all_linear"));
INSTANTIATE_TEST_SUITE_P(DeepseekV3, LoraGolden, ::testing::Values("lora_deepseek_v3_mla"));
INSTANTIATE_TEST_SUITE_P(NemotronH, LoraGolden, ::testing::Values("lora_nemotron_h", "lora_nemotron_h_latent"));
INSTANTIATE_TEST_SUITE_P(GptOss, LoraGolden, ::testing::Values("lora_gpt_oss"));


// LoRA's input dropout cannot be compared with PEFT's (torch's generator draws other masks), so it
// is checked by what defines it: in training the gradients are those of the loss the pass computed
// (central differences through the same masks, which are a function of the batch), evaluation has
// no dropout, and recomputation redraws the same masks. Two fixtures: attention projections
// (lora_attn), and Nemotron-H's latent expert projections, which run on the MoE block's routed rows
// (lora_nemotron_h_latent; its expert adapters are left out, as PEFT refuses dropout on them).
struct DropoutCase {
  const char* fixture;
  std::vector<const char*> checked;  // modules whose adapters are checked by central differences
};

class LoraDropout : public ::testing::TestWithParam<DropoutCase> {
 protected:
  fs::path dir() const { return testing::test_data_dir() / "lora" / GetParam().fixture; }

  // The fixture's adapter with `dropout`. Where it adapts experts, those targets are dropped and
  // the other adapters drawn at random (the fixture's init_lora_weights is false) instead of loaded.
  CausalLM model(float dropout, Recompute recompute = Recompute::kNone) const {
    ModelOptions options;
    options.lora = LoraConfig::from_json(read_json_file(dir() / "adapter" / "adapter_config.json"), "adapter_config.json");
    options.lora->lora_dropout = dropout;
    const bool experts = !options.lora->target_parameters.empty();
    options.lora->target_parameters.clear();
    options.recompute = recompute;
    CausalLM m = CausalLM::from_pretrained(dir(), options);
    if (!experts) m.load_adapter(dir() / "adapter");
    return m;
  }
  Batch batch() const {
    SafetensorsFile file = SafetensorsFile::open(dir() / "batch.safetensors");
    Batch b;
    b.input_ids = file.get("input_ids").clone();
    b.labels = file.get("labels").clone();
    if (file.contains("attention_mask")) b.attention_mask = file.get("attention_mask").clone();
    return b;
  }
};

TEST_P(LoraDropout, GradientsAreThoseOfTheDroppedOutLoss) {
  CausalLM m = model(0.3f);
  const Batch b = batch();
  const double loss = m.forward_backward(b, true, false).loss;
  const double eval_loss = m.forward_backward(b, false, false).loss;
  CausalLM plain = model(0.0f);
  EXPECT_EQ(eval_loss, plain.forward_backward(b, false, false).loss);  // evaluation: no dropout
  EXPECT_GT(std::fabs(loss - eval_loss), 1e-4);                          // training: masks applied
  ParameterSet& ps = m.params();
  // The passes below add their gradients too: keep this pass's.
  const Tensor grads = ps.flat_grads().clone();
  int checked = 0;
  for (const AdapterTensor& t : m.adapter_tensors()) {
    const auto& modules = GetParam().checked;
    if (std::none_of(modules.begin(), modules.end(), [&](const char* mod) { return t.key.find(mod) != std::string::npos; }))
      continue;
    ++checked;
    const ParamEntry& e = ps.entry(t.param);
    const Tensor grad = grads.slice(0, e.offset, e.offset + e.numel());
    Tensor w = ps.param(t.param);
    for (int64_t i : {int64_t{0}, w.numel() / 2, w.numel() - 1}) {
      float* v = w.data<float>() + i;
      const float saved = *v, h = 1e-2f;
      *v = saved + h;
      const double up = m.forward_backward(b, true, false).loss;
      *v = saved - h;
      const double down = m.forward_backward(b, true, false).loss;
      *v = saved;
      const double numeric = (up - down) / (2.0 * h), analytic = grad.data<float>()[i];
      EXPECT_NEAR(analytic, numeric, 2e-3 * std::max(1.0, std::fabs(numeric))) << t.key << "[" << i << "]";
    }
  }
  EXPECT_EQ(checked, 2 * static_cast<int>(GetParam().checked.size()));  // lora_A and lora_B of each
}

TEST_P(LoraDropout, RecomputationRedrawsTheSameMasks) {
  const Batch b = batch();
  CausalLM none = model(0.3f, Recompute::kNone);
  none.forward_backward(b, true, false);
  for (Recompute policy : {Recompute::kSelective, Recompute::kFull}) {
    CausalLM again = model(0.3f, policy);
    again.forward_backward(b, true, false);
    EXPECT_EQ(testing::rel_l2(again.params().flat_grads(), none.params().flat_grads()), 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LoraDropout,
    ::testing::Values(DropoutCase{"lora_attn", {"layers.0.self_attn.q_proj", "layers.1.self_attn.o_proj"}},
                      DropoutCase{"lora_nemotron_h_latent",
                                  {"layers.1.mixer.fc1_latent_proj", "layers.5.mixer.fc2_latent_proj"}}),
    [](const ::testing::TestParamInfo<DropoutCase>& info) { return std::string(info.param.fixture); });

}  // namespace
}  // namespace moeforge
