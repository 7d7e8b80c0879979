// Cross-entropy on CUDA, fused with its gradient: one block per row computes the row's
// log-sum-exp with an online max/sum (fp32), its loss, and, when asked, overwrites the row with
// (softmax - onehot) * grad_scale. bf16 rows are read and written 8 logits (16 bytes) at a time. Works on any row range, so callers can chunk the vocabulary
// projection and never hold the whole [tokens, vocab] logits.
#include <cstdint>

#include "core/cuda/device_copy.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kIgnoreIndex = -100;

// Per-row status for the final reduction.
constexpr int32_t kIgnored = 0, kCounted = 1, kBadTarget = 2;

// The running sums of the chunks added so far.
struct LossTotals {
  double loss_sum;
  long long count;
  long long first_bad_row;  // in the whole batch; -1 while every target is valid
  long long bad_target;     // that row's target
  long long vocab;
};

// kVec > 1 needs vocab % kVec == 0, bf16 logits (and dlogits) and 16-byte aligned rows.
template <int kVec>
__global__ void cross_entropy_kernel(FloatRef logits, const int64_t* targets, int64_t vocab,
                                     float grad_scale, FloatRef dlogits, bool with_grad,
                                     float* row_loss, int32_t* row_status) {
  __shared__ float scratch[32];
  __shared__ float target_logit;
  const int64_t r = blockIdx.x, base = r * vocab, chunks = vocab / kVec;
  const int64_t target = targets[r];
  const bool counted = target >= 0 && target < vocab;
  // Read the target's logit before any thread may overwrite it (dlogits may alias logits).
  if (threadIdx.x == 0) target_logit = counted ? logits.load(base + target) : 0.0f;
  float max = -INFINITY, sum = 0.0f;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float x[kVec];
    load_chunk<kVec>(logits, base + c * kVec, x);
    float chunk_max = x[0];
#pragma unroll
    for (int i = 1; i < kVec; ++i) chunk_max = fmaxf(chunk_max, x[i]);
    if (chunk_max == -INFINITY) continue;  // -inf logits contribute nothing (exp(-inf + inf) is NaN)
    if (chunk_max > max) {
      sum *= expf(max - chunk_max);
      max = chunk_max;
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) sum += expf(x[i] - max);
  }
  const float row_max = block_max(max, scratch);  // its barriers also publish target_logit
  sum = max == -INFINITY ? 0.0f : sum * expf(max - row_max);
  const float lse = row_max + logf(block_sum(sum, scratch));
  if (threadIdx.x == 0) {
    row_loss[r] = counted ? lse - target_logit : 0.0f;
    row_status[r] = counted ? kCounted : (target == kIgnoreIndex ? kIgnored : kBadTarget);
  }
  if (!with_grad) return;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    float x[kVec];
    load_chunk<kVec>(logits, base + c * kVec, x);
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      x[i] = counted ? (expf(x[i] - lse) - (c * kVec + i == target ? 1.0f : 0.0f)) * grad_scale : 0.0f;
    store_chunk<kVec>(dlogits, base + c * kVec, x);
  }
}

// One block: adds the chunk's row losses (in double) and counted rows into totals, and records
// its first bad target when no earlier chunk had one.
__global__ void loss_totals_kernel(const float* row_loss, const int32_t* row_status,
                                   const int64_t* targets, int64_t rows, int64_t first_row,
                                   int64_t vocab, LossTotals* totals) {
  __shared__ double loss_part[kThreads];
  __shared__ long long count_part[kThreads];
  __shared__ long long bad_part[kThreads];
  double loss = 0;
  long long count = 0, bad = rows;  // rows: none
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    loss += row_loss[r];
    count += row_status[r] == kCounted;
    if (row_status[r] == kBadTarget && r < bad) bad = r;
  }
  loss_part[threadIdx.x] = loss;
  count_part[threadIdx.x] = count;
  bad_part[threadIdx.x] = bad;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      loss_part[threadIdx.x] += loss_part[threadIdx.x + stride];
      count_part[threadIdx.x] += count_part[threadIdx.x + stride];
      bad_part[threadIdx.x] = min(bad_part[threadIdx.x], bad_part[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  totals->loss_sum += loss_part[0];
  totals->count += count_part[0];
  totals->vocab = vocab;
  if (bad_part[0] < rows && totals->first_bad_row < 0) {
    totals->first_bad_row = first_row + bad_part[0];
    totals->bad_target = targets[bad_part[0]];
  }
}

}  // namespace

Tensor cross_entropy_totals() {
  Tensor totals = Tensor::empty({static_cast<int64_t>(sizeof(LossTotals))}, DType::kU8,
                                Device::kCUDA, "cross_entropy totals");
  const LossTotals zero{0.0, 0, -1, 0, 0};
  MF_CUDA_CHECK(cudaMemcpyAsync(totals.raw_data(), &zero, sizeof zero, cudaMemcpyHostToDevice, current_stream()));
  return totals;
}

void cross_entropy_add(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor* dlogits,
                       int64_t first_row, Tensor& totals) {
  check_dtype(targets, DType::kI64, "cross_entropy", "targets");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  if (rows == 0) return;
  const FloatRef fl = float_ref(logits, "cross_entropy", "logits");
  const bool with_grad = dlogits != nullptr && dlogits->defined();
  const FloatRef fd = with_grad ? float_ref(*dlogits, "cross_entropy", "dlogits") : FloatRef{nullptr, false};
  Tensor row_loss = Tensor::empty({rows}, DType::kF32, Device::kCUDA, "cross_entropy row losses");
  Tensor row_status = Tensor::empty({rows}, DType::kI32, Device::kCUDA, "cross_entropy row status");
  MF_CHECK(rows <= 0x7fffffff, kUnsupported, "cross_entropy: ", rows, " rows exceed one launch");
  const bool vectorized = with_grad ? bf16_chunks(vocab, {&logits, dlogits}) : bf16_chunks(vocab, {&logits});
  auto kernel = vectorized ? cross_entropy_kernel<8> : cross_entropy_kernel<1>;
  kernel<<<static_cast<unsigned>(rows), kThreads, 0, current_stream()>>>(
      fl, targets.data<int64_t>(), vocab, grad_scale, fd, with_grad, row_loss.data<float>(),
      row_status.data<int32_t>());
  MF_CUDA_CHECK_LAUNCH();
  loss_totals_kernel<<<1, kThreads, 0, current_stream()>>>(
      row_loss.data<float>(), row_status.data<int32_t>(), targets.data<int64_t>(), rows, first_row,
      vocab, static_cast<LossTotals*>(totals.raw_data()));
  MF_CUDA_CHECK_LAUNCH();
}

CrossEntropyResult read_cross_entropy_totals(const Tensor& totals) {
  LossTotals host{};  // host synchronisation: the loss is returned to the host
  cuda_copy_to_host(&host, totals.raw_data(), sizeof host);
  MF_CHECK(host.first_bad_row < 0, kInvalidArgument, "cross_entropy: target ", host.bad_target,
           " at row ", host.first_bad_row, " is outside [0, ", host.vocab,
           ") and is not the ignore index -100");
  return {host.loss_sum, static_cast<int64_t>(host.count)};
}

}  // namespace moeforge::ops::cuda
