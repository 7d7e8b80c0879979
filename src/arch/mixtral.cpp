// Mixtral (MixtralForCausalLM): plain GQA, softmax top-k router, SwiGLU experts of width
// intermediate_size. Its checkpoints keep the original names: block_sparse_moe.gate and per-expert
// w1 (gate), w3 (up), w2 (down); Transformers 5 renames them to mlp.* on load.
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.eps = 1e-5, .rope_theta = 1000000.0});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.attention.sliding_window = r.optional_int("sliding_window");

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"num_local_experts", "num_experts"});
  moe.num_experts_per_tok = r.required_positive_int("num_experts_per_tok");
  moe.expert_intermediate_size = r.required_positive_int("intermediate_size");
  moe.norm_topk_prob = true;  // Mixtral always renormalises its top-k softmax weights
  moe.router_aux_loss_coef = r.number_or("router_aux_loss_coef", 0.001);
  moe.output_router_logits = r.bool_or("output_router_logits", false);
  c.moe = moe;
  LayerSpec layer{.ffn = LayerSpec::Ffn::kMoe};
  if (c.attention.sliding_window) layer.window = AttentionWindow::kSliding;
  c.layers.assign(c.num_hidden_layers, layer);
}

void list_tensors(const ModelConfig& c, std::vector<CheckpointTensor>& out) {
  const int64_t hidden = c.hidden_size;
  add_tensor(out, "model.embed_tokens.weight", {c.vocab_size, hidden}, -1, TensorRole::kEmbedding);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    add_norm(out, p + "input_layernorm.weight", hidden, i);
    add_gqa_attention(out, p + "self_attn", c, i);
    add_norm(out, p + "post_attention_layernorm.weight", hidden, i);
    add_linear(out, p + "block_sparse_moe.gate", c.moe->num_experts, hidden, false, i);
    add_per_expert_swiglu(out, p + "block_sparse_moe.experts", c.moe->num_experts, hidden,
                          c.moe->expert_intermediate_size, i, {.gate = "w1", .up = "w3", .down = "w2"});
  }
  add_norm(out, "model.norm.weight", hidden, -1);
  if (!c.tie_word_embeddings) add_tensor(out, "lm_head.weight", {c.vocab_size, hidden}, -1, TensorRole::kLmHead);
}

}  // namespace

extern const Architecture kMixtralArchitecture{"mixtral", "MixtralForCausalLM", parse, list_tensors};

}  // namespace moeforge::arch_detail
