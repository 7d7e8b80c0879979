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
  for (bool& streamed : streamed_) streamed = false;
  int64_t discarded = 0;
  for (const auto& e : entries_)
    if (e.shard_class == ShardClass::kFrozen && e.shape.size() == 1) discarded = std::max(discarded, e.numel());
  if (discarded > 0) discarded_grads_ = Tensor::zeros({discarded}, grad_dtype, device, "discarded gradients");
  params_.clear();
  grads_.assign(entries_.size(), Tensor());
  for (size_t i = 0; i < entries_.size(); ++i) {
    const ParamEntry& e = entries_[i];
    const Tensor& flat = e.keep_fp32 ? flat_fp32_params_ : flat_params_;
    params_.push_back(flat.slice(0, e.offset, e.offset + e.numel()).view(e.shape));
    if (e.shard_class == ShardClass::kFrozen && e.shape.size() == 1) grads_[i] = discarded_grads_.slice(0, 0, e.numel());
  }
  allocate_stored_grads(device, grad_dtype, /*keep_values=*/false);
}

void ParameterSet::allocate_stored_grads(Device device, DType grad_dtype, bool keep_values) {
  // The two trainable classes are adjacent, so the stored ones are one range.
  const FlatSpan replicated = span(ShardClass::kReplicated), expert = span(ShardClass::kExpert);
  const bool keep_replicated = !streams_grads(ShardClass::kReplicated), keep_expert = !streams_grads(ShardClass::kExpert);
  const int64_t begin = keep_replicated ? replicated.begin : expert.begin;
  const int64_t end = keep_expert ? expert.end : (keep_replicated ? replicated.end : expert.begin);
  if (keep_values && flat_grads_.defined()) zero_unwritten(FlatSpan{grads_begin_, grads_begin_ + flat_grads_.numel()});
  unwritten_.assign(entries_.size(), 0);  // the new buffer holds every gradient
  unwritten_count_ = 0;
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].shard_class != ShardClass::kFrozen) grads_[i] = Tensor();
  Tensor old = std::move(flat_grads_);
  const int64_t old_begin = grads_begin_;
  if (!keep_values) old = Tensor();  // freed before the new buffer comes
  flat_grads_ = Tensor::zeros({std::max<int64_t>(0, end - begin)}, grad_dtype, device, "parameter gradients");
  grads_begin_ = begin;
  if (old.defined()) {
    // What both buffers hold keeps its values.
    const int64_t from = std::max(begin, old_begin), to = std::min(end, old_begin + old.numel());
    if (from < to) stored_grads({from, to}).copy_from(old.slice(0, from - old_begin, to - old_begin));
  }
  for (size_t i = 0; i < entries_.size(); ++i) {
    const ParamEntry& e = entries_[i];
    if (e.shard_class == ShardClass::kFrozen || streams_grads(e.shard_class)) continue;
    grads_[i] = flat_grads_.slice(0, e.offset - grads_begin_, e.offset - grads_begin_ + e.numel()).view(e.shape);
  }
}

Tensor ParameterSet::stored_grads(FlatSpan s) const {
  MF_ASSERT(grads_begin_ <= s.begin && s.begin <= s.end && s.end <= grads_begin_ + flat_grads_.numel());
  zero_unwritten(s);
  return flat_grads_.slice(0, s.begin - grads_begin_, s.end - grads_begin_);
}

void ParameterSet::stream_grads(ShardClass c) {
  MF_ASSERT(flat_params_.defined() && c != ShardClass::kFrozen);
  if (streams_grads(c)) return;
  streamed_[static_cast<int>(c)] = true;
  allocate_stored_grads(flat_params_.device(), flat_grads_.dtype(), /*keep_values=*/false);
}

void ParameterSet::keep_grads(ShardClass c) {
  MF_ASSERT(flat_params_.defined() && c != ShardClass::kFrozen);
  if (!streams_grads(c)) return;
  streamed_[static_cast<int>(c)] = false;
  allocate_stored_grads(flat_params_.device(), flat_grads_.dtype(), /*keep_values=*/true);
}

std::vector<int> ParameterSet::params_in(FlatSpan s) const {
  std::vector<int> in;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const ParamEntry& e = entries_[i];
    if (e.shard_class != ShardClass::kFrozen && s.begin <= e.offset && e.offset < s.end) in.push_back(static_cast<int>(i));
  }
  return in;
}

void ParameterSet::bind_grads(FlatSpan s, const Tensor& memory) {
  MF_ASSERT(memory.numel() == s.size() && memory.dtype() == flat_grads_.dtype());
  for (int i : params_in(s)) {
    const ParamEntry& e = entries_[i];
    MF_ASSERT(streams_grads(e.shard_class) && e.offset + e.numel() <= s.end);
    grads_[i] = memory.slice(0, e.offset - s.begin, e.offset - s.begin + e.numel()).view(e.shape);
  }
}

void ParameterSet::unbind_grads(FlatSpan s) {
  for (int i : params_in(s)) grads_[i] = Tensor();
}

void ParameterSet::zero_grads() {
  unwritten_.assign(entries_.size(), 0);
  unwritten_count_ = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const ParamEntry& e = entries_[i];
    if (e.shard_class == ShardClass::kFrozen || streams_grads(e.shard_class)) continue;
    unwritten_[i] = 1;
    ++unwritten_count_;
  }
  stored_count_ = unwritten_count_;
}

Tensor& ParameterSet::grad_to_write(int i, float& beta) {
  const bool unwritten = unwritten_count_ > 0 && unwritten_[static_cast<size_t>(i)];
  if (unwritten) {
    unwritten_[static_cast<size_t>(i)] = 0;
    --unwritten_count_;
  }
  beta = unwritten ? 0.0f : 1.0f;
  return grads_[static_cast<size_t>(i)];
}

void ParameterSet::zero_unwritten(int i) const {
  if (unwritten_count_ == 0 || !unwritten_[static_cast<size_t>(i)]) return;
  Tensor g = grads_[static_cast<size_t>(i)];
  g.fill_zero();
  unwritten_[static_cast<size_t>(i)] = 0;
  --unwritten_count_;
}

void ParameterSet::zero_unwritten(FlatSpan s) const {
  if (unwritten_count_ == 0) return;
  if (unwritten_count_ == stored_count_ && unwritten_count_ > 1 && s.begin <= grads_begin_ &&
      grads_begin_ + flat_grads_.numel() <= s.end) {
    Tensor all = flat_grads_;  // nothing written since zero_grads(): one pass instead of one a parameter
    all.fill_zero();
    unwritten_.assign(entries_.size(), 0);
    unwritten_count_ = 0;
    return;
  }
  for (size_t i = 0; i < entries_.size() && unwritten_count_ > 0; ++i) {
    const ParamEntry& e = entries_[i];
    if (s.begin < e.offset + e.numel() && e.offset < s.end) zero_unwritten(static_cast<int>(i));
  }
}

}  // namespace moeforge
