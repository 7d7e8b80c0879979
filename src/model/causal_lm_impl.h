// CausalLM's state, shared by the files that implement it (causal_lm.cpp: building, loading,
// the training step, saving; lora_adapters.cpp: the adapters' files and merging). Internal to src/model.
#pragma once

#include <optional>
#include <vector>

#include "core/error.h"
#include "model/activation_offload.h"
#include "model/blocks/dispatcher.h"
#include "model/blocks/lm_head.h"
#include "model/causal_lm.h"
#include "model/decoder_layer.h"

namespace moeforge {

struct CausalLM::Impl {
  ModelConfig config;
  ModelOptions options;
  std::vector<CheckpointTensor> tensors;
  WeightMap weights;
  // LocalDispatcher, or ExpertParallelDispatcher over options.expert_group.
  std::unique_ptr<ExpertDispatcher> dispatcher;
  std::vector<DecoderLayer> layers;
  std::optional<LmHead> head;
  RoutingHook routing_hook;
  std::optional<LoraConfig> lora;      // resolved (arch/lora.h)
  std::vector<AdapterTensor> adapters;
  ActivationOffload offload;           // ModelOptions::activation_offload_layers
  GradientSink* gradient_sink = nullptr;  // set_gradient_sink
  // The sink's groups of gradients, as spans of the flat buffers (one per class holding any of the
  // group's trainable parameters): kEmbedGroup, kHeadGroup, then kFirstLayerGroup + l for layer l.
  static constexpr size_t kEmbedGroup = 0, kHeadGroup = 1, kFirstLayerGroup = 2;
  std::vector<std::vector<FlatSpan>> gradient_groups;

  ParameterSet& params() { return weights.params; }
  const ParameterSet& params() const { return weights.params; }
  // Token rows per chunk of the training loss: ModelOptions::loss_chunk_tokens, else as many as keep
  // a chunk's logits within 1 GiB (3,533 rows of Qwen3's 151,936-token vocabulary in bf16) when the
  // head trains, since each chunk reads and writes the head's whole gradient once, and within
  // 256 MiB when it is frozen (LoRA), where a chunk costs only its own products. `head`: the head's
  // parameter index.
  int64_t loss_chunk_rows(int head) const {
    if (options.loss_chunk_tokens > 0) return options.loss_chunk_tokens;
    const int64_t row_bytes = config.vocab_size * static_cast<int64_t>(dtype_size(options.dtype));
    const int64_t chunk_bytes = params().trainable(head) ? int64_t{1} << 30 : int64_t{256} << 20;
    return std::max<int64_t>(1, chunk_bytes / row_bytes);
  }
  // The expert choices the routing hook asks the MoE layer `moe_index` to reuse, or undefined.
  Tensor reused_routing(int64_t moe_index, int64_t tokens) const;
  // The data group (ModelOptions::data_group, else expert_group) when it has several ranks, else null.
  ProcessGroup* group() const {
    const std::shared_ptr<ProcessGroup>& g = options.data_group ? options.data_group : options.expert_group;
    return g && g->size() > 1 ? g.get() : nullptr;
  }
  // The ranks holding the same experts as this one, when the data group has several expert groups.
  std::shared_ptr<ProcessGroup> expert_replicas;
};

}  // namespace moeforge
