#include "model/parameters.h"

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
  }
  return "?";
}

int ParameterSet::add(std::string name, Shape shape, ParamGroup group, bool trainer_weight_decay) {
  MF_ASSERT(!flat_params_.defined());
  ParamEntry e{std::move(name), std::move(shape), total_, group, trainer_weight_decay};
  // Keep every parameter 64-element aligned so vectorised kernels can treat each one alone too.
  total_ += (e.numel() + 63) / 64 * 64;
  entries_.push_back(std::move(e));
  return static_cast<int>(entries_.size()) - 1;
}

void ParameterSet::allocate(Device device, DType param_dtype, DType grad_dtype) {
  flat_params_ = Tensor::zeros({total_}, param_dtype, device, "model parameters");
  flat_grads_ = Tensor::zeros({total_}, grad_dtype, device, "parameter gradients");
  params_.clear();
  grads_.clear();
  for (const auto& e : entries_) {
    params_.push_back(flat_params_.slice(0, e.offset, e.offset + e.numel()).view(e.shape));
    grads_.push_back(flat_grads_.slice(0, e.offset, e.offset + e.numel()).view(e.shape));
  }
}

void ParameterSet::zero_grads() { flat_grads_.fill_zero(); }

}  // namespace moeforge
