// The architecture registry: one entry per supported Hugging Face `model_type`, each implemented in
// its own file (qwen3_moe.cpp, deepseek_v3.cpp, ...). An entry knows how to read the family's
// config keys into a ModelConfig and how to describe the model: its checkpoint tensors and, for a
// trainable family, the parameters and layers they make (arch/weight_map.h).
#pragma once

#include <string>
#include <vector>

#include "arch/config_reader.h"
#include "arch/model_config.h"
#include "arch/weight_map.h"

namespace moeforge {

struct Architecture {
  const char* model_type;    // "qwen3_moe"
  const char* hf_class;      // "Qwen3MoeForCausalLM"
  // Reads the family's keys into `config` (model_type, source and raw are already set).
  void (*parse)(const ConfigReader& reader, ModelConfig& config);
  // Fills `description` (empty on entry) for `config`.
  void (*describe)(const ModelConfig& config, ModelDescription& description);
  // Whether its description binds parameters and layers (CausalLM can train it).
  bool trainable;
};

// The entry for `model_type`, or nullptr.
const Architecture* find_architecture(const std::string& model_type);
// kUnsupported naming the type and listing the supported ones, unless found.
const Architecture& require_architecture(const std::string& model_type, const std::string& where);
std::vector<std::string> supported_model_types();
std::vector<std::string> trainable_model_types();

}  // namespace moeforge
