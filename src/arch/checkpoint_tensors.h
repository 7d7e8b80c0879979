// The tensors of a Hugging Face checkpoint of a given ModelConfig, named exactly as that family's
// safetensors files name them (per-expert names such as model.layers.3.mlp.experts.17.up_proj.weight,
// not Transformers 5's fused runtime parameters), with shapes in the unquantized (bf16) layout.
// Parameter counts are sums over this list, so the two cannot disagree. The list is the first half
// of a family's description (arch/weight_map.h); for a trainable family each tensor also names the
// part of a training parameter it is.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "arch/model_config.h"

namespace moeforge {

// Where a checkpoint tensor lives among the training parameters: param[expert][row_begin:row_end]
// (expert -1: the parameter has no expert dimension; row_end -1: all rows). A stacked expert
// parameter [E, 2I, H] holds each expert's gate_proj as rows [0, I) of param[e] and up_proj as rows
// [I, 2I). Block-FP8 weights (DeepSeek's releases) are dequantised as they are read
// (io/block_fp8.h), and MXFP4 ones (GPT-OSS's) likewise (io/mxfp4.h), into the same slices.
//
// The checkpoint may lay the slice out otherwise (GPT-OSS stores its experts for x @ W):
//   transposed:  the checkpoint holds the slice's last two dimensions swapped;
//   interleaved: the checkpoint's last dimension alternates the two halves of the slice's output
//                dimension (gate j at 2j, up j at 2j + 1; the slice keeps gate rows first).
// Its output dimension is the one before the last for a matrix, the last for a bias vector.
struct ParamSlice {
  int param = -1;  // index into the description's parameters; -1: not bound (family not trainable)
  int64_t expert = -1;
  int64_t row_begin = 0, row_end = -1;
  bool transposed = false;
  bool interleaved = false;
  // Expert parallelism, for a checkpoint tensor of every expert (GPT-OSS's fused experts): the
  // parameter holds experts [experts_begin, experts_end) of its dimension 0 (-1: all of them).
  int64_t experts_begin = 0, experts_end = -1;
  bool same_layout() const { return !transposed && !interleaved; }
};

enum class TensorRole {
  kEmbedding,     // the input token embedding
  kLmHead,        // the output projection (absent when tied)
  kRoutedExpert,  // weights of routed experts: a token uses num_experts_per_tok of num_experts
  kOther,         // attention, norms, routers, shared experts, dense MLPs, Mamba mixers
};
const char* tensor_role_name(TensorRole role);

struct CheckpointTensor {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kOther;
  int64_t layer = -1;   // decoder layer index (MTP layers continue after the main ones), -1 outside
  int64_t expert = -1;  // routed expert index for per-expert tensors, -1 otherwise (or fused)
  // A persistent buffer rather than a trained parameter (DeepSeek/Nemotron e_score_correction_bias):
  // saved and loaded, but not counted by num_parameters() and not updated by the optimizer.
  bool buffer = false;
  // Part of the multi-token-prediction module (DeepSeek-V3 layers >= num_hidden_layers), which the
  // checkpoint stores and Transformers ignores.
  bool mtp = false;
  // Stored as MXFP4 in the family's quantised release (GPT-OSS's expert weights): <name>_blocks and
  // <name>_scales instead of the tensor.
  bool mxfp4 = false;
  // A routed expert's tensor that another expert-parallel rank holds (hold_experts in
  // arch/weight_map.h): part of the model, neither loaded nor saved by this process.
  bool remote = false;
  // Stored in float32 by a checkpoint whose config declares a narrower dtype (Nemotron-H's A_log, D,
  // norms and e_score_correction_bias in its bf16 release): saved in float32 whatever the saved
  // dtype, as the source has it. Set when the weights are loaded.
  bool keep_f32 = false;
  ParamSlice slice;

  int64_t numel() const;
  // Held by the model Transformers builds (loaded and saved); MTP tensors are not.
  bool in_model() const { return !mtp; }
  // Trained, so with a gradient: what the model holds except buffers.
  bool trained() const { return in_model() && !buffer; }
  // In this process's parameters: what it loads, saves and has gradients of.
  bool held() const { return in_model() && !remote; }
};

// Every tensor of the checkpoint, in a stable order (embedding, layers in order, final norm, head,
// then MTP layers).
std::vector<CheckpointTensor> checkpoint_tensors(const ModelConfig& config);

struct ParamCounts {
  // Parameters of the model Transformers builds (MTP excluded, buffers excluded, tied head counted
  // once): equals PreTrainedModel.num_parameters().
  int64_t total = 0;
  int64_t embedding = 0;   // input embedding; num_parameters(exclude_embeddings=True) = total - embedding
  int64_t lm_head = 0;     // 0 when tied to the embedding
  int64_t routed_experts = 0;
  // Parameters one token uses: everything except the routed experts it is not routed to (top-k of
  // num_experts in every MoE layer). Includes embedding and lm_head.
  int64_t active = 0;
  int64_t mtp = 0;         // MTP module parameters (not in total), as stored in the checkpoint
  int64_t mtp_active = 0;  // of which one token uses
  int64_t buffers = 0;     // persistent buffers (not in total)

  int64_t total_without_embedding() const { return total - embedding; }
  int64_t active_without_embedding() const { return active - embedding; }
};

ParamCounts count_parameters(const ModelConfig& config);
ParamCounts count_parameters(const ModelConfig& config, const std::vector<CheckpointTensor>& tensors);

}  // namespace moeforge
