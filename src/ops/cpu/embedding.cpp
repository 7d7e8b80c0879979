// Token embedding lookup and its gradient (a scatter-add into the table) on the CPU.
#include <cstring>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {
namespace {

int64_t checked_id(const int64_t* ids, int64_t row, int64_t vocab, const char* op) {
  const int64_t id = ids[row];
  MF_CHECK(id >= 0 && id < vocab, kInvalidArgument, op, ": token id ", id, " at position ", row,
           " is outside the vocabulary [0, ", vocab, ")");
  return id;
}

}  // namespace

void embedding_fwd(const Tensor& weight, const Tensor& ids, Tensor& out) {
  const int64_t n = ids.numel(), vocab = weight.size(0), hidden = weight.size(1);
  const int64_t* pid = ids.data<int64_t>();
  const float* pw = weight.data<float>();
  float* po = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = checked_id(pid, i, vocab, "embedding_fwd");
    std::memcpy(po + i * hidden, pw + id * hidden, static_cast<size_t>(hidden) * sizeof(float));
  }
}

void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx) {
  const int64_t n = ids.numel(), vocab = grad_weight.size(0), hidden = grad_weight.size(1);
  const int64_t* pid = ids.data<int64_t>();
  const float* pg = grad_out.data<float>();
  float* pw = grad_weight.data<float>();
  // Check every id before touching grad_weight so that an error leaves it unchanged.
  for (int64_t i = 0; i < n; ++i) checked_id(pid, i, vocab, "embedding_bwd");
  for (int64_t i = 0; i < n; ++i) {
    if (pid[i] == padding_idx) continue;
    float* row = pw + pid[i] * hidden;
    const float* g = pg + i * hidden;
    for (int64_t j = 0; j < hidden; ++j) row[j] += g[j];
  }
}

}  // namespace moeforge::ops::cpu
