#include "arch/checkpoint_tensors.h"

#include "arch/architecture.h"
#include "core/tensor.h"

namespace moeforge {

const char* tensor_role_name(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbedding: return "embedding";
    case TensorRole::kLmHead: return "lm_head";
    case TensorRole::kRoutedExpert: return "routed_expert";
    case TensorRole::kOther: return "other";
  }
  return "?";
}

int64_t CheckpointTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) fail(ErrorCode::kFormat, "tensor ", name, " ", shape_str(shape), " is too large");
  return n;
}

std::vector<CheckpointTensor> checkpoint_tensors(const ModelConfig& config) {
  return describe_model(config).tensors;
}

ParamCounts count_parameters(const ModelConfig& config) {
  return count_parameters(config, checkpoint_tensors(config));
}

ParamCounts count_parameters(const ModelConfig& config, const std::vector<CheckpointTensor>& tensors) {
  // A hostile config can still make the sums exceed int64 (three dimensions near 2^31), so every
  // addition is checked.
  auto add = [](int64_t& sum, int64_t n) {
    if (__builtin_add_overflow(sum, n, &sum)) fail(ErrorCode::kFormat, "parameter count overflows int64");
  };
  ParamCounts counts;
  // Routed-expert parameters per (main or MTP) part; a token uses top_k / num_experts of them, which
  // is exact because every MoE layer holds num_experts equal experts.
  int64_t routed_main = 0, routed_mtp = 0;
  for (const CheckpointTensor& t : tensors) {
    const int64_t n = t.numel();
    if (t.buffer) {
      add(counts.buffers, n);
      continue;
    }
    if (t.mtp) {
      add(counts.mtp, n);
      if (t.role == TensorRole::kRoutedExpert) add(routed_mtp, n);
      continue;
    }
    add(counts.total, n);
    if (t.role == TensorRole::kEmbedding) add(counts.embedding, n);
    if (t.role == TensorRole::kLmHead) add(counts.lm_head, n);
    if (t.role == TensorRole::kRoutedExpert) add(routed_main, n);
  }
  counts.routed_experts = routed_main;
  counts.active = counts.total - routed_main;
  counts.mtp_active = counts.mtp - routed_mtp;
  if (config.moe) {
    const int64_t k = config.moe->num_experts_per_tok, e = config.moe->num_experts;
    MF_ASSERT(routed_main % e == 0 && routed_mtp % e == 0);
    counts.active += routed_main / e * k;
    counts.mtp_active += routed_mtp / e * k;
  }
  return counts;
}

}  // namespace moeforge
