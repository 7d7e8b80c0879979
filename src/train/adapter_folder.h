// What a training run writes of its model and reads back: a whole Hugging Face folder for a full
// fine-tune, a PEFT adapter folder (adapter_config.json + adapter_model.safetensors, plus the base's
// tokenizer files, as the Hugging Face Trainer saves a PeftModel) when the model trains LoRA
// adapters. Checkpoints, the final save and resume all go through these, and so do the command
// line's --adapter options, which check an adapter folder before any model is loaded.
#pragma once

#include <filesystem>

#include "arch/lora.h"
#include "model/causal_lm.h"

namespace moeforge {

// Whether `folder` holds a PEFT adapter (adapter_model.safetensors).
bool is_adapter_folder(const std::filesystem::path& folder);

// adapter_config.json of a PEFT adapter folder, once the folder is checked to hold both of its files
// (kNotFound naming the folder and the missing file).
LoraConfig read_adapter_config(const std::filesystem::path& folder);

// The dtype save_trained_model writes: float32 for adapters (PEFT keeps them in float32 whatever the
// base's dtype), else the dtype the model's config declares (float32 when it declares none).
DType saved_model_dtype(const CausalLM& model);

// The adapter folder under LoRA (with the tokenizer files of `source_folder`, which may be empty),
// else save_pretrained in saved_model_dtype with `source_folder`'s tokenizer and generation files,
// the weights as `weights` says.
void save_trained_model(const CausalLM& model, const std::filesystem::path& folder,
                        const std::filesystem::path& source_folder,
                        CausalLM::SavedWeights weights = CausalLM::SavedWeights::kDense);
// Whether save_trained_model can save `model` so, before anything is computed: kUnsupported for a
// family without such a release, kInvalidArgument for quantised weights of a model training LoRA
// adapters (an adapter saves as PEFT saves it; `moeforge merge` quantises the merged model).
void check_saved_weights(const CausalLM& model, CausalLM::SavedWeights weights);

// Reads what save_trained_model wrote into a model built with the same options: the adapter under
// LoRA, else the weights. kInvalidArgument when the folder holds the other kind, or an adapter whose
// LoRA settings (rank, alpha, dropout, rsLoRA, targets) differ from the model's, naming the setting.
void load_trained_model(CausalLM& model, const std::filesystem::path& folder);

}  // namespace moeforge
