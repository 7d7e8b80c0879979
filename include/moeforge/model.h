// moeforge::AutoModelForCausalLM: a Hugging Face model folder in, a model with Transformers' names out.
//
//   moeforge::ModelForCausalLM model = moeforge::AutoModelForCausalLM::from_pretrained("Qwen/Qwen3-0.6B");
//   moeforge::CausalLMOutput out = model.forward(input_ids, attention_mask, labels);  // out.loss, out.logits
//   model.save_pretrained("out/");
//
//   model.add_adapter(lora);            // LoRA, as PEFT's get_peft_model (or load_adapter("adapter/"))
//   model.save_adapter("adapter/");     // adapter_config.json + adapter_model.safetensors, as PEFT
//   model.merge_and_unload();           // the adapters folded into the base weights, then dropped
//
// A thin front over CausalLM (model/causal_lm.h) and generate (model/generate.h): arguments are
// checked here and errors are moeforge::Error naming the argument.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "model/causal_lm.h"
#include "model/generate.h"

namespace moeforge {

struct PretrainedOptions {
  // "auto" (CUDA when this build has it and a device is visible, else the CPU; where Transformers'
  // Trainer would move the model) | "cpu" | "cuda" (the same as "cuda:0": one GPU per process)
  std::string device = "auto";
  // "auto": bfloat16 on CUDA (its compute dtype), float32 on the CPU (the float32 reference backend);
  // else a PyTorch name: "float32", "bfloat16", ...
  std::string dtype = "auto";
  // > 1: the processes mpirun or srun started (this many, or a multiple) each compute their own rows
  // of every batch, and consecutive groups of this many split the routed experts between them
  // (expert parallelism; CPU backend so far).
  int64_t expert_parallel_size = 1;
  bool gradient_checkpointing = false;  // true: each layer's forward reruns in its backward (full recompute)
};

struct CausalLMOutput {
  std::optional<double> loss;  // when labels were given: mean cross-entropy (+ scaled aux loss)
  Tensor logits;               // [batch, sequence, vocab] float32 on the CPU
};

// The loss of one batch and its gradient for every checkpoint tensor, by Hugging Face name: what
// torch's loss.backward() leaves in each parameter's .grad.
struct LossGradients {
  double loss = 0;
  std::vector<std::pair<std::string, Tensor>> gradients;  // float32 on the CPU, checkpoint shapes
};

// Whether this build has the CUDA backend and a CUDA device is visible.
bool cuda_is_available();

class ModelForCausalLM {
 public:
  // As Transformers' forward: labels are unshifted (the model predicts labels[t+1] at t), -100 is
  // ignored. Integer tensors of any integer dtype; undefined tensors are left out. No gradients.
  CausalLMOutput forward(const Tensor& input_ids, const Tensor& attention_mask = {}, const Tensor& labels = {},
                         const Tensor& position_ids = {});

  // Forward and backward (labels required). The weights do not change and no gradient is left
  // accumulated in the model.
  LossGradients loss_gradients(const Tensor& input_ids, const Tensor& attention_mask, const Tensor& labels,
                               const Tensor& position_ids = {});

  // Transformers' generate for a batch of prompts [batch, prompt_len]: returns
  // [batch, prompt_len + new] with the prompts, each row's new tokens, and after a row stops (eos)
  // the pad token id. With an attention mask, masked (left-padding) positions are left out of the
  // row's prompt. When `config.eos_token_ids` is empty, default_eos_token_ids() are used.
  Tensor generate(const Tensor& input_ids, const Tensor& attention_mask, GenerationConfig config);

  // The stop tokens of generation_config.json in the model folder, else config.json's eos_token_id.
  std::vector<int64_t> default_eos_token_ids() const;

