#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

RopeType parse_rope_type(const ConfigReader& dict, const std::string& key, const std::string& name) {
  if (name == "default") return RopeType::kDefault;
  if (name == "linear") return RopeType::kLinear;
  if (name == "dynamic") return RopeType::kDynamic;
  if (name == "yarn") return RopeType::kYarn;
  if (name == "llama3") return RopeType::kLlama3;
  fail(ErrorCode::kUnsupported, dict.where(), ": key '", key, "' is '", name,
       "'; supported rope types: default, linear, dynamic, yarn, llama3");
}

}  // namespace

RopeParameters read_rope(const ConfigReader& reader, double default_theta, int64_t max_position_embeddings) {
  // Transformers 5: `rope_parameters = rope_scaling or rope_parameters`; rope_theta from that dict,
  // else the top-level key, else the class default.
  std::optional<ConfigReader> dict = reader.optional_object("rope_scaling");
  if (!dict || dict->object().empty()) {
    std::optional<ConfigReader> saved = reader.optional_object("rope_parameters");
    if (saved) dict = saved;
  }
  RopeParameters rope;
  if (dict) {
    for (const char* layer_type : {"full_attention", "sliding_attention"})
      if (dict->has(layer_type))
        fail(ErrorCode::kUnsupported, dict->where(),
             ": rope parameters per layer type are not supported (key '", layer_type, "')");
    std::string type_key = dict->has("rope_type") ? "rope_type" : "type";
    rope.type = parse_rope_type(*dict, type_key, dict->optional_string(type_key).value_or("default"));
  }
  rope.theta = dict && dict->has("rope_theta") ? *dict->optional_number("rope_theta")
                                               : reader.number_or("rope_theta", default_theta);
  if (!(rope.theta > 0)) reader.fail_key("rope_theta", "must be positive, got ", rope.theta);
  rope.partial_rotary_factor = reader.number_or("partial_rotary_factor", 1.0);
  if (dict) rope.partial_rotary_factor = dict->number_or("partial_rotary_factor", rope.partial_rotary_factor);
  if (!(rope.partial_rotary_factor > 0 && rope.partial_rotary_factor <= 1))
    reader.fail_key("partial_rotary_factor", "must be in (0, 1], got ", rope.partial_rotary_factor);
  if (rope.type == RopeType::kDefault) return rope;

  const ConfigReader& d = *dict;
  std::optional<double> factor = d.optional_number("factor");
  if (!factor) d.fail_key("factor", "is missing (required by rope type '", rope_type_name(rope.type), "')");
  if (!(*factor > 0)) d.fail_key("factor", "must be positive, got ", *factor);
  rope.factor = *factor;
  if (rope.type == RopeType::kYarn || rope.type == RopeType::kLlama3) {
    // A top-level original_max_position_embeddings wins (Transformers' standardize_rope_params).
    rope.original_max_position_embeddings =
        reader.optional_int("original_max_position_embeddings")
            .value_or(d.int_or("original_max_position_embeddings", max_position_embeddings));
    if (rope.original_max_position_embeddings <= 0)
      d.fail_key("original_max_position_embeddings", "must be positive, got ",
                 rope.original_max_position_embeddings);
  }
  if (rope.type == RopeType::kYarn) {
    rope.beta_fast = d.optional_number("beta_fast");
    rope.beta_slow = d.optional_number("beta_slow");
    rope.mscale = d.optional_number("mscale");
    rope.mscale_all_dim = d.optional_number("mscale_all_dim");
    rope.attention_factor = d.optional_number("attention_factor");
    rope.truncate = d.bool_or("truncate", true);
  }
  if (rope.type == RopeType::kLlama3) {
    for (const char* key : {"low_freq_factor", "high_freq_factor"})
      if (!d.has(key)) d.fail_key(key, "is missing (required by rope type 'llama3')");
    rope.low_freq_factor = *d.optional_number("low_freq_factor");
    rope.high_freq_factor = *d.optional_number("high_freq_factor");
    if (!(rope.high_freq_factor > rope.low_freq_factor))
      d.fail_key("high_freq_factor", "must exceed low_freq_factor (", rope.low_freq_factor, "), got ",
                 rope.high_freq_factor);
  }
  return rope;
}

