// Checkpoint tensor lists and parameter counts: against Transformers 5.17 (the oracle fixture
// tests/data/configs/param_counts.json written by python/oracle/param_counts.py on the GPU machine)
// and against the counts the model authors published.
#include "arch/checkpoint_tensors.h"

#include <map>
#include <regex>
#include <set>

#include "arch_test_util.h"

namespace moeforge::testing {
namespace {

using FoldedList = std::map<std::pair<std::string, std::vector<int64_t>>, int64_t>;

// As the oracle folds names: ".experts.17." -> ".experts.{e}.", counting each (name, shape).
FoldedList fold(const std::vector<CheckpointTensor>& tensors) {
  static const std::regex expert_index(R"(\.experts\.\d+\.)");
  FoldedList folded;
  for (const CheckpointTensor& t : tensors)
    if (!t.mtp) ++folded[{std::regex_replace(t.name, expert_index, ".experts.{e}."), t.shape}];
  return folded;
}

FoldedList fold(const nlohmann::json& oracle_list) {
  FoldedList folded;
  for (const auto& entry : oracle_list)
    folded[{entry[0].get<std::string>(), entry[1].get<std::vector<int64_t>>()}] += entry[2].get<int64_t>();
  return folded;
}

TEST(CheckpointTensors, MatchTransformersOracle) {
  const auto fixture = configs_dir() / "param_counts.json";
  if (!std::filesystem::exists(fixture))
    GTEST_SKIP() << "missing " << fixture.string()
                 << ": generate it on the GPU machine with 'python3 python/oracle/param_counts.py'";
  const nlohmann::json oracle = read_json(fixture);
  ASSERT_FALSE(oracle["models"].empty());
  for (const auto& [name, m] : oracle["models"].items()) {
    SCOPED_TRACE(name);
    const ModelConfig config = load_model_config(configs_dir() / name);
    const std::vector<CheckpointTensor> tensors = checkpoint_tensors(config);
    const ParamCounts counts = count_parameters(config, tensors);
    EXPECT_EQ(counts.total, m["num_parameters"].get<int64_t>());
    EXPECT_EQ(counts.total_without_embedding(), m["num_parameters_exclude_embeddings"].get<int64_t>());
    int64_t buffers = 0;
    for (const CheckpointTensor& t : tensors) buffers += t.buffer && !t.mtp;
    // The oracle lists state_dict entries that are not named parameters: persistent buffers, and a
    // tied lm_head.weight (an alias of the embedding, which save_pretrained drops).
    int64_t oracle_buffers = 0;
    for (const auto& b : m["state_dict_buffers"])
      oracle_buffers += !(config.tie_word_embeddings && b.get<std::string>() == "lm_head.weight");
    EXPECT_EQ(buffers, oracle_buffers);
    if (m["checkpoint"].is_null()) {
      ADD_FAILURE() << "the oracle could not revert the weight conversion: " << m["checkpoint_error"];
      continue;
    }
    const FoldedList ours = fold(tensors), theirs = fold(m["checkpoint"]);
    for (const auto& [key, n] : theirs) {
      auto it = ours.find(key);
      EXPECT_TRUE(it != ours.end() && it->second == n)
          << "Transformers has " << n << " x " << key.first << " " << shape_str(key.second) << ", moeforge "
          << (it == ours.end() ? 0 : it->second);
    }
    for (const auto& [key, n] : ours)
      EXPECT_TRUE(theirs.count(key)) << "moeforge lists " << n << " x " << key.first << " "
                                     << shape_str(key.second) << ", Transformers does not";
  }
}

double published_quantity(const ParamCounts& p, const std::string& quantity) {
  if (quantity == "total") return static_cast<double>(p.total);
  if (quantity == "active") return static_cast<double>(p.active);
  if (quantity == "active_without_embedding") return static_cast<double>(p.active_without_embedding());
  if (quantity == "total_without_embedding_and_lm_head") return static_cast<double>(p.total - p.embedding - p.lm_head);
  if (quantity == "mtp_without_embedding_and_lm_head") {
    // The MTP layers store their own embedding and head copies, each the size of the main ones.
    return static_cast<double>(p.mtp - p.embedding - p.lm_head);
  }
  ADD_FAILURE() << "unknown quantity " << quantity;
  return 0;
}

TEST(ParamCounts, WithinThreePercentOfPublishedFigures) {
  const nlohmann::json published = read_json(configs_dir() / "published_param_counts.json");
  for (const auto& [name, figures] : published["models"].items()) {
    SCOPED_TRACE(name);
    const ParamCounts p = count_parameters(load_model_config(configs_dir() / name));
    for (const auto& f : figures) {
      const double want = f["value"].get<double>();
      const double got = published_quantity(p, f["quantity"].get<std::string>());
      EXPECT_NEAR(got / want, 1.0, 0.03) << f["quantity"] << ": moeforge " << got << ", published " << want
                                         << " (" << f["source"] << ")";
    }
  }
}

TEST(CheckpointTensors, NamesAreUniqueAndCountsConsistent) {
  for (const std::string& name : bundled_config_names()) {
    SCOPED_TRACE(name);
    const ModelConfig config = load_model_config(configs_dir() / name);
    const std::vector<CheckpointTensor> tensors = checkpoint_tensors(config);
    std::set<std::string> names;
    for (const CheckpointTensor& t : tensors) {
      EXPECT_TRUE(names.insert(t.name).second) << "duplicate " << t.name;
      for (int64_t d : t.shape) EXPECT_GT(d, 0) << t.name;
      if (t.role == TensorRole::kRoutedExpert) {
        EXPECT_GE(t.layer, 0) << t.name;
      }
    }
    const ParamCounts p = count_parameters(config, tensors);
    EXPECT_GT(p.total, 0);
    EXPECT_LE(p.active, p.total);
    EXPECT_GT(p.embedding, 0);
    EXPECT_EQ(p.lm_head == 0, config.tie_word_embeddings);
    EXPECT_EQ(names.count("lm_head.weight") == 0, config.tie_word_embeddings);
    if (!config.moe) {
      EXPECT_EQ(p.active, p.total);
    }
    if (config.num_mtp_layers == 0) {
      EXPECT_EQ(p.mtp, 0);
    }
  }
}

std::map<std::string, std::vector<int64_t>> shapes_by_name(const std::vector<CheckpointTensor>& tensors) {
  std::map<std::string, std::vector<int64_t>> m;
  for (const CheckpointTensor& t : tensors) m[t.name] = t.shape;
  return m;
}

// Keys and shapes of the Qwen3-30B-A3B safetensors files, as listed in
// ../shared/research/hf_transformers_moe.md §1.2.
TEST(CheckpointTensors, Qwen3MoeCheckpointNames) {
  const ModelConfig c = load_model_config(configs_dir() / "qwen3-30b-a3b");
  const auto tensors = checkpoint_tensors(c);
  const auto shapes = shapes_by_name(tensors);
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"model.embed_tokens.weight", {151936, 2048}},
      {"model.layers.0.input_layernorm.weight", {2048}},
      {"model.layers.0.self_attn.q_proj.weight", {4096, 2048}},
      {"model.layers.0.self_attn.k_proj.weight", {512, 2048}},
      {"model.layers.0.self_attn.v_proj.weight", {512, 2048}},
      {"model.layers.0.self_attn.o_proj.weight", {2048, 4096}},
      {"model.layers.0.self_attn.q_norm.weight", {128}},
      {"model.layers.0.self_attn.k_norm.weight", {128}},
      {"model.layers.47.post_attention_layernorm.weight", {2048}},
      {"model.layers.47.mlp.gate.weight", {128, 2048}},
      {"model.layers.47.mlp.experts.0.gate_proj.weight", {768, 2048}},
      {"model.layers.47.mlp.experts.127.up_proj.weight", {768, 2048}},
      {"model.layers.47.mlp.experts.127.down_proj.weight", {2048, 768}},
      {"model.norm.weight", {2048}},
      {"lm_head.weight", {151936, 2048}},
  };
  for (const auto& [name, shape] : expected) {
    auto it = shapes.find(name);
    ASSERT_NE(it, shapes.end()) << name;
    EXPECT_EQ(it->second, shape) << name;
  }
  // Per layer: 2 norms, 4 projections, 2 q/k norms, the router and 3 tensors per expert.
  EXPECT_EQ(tensors.size(), 1u + 48u * (2 + 4 + 2 + 1 + 128 * 3) + 1u + 1u);
}

