// Nemotron-H (NemotronHForCausalLM, e.g. Nemotron 3 Nano 30B-A3B): a hybrid stack where each layer
// holds exactly one mixer, chosen by the layer pattern: Mamba-2 ('M', "linear_attention"), MoE
// ('E', "moe"), attention without positional encoding ('*', "full_attention") or a dense MLP
// ('-', "mlp"). MoE layers use a sigmoid router with e_score_correction_bias, non-gated squared-ReLU
// experts and one shared expert. Checkpoints use the `backbone.` prefix (Transformers renames it to
// `model.` on load).
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

enum class BlockType { kMamba, kMoe, kAttention, kMlp };

BlockType block_type_from_name(const ConfigReader& r, const std::string& key, const std::string& name) {
  // Current names, then the legacy ones Transformers remaps (configuration_utils.py).
  if (name == "linear_attention" || name == "mamba") return BlockType::kMamba;
  if (name == "moe") return BlockType::kMoe;
  if (name == "full_attention" || name == "attention") return BlockType::kAttention;
  if (name == "mlp") return BlockType::kMlp;
  r.fail_key(key, "is '", name, "'; expected linear_attention, moe, full_attention or mlp");
}

std::vector<BlockType> read_block_types(const ConfigReader& r) {
  std::vector<BlockType> blocks;
  // Transformers 5 writes layers_block_type (alias layer_types); hub files hybrid_override_pattern.
  if (std::optional<std::string> key = r.first_present({"layers_block_type", "layer_types"})) {
    std::vector<std::string> names = r.string_list(*key);
    for (size_t i = 0; i < names.size(); ++i)
      blocks.push_back(block_type_from_name(r, str_cat(*key, "[", i, "]"), names[i]));
  } else if (std::optional<std::string> pattern = r.optional_string("hybrid_override_pattern")) {
    for (size_t i = 0; i < pattern->size(); ++i) {
      switch ((*pattern)[i]) {
        case 'M': blocks.push_back(BlockType::kMamba); break;
        case 'E': blocks.push_back(BlockType::kMoe); break;
        case '*': blocks.push_back(BlockType::kAttention); break;
        case '-': blocks.push_back(BlockType::kMlp); break;
        default:
          r.fail_key("hybrid_override_pattern", "has '", (*pattern)[i], "' at position ", i,
                     "; expected M (Mamba-2), E (MoE), * (attention) or - (MLP)");
      }
    }
  } else {
    r.fail_key("hybrid_override_pattern", "is missing (or give layers_block_type)");
  }
  if (blocks.empty()) r.fail_key("hybrid_override_pattern", "describes no layer");
  return blocks;
}

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.eps_key = "layer_norm_epsilon", .eps = 1e-5, .head_dim = 128, .layer_count_from_pattern = true});
  c.rope.reset();  // attention layers have no positional encoding (rope_theta in the file is unused)
  // Transformers 5.17 never ties Nemotron-H's lm_head to the embedding (NemotronHForCausalLM's
  // _tied_weights_keys is empty): the checkpoint holds lm_head.weight whatever the key says.
  c.tie_word_embeddings = false;
  // Its nn.Embedding has no padding_idx: the pad_token_id row (0 in Nemotron 3 Nano) trains as any.
  c.embedding_skips_pad_row = false;
  c.hidden_act = r.optional_string("mlp_hidden_act").value_or("relu2");
  require_activation(r, "mlp_hidden_act", c.hidden_act, "relu2");
  c.mlp_bias = r.bool_or("mlp_bias", false);

  const std::vector<BlockType> blocks = read_block_types(r);
  const int64_t n = static_cast<int64_t>(blocks.size());
  if (c.num_hidden_layers != 0 && c.num_hidden_layers != n)
    r.fail_key("num_hidden_layers", "is ", c.num_hidden_layers, " but the layer pattern has ", n, " layers");
  c.num_hidden_layers = n;
  bool has_mamba = false, has_moe = false, has_mlp = false;
  for (BlockType b : blocks) {
    LayerSpec layer;
    switch (b) {
      case BlockType::kMamba: layer = {.mixer = LayerSpec::Mixer::kMamba, .ffn = LayerSpec::Ffn::kNone}; has_mamba = true; break;
      case BlockType::kMoe: layer = {.mixer = LayerSpec::Mixer::kNone, .ffn = LayerSpec::Ffn::kMoe}; has_moe = true; break;
      case BlockType::kAttention: layer = {.mixer = LayerSpec::Mixer::kAttention, .ffn = LayerSpec::Ffn::kNone}; break;
      case BlockType::kMlp: layer = {.mixer = LayerSpec::Mixer::kNone, .ffn = LayerSpec::Ffn::kDense}; has_mlp = true; break;
    }
    c.layers.push_back(layer);
  }
  if (has_mlp) c.intermediate_size = r.required_positive_int("intermediate_size");

  if (has_mamba) {
    MambaConfig m;
    // Each setting also has an older mamba_* spelling that Transformers accepts.
    m.num_heads = r.required_positive_int("mamba_num_heads");
    m.head_dim = r.required_positive_int("mamba_head_dim");
    m.n_groups = r.required_positive_int({"n_groups", "mamba_n_groups"});
    m.ssm_state_size = r.required_positive_int("ssm_state_size");
    m.conv_kernel = r.required_positive_int({"conv_kernel", "mamba_d_conv"});
    m.chunk_size = r.int_or(r.has("mamba_chunk_size") ? "mamba_chunk_size" : "chunk_size", 128);
    if (m.chunk_size <= 0) r.fail_key("chunk_size", "must be positive, got ", m.chunk_size);
    m.conv_bias = r.bool_or(r.has("mamba_conv_bias") ? "mamba_conv_bias" : "use_conv_bias", true);
    m.proj_bias = r.bool_or("use_bias", false);  // Transformers uses use_bias, not mamba_proj_bias
    m.hidden_act = r.optional_string("mamba_hidden_act").value_or("silu");
    require_activation(r, "mamba_hidden_act", m.hidden_act, "silu");
    m.time_step_min = r.number_or(r.has("mamba_dt_min") ? "mamba_dt_min" : "time_step_min", 0.001);
    m.time_step_max = r.number_or(r.has("mamba_dt_max") ? "mamba_dt_max" : "time_step_max", 0.1);
    m.time_step_floor = r.number_or(r.has("mamba_dt_init_floor") ? "mamba_dt_init_floor" : "time_step_floor", 1e-4);
    if (m.num_heads % m.n_groups != 0)
      r.fail_key("n_groups", "(", m.n_groups, ") must divide mamba_num_heads (", m.num_heads, ")");
    c.mamba = m;
  }

  if (has_moe) {
    MoeConfig moe;
    moe.num_experts = r.required_positive_int({"n_routed_experts", "num_local_experts"});
    moe.num_experts_per_tok = r.required_positive_int("num_experts_per_tok");
    moe.expert_intermediate_size = r.required_positive_int("moe_intermediate_size");
    moe.activation = ExpertActivation::kRelu2;
    moe.scoring = RouterScoring::kSigmoid;
    moe.score_correction_bias = true;
    moe.norm_topk_prob = r.bool_or("norm_topk_prob", true);
    moe.routed_scaling_factor = r.number_or("routed_scaling_factor", 1.0);
    moe.n_group = r.int_or("n_group", 1);
    moe.topk_group = r.int_or("topk_group", 1);
    // Transformers builds one shared MLP of this width whatever n_shared_experts says.
    moe.num_shared_experts = 1;
    moe.shared_expert_intermediate_size = r.required_positive_int("moe_shared_expert_intermediate_size");
    moe.latent_size = r.optional_int("moe_latent_size");
    if (moe.latent_size && *moe.latent_size <= 0) r.fail_key("moe_latent_size", "must be positive or null, got ", *moe.latent_size);
    c.moe = moe;
  }

  c.num_mtp_layers = r.int_or("num_nextn_predict_layers", 0);
  if (c.num_mtp_layers != 0)
    fail(ErrorCode::kUnsupported, r.where(), ": key 'num_nextn_predict_layers' is ", c.num_mtp_layers,
         "; Nemotron-H multi-token-prediction layers are not supported");
}