void read_common(const ConfigReader& reader, ModelConfig& config, const CommonDefaults& defaults) {
  config.architectures = reader.string_list("architectures");
  config.vocab_size = reader.required_positive_int("vocab_size");
  config.hidden_size = reader.required_positive_int("hidden_size");
  config.num_hidden_layers = defaults.layer_count_from_pattern ? reader.int_or("num_hidden_layers", 0)
                                                               : reader.required_positive_int("num_hidden_layers");
  // Checked before anything is sized by it (the largest published models have about 100 layers).
  constexpr int64_t kMaxLayers = 1 << 16;
  if (config.num_hidden_layers > kMaxLayers)
    reader.fail_key("num_hidden_layers", "is ", config.num_hidden_layers, "; more than ", kMaxLayers,
                    " layers is not a plausible model");
  config.max_position_embeddings = reader.required_positive_int("max_position_embeddings");

  AttentionConfig& attn = config.attention;
  attn.num_heads = reader.required_positive_int("num_attention_heads");
  attn.num_kv_heads = defaults.kv_heads_default_to_heads
                          ? reader.int_or("num_key_value_heads", attn.num_heads)
                          : reader.required_int("num_key_value_heads");
  if (attn.num_kv_heads <= 0) reader.fail_key("num_key_value_heads", "must be positive, got ", attn.num_kv_heads);
  if (reader.has("head_dim")) {
    attn.head_dim = reader.required_positive_int("head_dim");
  } else if (defaults.head_dim) {
    attn.head_dim = *defaults.head_dim;
  } else {
    if (config.hidden_size % attn.num_heads != 0)
      reader.fail_key("head_dim", "is missing and hidden_size (", config.hidden_size,
                      ") is not divisible by num_attention_heads (", attn.num_heads, ")");
    attn.head_dim = config.hidden_size / attn.num_heads;
  }

  config.norm_eps = reader.number_or(defaults.eps_key, defaults.eps);
  if (!(config.norm_eps > 0)) reader.fail_key(defaults.eps_key, "must be positive, got ", config.norm_eps);
  config.hidden_act = reader.optional_string("hidden_act").value_or("silu");
  config.tie_word_embeddings = reader.bool_or("tie_word_embeddings", false);

  // Transformers 5 writes `dtype`; older files `torch_dtype`.
  if (std::optional<std::string> key = reader.first_present({"dtype", "torch_dtype"})) {
    std::string name = *reader.optional_string(*key);
    config.dtype = dtype_from_torch_name(name);
    if (!config.dtype) reader.fail_key(*key, "names an unknown dtype '", name, "'");
  }
  config.pad_token_id = reader.optional_int("pad_token_id");
  config.bos_token_id = reader.optional_int("bos_token_id");
  config.eos_token_ids = reader.int_or_int_list("eos_token_id");

  config.rope = read_rope(reader, defaults.rope_theta, config.max_position_embeddings);
  if (std::optional<ConfigReader> quant = reader.optional_object("quantization_config"))
    config.checkpoint_quantization = quant->optional_string("quant_method").value_or("");
}

std::optional<std::vector<AttentionWindow>> read_layer_windows(const ConfigReader& reader, int64_t num_layers) {
  if (!reader.has("layer_types")) return std::nullopt;
  std::vector<std::string> names = reader.string_list("layer_types");
  if (static_cast<int64_t>(names.size()) != num_layers)
    reader.fail_key("layer_types", "has ", names.size(), " entries but num_hidden_layers is ", num_layers);
  std::vector<AttentionWindow> windows;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == "full_attention") {
      windows.push_back(AttentionWindow::kFull);
    } else if (names[i] == "sliding_attention") {
      windows.push_back(AttentionWindow::kSliding);
    } else {
      reader.fail_key(str_cat("layer_types[", i, "]"), "is '", names[i],
                      "'; expected 'full_attention' or 'sliding_attention'");
    }
  }
  return windows;
}

