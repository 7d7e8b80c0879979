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
  if (std::optional<ConfigReader> quant = reader.optional_object("quantization_config")) {
    config.checkpoint_quantization = quant->optional_string("quant_method").value_or("");
    if (config.checkpoint_quantization == "fp8") {
      const std::string fmt = quant->optional_string("fmt").value_or("e4m3");
      if (fmt != "e4m3") quant->fail_key("fmt", "is '", fmt, "'; moeforge reads e4m3 FP8 checkpoints");
      config.fp8_block = quant->has("weight_block_size") ? quant->int_list("weight_block_size")
                                                         : std::vector<int64_t>{128, 128};
      if (config.fp8_block.size() != 2 || config.fp8_block[0] <= 0 || config.fp8_block[1] <= 0)
        quant->fail_key("weight_block_size", "must be two positive sizes [rows, columns]");
    }
  }
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

int WeightMapBuilder::param(std::string name, Shape shape, ParamGroup group, bool weight_decay,
                            ShardClass shard_class) {
  if (!trainable_) return -1;
  return d_.weights.params.add(std::move(name), std::move(shape), group, weight_decay, shard_class);
}

int WeightMapBuilder::fp32_buffer(const std::string& name, const Shape& shape, ParamGroup group, int64_t layer) {
  const int p = param(name, shape, group, false, ShardClass::kFrozen);
  if (p >= 0) d_.weights.params.keep_in_fp32(p);
  tensor(name, shape, layer, TensorRole::kOther, -1, {.param = p});
  back().buffer = true;
  return p;
}

void WeightMapBuilder::tensor(std::string name, Shape shape, int64_t layer, TensorRole role, int64_t expert,
                              ParamSlice slice) {
  CheckpointTensor t;
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.role = role;
  t.layer = layer;
  t.expert = expert;
  t.slice = slice;
  d_.tensors.push_back(std::move(t));
}

int WeightMapBuilder::whole(const std::string& name, const Shape& shape, ParamGroup group, bool weight_decay,
                            int64_t layer, TensorRole role) {
  const int p = param(name, shape, group, weight_decay);
  tensor(name, shape, layer, role, -1, {.param = p});
  return p;
}

void add_tensor(WeightMapBuilder& b, std::string name, std::vector<int64_t> shape, int64_t layer,
                TensorRole role, int64_t expert) {
  b.tensor(std::move(name), std::move(shape), layer, role, expert);
}

LinearSlots add_linear(WeightMapBuilder& b, const std::string& prefix, int64_t out_features,
                       int64_t in_features, bool bias, int64_t layer, TensorRole role, ParamGroup group) {
  LinearSlots s;
  s.weight = b.whole(prefix + ".weight", {out_features, in_features}, group, true, layer, role);
  if (bias) s.bias = b.whole(prefix + ".bias", {out_features}, group, false, layer, role);
  return s;
}

int add_norm(WeightMapBuilder& b, const std::string& name, int64_t size, int64_t layer) {
  return b.whole(name, {size}, ParamGroup::kNorm, false, layer);
}

int add_embedding(WeightMapBuilder& b, const std::string& name, const ModelConfig& c) {
  return b.whole(name, {c.vocab_size, c.hidden_size}, ParamGroup::kEmbedding, true, -1, TensorRole::kEmbedding);
}

int add_lm_head(WeightMapBuilder& b, const std::string& name, const ModelConfig& c) {
  if (c.tie_word_embeddings) return -1;
  return b.whole(name, {c.vocab_size, c.hidden_size}, ParamGroup::kLmHead, true, -1, TensorRole::kLmHead);
}

