// DeepSeek-V3 (DeepseekV3ForCausalLM): multi-head latent attention, the first first_k_dense_replace
// layers dense and the rest MoE with a sigmoid router (e_score_correction_bias for selection,
// group-limited top-k, routed_scaling_factor) plus shared experts. The checkpoint also stores
// num_nextn_predict_layers multi-token-prediction layers after the main ones (model.layers.61.* for
// V3); Transformers neither builds nor loads them, so they are listed with `mtp` set, counted apart
// and bound to no parameter (loading skips them; save_pretrained carries them over from the source).
#include "arch/family_common.h"

namespace moeforge::arch_detail {
namespace {

void parse(const ConfigReader& r, ModelConfig& c) {
  read_common(r, c, {.rope_theta = 10000.0});
  require_activation(r, "hidden_act", c.hidden_act, "silu");
  c.intermediate_size = r.required_positive_int("intermediate_size");

  MlaConfig mla;
  // q_lora_rank may be null (Moonlight: q is a single projection) but must be stated.
  if (!r.object().contains("q_lora_rank")) r.fail_key("q_lora_rank", "is missing (null if q has no LoRA)");
  mla.q_lora_rank = r.optional_int("q_lora_rank");
  if (mla.q_lora_rank && *mla.q_lora_rank <= 0) r.fail_key("q_lora_rank", "must be positive or null, got ", *mla.q_lora_rank);
  mla.kv_lora_rank = r.required_positive_int("kv_lora_rank");
  mla.qk_nope_head_dim = r.required_positive_int("qk_nope_head_dim");
  mla.qk_rope_head_dim = r.required_positive_int("qk_rope_head_dim");
  mla.v_head_dim = r.required_positive_int("v_head_dim");
  mla.rope_interleave = r.bool_or("rope_interleave", true);
  c.mla = mla;
  // Transformers sets head_dim = qk_rope_head_dim (the rotary dimension).
  c.attention.head_dim = mla.qk_rope_head_dim;
  c.attention.qkv_bias = c.attention.o_bias = r.bool_or("attention_bias", false);

  MoeConfig moe;
  moe.num_experts = r.required_positive_int({"n_routed_experts", "num_local_experts"});
  moe.num_experts_per_tok = r.required_positive_int("num_experts_per_tok");
  moe.expert_intermediate_size = r.required_positive_int("moe_intermediate_size");
  moe.num_shared_experts = r.required_int("n_shared_experts");
  if (moe.num_shared_experts < 0) r.fail_key("n_shared_experts", "must not be negative, got ", moe.num_shared_experts);
  moe.shared_expert_intermediate_size = moe.expert_intermediate_size * moe.num_shared_experts;
  moe.scoring = RouterScoring::kSigmoid;
  moe.score_correction_bias = true;
  moe.norm_topk_prob = r.bool_or("norm_topk_prob", true);
  moe.routed_scaling_factor = r.number_or("routed_scaling_factor", 2.5);
  moe.n_group = r.int_or("n_group", 8);
  moe.topk_group = r.int_or("topk_group", 4);
  c.moe = moe;

  const int64_t first_dense = r.required_int("first_k_dense_replace");
  if (first_dense < 0 || first_dense > c.num_hidden_layers)
    r.fail_key("first_k_dense_replace", "must be in [0, num_hidden_layers = ", c.num_hidden_layers, "], got ", first_dense);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    c.layers.push_back(LayerSpec{.ffn = i < first_dense ? LayerSpec::Ffn::kDense : LayerSpec::Ffn::kMoe});
  c.num_mtp_layers = r.int_or("num_nextn_predict_layers", 0);
  if (c.num_mtp_layers < 0) r.fail_key("num_nextn_predict_layers", "must not be negative, got ", c.num_mtp_layers);
}

MlaSlots add_mla_attention(WeightMapBuilder& b, const std::string& prefix, const ModelConfig& c, int64_t layer) {
  const MlaConfig& m = *c.mla;
  const int64_t hidden = c.hidden_size, heads = c.attention.num_heads;
  const bool bias = c.attention.qkv_bias;
  MlaSlots s;
  if (m.q_lora_rank) {
    s.q_a = add_linear(b, prefix + ".q_a_proj", *m.q_lora_rank, hidden, bias, layer);
    s.q_a_norm = add_norm(b, prefix + ".q_a_layernorm.weight", *m.q_lora_rank, layer);
    s.q_b = add_linear(b, prefix + ".q_b_proj", heads * m.qk_head_dim(), *m.q_lora_rank, false, layer);
  } else {
    s.q = add_linear(b, prefix + ".q_proj", heads * m.qk_head_dim(), hidden, false, layer);
  }
  s.kv_a = add_linear(b, prefix + ".kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_head_dim, hidden, bias, layer);
  s.kv_a_norm = add_norm(b, prefix + ".kv_a_layernorm.weight", m.kv_lora_rank, layer);
  s.kv_b = add_linear(b, prefix + ".kv_b_proj", heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, false, layer);
  s.o = add_linear(b, prefix + ".o_proj", hidden, heads * m.v_head_dim, c.attention.o_bias, layer);
  return s;
}

// One decoder layer (main or MTP) under model.layers.<i>.
LayerSlots add_decoder_layer(WeightMapBuilder& b, const ModelConfig& c, int64_t i, bool moe_layer) {
  const int64_t hidden = c.hidden_size;
  const std::string p = layer_prefix("model", i);
  LayerSlots layer;
  layer.input_norm = add_norm(b, p + "input_layernorm.weight", hidden, i);
  layer.mla = add_mla_attention(b, p + "self_attn", c, i);
  layer.post_norm = add_norm(b, p + "post_attention_layernorm.weight", hidden, i);
  if (!moe_layer) {
    layer.mlp = add_dense_swiglu(b, p + "mlp", hidden, c.intermediate_size, i);
    return layer;
  }
  const MoeConfig& moe = *c.moe;
  layer.moe.router = add_router(b, p + "mlp.gate.weight", p + "mlp.gate.weight", moe.num_experts, hidden, i);
  layer.moe.score_bias = add_score_bias(b, p + "mlp.gate.e_score_correction_bias", moe.num_experts, i);
  layer.moe.experts = add_routed_experts(b, p + "mlp.experts", p + "mlp.experts", moe.num_experts, hidden,
                                         moe.expert_intermediate_size, i);
  if (moe.num_shared_experts > 0)
    layer.moe.shared = add_dense_swiglu(b, p + "mlp.shared_experts", hidden, moe.shared_expert_intermediate_size, i,
                                        ParamGroup::kSharedExperts);
  return layer;
}

// MTP layers (DeepSeek's README_WEIGHTS.md): their own copies of the embedding and output head
// (shared with the main model in DeepSeek's code), enorm/hnorm, eh_proj [H, 2H], a full MoE
// decoder layer and shared_head.norm. Listed (counted, named) but bound to no parameter: the model
// Transformers builds has none of them.
void add_mtp_layers(ModelDescription& d, const ModelConfig& c) {
  WeightMapBuilder b(d, /*trainable=*/false);
  const int64_t hidden = c.hidden_size;
  for (int64_t j = 0; j < c.num_mtp_layers; ++j) {
    const int64_t i = c.num_hidden_layers + j;
    const std::string p = layer_prefix("model", i);
    const size_t first = b.size();
    add_tensor(b, p + "embed_tokens.weight", {c.vocab_size, hidden}, i, TensorRole::kEmbedding);
    add_norm(b, p + "enorm.weight", hidden, i);
    add_norm(b, p + "hnorm.weight", hidden, i);
    add_linear(b, p + "eh_proj", hidden, 2 * hidden, false, i);
    add_decoder_layer(b, c, i, /*moe_layer=*/true);
    add_norm(b, p + "shared_head.norm.weight", hidden, i);
    add_tensor(b, p + "shared_head.head.weight", {c.vocab_size, hidden}, i, TensorRole::kLmHead);
    for (size_t k = first; k < b.size(); ++k) b.at(k).mtp = true;
  }
}

void describe(const ModelConfig& c, ModelDescription& d) {
  WeightMapBuilder b(d, /*trainable=*/true);
  WeightMap& w = d.weights;
  w.embed = add_embedding(b, "model.embed_tokens.weight", c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    w.layers.push_back(add_decoder_layer(b, c, i, c.layers[i].ffn == LayerSpec::Ffn::kMoe));
  w.final_norm = add_norm(b, "model.norm.weight", c.hidden_size, -1);
  w.lm_head = add_lm_head(b, "lm_head.weight", c);
  add_mtp_layers(d, c);
}

}  // namespace

extern const Architecture kDeepseekV3Architecture{"deepseek_v3", "DeepseekV3ForCausalLM", parse, describe, /*trainable=*/true};

}  // namespace moeforge::arch_detail
