// ParameterSet: every trainable tensor of a model as a view into one contiguous parameter buffer,
// with a matching gradient buffer. One buffer each makes the optimizer, gradient clipping,
// zeroing and (later) sharding single loops over flat memory, as in llm.c.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moeforge {

// What a parameter is, for the trainable-parameter report and for freezing groups by flag.
enum class ParamGroup { kEmbedding, kAttention, kRouter, kExperts, kSharedExperts, kDenseMlp, kNorm, kLmHead };
const char* param_group_name(ParamGroup group);

struct ParamEntry {
  std::string name;  // our name: the checkpoint name, or the fused name for stacked experts
  Shape shape;
  int64_t offset = 0;  // in elements, into the flat buffers
  ParamGroup group = ParamGroup::kAttention;
  // The Hugging Face Trainer's rule: no weight decay on biases and normalisation weights.
  bool trainer_weight_decay = true;
  int64_t numel() const { return shape_numel(shape); }
};

class ParameterSet {
 public:
  // Declares a parameter; returns its index. All declarations come before allocate().
  int add(std::string name, Shape shape, ParamGroup group, bool trainer_weight_decay);
  // Allocates the flat parameter and gradient buffers and the per-parameter views; gradients are zero.
  void allocate(Device device, DType param_dtype, DType grad_dtype);

  size_t size() const { return entries_.size(); }
  const ParamEntry& entry(int i) const { return entries_[i]; }
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const Tensor& param(int i) const { return params_[i]; }
  const Tensor& grad(int i) const { return grads_[i]; }
  Tensor& mutable_grad(int i) { return grads_[i]; }
  const Tensor& flat_params() const { return flat_params_; }
  const Tensor& flat_grads() const { return flat_grads_; }
  int64_t numel() const { return total_; }
  void zero_grads();

 private:
  std::vector<ParamEntry> entries_;
  std::vector<Tensor> params_, grads_;
  Tensor flat_params_, flat_grads_;
  int64_t total_ = 0;
};

}  // namespace moeforge
