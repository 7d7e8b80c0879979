// Helpers shared by the per-family files (qwen3_moe.cpp, mixtral.cpp, ...): reading the config keys
// that most families spell alike, and appending checkpoint tensors of common building blocks.
// Internal to src/arch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "arch/architecture.h"

namespace moeforge::arch_detail {

// The Transformers 5.17 config-class defaults that differ between families.
struct CommonDefaults {
  const char* eps_key = "rms_norm_eps";
  double eps = 1e-6;
  double rope_theta = 10000.0;             // the class's default_theta
  std::optional<int64_t> head_dim;         // nullopt: hidden_size / num_attention_heads
  bool kv_heads_default_to_heads = false;  // the class maps a missing num_key_value_heads to the heads
  bool layer_count_from_pattern = false;   // Nemotron-H: num_hidden_layers optional (pattern decides)
};

// vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
// max_position_embeddings, eps, hidden_act, tie_word_embeddings, dtype, token ids, and RoPE.
void read_common(const ConfigReader& reader, ModelConfig& config, const CommonDefaults& defaults);

// `rope_parameters` (5.x) or `rope_scaling` + `rope_theta` (hub files), as Transformers' standardize.
RopeParameters read_rope(const ConfigReader& reader, double default_theta, int64_t max_position_embeddings);

// `layer_types` ("full_attention"/"sliding_attention") when present, else nullopt.
std::optional<std::vector<AttentionWindow>> read_layer_windows(const ConfigReader& reader, int64_t num_layers);

// kUnsupported unless the activation named by `key` is `expected` (what moeforge implements).
void require_activation(const ConfigReader& reader, const std::string& key, const std::string& value,
                        const char* expected);

// Tensor list builders. `layer` is the decoder layer index (-1 outside layers).
void add_tensor(std::vector<CheckpointTensor>& out, std::string name, std::vector<int64_t> shape,
                int64_t layer, TensorRole role = TensorRole::kOther, int64_t expert = -1);
// `prefix`.weight [out_features, in_features] and, with bias, `prefix`.bias [out_features].
void add_linear(std::vector<CheckpointTensor>& out, const std::string& prefix, int64_t out_features,
                int64_t in_features, bool bias, int64_t layer, TensorRole role = TensorRole::kOther,
                int64_t expert = -1);
void add_norm(std::vector<CheckpointTensor>& out, const std::string& name, int64_t size, int64_t layer);

// Grouped-query attention q/k/v/o under `prefix` ("model.layers.3.self_attn"), with the biases,
// q/k norms and sinks that config.attention asks for.
void add_gqa_attention(std::vector<CheckpointTensor>& out, const std::string& prefix,
                       const ModelConfig& config, int64_t layer);

// A gated MLP: `prefix`.{gate,up,down}.weight (names given, e.g. gate_proj/up_proj/down_proj or
// Mixtral's w1/w3/w2), gate and up [intermediate, hidden], down [hidden, intermediate].
struct SwiGluNames {
  const char* gate = "gate_proj";
  const char* up = "up_proj";
  const char* down = "down_proj";
};
void add_swiglu_mlp(std::vector<CheckpointTensor>& out, const std::string& prefix, int64_t hidden,
                    int64_t intermediate, int64_t layer, TensorRole role = TensorRole::kOther,
                    int64_t expert = -1, SwiGluNames names = {});
// Routed experts stored one module per expert: `prefix`.<e>.{gate,up,down}...
void add_per_expert_swiglu(std::vector<CheckpointTensor>& out, const std::string& prefix,
                           int64_t num_experts, int64_t hidden, int64_t intermediate, int64_t layer,
                           SwiGluNames names = {});

// "model.layers.<layer>." and friends.
std::string layer_prefix(const char* root, int64_t layer);

}  // namespace moeforge::arch_detail
