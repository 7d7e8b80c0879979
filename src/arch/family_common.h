// Helpers shared by the per-family files (qwen3_moe.cpp, mixtral.cpp, ...): reading the config keys
// that most families spell alike, and describing common building blocks' tensors and parameters.
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

// Builds a ModelDescription. In a trainable family's description every checkpoint tensor is bound
// to a slice of a declared parameter; in an inventory-only one (families parsed and counted but not
// yet trained) parameters are not declared and tensors stay unbound. The helpers below spell each
// family's tensor names once and serve both.
class WeightMapBuilder {
 public:
  WeightMapBuilder(ModelDescription& description, bool trainable)
      : d_(description), trainable_(trainable) {}
  bool trainable() const { return trainable_; }
  // Declares a training parameter; returns its index (-1 in an inventory-only description).
  int param(std::string name, Shape shape, ParamGroup group, bool weight_decay,
            ShardClass shard_class = ShardClass::kReplicated);
  // Records a checkpoint tensor that is `slice` of a parameter (unbound when slice.param is -1).
  void tensor(std::string name, Shape shape, int64_t layer, TensorRole role = TensorRole::kOther,
              int64_t expert = -1, ParamSlice slice = {});
  // A persistent buffer that Transformers saves and loads but never trains, kept in float32 as its
  // _keep_in_fp32_modules_strict does (DeepSeek's e_score_correction_bias): a frozen parameter of
  // the same name and shape, with no gradient and no optimizer state.
  int fp32_buffer(const std::string& name, const Shape& shape, ParamGroup group, int64_t layer);
  // A checkpoint tensor that is a parameter of the same name and shape.
  int whole(const std::string& name, const Shape& shape, ParamGroup group, bool weight_decay,
            int64_t layer, TensorRole role = TensorRole::kOther);
  // The tensors recorded so far (to mark buffers and multi-token-prediction layers).
  size_t size() const { return d_.tensors.size(); }
  CheckpointTensor& at(size_t i) { return d_.tensors[i]; }
  CheckpointTensor& back() { return d_.tensors.back(); }

 private:
  ModelDescription& d_;
  bool trainable_;
};

// An unbound checkpoint tensor (inventory-only families). `layer` is the decoder layer index (-1
// outside layers).
void add_tensor(WeightMapBuilder& b, std::string name, std::vector<int64_t> shape, int64_t layer,
                TensorRole role = TensorRole::kOther, int64_t expert = -1);
// `prefix`.weight [out_features, in_features] and, with bias, `prefix`.bias [out_features], each a
// parameter of its own (biases without weight decay).
LinearSlots add_linear(WeightMapBuilder& b, const std::string& prefix, int64_t out_features,
                       int64_t in_features, bool bias, int64_t layer, TensorRole role = TensorRole::kOther,
                       ParamGroup group = ParamGroup::kAttention);
int add_norm(WeightMapBuilder& b, const std::string& name, int64_t size, int64_t layer);
int add_embedding(WeightMapBuilder& b, const std::string& name, const ModelConfig& config);
// The untied output projection; -1 (and no tensor) when tie_word_embeddings.
int add_lm_head(WeightMapBuilder& b, const std::string& name, const ModelConfig& config);

// Grouped-query attention q/k/v/o under `prefix` ("model.layers.3.self_attn"), with the biases,
// q/k norms and sinks (no weight decay, as biases) that config.attention asks for.
AttentionSlots add_gqa_attention(WeightMapBuilder& b, const std::string& prefix, const ModelConfig& config,
                                 int64_t layer);

// Names of a gated MLP's projections: gate_proj/up_proj/down_proj, or Mixtral's w1/w3/w2.
struct SwiGluNames {
  const char* gate = "gate_proj";
  const char* up = "up_proj";
  const char* down = "down_proj";
};
// A gated MLP `prefix`.{gate,up,down}.weight, gate and up [intermediate, hidden], down [hidden,
// intermediate]; trained as the fused parameter `prefix`.gate_up_proj [2 intermediate, hidden] (gate
// rows first) and `prefix`.down.weight.
SwiGluSlots add_dense_swiglu(WeightMapBuilder& b, const std::string& prefix, int64_t hidden,
                             int64_t intermediate, int64_t layer, ParamGroup group = ParamGroup::kDenseMlp,
                             SwiGluNames names = {});
// Routed experts stored one module per expert, `checkpoint_prefix`.<e>.{gate,up,down}.weight, trained
// as Transformers 5 holds them: `param_prefix`.gate_up_proj [E, 2I, H] and `param_prefix`.down_proj
// [E, H, I] (sharding class expert).
SwiGluSlots add_routed_experts(WeightMapBuilder& b, const std::string& param_prefix,
                               const std::string& checkpoint_prefix, int64_t num_experts, int64_t hidden,
                               int64_t intermediate, int64_t layer, SwiGluNames names = {});
// A router linear [num_experts, hidden] without bias, trained as `param_name`.
int add_router(WeightMapBuilder& b, const std::string& param_name, const std::string& checkpoint_name,
               int64_t num_experts, int64_t hidden, int64_t layer);

// "model.layers.<layer>." and friends.
std::string layer_prefix(const char* root, int64_t layer);

}  // namespace moeforge::arch_detail
