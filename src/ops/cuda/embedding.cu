// Token embedding lookup and its gradient (a scatter-add into the table) on CUDA.
#include <cstdint>

#include "core/cuda/device_copy.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr unsigned long long kNoBadRow = ~0ull;

// Records the lowest position whose id is outside [0, vocab) in *bad_row.
__device__ __forceinline__ bool id_ok(const int64_t* ids, int64_t row, int64_t vocab,
                                      unsigned long long* bad_row) {
  const int64_t id = ids[row];
  if (id >= 0 && id < vocab) return true;
  if (threadIdx.x == 0) atomicMin(bad_row, static_cast<unsigned long long>(row));
  return false;
}

// One block per token row; a bad id writes a zero row (the op then throws anyway).
__global__ void embedding_fwd_kernel(FloatRef weight, const int64_t* ids, FloatRef out, int64_t n,
                                     int64_t vocab, int64_t hidden, unsigned long long* bad_row) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const bool ok = id_ok(ids, row, vocab, bad_row);
    const int64_t src = ok ? ids[row] * hidden : 0;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
      out.store(row * hidden + j, ok ? weight.load(src + j) : 0.0f);
  }
}

__global__ void check_ids_kernel(const int64_t* ids, int64_t n, int64_t vocab,
                                 unsigned long long* bad_row) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n;
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = ids[row];
    if (id < 0 || id >= vocab) atomicMin(bad_row, static_cast<unsigned long long>(row));
  }
}

__global__ void embedding_bwd_kernel(FloatRef grad_out, const int64_t* ids, float* table,
                                     int64_t n, int64_t hidden, int64_t padding_idx) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    if (ids[row] == padding_idx) continue;
    float* dst = table + ids[row] * hidden;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
      atomicAdd(dst + j, grad_out.load(row * hidden + j));
  }
}

// A device word holding "no bad row yet".
Tensor bad_row_flag() {
  Tensor flag = Tensor::empty({1}, DType::kI64, Device::kCUDA, "embedding id check");
  MF_CUDA_CHECK(cudaMemsetAsync(flag.raw_data(), 0xff, sizeof(unsigned long long), current_stream()));
  return flag;
}

// Host synchronisation: reads the flag and throws naming the first bad id.
void throw_if_bad_id(const Tensor& flag, const Tensor& ids, int64_t vocab, const char* op) {
  unsigned long long bad = 0;
  cuda_copy_to_host(&bad, flag.raw_data(), sizeof bad);
  if (bad == kNoBadRow) return;
  int64_t id = 0;
  cuda_copy_to_host(&id, ids.data<int64_t>() + bad, sizeof id);
  fail(ErrorCode::kInvalidArgument, op, ": token id ", id, " at position ", bad,
       " is outside the vocabulary [0, ", vocab, ")");
}

}  // namespace

void embedding_fwd(const Tensor& weight, const Tensor& ids, Tensor& out) {
  check_dtype(ids, DType::kI64, "embedding_fwd", "ids");
  const int64_t n = ids.numel(), vocab = weight.size(0), hidden = weight.size(1);
  if (n == 0) return;
  Tensor flag = bad_row_flag();
  embedding_fwd_kernel<<<grid_for(n, 1), 256, 0, current_stream()>>>(
      float_ref(weight, "embedding_fwd", "weight"), ids.data<int64_t>(),
      float_ref(out, "embedding_fwd", "out"), n, vocab, hidden,
      static_cast<unsigned long long*>(flag.raw_data()));
  MF_CUDA_CHECK_LAUNCH();
  throw_if_bad_id(flag, ids, vocab, "embedding_fwd");
}

void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx) {
  check_dtype(ids, DType::kI64, "embedding_bwd", "ids");
  const int64_t n = ids.numel(), vocab = grad_weight.size(0), hidden = grad_weight.size(1);
  if (n == 0) return;
  // Check every id before touching grad_weight so that an error leaves it unchanged.
  Tensor flag = bad_row_flag();
  check_ids_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(
      ids.data<int64_t>(), n, vocab, static_cast<unsigned long long*>(flag.raw_data()));
  MF_CUDA_CHECK_LAUNCH();
  throw_if_bad_id(flag, ids, vocab, "embedding_bwd");

  const FloatRef gout = float_ref(grad_out, "embedding_bwd", "grad_out");
  const FloatRef gw = float_ref(grad_weight, "embedding_bwd", "grad_weight");
  if (!gw.bf16) {
    embedding_bwd_kernel<<<grid_for(n, 1), 256, 0, current_stream()>>>(
        gout, ids.data<int64_t>(), static_cast<float*>(gw.data), n, hidden, padding_idx);
    MF_CUDA_CHECK_LAUNCH();
    return;
  }
  // bf16 gradients: sum in an fp32 table first so that repeated ids do not round at every add.
  Tensor table = Tensor::zeros({vocab, hidden}, DType::kF32, Device::kCUDA,
                               "embedding_bwd fp32 accumulation table");
  embedding_bwd_kernel<<<grid_for(n, 1), 256, 0, current_stream()>>>(gout, ids.data<int64_t>(),
                                                             table.data<float>(), n, hidden, padding_idx);
  MF_CUDA_CHECK_LAUNCH();
  accumulate_f32(gw, table.data<float>(), table.numel());
}

}  // namespace moeforge::ops::cuda
