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

void describe(const ModelConfig& c, ModelDescription& d) {
  WeightMapBuilder b(d, /*trainable=*/true);
  WeightMap& w = d.weights;
  const MoeConfig& moe = *c.moe;
  w.embed = add_embedding(b, "model.embed_tokens.weight", c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    LayerSlots layer;
    layer.input_norm = add_norm(b, p + "input_layernorm.weight", c.hidden_size, i);
    layer.attention = add_gqa_attention(b, p + "self_attn", c, i);
    layer.post_norm = add_norm(b, p + "post_attention_layernorm.weight", c.hidden_size, i);
    layer.moe.router = add_router(b, p + "mlp.gate.weight", p + "mlp.gate.weight", moe.num_experts, c.hidden_size, i);
    layer.moe.experts = add_routed_experts(b, p + "mlp.experts", p + "mlp.experts", moe.num_experts,
                                           c.hidden_size, moe.expert_intermediate_size, i);
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "model.norm.weight", c.hidden_size, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kOlmoeArchitecture{"olmoe", "OlmoeForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
