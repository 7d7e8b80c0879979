// GPT-OSS (GptOssForCausalLM): GQA with biases and a learned sink logit per head, alternating
// sliding-window (128) and full layers, a router with bias whose top-k logits are softmaxed, and
// clamped-SwiGLU experts stored fused per layer: gate_up_proj [E, H, 2I] (gate and up interleaved
// column by column) with gate_up_proj_bias [E, 2I], down_proj [E, I, H] with down_proj_bias [E, H].
// These are the bf16 names and shapes; OpenAI's release stores the two expert weights as MXFP4
// (<name>_blocks uint8 [E, out, in/32, 16] + <name>_scales uint8 [E, out, in/32], out-major), which
// the loader dequantizes into this layout.
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.eps = 1e-5, .rope_theta = 150000.0, .head_dim = 64});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.attention.qkv_bias = c.attention.o_bias = r.bool_or("attention_bias", true);
  c.attention.sinks = true;
  c.attention.sliding_window = r.int_or("sliding_window", 128);
  if (*c.attention.sliding_window <= 0) r.fail_key("sliding_window", "must be positive, got ", *c.attention.sliding_window);

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"num_local_experts", "num_experts"});
  // Hub files carry both num_experts_per_tok and OpenAI's experts_per_token; Transformers reads the first.
  moe.num_experts_per_tok = r.required_positive_int({"num_experts_per_tok", "experts_per_token"});
  moe.expert_intermediate_size = r.required_positive_int("intermediate_size");
  moe.activation = ExpertActivation::kGptOssClampedSwiGlu;
  moe.router_bias = true;
  moe.norm_topk_prob = true;  // softmax over the k selected logits
  moe.swiglu_limit = r.number_or("swiglu_limit", 7.0);
  moe.router_aux_loss_coef = r.number_or("router_aux_loss_coef", 0.001);
  moe.output_router_logits = r.bool_or("output_router_logits", false);
  c.moe = moe;

  // layer_types as written, else Transformers' default: even layers sliding, odd layers full.
  std::optional<std::vector<AttentionWindow>> windows = read_layer_windows(r, c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerSpec layer{.ffn = LayerSpec::Ffn::kMoe};
    layer.window = windows ? (*windows)[i] : (i % 2 == 0 ? AttentionWindow::kSliding : AttentionWindow::kFull);
    c.layers.push_back(layer);
  }
}

void list_tensors(const ModelConfig& c, WeightMapBuilder& b) {
  const int64_t hidden = c.hidden_size;
  const int64_t experts = c.moe->num_experts, inter = c.moe->expert_intermediate_size;
  add_tensor(b, "model.embed_tokens.weight", {c.vocab_size, hidden}, -1, TensorRole::kEmbedding);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    add_norm(b, p + "input_layernorm.weight", hidden, i);
    add_gqa_attention(b, p + "self_attn", c, i);
    add_norm(b, p + "post_attention_layernorm.weight", hidden, i);
    add_linear(b, p + "mlp.router", experts, hidden, true, i);
    const auto expert = TensorRole::kRoutedExpert;
    add_tensor(b, p + "mlp.experts.gate_up_proj", {experts, hidden, 2 * inter}, i, expert);
    add_tensor(b, p + "mlp.experts.gate_up_proj_bias", {experts, 2 * inter}, i, expert);
    add_tensor(b, p + "mlp.experts.down_proj", {experts, inter, hidden}, i, expert);
    add_tensor(b, p + "mlp.experts.down_proj_bias", {experts, hidden}, i, expert);
  }
  add_norm(b, "model.norm.weight", hidden, -1);
  if (!c.tie_word_embeddings) add_tensor(b, "lm_head.weight", {c.vocab_size, hidden}, -1, TensorRole::kLmHead);
}

// Parsed and counted, not yet trainable: the tensors only.
void describe(const ModelConfig& c, ModelDescription& d) {
  WeightMapBuilder b(d, /*trainable=*/false);
  list_tensors(c, b);
}

}  // namespace

extern const Architecture kGptOssArchitecture{"gpt_oss", "GptOssForCausalLM", parse, describe, /*trainable=*/false};

}  // namespace moeforge::arch_detail
