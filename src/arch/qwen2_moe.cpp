// Qwen2-MoE (Qwen2MoeForCausalLM): GQA with q/k/v biases, softmax top-k router, SwiGLU experts plus a
// shared expert whose output is scaled by sigmoid(shared_expert_gate(x)).
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.rope_theta = 10000.0});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.attention.qkv_bias = r.bool_or("qkv_bias", true);
  c.attention.o_bias = false;
  const bool use_sliding_window = r.bool_or("use_sliding_window", false);
  if (use_sliding_window) c.attention.sliding_window = r.optional_int("sliding_window");

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"num_experts", "num_local_experts"});
  moe.num_experts_per_tok = r.required_positive_int("num_experts_per_tok");
  moe.expert_intermediate_size = r.required_positive_int("moe_intermediate_size");
  moe.num_shared_experts = 1;
  moe.shared_expert_intermediate_size = r.required_positive_int("shared_expert_intermediate_size");
  moe.shared_expert_gate = true;
  moe.norm_topk_prob = r.bool_or("norm_topk_prob", false);
  moe.router_aux_loss_coef = r.number_or("router_aux_loss_coef", 0.001);
  moe.output_router_logits = r.bool_or("output_router_logits", false);
  c.moe = moe;

  // layer_types as written, else Transformers' rule (odd-numbered layers below max_window_layers).
  std::optional<std::vector<AttentionWindow>> windows = read_layer_windows(r, c.num_hidden_layers);
  const int64_t max_window_layers = r.int_or("max_window_layers", 28);
  const std::vector<int64_t> mlp_only = r.int_list("mlp_only_layers");
  const int64_t sparse_step = r.int_or("decoder_sparse_step", 1);
  if (sparse_step <= 0) r.fail_key("decoder_sparse_step", "must be positive, got ", sparse_step);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    bool dense = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end() || (i + 1) % sparse_step != 0;
    LayerSpec layer;
    layer.ffn = dense ? LayerSpec::Ffn::kDense : LayerSpec::Ffn::kMoe;
    if (windows) {
      layer.window = (*windows)[i];
    } else if (use_sliding_window && (i + 1) % 2 == 1 && i < max_window_layers) {
      layer.window = AttentionWindow::kSliding;
    }
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
      layer.moe.shared = add_dense_swiglu(b, p + "mlp.shared_expert", c.hidden_size,
                                          moe.shared_expert_intermediate_size, i, ParamGroup::kSharedExperts);
      layer.moe.shared_gate = add_linear(b, p + "mlp.shared_expert_gate", 1, c.hidden_size, false, i,
                                         TensorRole::kOther, ParamGroup::kSharedExperts).weight;
    } else {
      layer.mlp = add_dense_swiglu(b, p + "mlp", c.hidden_size, c.intermediate_size, i);
    }
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "model.norm.weight", c.hidden_size, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kQwen2MoeArchitecture{"qwen2_moe", "Qwen2MoeForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