  // A Hugging Face folder in the checkpoint's dtype (float32 when config.json names none), with the
  // tokenizer files copied from the folder this model was loaded from. With adapters, the base model
  // alone (save_adapter writes the adapters; merge_and_unload first for the merged model).
  // `quantization` as TrainingArguments::save_quantization: "none", or "mxfp4" for GPT-OSS's experts
  // in its release's layout.
  void save_pretrained(const std::filesystem::path& folder, const std::string& quantization = "none") const;

  const nlohmann::json& config() const;                   // config.json as read (every key)
  // As PreTrainedModel.num_parameters: the base model's parameters (tied embeddings counted once)
  // plus the adapters'.
  int64_t num_parameters(bool exclude_embeddings = false) const;

  // ---- LoRA adapters (PEFT's LoraConfig and adapter folders: arch/lora.h) ----
  // Moeforge builds adapters into the model, so these rebuild it in place (callers' references to
  // the model stay valid, a DatasetTrainer made before does not: see generation()). The base weights
  // are carried over: re-read from the model folder while they are still what it holds (the old
  // model released first, so the two never coexist), else copied from the old model.
  //
  // Adds fresh adapters as PEFT's get_peft_model: base weights frozen, A drawn from `seed`, B zero
  // (with config.init_lora_weights). A target that matches nothing (or a projection moeforge does not
  // adapt) is an error naming it, raised before the model changes. An empty
  // config.base_model_name_or_path becomes name_or_path(). Refused when the model has adapters.
  void add_adapter(LoraConfig config, uint64_t seed = 42);
  // A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) onto this model:
  // add_adapter with its config, then its tensors (every key present, none unexpected, PEFT's shapes).
  void load_adapter(const std::filesystem::path& folder);
  // The adapters as PEFT's save_pretrained writes them (float32, as PEFT keeps adapter weights).
  void save_adapter(const std::filesystem::path& folder) const;
  // Folds the adapters into the base weights (W += scale * B A) and drops them: a plain model again,
  // computing what the adapted one did, whose save_pretrained writes the merged model.
  void merge_and_unload();
  // Drops the adapters without merging: the base model as it was.
  void unload();
  // The adapters' configuration as PEFT resolves it (targets rewritten: arch/lora.h), or null.
  const LoraConfig* lora_config() const { return model_.lora_config(); }
  int64_t num_adapter_parameters() const;  // 0 without adapters
  // Counts the rebuilds above: a DatasetTrainer refuses to run on a model rebuilt after it was made.
  uint64_t generation() const { return generation_; }
  // As gradient_checkpointing_enable()/disable(): true reruns each layer's forward in its backward.
  void set_gradient_checkpointing(bool on);
  const std::string& name_or_path() const { return name_or_path_; }
  const std::filesystem::path& folder() const { return folder_; }  // resolved folder; empty from_config
  int64_t pad_token_id() const;  // config pad_token_id, else the first eos id, else 0

  // Mutable access may change the weights: the next rebuild copies them rather than re-reading
  // the folder.
  CausalLM& causal_lm() {
    weights_from_folder_ = false;
    return model_;
  }
  const CausalLM& causal_lm() const { return model_; }

  ModelForCausalLM(CausalLM model, std::string name_or_path, std::filesystem::path folder);

 private:
  // The same model with `lora` (or none): see the LoRA section above.
  void rebuild(std::optional<LoraConfig> lora, uint64_t seed);

  CausalLM model_;
  std::string name_or_path_;
  std::filesystem::path folder_;
  bool weights_from_folder_ = false;  // the base weights are still folder_'s checkpoint
  uint64_t generation_ = 0;
};

struct AutoModelForCausalLM {
  // `path_or_id`: a model folder, or a model id found in the local Hugging Face cache. An architecture
  // moeforge does not run raises kUnsupported listing the ones it does.
  static ModelForCausalLM from_pretrained(const std::string& path_or_id, const PretrainedOptions& options = {});
  // Random weights for a config.json (a folder or file), deterministic in `seed`.
  static ModelForCausalLM from_config(const std::filesystem::path& config_path, const PretrainedOptions& options = {},
                                      uint64_t seed = 0);
};

}  // namespace moeforge
