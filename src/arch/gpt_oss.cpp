// GPT-OSS (GptOssForCausalLM): GQA with biases and a learned sink logit per head, alternating
// sliding-window (128) and full layers, a router with bias whose top-k logits are softmaxed, and
// clamped-SwiGLU experts stored fused per layer: gate_up_proj [E, H, 2I] (gate and up interleaved
// column by column) with gate_up_proj_bias [E, 2I], down_proj [E, I, H] with down_proj_bias [E, H].
// They are trained as every family's stacked experts, gate_up [E, 2I, H] gate rows first and down
// [E, H, I] (ParamSlice's transposed/interleaved say how the checkpoint differs). These are the
// bf16 names and shapes; OpenAI's release stores the two expert weights as MXFP4
// (<name>_blocks uint8 [E, out, in/32, 16] + <name>_scales uint8 [E, out, in/32]), which the
// loader dequantises into this layout (io/mxfp4.h).
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

// Transformers' GptOssExperts hard-codes its clamp and its sigmoid's slope.
constexpr double kSwigluLimit = 7.0;

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.eps = 1e-5, .rope_theta = 150000.0, .head_dim = 64, .kv_heads_default_to_heads = true});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.attention.qkv_bias = c.attention.o_bias = r.bool_or("attention_bias", true);
  c.attention.sinks = true;
  c.attention.sliding_window = r.int_or("sliding_window", 128);
  if (*c.attention.sliding_window <= 0) r.fail_key("sliding_window", "must be positive, got ", *c.attention.sliding_window);
  // GptOssConfig's rope when the file names none: YaRN, factor 32 over 4096 tokens, not truncated.
  if (!r.has("rope_scaling") && !r.has("rope_parameters")) {
    c.rope->type = RopeType::kYarn;
    c.rope->factor = 32.0;
    c.rope->beta_fast = 32.0;
    c.rope->beta_slow = 1.0;
    c.rope->truncate = false;
    c.rope->original_max_position_embeddings = 4096;
  }

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"num_local_experts", "num_experts"});
  // Hub files carry both num_experts_per_tok and OpenAI's experts_per_token; Transformers reads the first.
  moe.num_experts_per_tok = r.required_positive_int({"num_experts_per_tok", "experts_per_token"});
  moe.expert_intermediate_size = r.required_positive_int("intermediate_size");
  moe.activation = ExpertActivation::kGptOssClampedSwiGlu;
  moe.router_bias = true;
  // A softmax over the k chosen logits is the full softmax renormalised over those k.
  moe.norm_topk_prob = true;
  moe.swiglu_limit = r.number_or("swiglu_limit", kSwigluLimit);
  if (moe.swiglu_limit != kSwigluLimit)
    r.fail_key("swiglu_limit", "is ", moe.swiglu_limit, "; Transformers 5.17 clamps at ", kSwigluLimit,
               " whatever the config says, and moeforge follows it (no other limit is supported)");
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

// The experts under `prefix` ("model.layers.3.mlp.experts"): four checkpoint tensors, each one
// parameter (sharding class expert) in the stacked layout.
SwiGluSlots add_gpt_oss_experts(WeightMapBuilder& b, const std::string& prefix, int64_t experts, int64_t hidden,
                                int64_t inter, int64_t layer) {
  const TensorRole role = TensorRole::kRoutedExpert;
  const auto group = ParamGroup::kExperts;
  const auto shard = ShardClass::kExpert;
  SwiGluSlots s;
  s.gate_up = b.param(prefix + ".gate_up_proj", {experts, 2 * inter, hidden}, group, true, shard);
  b.tensor(prefix + ".gate_up_proj", {experts, hidden, 2 * inter}, layer, role, -1,
           {.param = s.gate_up, .transposed = true, .interleaved = true});
  b.back().mxfp4 = true;
  s.gate_up_bias = b.param(prefix + ".gate_up_proj_bias", {experts, 2 * inter}, group, false, shard);
  b.tensor(prefix + ".gate_up_proj_bias", {experts, 2 * inter}, layer, role, -1,
           {.param = s.gate_up_bias, .interleaved = true});
  s.down = b.param(prefix + ".down_proj", {experts, hidden, inter}, group, true, shard);
  b.tensor(prefix + ".down_proj", {experts, inter, hidden}, layer, role, -1, {.param = s.down, .transposed = true});
  b.back().mxfp4 = true;
  s.down_bias = b.param(prefix + ".down_proj_bias", {experts, hidden}, group, false, shard);
  b.tensor(prefix + ".down_proj_bias", {experts, hidden}, layer, role, -1, {.param = s.down_bias});
  return s;
}

void describe(const ModelConfig& c, ModelDescription& d) {
  WeightMapBuilder b(d, /*trainable=*/true);
  WeightMap& w = d.weights;
  const int64_t hidden = c.hidden_size;
  const int64_t experts = c.moe->num_experts, inter = c.moe->expert_intermediate_size;
  w.embed = add_embedding(b, "model.embed_tokens.weight", c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix("model", i);
    LayerSlots layer;
    layer.input_norm = add_norm(b, p + "input_layernorm.weight", hidden, i);
    layer.attention = add_gqa_attention(b, p + "self_attn", c, i);
    layer.post_norm = add_norm(b, p + "post_attention_layernorm.weight", hidden, i);
    layer.moe.router = add_router(b, p + "mlp.router.weight", p + "mlp.router.weight", experts, hidden, i);
    layer.moe.router_bias = b.whole(p + "mlp.router.bias", {experts}, ParamGroup::kRouter, false, i);
    layer.moe.experts = add_gpt_oss_experts(b, p + "mlp.experts", experts, hidden, inter, i);
    w.layers.push_back(layer);
  }
  w.final_norm = add_norm(b, "model.norm.weight", hidden, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
}

}  // namespace

extern const Architecture kGptOssArchitecture{"gpt_oss", "GptOssForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