// A non-gated MLP `prefix`.{up,down}_proj: up [intermediate, hidden] in the gate_up slot.
SwiGluSlots add_relu2_mlp(WeightMapBuilder& b, const std::string& prefix, int64_t hidden, int64_t intermediate,
                          bool bias, int64_t layer, ParamGroup group) {
  SwiGluSlots s;
  const LinearSlots up = add_linear(b, prefix + ".up_proj", intermediate, hidden, bias, layer, TensorRole::kOther, group);
  const LinearSlots down = add_linear(b, prefix + ".down_proj", hidden, intermediate, bias, layer, TensorRole::kOther, group);
  s.gate_up = up.weight;
  s.down = down.weight;
  s.gate_up_bias = up.bias;
  s.down_bias = down.bias;
  return s;
}

// Routed relu2 experts stored one module per expert, `prefix`.<e>.{up,down}_proj.weight, trained as
// Transformers 5 holds them: `prefix`.up_proj [E, I, H] and `prefix`.down_proj [E, H, I].
SwiGluSlots add_relu2_experts(WeightMapBuilder& b, const std::string& prefix, int64_t num_experts, int64_t in,
                              int64_t intermediate, int64_t layer) {
  SwiGluSlots s;
  s.gate_up = b.param(prefix + ".up_proj", {num_experts, intermediate, in}, ParamGroup::kExperts, true,
                      ShardClass::kExpert);
  s.down = b.param(prefix + ".down_proj", {num_experts, in, intermediate}, ParamGroup::kExperts, true,
                   ShardClass::kExpert);
  const TensorRole role = TensorRole::kRoutedExpert;
  for (int64_t e = 0; e < num_experts; ++e) {
    const std::string x = str_cat(prefix, ".", e, ".");
    b.tensor(x + "up_proj.weight", {intermediate, in}, layer, role, e, {.param = s.gate_up, .expert = e});
    b.tensor(x + "down_proj.weight", {in, intermediate}, layer, role, e, {.param = s.down, .expert = e});
  }
  return s;
}

