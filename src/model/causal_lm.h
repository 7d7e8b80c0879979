// CausalLM: a decoder-only language model of any trainable family (arch/weight_map.h), as a list of
// decoder layers (decoder_layer.h) built from the family's description, an embedding, and the LM
// head with its loss (blocks/lm_head.h). forward_backward is the driver: batch preparation
// (batch_inputs.h), the layers forward, head and loss, the load-balancing loss (aux_loss.h), the
// layers backward. The math follows Transformers 5.17 (its oracle fixtures live in tests/data/golden).
//
// Weights live in one ParameterSet, as the family's weight map declares them (experts stacked
// [E, 2I, H] with gate rows first and [E, H, I]; dense MLPs fused [2I, H]); each Hugging Face
// checkpoint tensor is a slice of one of them, both ways (load_weights, save_pretrained).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arch/lora.h"
#include "arch/model_config.h"
#include "arch/weight_map.h"
#include "dist/process_group.h"
#include "model/blocks/context.h"
#include "params/parameter_set.h"

namespace moeforge {

struct Batch {
  Tensor input_ids;       // [B, T] int64 (required)
  Tensor labels;          // [B, T] int64, -100 = ignored; not shifted (optional: no loss)
  Tensor attention_mask;  // [B, T] 0/1 (optional): padding, masked in attention, loss and routing
  Tensor position_ids;    // [B, T] int64 (optional): arange per row; a reset starts a packed document
};

// gradient_checkpointing values (Recompute, in model/blocks/context.h).
Recompute parse_recompute(const std::string& name);  // "none" | "selective" | "full"

struct ModelOptions {
  Device device = Device::kCPU;
  DType dtype = DType::kF32;  // parameter and activation dtype
  Recompute recompute = Recompute::kNone;
  // The first this many layers recompute fully whatever `recompute` says (Megatron's block method,
  // --recompute-num-layers): memory between the selective and the full policy at a chosen cost.
  int64_t recompute_full_layers = 0;
  // The first this many layers keep their activations in page-locked host memory between forward
  // and backward, copied on a stream of their own while the other layers compute
  // (model/activation_offload.h): their share of the peak for no recomputation.
  int64_t activation_offload_layers = 0;
  // Token rows whose logits the training loss computes at once (0: as many as fit in 1 GiB); the
  // full [tokens, vocab] logits exist only when forward_backward is asked to return them.
  int64_t loss_chunk_tokens = 0;
  // Expert parallelism over this group's ranks (null or one rank: every expert here). Rank r of P
  // holds routed experts [r E / P, (r + 1) E / P) of every MoE layer, and loads, initialises and
  // has gradients of those alone; tokens reach their experts by all-to-all
  // (blocks/expert_parallel_dispatcher.h). CPU backend only so far.
  std::shared_ptr<ProcessGroup> expert_group;
  // The ranks that compute one batch together, each its own rows; forward_backward returns the
  // whole batch's loss (see there). Null: expert_group. Larger than expert_group, it is made of
  // consecutive expert groups (ranks [g P, (g + 1) P) form group g), each holding every expert once:
  // the ranks with the same experts sum their gradients, and the first group's write them.
  std::shared_ptr<ProcessGroup> data_group;
  // LoRA fine-tuning (arch/lora.h): the base weights frozen, adapters trained. Its targets are
  // rewritten as PEFT resolves them (what lora_config() and saved adapters report).
  std::optional<LoraConfig> lora;
  // Seeds the adapters' initialisation (A uniform in +-1/sqrt(in_features), as PEFT; B zero).
  uint64_t adapter_seed = 42;
};

struct StepResult {
  double loss = 0;      // lm_loss + router_aux_loss_coef * aux_loss (when the aux loss is on)
  double lm_loss = 0;   // cross-entropy sum / loss_denominator
  double aux_loss = 0;  // Transformers' unscaled load-balancing loss (0 when off)
  int64_t num_label_tokens = 0;  // counted (non -100, shifted) labels in this batch
  Tensor logits;        // [B, T, V] when asked for
  // Tokens routed to each expert, per MoE layer (the load-balance report).
  std::vector<std::vector<int64_t>> expert_load;
  // Each MoE layer's expert choices [routed tokens, k] int32 on the CPU (in order; padding is not
  // routed: model/blocks/routed_rows.h), when RoutingHook::record is on.
  std::vector<Tensor> routing;
};

// A test hook for comparing backends: near-ties flip top-k between precisions, so a bf16 run can be
// made to reuse the expert choices of a float32 run (its routing weights still come from its own
// router probabilities, and gradients flow through them as usual).
struct RoutingHook {
  bool record = false;         // fill StepResult::routing
  std::vector<Tensor> reuse;   // when not empty: one tensor per MoE layer as StepResult::routing's, any device
};

// Refuses (kUnsupported, naming the config key) a model whose config asks for what the blocks do not
// compute yet: what from_pretrained checks first, for callers that want to say so before they read
// the folder's other files (tokenizer, data) or only describe the model (inspect).
void check_model_supported(const ModelConfig& config);

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
  //
  // With expert parallelism the ranks' batches together are one batch (their rows concatenated in
  // rank order): every rank returns that batch's loss, aux loss, label count and expert loads (the
  // count that <= 0 stands for is its count too), logits of its own rows, complete gradients of its
  // experts and its share of every replicated gradient (sum_replicated_grads, or a sharded
  // optimizer's reduce_gradients, adds the shares).
  StepResult forward_backward(const Batch& batch, bool backward, bool keep_logits,
                              double loss_denominator = 0);
  // Sums the replicated parameters' gradients over the data group's ranks and the experts' over the
  // ranks holding the same experts, so that every rank holds those of the whole batch (once per
  // optimizer step, after the last micro-batch). A no-op in a single process. Training sums only
  // each rank's slice instead (AdamW::reduce_gradients).
  void sum_replicated_grads();
  // The process groups of expert and of data parallelism (ModelOptions), or null.
  const std::shared_ptr<ProcessGroup>& expert_group() const;
  const std::shared_ptr<ProcessGroup>& data_group() const;
  // The ranks holding copies of this process's experts, one in each expert group of the data group
  // (they sum their gradients), or null when the data group is one expert group.
  const std::shared_ptr<ProcessGroup>& expert_replicas() const;

