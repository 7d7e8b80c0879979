// LoRA adapters on a model description, in Hugging Face PEFT's terms and file format.
//
//   LoraConfig lora = LoraConfig::from_json(read_json_file(dir / "adapter_config.json"), ...);
//   std::vector<AdapterTensor> adapters = add_lora(description, config, lora);
//
// add_lora freezes every base parameter (ShardClass::kFrozen: no gradient, no optimizer state),
// declares an A/B pair per adapted projection, and sets the blocks' LoraSlots. A projection is
// adapted as PEFT adapts it: a module named by `target_modules` (q_proj, o_proj, ...: lora.Linear,
// A [r, in], B [out, r]) or a stacked expert parameter named by `target_parameters`
// (mlp.experts.gate_up_proj / down_proj: PEFT's ParamWrapper, one pair per expert; the router's
// mlp.gate.weight, one pair). The forward adds
// scale * (x A^T) B^T to the projection's output, scale = alpha / r (alpha / sqrt(r) with rsLoRA).
//
// Expert adapters are trained as [E, r, in] and [E, out, r] so the grouped expert products read each
// expert's pair in place. PEFT's file holds A as [r * E, in] (expert-major: the same bytes) and B as
// [out, r * E] with the expert index fastest (column j * E + e is expert e's column j), which
// AdapterLayout::kExpertColumnsInterleaved converts on save and load. GPT-OSS's checkpoint stores its
// experts transposed ([E, in, out], which PEFT reads as such: its adapters are still A [r * E, in],
// B [out, r * E]) with gate and up columns interleaved, so its gate_up_proj B also interleaves rows
// (AdapterLayout::kExpertColumnsInterleavedGateUpRows).
//
// PEFT 0.21 rewrites Transformers-4 expert names for the MoE families whose experts Transformers 5
// fuses (gate_proj + up_proj -> the fused gate_up_proj with rank and alpha doubled; down_proj ->
// down_proj; Mixtral's w1/w3/w2); add_lora does the same, so `target_modules` lists written for
// Transformers 4 adapt what PEFT adapts (and the resolved targets are what adapter_config.json says).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "arch/weight_map.h"
#include "io/json.h"

namespace moeforge {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0;
  bool use_rslora = false;
  // PEFT's names: a module matches a target equal to its path or to a suffix after a dot
  // ("q_proj" matches model.layers.0.self_attn.q_proj); `all_linear` is PEFT's "all-linear".
  std::vector<std::string> target_modules;
  bool all_linear = false;
  std::vector<std::string> target_parameters;
  // Per-target rank and alpha: a regular expression matched against the end of the module or
  // parameter path (PEFT's rank_pattern / alpha_pattern).
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  // PEFT's default: A uniform in +-1/sqrt(in_features), B zero, so training starts at the base model.
  bool init_lora_weights = true;
  std::string base_model_name_or_path;

  // adapter_config.json as PEFT writes it; `where` names the file in errors. Keys PEFT has and
  // moeforge does not implement (DoRA, biases, layers_to_transform, ...) are refused by name when set.
  static LoraConfig from_json(const Json& json, const std::string& where);
  // The adapter_config.json PEFT 0.21 reads.
  Json to_json() const;
  // kInvalidArgument naming the field: r > 0, alpha finite, 0 <= dropout < 1, some target.
  void validate() const;
};

// How a parameter's elements sit in PEFT's file.
enum class AdapterLayout {
  kSame,                        // identical shape and order
  kExpertColumnsInterleaved,    // ours [E, out, r] <-> file [out, r * E], file column j * E + e
  // GPT-OSS's gate_up_proj lora_B: as kExpertColumnsInterleaved, and ours has the gate rows then the
  // up rows ([E, 2I, r]) where the file alternates them (file row 2i is gate row i, 2i + 1 up row i).
  kExpertColumnsInterleavedGateUpRows,
};

// One tensor of adapter_model.safetensors and the adapter parameter it is.
struct AdapterTensor {
  std::string key;  // base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
  int param = -1;
  Shape file_shape;
  AdapterLayout layout = AdapterLayout::kSame;
};

// Adds the adapters `lora` asks for to a trainable description (see the top of this file) and
// rewrites lora's targets as PEFT resolves them. Returns the adapter tensors in the file's order.
// Throws kInvalidArgument for a target that matches nothing, kUnsupported for a projection moeforge
// does not adapt yet (dense MLPs, shared experts), naming it.
std::vector<AdapterTensor> add_lora(ModelDescription& description, const ModelConfig& config, LoraConfig& lora);

// Adapter parameter `t` of `param` (shaped as ours) in the file's layout, and back.
Tensor adapter_to_file(const AdapterTensor& t, const Tensor& param);
Tensor adapter_from_file(const AdapterTensor& t, const Tensor& file_tensor, const Shape& param_shape);

}  // namespace moeforge
