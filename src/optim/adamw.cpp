#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "core/error.h"
#include "io/json.h"
#include "ops/dense.h"
#include "ops/optim.h"

namespace moeforge {

const char* optimizer_precision_name(OptimizerPrecision p) {
  switch (p) {
    case OptimizerPrecision::kFp32Master: return "fp32-master";
    case OptimizerPrecision::kBf16Weights: return "bf16-weights";
    case OptimizerPrecision::kBf16State: return "bf16-state";
  }
  return "?";
}

OptimizerPrecision parse_optimizer_precision(const std::string& name) {
  for (auto p : {OptimizerPrecision::kFp32Master, OptimizerPrecision::kBf16Weights,
                 OptimizerPrecision::kBf16State})
    if (name == optimizer_precision_name(p)) return p;
  fail(ErrorCode::kInvalidArgument, "unknown optimizer precision '", name,
       "' (fp32-master, bf16-weights or bf16-state)");
}

int optimizer_precision_bytes_per_param(OptimizerPrecision p) {
  switch (p) {
    case OptimizerPrecision::kFp32Master: return 16;  // bf16 w + bf16 g + fp32 master + 2 x fp32 moments
    case OptimizerPrecision::kBf16Weights: return 12;  // bf16 w + bf16 g + 2 x fp32 moments
    case OptimizerPrecision::kBf16State: return 8;     // bf16 w + bf16 g + 2 x bf16 moments
  }
  return 0;
}

namespace {

// Spans are cut to this many elements so that one launch spreads even a few huge expert tensors
// over every multiprocessor (one block per span).
constexpr int64_t kSpanElements = 1 << 16;

}  // namespace

AdamW::AdamW(ParameterSet& params, AdamWConfig config, OptimizerPrecision precision,
             std::vector<bool> decay, std::vector<bool> trainable)
    : params_(params), config_(config), precision_(precision), decay_(std::move(decay)),
      trainable_(std::move(trainable)) {
  MF_CHECK(decay_.size() == params.size() && trainable_.size() == params.size(), kInvalidArgument,
           "AdamW: one decay and trainable flag per parameter");
  const Tensor flat = trainable_weights();
  const Device dev = flat.device();
  // Each parameter starts 64-aligned with zero padding after it, so its span may cover the padding
  // (zero gradients keep zero weights) and stay a multiple of 8 long.
  std::vector<int64_t> spans;
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamEntry& e = params.entry(static_cast<int>(i));
    MF_CHECK(!trainable_[i] || e.shard_class != ShardClass::kFrozen, kInvalidArgument, "AdamW: parameter ",
             e.name, " is frozen and cannot be trained");
    if (!trainable_[i]) continue;
    const int64_t end = std::min(e.offset + e.padded_numel(), flat.numel());
    for (int64_t b = e.offset; b < end; b += kSpanElements)
      spans.insert(spans.end(), {b, std::min(b + kSpanElements, end), decay_[i] ? 1 : 0});
  }
  spans_ = Tensor::from_vector(spans, {static_cast<int64_t>(spans.size() / 3), 3}).to(dev);

  // The CPU backend's float32 weights are their own master copy in every mode.
  const bool low_precision_weights = flat.dtype() != DType::kF32;
  if (low_precision_weights && precision_ == OptimizerPrecision::kFp32Master)
    master_ = ops::cast(flat, DType::kF32);
  const DType state_dtype = dev != Device::kCPU && precision_ == OptimizerPrecision::kBf16State
                                ? DType::kBF16 : DType::kF32;
  exp_avg_ = Tensor::zeros({flat.numel()}, state_dtype, dev, "AdamW exp_avg");
  exp_avg_sq_ = Tensor::zeros({flat.numel()}, state_dtype, dev, "AdamW exp_avg_sq");
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = static_cast<int64_t>(exp_avg_.nbytes() + exp_avg_sq_.nbytes());
  if (master_.defined()) bytes += static_cast<int64_t>(master_.nbytes());
  return bytes;
}

void AdamW::step(double lr) {
  ++step_;
  const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(step_));
  // torch (single-tensor, foreach and fused paths agree): p *= 1 - lr*wd; m = b1 m + (1-b1) g;
  // v = b2 v + (1-b2) g^2; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
  ops::AdamWHyper h{static_cast<float>(lr),
                    static_cast<float>(config_.beta1),
                    static_cast<float>(config_.beta2),
                    static_cast<float>(config_.eps),
                    static_cast<float>(config_.weight_decay),
                    static_cast<float>(lr / bc1),
                    static_cast<float>(std::sqrt(bc2))};
  Tensor weights = trainable_weights();
  ops::adamw_update(weights, params_.flat_grads(), master_, exp_avg_, exp_avg_sq_, spans_, h);
}

Tensor AdamW::trainable_weights() const { return params_.flat_params().slice(0, 0, params_.trainable_numel()); }

namespace {

std::string state_key(const std::string& param, const char* kind) { return str_cat(param, ".", kind); }

}  // namespace