  // How save_pretrained stores the weights: all dense in its dtype, or, for a family whose release
  // is MXFP4 (GPT-OSS), those weights as MXFP4 blocks and scales with the release's
  // quantization_config, the rest dense (served as the original was).
  enum class SavedWeights { kDense, kMxfp4AsReleased };
  // By the quant_method a saved config would declare: "none" (dense) or "mxfp4"; kInvalidArgument else.
  static SavedWeights saved_weights_named(const std::string& quantization);
  // kUnsupported, naming the model type, unless the family has a release whose layout `weights` is.
  void check_saved_weights(SavedWeights weights) const;
  // The largest safetensors shard save_pretrained writes unless told otherwise.
  static constexpr uint64_t kMaxShardBytes = 5ull << 30;
  // Writes a Hugging Face folder: config.json (original keys), per-expert safetensors shards +
  // index in `dtype` (a tensor the source checkpoint kept in float32 under a narrower declared
  // dtype stays float32: CheckpointTensor::keep_f32), and the tokenizer / generation config files copied from `source_folder`, as
  // well as the multi-token-prediction tensors it holds (DeepSeek-V3), which the model does not.
  void save_pretrained(const std::filesystem::path& folder, DType dtype,
                       const std::filesystem::path& source_folder = {},
                       uint64_t max_shard_bytes = kMaxShardBytes, SavedWeights weights = SavedWeights::kDense) const;

