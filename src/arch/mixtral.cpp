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
  moe.router_jitter_noise = r.number_or("router_jitter_noise", 0.0);
  c.moe = moe;
  LayerSpec layer{.ffn = LayerSpec::Ffn::kMoe};
  if (c.attention.sliding_window) layer.window = AttentionWindow::kSliding;
  c.layers.assign(c.num_hidden_layers, layer);
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
    // Trained under Transformers 5's runtime names (mlp.gate, mlp.experts.*), read and written under the
    // checkpoint's (block_sparse_moe.gate, block_sparse_moe.experts.<e>.w1/w3/w2).
    layer.moe.router = add_router(b, p + "mlp.gate.weight", p + "block_sparse_moe.gate.weight", moe.num_experts,
                                  c.hidden_size, i);
    layer.moe.experts = add_routed_experts(b, p + "mlp.experts", p + "block_sparse_moe.experts", moe.num_experts,
                                           c.hidden_size, moe.expert_intermediate_size, i,
                                           {.gate = "w1", .up = "w3", .down = "w2"});
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "model.norm.weight", c.hidden_size, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kMixtralArchitecture{"mixtral", "MixtralForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
