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

void list_tensors(const ModelConfig& c, std::vector<CheckpointTensor>& out) {
  const int64_t hidden = c.hidden_size;
  add_tensor(out, "model.embed_tokens.weight", {c.vocab_size, hidden}, -1, TensorRole::kEmbedding);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    add_norm(out, p + "input_layernorm.weight", hidden, i);
    add_gqa_attention(out, p + "self_attn", c, i);
    add_norm(out, p + "post_attention_layernorm.weight", hidden, i);
    add_swiglu_mlp(out, p + "mlp", hidden, c.intermediate_size, i);
  }
  add_norm(out, "model.norm.weight", hidden, -1);
  if (!c.tie_word_embeddings) add_tensor(out, "lm_head.weight", {c.vocab_size, hidden}, -1, TensorRole::kLmHead);
}

}  // namespace

extern const Architecture kQwen3Architecture{"qwen3", "Qwen3ForCausalLM", parse, list_tensors};

}  // namespace moeforge::arch_detail