TEST(CheckpointTensors, DeepseekMtpListedApartAndBuffersNotCounted) {
  const ModelConfig c = load_model_config(configs_dir() / "deepseek-v3");
  const auto tensors = checkpoint_tensors(c);
  const auto shapes = shapes_by_name(tensors);
  // Names from DeepSeek's README_WEIGHTS.md and ../shared/research/hf_transformers_moe.md §3.4.
  for (const char* name : {"model.layers.0.mlp.gate_proj.weight", "model.layers.3.mlp.gate.e_score_correction_bias",
                           "model.layers.3.mlp.experts.255.down_proj.weight",
                           "model.layers.3.mlp.shared_experts.up_proj.weight",
                           "model.layers.60.self_attn.kv_a_proj_with_mqa.weight", "model.layers.61.eh_proj.weight",
                           "model.layers.61.enorm.weight", "model.layers.61.shared_head.head.weight"})
    EXPECT_TRUE(shapes.count(name)) << name;
  EXPECT_EQ(shapes.at("model.layers.3.mlp.gate.weight"), (std::vector<int64_t>{256, 7168}));
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.kv_b_proj.weight"), (std::vector<int64_t>{128 * 256, 512}));
  for (const CheckpointTensor& t : tensors) {
    EXPECT_EQ(t.mtp, t.layer >= c.num_hidden_layers) << t.name;
    EXPECT_EQ(t.buffer, t.name.find("e_score_correction_bias") != std::string::npos) << t.name;
  }
  const ParamCounts p = count_parameters(c, tensors);
  EXPECT_GT(p.mtp, 0);
  EXPECT_GT(p.mtp_active, 0);
  EXPECT_LT(p.mtp_active, p.mtp);
  EXPECT_EQ(p.buffers, (c.num_moe_layers() + c.num_mtp_layers) * 256);
}