void require_activation(const ConfigReader& reader, const std::string& key, const std::string& value,
                        const char* expected) {
  if (value != expected)
    fail(ErrorCode::kUnsupported, reader.where(), ": key '", key, "' is '", value, "'; moeforge implements '",
         expected, "' for this model_type");
}

void add_tensor(std::vector<CheckpointTensor>& out, std::string name, std::vector<int64_t> shape,
                int64_t layer, TensorRole role, int64_t expert) {
  CheckpointTensor t;
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.role = role;
  t.layer = layer;
  t.expert = expert;
  out.push_back(std::move(t));
}

void add_linear(std::vector<CheckpointTensor>& out, const std::string& prefix, int64_t out_features,
                int64_t in_features, bool bias, int64_t layer, TensorRole role, int64_t expert) {
  add_tensor(out, prefix + ".weight", {out_features, in_features}, layer, role, expert);
  if (bias) add_tensor(out, prefix + ".bias", {out_features}, layer, role, expert);
}

void add_norm(std::vector<CheckpointTensor>& out, const std::string& name, int64_t size, int64_t layer) {
  add_tensor(out, name, {size}, layer);
}

void add_gqa_attention(std::vector<CheckpointTensor>& out, const std::string& prefix,
                       const ModelConfig& config, int64_t layer) {
  const AttentionConfig& a = config.attention;
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = a.num_heads * a.head_dim;
  const int64_t kv_width = a.num_kv_heads * a.head_dim;
  add_linear(out, prefix + ".q_proj", q_width, hidden, a.qkv_bias, layer);
  add_linear(out, prefix + ".k_proj", kv_width, hidden, a.qkv_bias, layer);
  add_linear(out, prefix + ".v_proj", kv_width, hidden, a.qkv_bias, layer);
  add_linear(out, prefix + ".o_proj", hidden, q_width, a.o_bias, layer);
  switch (a.qk_norm) {
    case AttentionConfig::QkNorm::kNone: break;
    case AttentionConfig::QkNorm::kPerHead:
      add_norm(out, prefix + ".q_norm.weight", a.head_dim, layer);
      add_norm(out, prefix + ".k_norm.weight", a.head_dim, layer);
      break;
    case AttentionConfig::QkNorm::kWholeProjection:
      // OLMoE sizes these from hidden_size, not head_dim (modeling_olmoe.py OlmoeAttention).
      add_norm(out, prefix + ".q_norm.weight", hidden, layer);
      add_norm(out, prefix + ".k_norm.weight", hidden / a.num_heads * a.num_kv_heads, layer);
      break;
  }
  if (a.sinks) add_tensor(out, prefix + ".sinks", {a.num_heads}, layer);
}

void add_swiglu_mlp(std::vector<CheckpointTensor>& out, const std::string& prefix, int64_t hidden,
                    int64_t intermediate, int64_t layer, TensorRole role, int64_t expert, SwiGluNames names) {
  add_linear(out, prefix + "." + names.gate, intermediate, hidden, false, layer, role, expert);
  add_linear(out, prefix + "." + names.up, intermediate, hidden, false, layer, role, expert);
  add_linear(out, prefix + "." + names.down, hidden, intermediate, false, layer, role, expert);
}

void add_per_expert_swiglu(std::vector<CheckpointTensor>& out, const std::string& prefix,
                           int64_t num_experts, int64_t hidden, int64_t intermediate, int64_t layer,
                           SwiGluNames names) {
  for (int64_t e = 0; e < num_experts; ++e)
    add_swiglu_mlp(out, str_cat(prefix, ".", e), hidden, intermediate, layer, TensorRole::kRoutedExpert, e,
                   names);
}

std::string layer_prefix(const char* root, int64_t layer) { return str_cat(root, ".layers.", layer, "."); }

}  // namespace moeforge::arch_detail
