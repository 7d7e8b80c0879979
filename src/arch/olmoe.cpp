// OLMoE (OlmoeForCausalLM): attention with RMSNorm over the whole q and k projections and optional
// q/k/v clipping, softmax top-k router, SwiGLU experts of width intermediate_size, no shared expert.
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.eps = 1e-5, .rope_theta = 10000.0, .kv_heads_default_to_heads = true});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.attention.qkv_bias = c.attention.o_bias = r.bool_or("attention_bias", false);
  c.attention.qk_norm = AttentionConfig::QkNorm::kWholeProjection;
  c.attention.clip_qkv = r.optional_number("clip_qkv");
  c.intermediate_size = r.required_positive_int("intermediate_size");

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"num_experts", "num_local_experts"});
  moe.num_experts_per_tok = r.required_positive_int("num_experts_per_tok");
  moe.expert_intermediate_size = c.intermediate_size;  // OLMoE experts use intermediate_size
  moe.norm_topk_prob = r.bool_or("norm_topk_prob", false);
  moe.router_aux_loss_coef = r.number_or("router_aux_loss_coef", 0.01);
  moe.output_router_logits = r.bool_or("output_router_logits", false);
  c.moe = moe;
  c.intermediate_size = 0;  // no dense layer
  c.layers.assign(c.num_hidden_layers, LayerSpec{.ffn = LayerSpec::Ffn::kMoe});
}

void list_tensors(const ModelConfig& c, std::vector<CheckpointTensor>& out) {
  const int64_t hidden = c.hidden_size;
  add_tensor(out, "model.embed_tokens.weight", {c.vocab_size, hidden}, -1, TensorRole::kEmbedding);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    add_norm(out, p + "input_layernorm.weight", hidden, i);
    add_gqa_attention(out, p + "self_attn", c, i);
    add_norm(out, p + "post_attention_layernorm.weight", hidden, i);
    add_linear(out, p + "mlp.gate", c.moe->num_experts, hidden, false, i);
    add_per_expert_swiglu(out, p + "mlp.experts", c.moe->num_experts, hidden, c.moe->expert_intermediate_size, i);
  }
  add_norm(out, "model.norm.weight", hidden, -1);
  if (!c.tie_word_embeddings) add_tensor(out, "lm_head.weight", {c.vocab_size, hidden}, -1, TensorRole::kLmHead);
}

}  // namespace

extern const Architecture kOlmoeArchitecture{"olmoe", "OlmoeForCausalLM", parse, list_tensors};

}  // namespace moeforge::arch_detail