  const ModelConfig& config() const;
  ParameterSet& params();
  const ParameterSet& params() const;
  // Every checkpoint tensor with the parameter slice it is (ParamSlice, slice_view).
  const std::vector<CheckpointTensor>& checkpoint_tensors() const;
  const ModelOptions& options() const;

  // ---- LoRA (with ModelOptions::lora) ----
  // The resolved adapter configuration, or null without adapters.
  const LoraConfig* lora_config() const;
  // The adapter tensors in the order of adapter_model.safetensors.
  const std::vector<AdapterTensor>& adapter_tensors() const;
  // Adapter `t`'s tensor `local` (its value or its gradient) as adapter_model.safetensors holds it.
  // With expert parallelism a routed expert's adapter is gathered from its expert group: every rank
  // of the group calls it.
  Tensor adapter_file_tensor(const AdapterTensor& t, const Tensor& local) const;
  // Writes a PEFT adapter folder: adapter_config.json and adapter_model.safetensors in `dtype`. With
  // expert parallelism every rank calls it and the first writes.
  void save_adapter(const std::filesystem::path& folder, DType dtype) const;
  // Reads a PEFT adapter folder's tensors into the adapters (every key present, none unexpected,
  // shapes as this model's adapters; errors name the file and key).
  void load_adapter(const std::filesystem::path& folder);
  // Folds every adapter into its base weight (W += scale * B A) and zeroes B, so the model computes
  // the same function with the adapters merged: what save_pretrained then writes is the merged model.
  void merge_adapters();

  RoutingHook& routing_hook();
  // Gradient sharding (AdamW with OptimizerSharding::shard_gradients, ZeRO-2): backward passes hand
  // `sink` their gradients group by group as they complete them, one span per sharding class: the
  // head's (final norm, untied head), each layer's from the last, then the embedding's (open from the
  // head on when tied). Null: gradients accumulate in the parameters' buffers alone. Throws
  // kUnsupported naming a parameter that no group or two groups hold, or a group whose parameters are
  // not one range of their class.
  void set_gradient_sink(GradientSink* sink);
  GradientSink* gradient_sink() const;
  // ModelOptions::recompute and recompute_full_layers.
  void set_recompute(Recompute policy, int64_t full_layers = 0);
  // ModelOptions::activation_offload_layers.
  void set_activation_offload_layers(int64_t layers);

  // ---- auxiliary-loss-free load balancing (DeepSeek-V3) ----
  // Whether the routers choose experts with a score-correction bias (e_score_correction_bias).
  bool has_router_biases() const;
  // After an optimizer step: each MoE layer's bias moves by `rate` towards balance, in fp32,
  // bias[e] += rate * sign(mean load - load[e]) (DeepSeek-V3 technical report, section 2.1.2).
  // expert_load: tokens per expert per MoE layer over the step (StepResult::expert_load, summed).
  void update_router_biases(const std::vector<std::vector<int64_t>>& expert_load, double rate);

  struct Impl;  // defined in causal_lm.cpp
  explicit CausalLM(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

// Model FLOPs of one trained token (forward and backward) at sequence length `seq`: 6 x the matrix
// parameters a token touches (experts scaled by k/E, all E of them under expert parallelism) + causal attention, 3 x attention layers x
// heads x seq x (query/key head size + value head size): 6 x layers x heads x head_dim x seq where
// the two are equal, (qk_nope + qk_rope + v_head_dim) for DeepSeek's latent attention + the Mamba-2
// scan as its recurrence, 3 x Mamba layers x 4 x heads x head_dim x state (the state update and
// the output contraction, a multiply-add per state entry each). What the progress line and the
// benchmark report as TFLOP/s.
double training_flops_per_token(const CausalLM& model, int64_t seq);

// The dtype a full model is saved in unless asked otherwise: its config's dtype; bfloat16 for an
// MXFP4 release (GPT-OSS's declares none, and Transformers dequantises it to bfloat16); else float32.
DType default_save_dtype(const ModelConfig& config);

}  // namespace moeforge
