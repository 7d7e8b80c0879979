// Qwen3-MoE (Qwen3MoeForCausalLM): GQA with per-head q/k RMSNorm, softmax top-k router, SwiGLU
// experts without shared experts; layers listed in mlp_only_layers (or off the decoder_sparse_step
// grid) use a dense MLP of intermediate_size.
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.rope_theta = 10000.0});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.attention.qkv_bias = c.attention.o_bias = r.bool_or("attention_bias", false);
  c.attention.qk_norm = AttentionConfig::QkNorm::kPerHead;
  // Transformers keeps a window only when use_sliding_window is true, and then on every layer.
  if (r.bool_or("use_sliding_window", false)) c.attention.sliding_window = r.optional_int("sliding_window");

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"num_experts", "num_local_experts"});
  moe.num_experts_per_tok = r.required_positive_int("num_experts_per_tok");
  moe.expert_intermediate_size = r.required_positive_int("moe_intermediate_size");
  moe.norm_topk_prob = r.bool_or("norm_topk_prob", false);
  moe.router_aux_loss_coef = r.number_or("router_aux_loss_coef", 0.001);
  moe.output_router_logits = r.bool_or("output_router_logits", false);
  c.moe = moe;

  const std::vector<int64_t> mlp_only = r.int_list("mlp_only_layers");
  const int64_t sparse_step = r.int_or("decoder_sparse_step", 1);
  if (sparse_step <= 0) r.fail_key("decoder_sparse_step", "must be positive, got ", sparse_step);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    bool dense = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end() || (i + 1) % sparse_step != 0;
    LayerSpec layer;
    layer.ffn = dense ? LayerSpec::Ffn::kDense : LayerSpec::Ffn::kMoe;
    layer.window = c.attention.sliding_window ? AttentionWindow::kSliding : AttentionWindow::kFull;
    c.layers.push_back(layer);
  }
  if (c.num_dense_ffn_layers() > 0) c.intermediate_size = r.required_positive_int("intermediate_size");
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
    if (c.layers[i].ffn == LayerSpec::Ffn::kMoe) {
      layer.moe.router = add_router(b, p + "mlp.gate.weight", p + "mlp.gate.weight", moe.num_experts, c.hidden_size, i);
      layer.moe.experts = add_routed_experts(b, p + "mlp.experts", p + "mlp.experts", moe.num_experts,
                                             c.hidden_size, moe.expert_intermediate_size, i);
    } else {
      layer.mlp = add_dense_swiglu(b, p + "mlp", c.hidden_size, c.intermediate_size, i);
    }
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "model.norm.weight", c.hidden_size, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kQwen3MoeArchitecture{"qwen3_moe", "Qwen3MoeForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
