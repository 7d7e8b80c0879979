#include "optim/adamw.h"

#include <cmath>

#include "core/error.h"
#include "ops/ops.h"

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

AdamW::AdamW(ParameterSet& params, AdamWConfig config, OptimizerPrecision precision,
             std::vector<bool> decay, std::vector<bool> trainable)
    : params_(params), config_(config), precision_(precision), decay_(std::move(decay)),
      trainable_(std::move(trainable)) {
  MF_CHECK(decay_.size() == params.size() && trainable_.size() == params.size(), kInvalidArgument,
           "AdamW: one decay and trainable flag per parameter");
  MF_CHECK(params.flat_params().device() == Device::kCPU, kUnsupported,
           "AdamW on CUDA parameters is not implemented yet");
  const Device dev = params.flat_params().device();
  exp_avg_ = Tensor::zeros({params.numel()}, DType::kF32, dev, "AdamW exp_avg");
  exp_avg_sq_ = Tensor::zeros({params.numel()}, DType::kF32, dev, "AdamW exp_avg_sq");
}

void AdamW::step(double lr) {
  ++step_;
  const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(step_));
  const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
  // torch (single-tensor, foreach and fused paths agree): p *= 1 - lr*wd; m = b1 m + (1-b1) g;
  // v = b2 v + (1-b2) g^2; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float eps = static_cast<float>(config_.eps);
  float* p = params_.flat_params().data<float>();
  const float* g = params_.flat_grads().data<float>();
  float* m = exp_avg_.data<float>();
  float* v = exp_avg_sq_.data<float>();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!trainable_[i]) continue;
    const ParamEntry& e = params_.entry(static_cast<int>(i));
    const float decay = decay_[i] ? static_cast<float>(1.0 - lr * config_.weight_decay) : 1.0f;
    for (int64_t j = e.offset; j < e.offset + e.numel(); ++j) {
      p[j] *= decay;
      m[j] = b1 * m[j] + (1.0f - b1) * g[j];
      v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
      p[j] -= step_size * m[j] / (std::sqrt(v[j]) / bc2_sqrt + eps);
    }
  }
  (void)precision_;  // CPU: float32 weights are their own master copy in every mode
}

std::map<std::string, Tensor> AdamW::state() const {
  return {{"exp_avg", exp_avg_}, {"exp_avg_sq", exp_avg_sq_}};
}

void AdamW::load_state(const std::map<std::string, Tensor>& state, int64_t step) {
  for (const char* key : {"exp_avg", "exp_avg_sq"}) {
    auto it = state.find(key);
    MF_CHECK(it != state.end(), kFormat, "optimizer state lacks '", key, "'");
    MF_CHECK(it->second.numel() == params_.numel(), kShape, "optimizer state '", key, "' has ",
             it->second.numel(), " elements, the model has ", params_.numel());
    Tensor dst = std::string(key) == "exp_avg" ? exp_avg_ : exp_avg_sq_;
    dst.copy_from(it->second.to(DType::kF32).view({params_.numel()}));
  }
  step_ = step;
}

double global_grad_norm(const ParameterSet& params) {
  Tensor g = params.flat_grads().to(Device::kCPU).to(DType::kF32);
  const float* d = g.data<float>();
  double sum = 0;
  for (int64_t i = 0; i < g.numel(); ++i) sum += static_cast<double>(d[i]) * d[i];
  return std::sqrt(sum);
}

double clip_grad_norm(ParameterSet& params, double max_norm) {
  double norm = global_grad_norm(params);
  double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    Tensor g = params.flat_grads();
    ops::scale_inplace(g, static_cast<float>(coef));
  }
  return norm;
}

}  // namespace moeforge
