// A family's description of a model: its checkpoint tensors, the training parameters they become,
// and which parameters each layer's blocks use. One source of truth for names: the family file
// (arch/<model_type>.cpp) spells each Hugging Face tensor once, next to the parameter slice it is;
// loading, saving, gradients by checkpoint name, `inspect` and parameter counts all read this.
//
//   ModelDescription d = describe_model(config);
//   d.tensors[i]            model.layers.0.mlp.experts.5.up_proj.weight [I, H]
//     .slice                -> param 7 (model.layers.0.mlp.experts.gate_up_proj [E, 2I, H]),
//                              expert 5, rows [I, 2I)
//   d.weights.layers[0]     attention {q, k, v, o, q_norm, k_norm}, moe {router, experts, ...}
//
// Families that are parsed and counted but not yet trainable list their tensors with no parameters
// and no layers.
#pragma once

#include <vector>

#include "arch/checkpoint_tensors.h"
#include "arch/model_config.h"
#include "params/parameter_set.h"

namespace moeforge {

// Parameter indices (into WeightMap::params) of each block; -1 where the block has no such part.

// A LoRA adapter on a projection (arch/lora.h): y += scale * (x A^T) B^T with A [r, in] and B
// [out, r], or per expert A [E, r, in] and B [E, out, r] on stacked experts.
struct LoraSlots {
  int a = -1, b = -1;
  float scale = 0;
  float dropout = 0;  // on the adapter's input, in training (module targets only, as PEFT)
  bool on() const { return a >= 0; }
};

struct LinearSlots {
  int weight = -1, bias = -1;
  LoraSlots lora;
};

struct AttentionSlots {
  LinearSlots q, k, v, o;
  int q_norm = -1, k_norm = -1;  // per head [head_dim], or over the whole projection (OLMoE)
  int sinks = -1;                // [heads]: a learned logit per head in the softmax (GPT-OSS)
};

// DeepSeek's multi-head latent attention: the query through q_a (a low-rank projection), its norm
// and q_b, or through q alone (q_lora_rank null); the compressed key/value kv_a ([latent | key RoPE
// part]), the latent's norm and kv_b (per head [key no-RoPE part | value]); the output o.
struct MlaSlots {
  LinearSlots q, q_a, q_b, kv_a, kv_b, o;
  int q_a_norm = -1, kv_a_norm = -1;
  bool on() const { return kv_a.weight >= 0; }
};

// A SwiGLU MLP with gate and up fused, gate rows first: [2I, H] and down [H, I] for a dense MLP;
// [E, 2I, H] and [E, H, I] for stacked routed experts. A non-gated MLP (Nemotron-H's squared ReLU)
// holds its up projection alone in gate_up: [I, H] or [E, I, H].
struct SwiGluSlots {
  int gate_up = -1, down = -1;
  int gate_up_bias = -1, down_bias = -1;  // [E, 2I] (gate first) and [E, H]: GPT-OSS's experts
  LoraSlots gate_up_lora, down_lora;  // on routed experts only
};

struct MoeSlots {
  int router = -1;         // [E, H]
  int router_bias = -1;    // [E] (GPT-OSS)
  LoraSlots router_lora;   // PEFT's target parameter mlp.gate.weight (off unless asked for)
  SwiGluSlots experts;     // stacked routed experts (ShardClass::kExpert)
  SwiGluSlots shared;      // a shared expert added to every token's output (Qwen2-MoE), or none
  int shared_gate = -1;    // [1, H]: the shared expert's output scaled by sigmoid(x . w) (Qwen2-MoE)
  // [E] fp32, a frozen buffer: added to the sigmoid scores to choose experts (DeepSeek-V3's
  // e_score_correction_bias); -1 for softmax routers.
  int score_bias = -1;
  // Nemotron-H's moe_latent_size: the routed experts run on latent_in(x) [N, latent] and their sum
  // goes back through latent_out; the router and the shared expert see x. Off (weight -1) otherwise.
  LinearSlots latent_in, latent_out;
};

// Nemotron-H's Mamba-2 mixer: in_proj ([z | x B C | dt] columns), the depthwise convolution over
// x B C ([conv_dim, 1, kernel]) and its bias, the per-head dt_bias, A_log and D, the gated group
// norm's weight and out_proj.
struct MambaSlots {
  LinearSlots in_proj, out_proj;
  int conv_weight = -1, conv_bias = -1;
  int dt_bias = -1, a_log = -1, d = -1;
  int norm = -1;
  bool on() const { return conv_weight >= 0; }
};

// One decoder layer: pre-norm attention (grouped-query, or latent when mla is set), then a
// pre-norm feed-forward block that is a dense MLP (mlp set) or a mixture of experts (moe.router set).
// Nemotron-H's layers have one of the two halves: a mixer (attention or Mamba, input_norm set,
// post_norm -1) or a feed-forward block (post_norm set, input_norm -1).
struct LayerSlots {
  int input_norm = -1, post_norm = -1;
  AttentionSlots attention;
  MlaSlots mla;
  MambaSlots mamba;
  SwiGluSlots mlp;
  MoeSlots moe;
  bool is_moe() const { return moe.router >= 0; }
  bool has_mixer() const { return input_norm >= 0; }
  bool has_ffn() const { return post_norm >= 0; }
  // Every Linear module LoRA adapts and merges (those the layer lacks have weight -1): the attention
  // projections, grouped-query and latent; the Mamba mixer's in_proj (PEFT refuses its out_proj);
  // Nemotron-H's latent expert projections.
  std::vector<LinearSlots*> lora_linears();
  std::vector<const LinearSlots*> lora_linears() const;
  // Every parameter index the layer's blocks use (weights, biases, norms, buffers, adapters).
  std::vector<int> parameters() const;
};

struct WeightMap {
  ParameterSet params;  // declared, not allocated: names, shapes, groups, sharding classes
  int embed = -1, final_norm = -1, lm_head = -1;  // lm_head -1: tied to the embedding
  std::vector<LayerSlots> layers;                 // empty: the family is not trainable yet
};

struct ModelDescription {
  std::vector<CheckpointTensor> tensors;  // every checkpoint tensor, in a stable order
  WeightMap weights;
  bool trainable() const { return !weights.layers.empty(); }
};

// The description of `config`'s family (kUnsupported for an unknown model_type). Allocates nothing.
ModelDescription describe_model(const ModelConfig& config);

// Expert parallelism: this process holds routed experts [begin, end) of every MoE layer. Each
// parameter indexing experts (ParamEntry::indexes_experts: trained, frozen or their adapters) keeps
// end - begin experts in its dimension 0, the held experts' checkpoint tensors count their slice's
// expert from `begin`, and the others' are marked remote; a checkpoint tensor of every expert
// records the range its parameter holds.
void hold_experts(ModelDescription& description, int64_t begin, int64_t end);

// The shape a slice of a parameter of shape `param_shape` has in the checkpoint (what its checkpoint
// tensor must have).
Shape slice_shape(const ParamSlice& slice, const Shape& param_shape);
// The slice as a view of the parameter (or gradient) tensor `whole`, in the parameter's layout.
Tensor slice_view(const ParamSlice& slice, const Tensor& whole);
// The slice of `whole` in the checkpoint's layout, on the host: a contiguous CPU tensor (a copy
// when the layouts differ), for saving and for gradients by checkpoint name.
Tensor read_slice(const ParamSlice& slice, const Tensor& whole);
// `src`, a checkpoint tensor (host, of the checkpoint's shape), in the slice's layout: itself when
// the layouts agree, else a contiguous host copy rearranged.
Tensor to_slice_layout(const ParamSlice& slice, const Tensor& src);

}  // namespace moeforge
