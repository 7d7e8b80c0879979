// Qwen3 dense (Qwen3ForCausalLM): the dense fallback path. GQA with per-head q/k RMSNorm and a SwiGLU
// MLP in every layer.
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  // Qwen3Config's head_dim defaults to 128, not hidden_size / heads.
  read_common(r, c, {.rope_theta = 10000.0, .head_dim = 128});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.intermediate_size = r.required_positive_int("intermediate_size");
  c.attention.qkv_bias = c.attention.o_bias = r.bool_or("attention_bias", false);
  c.attention.qk_norm = AttentionConfig::QkNorm::kPerHead;
  if (r.bool_or("use_sliding_window", false)) c.attention.sliding_window = r.optional_int("sliding_window");

  // layer_types as written, else Transformers' rule: sliding from max_window_layers on, when enabled.
  std::optional<std::vector<AttentionWindow>> windows = read_layer_windows(r, c.num_hidden_layers);
  const int64_t max_window_layers = r.int_or("max_window_layers", 28);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerSpec layer;
    layer.ffn = LayerSpec::Ffn::kDense;
    if (windows) {
      layer.window = (*windows)[i];
    } else if (c.attention.sliding_window && i >= max_window_layers) {
      layer.window = AttentionWindow::kSliding;
    }
    c.layers.push_back(layer);
  }
}

void describe(const ModelConfig& c, ModelDescription& d) {
  WeightMapBuilder b(d, /*trainable=*/true);
  WeightMap& w = d.weights;
  w.embed = add_embedding(b, "model.embed_tokens.weight", c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    LayerSlots layer;
    layer.input_norm = add_norm(b, p + "input_layernorm.weight", c.hidden_size, i);
    layer.attention = add_gqa_attention(b, p + "self_attn", c, i);
    layer.post_norm = add_norm(b, p + "post_attention_layernorm.weight", c.hidden_size, i);
    layer.mlp = add_dense_swiglu(b, p + "mlp", c.hidden_size, c.intermediate_size, i);
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "model.norm.weight", c.hidden_size, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kQwen3Architecture{"qwen3", "Qwen3ForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
