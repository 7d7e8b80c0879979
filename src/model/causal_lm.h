// CausalLM: the Qwen3 family (qwen3_moe, qwen3; Mixtral-style blocks fit the same shape) as a stack
// of pre-norm decoder layers with an explicit backward per layer.
//
//   layer:  x += o_proj(attention(rope(q_norm(q_proj(n1))), rope(k_norm(k_proj(n1))), v_proj(n1)))
//           x += ffn(n2)   with n1 = input_layernorm(x), n2 = post_attention_layernorm(x)
//   ffn:    dense SwiGLU, or MoE: router softmax (fp32) -> top-k -> permute by expert ->
//           grouped SwiGLU on stacked expert weights, scaled by the routing weight ->
//           grouped down projection -> unpermute (sum of each token's slots)
//
// Weights live in one ParameterSet; experts are stacked [E, 2I, H] (gate rows first) and [E, H, I],
// and dense MLPs fused [2I, H]. CheckpointBinding maps every Hugging Face checkpoint tensor to its
// slice of our parameters, both ways. The math follows Transformers 5.17 (its oracle fixtures live
// in tests/data/golden).
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "arch/model_config.h"
#include "params/parameter_set.h"

namespace moeforge {

// A checkpoint tensor as a view of one of our parameters: param[expert][rows] (expert -1: no
// expert dimension; rows empty: all rows).
struct CheckpointBinding {
  std::string name;
  int param = -1;
  int64_t expert = -1;
  int64_t row_begin = 0, row_end = -1;
  Tensor view_of(const Tensor& whole) const;
};

struct Batch {
  Tensor input_ids;       // [B, T] int64 (required)
  Tensor labels;          // [B, T] int64, -100 = ignored; not shifted (optional: no loss)
  Tensor attention_mask;  // [B, T] 0/1 (optional): padding, masked in attention, loss and routing
  Tensor position_ids;    // [B, T] int64 (optional): arange per row; a reset starts a packed document
};

// Activation recomputation (the trainer's gradient_checkpointing): none keeps every activation;
// selective drops what cheap element-wise ops and gathers rebuild (norm outputs, permuted expert
// inputs, SwiGLU outputs); full keeps only each layer's input and routing and reruns the layer's
// forward before its backward (as Transformers' gradient_checkpointing=True). Recomputation never
// re-routes: the forward's top-k expert choices are kept and reused.
enum class Recompute { kNone, kSelective, kFull };
Recompute parse_recompute(const std::string& name);  // "none" | "selective" | "full"

struct ModelOptions {
  Device device = Device::kCPU;
  DType dtype = DType::kF32;  // parameter and activation dtype
  Recompute recompute = Recompute::kNone;
  // Token rows whose logits the training loss computes at once (0: as many as fit in 1 GiB); the
  // full [tokens, vocab] logits exist only when forward_backward is asked to return them.
  int64_t loss_chunk_tokens = 0;
  // The checkpoint tensors this process loads (every tensor when empty); the parameters of the others
  // stay zero. With expert parallelism a rank loads only its own experts.
  std::function<bool(const std::string& checkpoint_name)> load_filter;
};

struct StepResult {
  double loss = 0;      // lm_loss + router_aux_loss_coef * aux_loss (when the aux loss is on)
  double lm_loss = 0;   // cross-entropy sum / loss_denominator
  double aux_loss = 0;  // Transformers' unscaled load-balancing loss (0 when off)
  int64_t num_label_tokens = 0;  // counted (non -100, shifted) labels in this batch
  Tensor logits;        // [B, T, V] when asked for
  // Tokens routed to each expert, per MoE layer (the load-balance report).
  std::vector<std::vector<int64_t>> expert_load;
  // Each MoE layer's expert choices [N, k] int32 on the CPU, when RoutingHook::record is on.
  std::vector<Tensor> routing;
};

// A test hook for comparing backends: near-ties flip top-k between precisions, so a bf16 run can be
// made to reuse the expert choices of a float32 run (its routing weights still come from its own
// router probabilities, and gradients flow through them as usual).
struct RoutingHook {
  bool record = false;         // fill StepResult::routing
  std::vector<Tensor> reuse;   // when not empty: one [N, k] int32 tensor per MoE layer, any device
};

class CausalLM {
 public:
  // Reads config.json and the safetensors checkpoint (load_weights).
  static CausalLM from_pretrained(const std::filesystem::path& folder, const ModelOptions& options);
  // Reads the checkpoint in `folder` into this model's parameters, tensor by tensor from the mapped
  // shards (never a whole-model host copy); checks every tensor is present, expected and of the right
  // shape, naming any that is not. What a resume uses instead of building a second model.
  void load_weights(const std::filesystem::path& folder);
  // Random initialisation (normal(0, initializer_range), norms at 1), deterministic in `seed`.
  static CausalLM from_config(const ModelConfig& config, const ModelOptions& options, uint64_t seed);

  CausalLM(CausalLM&&) noexcept;
  CausalLM& operator=(CausalLM&&) noexcept;
  ~CausalLM();

  // Forward, loss and (when `backward`) gradients accumulated into params().grad. The cross-entropy
  // sum is divided by `loss_denominator` (the counted label tokens of the whole accumulation window;
  // <= 0 means this batch's own count), as the Transformers Trainer does.
  StepResult forward_backward(const Batch& batch, bool backward, bool keep_logits,
                              double loss_denominator = 0);

  // Writes a Hugging Face folder: config.json (original keys), per-expert safetensors shards +
  // index in `dtype`, and the tokenizer / generation config files copied from `source_folder`.
  void save_pretrained(const std::filesystem::path& folder, DType dtype,
                       const std::filesystem::path& source_folder = {},
                       uint64_t max_shard_bytes = 5ull << 30) const;

  const ModelConfig& config() const;
  ParameterSet& params();
  const ParameterSet& params() const;
  const std::vector<CheckpointBinding>& bindings() const;
  const ModelOptions& options() const;
  RoutingHook& routing_hook();
  void set_recompute(Recompute policy);

  struct Impl;  // defined in causal_lm.cpp
  explicit CausalLM(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// The checkpoint tensors (name, shape) a CausalLM of `config` binds, computed without allocating the
// model: what `inspect` and memory planning can ask of a 30B config on a laptop.
std::vector<std::pair<std::string, Shape>> causal_lm_checkpoint_layout(const ModelConfig& config);

// Model FLOPs of one trained token (forward and backward) at sequence length `seq`: 6 x the matrix
// parameters a token touches (experts scaled by k/E) + causal attention, 6 x layers x heads x
// head_dim x seq. What the progress line and the benchmark report as TFLOP/s.
double training_flops_per_token(const CausalLM& model, int64_t seq);

// The families CausalLM runs (a subset of the architectures whose configs parse).
bool causal_lm_supports(const std::string& model_type);

}  // namespace moeforge
