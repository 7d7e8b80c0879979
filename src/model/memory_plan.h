// A training run's device memory per GPU, planned from config.json alone (`moeforge inspect --gpus N
// --expert_parallel E ...`): the weights, gradients and optimizer state of the parameters a GPU holds
// (the replicated ones whole, the routed experts split over the expert-parallel ranks), the
// activations each decoder layer keeps between forward and backward at the recompute policy, and
// the largest transient of a step. The activations follow LayerState (decoder_layer.h) tensor by
// tensor: a change to what a layer keeps changes this file too. Full fine-tuning on the CUDA backend
// (bf16 weights, gradients and activations) of every family: grouped-query and latent attention, and
// Nemotron-H's layers of a Mamba-2 mixer, attention or a feed-forward block alone; and LoRA (the base
// frozen in bf16, the adapters trained).
#pragma once

#include <string>

#include "arch/lora.h"
#include "arch/model_config.h"
#include "model/blocks/context.h"

namespace moeforge {

struct MemoryPlanOptions {
  int64_t gpus = 1;
  int64_t expert_parallel = 1;  // ranks the routed experts are split over (a divisor of gpus)
  int64_t seq = 4096, micro_batch = 1;
  Recompute recompute = Recompute::kNone;
  // Weights, gradients and optimizer state per parameter (optimizer_precision_bytes_per_param).
  int bytes_per_param = 16;
  // LoRA: the adapters it adds have gradients and optimizer state, the base weights neither.
  const LoraConfig* lora = nullptr;
  // ZeRO-2 (TrainingArguments::zero_stage 2): gradients shared by several GPUs are sharded as the
  // optimizer state is, plus the memory of the layers whose gradients are being written and summed.
  bool shard_gradients = false;
};

struct MemoryPlan {
  int64_t params = 0;             // parameters one GPU holds
  double weights = 0, gradients = 0, optimizer = 0;  // bytes
  double activations = 0;         // kept between forward and backward, every layer
  double transient = 0;           // the largest working set beside them (see memory_plan.cpp)
  double total() const { return weights + gradients + optimizer + activations + transient; }
};

MemoryPlan plan_training_memory(const ModelConfig& config, const MemoryPlanOptions& options);

}  // namespace moeforge
