// moeforge::AutoModelForCausalLM: a Hugging Face model folder in, a model with Transformers' names out.
//
//   moeforge::ModelForCausalLM model = moeforge::AutoModelForCausalLM::from_pretrained("Qwen/Qwen3-0.6B");
//   moeforge::CausalLMOutput out = model.forward(input_ids, attention_mask, labels);  // out.loss, out.logits
//   model.save_pretrained("out/");
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
  int64_t expert_parallel_size = 1;     // only 1 until expert parallelism exists
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
  // tokenizer files copied from the folder this model was loaded from.
  void save_pretrained(const std::filesystem::path& folder) const;

  const nlohmann::json& config() const;                   // config.json as read (every key)
  int64_t num_parameters(bool exclude_embeddings = false) const;  // as PreTrainedModel.num_parameters
  // As gradient_checkpointing_enable()/disable(): true reruns each layer's forward in its backward.
  void set_gradient_checkpointing(bool on);
  const std::string& name_or_path() const { return name_or_path_; }
  const std::filesystem::path& folder() const { return folder_; }  // resolved folder; empty from_config
  int64_t pad_token_id() const;  // config pad_token_id, else the first eos id, else 0

  CausalLM& causal_lm() { return model_; }
  const CausalLM& causal_lm() const { return model_; }

  ModelForCausalLM(CausalLM model, std::string name_or_path, std::filesystem::path folder);

 private:
  CausalLM model_;
  std::string name_or_path_;
  std::filesystem::path folder_;
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
