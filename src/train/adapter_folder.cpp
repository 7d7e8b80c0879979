#include "train/adapter_folder.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "io/json.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

constexpr const char* kAdapterConfig = "adapter_config.json";
constexpr const char* kAdapterWeights = "adapter_model.safetensors";

// What the Hugging Face Trainer saves beside an adapter: the tokenizer (its processing class), not
// the base's config or generation settings, which would make the folder look like a full model.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json"};

bool holds_full_model(const fs::path& folder) {
  return fs::exists(folder / "model.safetensors") || fs::exists(folder / "model.safetensors.index.json");
}

// A setting as adapter_config.json writes it; target lists compared as sets.
Json comparable(const Json& config, const char* key) {
  const Json v = config.contains(key) ? config.at(key) : Json(nullptr);
  if (!v.is_array()) return v;
  std::vector<Json> items(v.begin(), v.end());
  std::sort(items.begin(), items.end());
  return Json(items);
}

void check_same_lora_settings(const LoraConfig& ours, const fs::path& folder) {
  const fs::path file = folder / kAdapterConfig;
  const Json saved = LoraConfig::from_json(read_json_file(file), file.string()).to_json();
  const Json mine = ours.to_json();
  for (const char* key : {"r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "target_parameters",
                          "rank_pattern", "alpha_pattern"}) {
    const Json a = comparable(saved, key), b = comparable(mine, key);
    MF_CHECK(a == b, kInvalidArgument, file.string(), ": the adapter was trained with ", key, " ", a.dump(),
             ", this run's LoRA settings have ", b.dump(),
             " (resume with the LoRA options of the run that wrote it)");
  }
}

}  // namespace

bool is_adapter_folder(const fs::path& folder) { return fs::exists(folder / kAdapterWeights); }

LoraConfig read_adapter_config(const fs::path& folder) {
  MF_CHECK(fs::is_directory(folder), kNotFound, "adapter folder ", folder.string(), " does not exist");
  for (const char* name : {kAdapterConfig, kAdapterWeights})
    MF_CHECK(fs::exists(folder / name), kNotFound, folder.string(), ": no ", name, " (a PEFT adapter folder holds ",
             kAdapterConfig, " and ", kAdapterWeights, ")");
  const fs::path file = folder / kAdapterConfig;
  return LoraConfig::from_json(read_json_file(file), file.string());
}

DType saved_model_dtype(const CausalLM& model) {
  return model.lora_config() != nullptr ? DType::kF32 : default_save_dtype(model.config());
}

void check_saved_weights(const CausalLM& model, CausalLM::SavedWeights weights) {
  model.check_saved_weights(weights);
  MF_CHECK(weights == CausalLM::SavedWeights::kDense || model.lora_config() == nullptr, kInvalidArgument,
           "save_quantization mxfp4: this run trains LoRA adapters, which save as PEFT saves them; quantise the "
           "merged model instead (moeforge merge --save_quantization mxfp4)");
}

void save_trained_model(const CausalLM& model, const fs::path& folder, const fs::path& source_folder,
                        CausalLM::SavedWeights weights) {
  check_saved_weights(model, weights);
  if (model.lora_config() == nullptr)
    return model.save_pretrained(folder, saved_model_dtype(model), source_folder, CausalLM::kMaxShardBytes, weights);
  model.save_adapter(folder, saved_model_dtype(model));
  if (source_folder.empty() || fs::equivalent(source_folder, folder)) return;
  if (model.data_group() && model.data_group()->rank() != 0) return;  // rank 0 writes the shared files
  for (const char* name : kTokenizerFiles)
    if (fs::exists(source_folder / name))
      fs::copy_file(source_folder / name, folder / name, fs::copy_options::overwrite_existing);
}

void load_trained_model(CausalLM& model, const fs::path& folder) {
  if (model.lora_config() == nullptr) {
    MF_CHECK(holds_full_model(folder) || !is_adapter_folder(folder), kInvalidArgument, folder.string(),
             " holds a LoRA adapter (", kAdapterWeights, "), not a model: continue it with the LoRA options of "
             "the run that wrote it (lora_r and the others, or adapter)");
    return model.load_weights(folder);
  }
  MF_CHECK(is_adapter_folder(folder) || !holds_full_model(folder), kInvalidArgument, folder.string(),
           " holds a full model, not a LoRA adapter: this run trains adapters (lora_r > 0 or adapter); continue "
           "that run without the LoRA options");
  MF_CHECK(fs::exists(folder / kAdapterConfig), kNotFound, folder.string(), ": no ", kAdapterConfig);
  check_same_lora_settings(*model.lora_config(), folder);
  model.load_adapter(folder);
}

}  // namespace moeforge