std::map<std::string, Tensor> AdamW::state(bool with_weights, bool with_replicated) const {
  std::map<std::string, Tensor> state;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamEntry& e = params_.entry(static_cast<int>(i));
    if (e.shard_class == ShardClass::kFrozen || (!with_replicated && e.shard_class != ShardClass::kExpert)) continue;
    auto of = [&](const Tensor& flat) { return flat.slice(0, e.offset, e.offset + e.numel()).view(e.shape); };
    state.emplace(state_key(e.name, "exp_avg"), of(exp_avg_));
    state.emplace(state_key(e.name, "exp_avg_sq"), of(exp_avg_sq_));
    if (master_.defined()) state.emplace(state_key(e.name, "master"), of(master_));
    else if (with_weights && params_.flat_params().dtype() == DType::kF32)
      state.emplace(state_key(e.name, "master"), params_.param(static_cast<int>(i)));
  }
  return state;
}

void AdamW::load_state(const std::map<std::string, Tensor>& state, int64_t step) {
  // Checkpoints before per-parameter state held each kind as one flat tensor, every parameter at its
  // 64-aligned place in declaration order (before parameters were laid out by sharding class).
  const bool flat_layout = state.count("exp_avg") != 0;
  std::vector<int64_t> declared_offset;
  for (int64_t offset = 0; const ParamEntry& e : params_.entries()) {
    declared_offset.push_back(offset);
    offset += e.padded_numel();
  }
  auto load = [&](int i, const char* kind, const Tensor& flat) {
    const ParamEntry& e = params_.entry(i);
    const std::string key = flat_layout ? std::string(kind) : state_key(e.name, kind);
    auto it = state.find(key);
    MF_CHECK(it != state.end(), kFormat, "optimizer state lacks '", key, "'");
    Tensor src = it->second.to(Device::kCPU);
    if (flat_layout) {
      MF_CHECK(src.numel() == params_.numel(), kShape, "optimizer state '", key, "' has ", src.numel(),
               " elements, the model has ", params_.numel());
      const int64_t at = declared_offset[i];
      src = src.view({src.numel()}).slice(0, at, at + e.numel()).view(e.shape);
    }
    MF_CHECK(src.shape() == e.shape, kShape, "optimizer state '", key, "' has shape ", shape_str(src.shape()),
             ", the parameter ", shape_str(e.shape));
    flat.slice(0, e.offset, e.offset + e.numel()).view(e.shape).copy_from(src.to(flat.dtype()).contiguous());
  };
  std::set<std::string> known;
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    const ParamEntry& e = params_.entry(i);
    if (e.shard_class == ShardClass::kFrozen) continue;
    load(i, "exp_avg", exp_avg_);
    load(i, "exp_avg_sq", exp_avg_sq_);
    const bool has_master = state.count(flat_layout ? std::string("master") : state_key(e.name, "master")) != 0;
    if (master_.defined()) {
      // A checkpoint written in another precision mode has no master copy: the weights are one.
      if (has_master) load(i, "master", master_);
      else master_.slice(0, e.offset, e.offset + e.numel()).view(e.shape).copy_from(ops::cast(params_.param(i), DType::kF32));
    } else if (has_master && params_.flat_params().dtype() == DType::kF32) {
      // Float32 weights are their own master copy; a checkpoint that saved the model in a narrower
      // dtype keeps their exact values here.
      load(i, "master", params_.flat_params());
    }
    for (const char* kind : {"exp_avg", "exp_avg_sq", "master"}) known.insert(state_key(e.name, kind));
  }
  if (!flat_layout)
    for (const auto& [key, tensor] : state)
      MF_CHECK(known.count(key) != 0, kFormat, "optimizer state '", key, "' belongs to no parameter of this model");
  step_ = step;
}

std::string AdamW::shard_metadata() const {
  nlohmann::json experts = nlohmann::json::object();
  for (const ParamEntry& e : params_.entries())
    if (e.shard_class == ShardClass::kExpert)
      experts[e.name] = {{"experts", {e.first_expert, e.first_expert + e.shape[0]}},
                         {"of", e.all_experts > 0 ? e.all_experts : e.shape[0]}};
  return nlohmann::json{{"format", 1}, {"expert_parameters", experts}}.dump();
}

double global_grad_norm(const ParameterSet& params, ProcessGroup* group) {
  if (group == nullptr || group->size() == 1) return std::sqrt(ops::sum_of_squares(params.flat_grads()));
  auto squares = [&](ShardClass c) {
    const FlatSpan span = params.span(c);
    return span.size() > 0 ? ops::sum_of_squares(params.flat_grads().slice(0, span.begin, span.end)) : 0.0;
  };
  return std::sqrt(squares(ShardClass::kReplicated) + sum_over_ranks(*group, squares(ShardClass::kExpert)));
}

double clip_grad_norm(ParameterSet& params, double max_norm) {
  const double norm = global_grad_norm(params);
  clip_grad_norm_to(params, norm, max_norm);
  return norm;
}

void clip_grad_norm_to(ParameterSet& params, double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    Tensor g = params.flat_grads();
    ops::scale_inplace(g, static_cast<float>(coef));
  }
}

std::string first_non_finite_parameter(const ParameterSet& params) {
  // One reduction over all weights (sums of squares in double: finite float32 values cannot overflow
  // it); the per-parameter search runs only when that finds something.
  if (std::isfinite(ops::sum_of_squares(params.flat_params()))) return {};
  for (size_t i = 0; i < params.size(); ++i)
    if (!std::isfinite(ops::sum_of_squares(params.param(static_cast<int>(i))))) return params.entry(static_cast<int>(i)).name;
  return "(unknown)";
}

}  // namespace moeforge