AttentionSlots add_gqa_attention(WeightMapBuilder& b, const std::string& prefix, const ModelConfig& config,
                                 int64_t layer) {
  const AttentionConfig& a = config.attention;
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = a.num_heads * a.head_dim;
  const int64_t kv_width = a.num_kv_heads * a.head_dim;
  AttentionSlots s;
  s.q = add_linear(b, prefix + ".q_proj", q_width, hidden, a.qkv_bias, layer);
  s.k = add_linear(b, prefix + ".k_proj", kv_width, hidden, a.qkv_bias, layer);
  s.v = add_linear(b, prefix + ".v_proj", kv_width, hidden, a.qkv_bias, layer);
  s.o = add_linear(b, prefix + ".o_proj", hidden, q_width, a.o_bias, layer);
  switch (a.qk_norm) {
    case AttentionConfig::QkNorm::kNone: break;
    case AttentionConfig::QkNorm::kPerHead:
      s.q_norm = add_norm(b, prefix + ".q_norm.weight", a.head_dim, layer);
      s.k_norm = add_norm(b, prefix + ".k_norm.weight", a.head_dim, layer);
      break;
    case AttentionConfig::QkNorm::kWholeProjection:
      // OLMoE sizes these from hidden_size, not head_dim (modeling_olmoe.py OlmoeAttention).
      s.q_norm = add_norm(b, prefix + ".q_norm.weight", hidden, layer);
      s.k_norm = add_norm(b, prefix + ".k_norm.weight", hidden / a.num_heads * a.num_kv_heads, layer);
      break;
  }
  if (a.sinks) s.sinks = b.whole(prefix + ".sinks", {a.num_heads}, ParamGroup::kAttention, false, layer);
  return s;
}

SwiGluSlots add_dense_swiglu(WeightMapBuilder& b, const std::string& prefix, int64_t hidden,
                             int64_t intermediate, int64_t layer, ParamGroup group, SwiGluNames names) {
  SwiGluSlots s;
  s.gate_up = b.param(prefix + ".gate_up_proj", {2 * intermediate, hidden}, group, true);
  b.tensor(str_cat(prefix, ".", names.gate, ".weight"), {intermediate, hidden}, layer, TensorRole::kOther, -1,
           {.param = s.gate_up, .row_begin = 0, .row_end = intermediate});
  b.tensor(str_cat(prefix, ".", names.up, ".weight"), {intermediate, hidden}, layer, TensorRole::kOther, -1,
           {.param = s.gate_up, .row_begin = intermediate, .row_end = 2 * intermediate});
  s.down = b.whole(str_cat(prefix, ".", names.down, ".weight"), {hidden, intermediate}, group, true, layer);
  return s;
}

SwiGluSlots add_routed_experts(WeightMapBuilder& b, const std::string& param_prefix,
                               const std::string& checkpoint_prefix, int64_t num_experts, int64_t hidden,
                               int64_t intermediate, int64_t layer, SwiGluNames names) {
  SwiGluSlots s;
  s.gate_up = b.param(param_prefix + ".gate_up_proj", {num_experts, 2 * intermediate, hidden},
                      ParamGroup::kExperts, true, ShardClass::kExpert);
  s.down = b.param(param_prefix + ".down_proj", {num_experts, hidden, intermediate}, ParamGroup::kExperts,
                   true, ShardClass::kExpert);
  const TensorRole role = TensorRole::kRoutedExpert;
  for (int64_t e = 0; e < num_experts; ++e) {
    const std::string x = str_cat(checkpoint_prefix, ".", e, ".");
    b.tensor(str_cat(x, names.gate, ".weight"), {intermediate, hidden}, layer, role, e,
             {.param = s.gate_up, .expert = e, .row_begin = 0, .row_end = intermediate});
    b.tensor(str_cat(x, names.up, ".weight"), {intermediate, hidden}, layer, role, e,
             {.param = s.gate_up, .expert = e, .row_begin = intermediate, .row_end = 2 * intermediate});
    b.tensor(str_cat(x, names.down, ".weight"), {hidden, intermediate}, layer, role, e,
             {.param = s.down, .expert = e});
  }
  return s;
}

int add_router(WeightMapBuilder& b, const std::string& param_name, const std::string& checkpoint_name,
               int64_t num_experts, int64_t hidden, int64_t layer) {
  const int p = b.param(param_name, {num_experts, hidden}, ParamGroup::kRouter, true);
  b.tensor(checkpoint_name, {num_experts, hidden}, layer, TensorRole::kOther, -1, {.param = p});
  return p;
}

std::string layer_prefix(const char* root, int64_t layer) { return str_cat(root, ".layers.", layer, "."); }

}  // namespace moeforge::arch_detail