MambaSlots add_mamba_mixer(WeightMapBuilder& b, const std::string& mixer, const ModelConfig& c, int64_t i) {
  const MambaConfig& m = *c.mamba;
  const int64_t inner = m.intermediate_size(), conv = m.conv_dim();
  MambaSlots s;
  // in_proj outputs [z (inner) | xBC (conv_dim) | dt (heads)].
  s.in_proj = add_linear(b, mixer + ".in_proj", inner + conv + m.num_heads, c.hidden_size, m.proj_bias, i);
  s.conv_weight = b.whole(mixer + ".conv1d.weight", {conv, 1, m.conv_kernel}, ParamGroup::kAttention, true, i);
  if (m.conv_bias) s.conv_bias = b.whole(mixer + ".conv1d.bias", {conv}, ParamGroup::kAttention, false, i);
  // The Trainer's rule decays A_log and D (no bias or norm in their names), not dt_bias.
  s.dt_bias = b.whole(mixer + ".dt_bias", {m.num_heads}, ParamGroup::kAttention, false, i);
  s.a_log = b.whole(mixer + ".A_log", {m.num_heads}, ParamGroup::kAttention, true, i);
  s.d = b.whole(mixer + ".D", {m.num_heads}, ParamGroup::kAttention, true, i);
  s.norm = add_norm(b, mixer + ".norm.weight", inner, i);
  s.out_proj = add_linear(b, mixer + ".out_proj", c.hidden_size, inner, m.proj_bias, i);
  return s;
}

MoeSlots add_moe_mixer(WeightMapBuilder& b, const std::string& mixer, const ModelConfig& c, int64_t i) {
  const MoeConfig& moe = *c.moe;
  const int64_t hidden = c.hidden_size;
  MoeSlots s;
  s.router = add_router(b, mixer + ".gate.weight", mixer + ".gate.weight", moe.num_experts, hidden, i);
  s.score_bias = b.fp32_buffer(mixer + ".gate.e_score_correction_bias", {moe.num_experts}, ParamGroup::kRouter, i);
  s.experts = add_relu2_experts(b, mixer + ".experts", moe.num_experts, moe.latent_size.value_or(hidden),
                                moe.expert_intermediate_size, i);
  s.shared = add_relu2_mlp(b, mixer + ".shared_experts", hidden, moe.shared_expert_intermediate_size, c.mlp_bias, i,
                           ParamGroup::kSharedExperts);
  if (moe.latent_size) {
    s.latent_in = add_linear(b, mixer + ".fc1_latent_proj", *moe.latent_size, hidden, c.mlp_bias, i);
    s.latent_out = add_linear(b, mixer + ".fc2_latent_proj", hidden, *moe.latent_size, c.mlp_bias, i);
  }
  return s;
}

// Each layer is one pre-norm half: a mixer (Mamba, attention) under input_norm, or a feed-forward
// block (MoE, MLP) under post_norm, both named `norm` in the checkpoint.
void describe(const ModelConfig& c, ModelDescription& d) {
  WeightMapBuilder b(d, /*trainable=*/true);
  WeightMap& w = d.weights;
  const int64_t hidden = c.hidden_size;
  w.embed = add_embedding(b, "backbone.embeddings.weight", c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("backbone", i);
    const LayerSpec& spec = c.layers[i];
    const std::string mixer = p + "mixer";
    LayerSlots layer;
    const int norm = add_norm(b, p + "norm.weight", hidden, i);
    (spec.mixer != LayerSpec::Mixer::kNone ? layer.input_norm : layer.post_norm) = norm;
    if (spec.mixer == LayerSpec::Mixer::kMamba)
      layer.mamba = add_mamba_mixer(b, mixer, c, i);
    else if (spec.mixer == LayerSpec::Mixer::kAttention)
      layer.attention = add_gqa_attention(b, mixer, c, i);
    else if (spec.ffn == LayerSpec::Ffn::kMoe)
      layer.moe = add_moe_mixer(b, mixer, c, i);
    else
      layer.mlp = add_relu2_mlp(b, mixer, hidden, c.intermediate_size, c.mlp_bias, i, ParamGroup::kDenseMlp);
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "backbone.norm_f.weight", hidden, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kNemotronHArchitecture{"nemotron_h", "NemotronHForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
