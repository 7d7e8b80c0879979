#include "params/parameter_set.h"

#include <algorithm>

#include "core/error.h"

namespace moeforge {

const char* param_group_name(ParamGroup group) {
  switch (group) {
    case ParamGroup::kEmbedding: return "embeddings";
    case ParamGroup::kAttention: return "attention";
    case ParamGroup::kRouter: return "router";
    case ParamGroup::kExperts: return "experts";
    case ParamGroup::kSharedExperts: return "shared experts";
    case ParamGroup::kDenseMlp: return "dense mlp";
    case ParamGroup::kNorm: return "norms";
    case ParamGroup::kLmHead: return "lm head";
    case ParamGroup::kAdapter: return "lora adapters";
  }
  return "?";
}

const char* shard_class_name(ShardClass c) {
  switch (c) {
    case ShardClass::kReplicated: return "replicated";
    case ShardClass::kExpert: return "expert";
    case ShardClass::kFrozen: return "frozen";
  }
  return "?";
}

int ParameterSet::add(std::string name, Shape shape, ParamGroup group, bool trainer_weight_decay,
                      ShardClass shard_class) {
  MF_ASSERT(!flat_params_.defined());
  MF_CHECK(shard_class != ShardClass::kExpert || !shape.empty(), kShape, "expert parameter ", name,
           " needs an expert dimension");
  ParamEntry e{std::move(name), std::move(shape), group, trainer_weight_decay, shard_class};
  total_ += e.padded_numel();
  entries_.push_back(std::move(e));
  return static_cast<int>(entries_.size()) - 1;
}

void ParameterSet::hold_experts(int i, int64_t begin, int64_t end) {
  ParamEntry& e = entries_.at(static_cast<size_t>(i));
  MF_ASSERT(!flat_params_.defined() && e.indexes_experts() && e.first_expert == 0 &&
            e.all_experts == 0 && 0 <= begin && begin < end && end <= e.shape[0]);
  e.all_experts = e.shape[0];
  e.first_expert = begin;
  e.shape[0] = end - begin;
}

void ParameterSet::keep_in_fp32(int i) {
  ParamEntry& e = entries_.at(static_cast<size_t>(i));
  MF_ASSERT(!flat_params_.defined() && e.shard_class == ShardClass::kFrozen);
  e.keep_fp32 = true;
}

void ParameterSet::set_shard_class(int i, ShardClass shard_class) {
  MF_ASSERT(!flat_params_.defined());
  ParamEntry& e = entries_.at(static_cast<size_t>(i));
  MF_ASSERT(!e.keep_fp32 || shard_class == ShardClass::kFrozen);
  MF_CHECK(shard_class != ShardClass::kExpert || !e.shape.empty(), kShape, "expert parameter ", e.name,
           " needs an expert dimension");
  e.shard_class = shard_class;
}

void ParameterSet::allocate(Device device, DType param_dtype, DType grad_dtype) {
  int64_t offset = 0;
  for (int c = 0; c < kNumShardClasses; ++c) {
    spans_[c].begin = offset;
    for (auto& e : entries_)
      if (static_cast<int>(e.shard_class) == c && !e.keep_fp32) {
        e.offset = offset;
        offset += e.padded_numel();
      }
    spans_[c].end = offset;
  }
  total_ = offset;  // hold_experts and keep_in_fp32 change what add() counted
  int64_t fp32_total = 0;
  for (auto& e : entries_)
    if (e.keep_fp32) {
      e.offset = fp32_total;
      fp32_total += e.padded_numel();
    }
  flat_params_ = Tensor::zeros({total_}, param_dtype, device, "model parameters");
  flat_fp32_params_ = fp32_total > 0 ? Tensor::zeros({fp32_total}, DType::kF32, device, "float32 parameters") : Tensor();
  flat_grads_ = Tensor::zeros({trainable_numel()}, grad_dtype, device, "parameter gradients");
  int64_t discarded = 0;
  for (const auto& e : entries_)
    if (e.shard_class == ShardClass::kFrozen && e.shape.size() == 1) discarded = std::max(discarded, e.numel());
  if (discarded > 0) discarded_grads_ = Tensor::zeros({discarded}, grad_dtype, device, "discarded gradients");
  params_.clear();
  grads_.clear();
  for (const auto& e : entries_) {
    const Tensor& flat = e.keep_fp32 ? flat_fp32_params_ : flat_params_;
    params_.push_back(flat.slice(0, e.offset, e.offset + e.numel()).view(e.shape));
    if (e.shard_class != ShardClass::kFrozen)
      grads_.push_back(flat_grads_.slice(0, e.offset, e.offset + e.numel()).view(e.shape));
    else if (e.shape.size() == 1)
      grads_.push_back(discarded_grads_.slice(0, 0, e.numel()));
    else
      grads_.push_back(Tensor());
  }
}

void ParameterSet::zero_grads() { flat_grads_.fill_zero(); }

}  // namespace moeforge