TEST(CheckpointTensors, GptOssFusedExperts) {
  const ModelConfig c = load_model_config(configs_dir() / "gpt-oss-20b");
  const auto shapes = shapes_by_name(checkpoint_tensors(c));
  // ../shared/research/hf_transformers_moe.md §4.2/§4.3 (bf16 layout after dequantization).
  EXPECT_EQ(shapes.at("model.layers.0.mlp.experts.gate_up_proj"), (std::vector<int64_t>{32, 2880, 5760}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.experts.gate_up_proj_bias"), (std::vector<int64_t>{32, 5760}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.experts.down_proj"), (std::vector<int64_t>{32, 2880, 2880}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.router.bias"), (std::vector<int64_t>{32}));
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.sinks"), (std::vector<int64_t>{64}));
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.q_proj.bias"), (std::vector<int64_t>{4096}));
}

TEST(CheckpointTensors, NemotronHBackboneNames) {
  const ModelConfig c = load_model_config(configs_dir() / "nemotron-3-nano-30b-a3b");
  const auto shapes = shapes_by_name(checkpoint_tensors(c));
  // Layer 0 is Mamba-2, 1 MoE, 5 attention (pattern "MEMEM*..."); §5.2/§5.3 of the research notes.
  EXPECT_EQ(shapes.at("backbone.embeddings.weight"), (std::vector<int64_t>{131072, 2688}));
  EXPECT_EQ(shapes.at("backbone.layers.0.mixer.in_proj.weight"), (std::vector<int64_t>{4096 + 6144 + 64, 2688}));
  EXPECT_EQ(shapes.at("backbone.layers.0.mixer.conv1d.weight"), (std::vector<int64_t>{6144, 1, 4}));
  EXPECT_EQ(shapes.at("backbone.layers.0.mixer.A_log"), (std::vector<int64_t>{64}));
  EXPECT_EQ(shapes.at("backbone.layers.1.mixer.gate.weight"), (std::vector<int64_t>{128, 2688}));
  EXPECT_EQ(shapes.at("backbone.layers.1.mixer.experts.127.up_proj.weight"), (std::vector<int64_t>{1856, 2688}));
  EXPECT_EQ(shapes.at("backbone.layers.1.mixer.shared_experts.down_proj.weight"), (std::vector<int64_t>{2688, 3712}));
  EXPECT_EQ(shapes.at("backbone.layers.5.mixer.k_proj.weight"), (std::vector<int64_t>{256, 2688}));
  EXPECT_TRUE(shapes.count("backbone.norm_f.weight"));
  EXPECT_FALSE(shapes.count("backbone.layers.1.mixer.experts.0.gate_proj.weight"));  // non-gated experts
}

TEST(CheckpointTensors, MixtralOriginalNames) {
  const auto shapes = shapes_by_name(checkpoint_tensors(load_model_config(configs_dir() / "mixtral-8x7b")));
  EXPECT_EQ(shapes.at("model.layers.0.block_sparse_moe.gate.weight"), (std::vector<int64_t>{8, 4096}));
  EXPECT_EQ(shapes.at("model.layers.0.block_sparse_moe.experts.7.w1.weight"), (std::vector<int64_t>{14336, 4096}));
  EXPECT_EQ(shapes.at("model.layers.0.block_sparse_moe.experts.7.w2.weight"), (std::vector<int64_t>{4096, 14336}));
}

}  // namespace
}  // namespace moeforge::testing
