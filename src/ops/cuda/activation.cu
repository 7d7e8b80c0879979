// SwiGLU and row softmax on CUDA, fp32 arithmetic.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// h = silu(gate) * up; gate_up rows are [gate (inter) | up (inter)].
__global__ void swiglu_fwd_kernel(FloatRef gate_up, FloatRef h, int64_t rows, int64_t inter) {
  const int64_t total = rows * inter;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / inter, j = idx % inter;
    const float g = gate_up.load(r * 2 * inter + j), u = gate_up.load(r * 2 * inter + inter + j);
    h.store(idx, g * sigmoid(g) * u);
  }
}

// d gate = dh * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  d up = dh * silu(g).
__global__ void swiglu_bwd_kernel(FloatRef dh, FloatRef gate_up, FloatRef d_gate_up, int64_t rows,
                                  int64_t inter) {
  const int64_t total = rows * inter;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / inter, j = idx % inter;
    const int64_t gate_at = r * 2 * inter + j, up_at = gate_at + inter;
    const float g = gate_up.load(gate_at), u = gate_up.load(up_at), d = dh.load(idx);
    const float s = sigmoid(g);
    d_gate_up.store(gate_at, d * u * s * (1.0f + g * (1.0f - s)));
    d_gate_up.store(up_at, d * g * s);
  }
}

// One warp per row: max, sum of exponentials, normalise.
__global__ void softmax_fwd_kernel(FloatRef logits, FloatRef probs, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * cols;
    float max = -INFINITY;
    for (int64_t j = lane; j < cols; j += 32) max = fmaxf(max, logits.load(base + j));
    max = warp_max(max);
    float sum = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) sum += expf(logits.load(base + j) - max);
    const float inv = 1.0f / warp_sum(sum);
    for (int64_t j = lane; j < cols; j += 32) probs.store(base + j, expf(logits.load(base + j) - max) * inv);
  }
}

// dx = p * (dp - sum(dp * p)).
__global__ void softmax_bwd_kernel(FloatRef dprobs, FloatRef probs, FloatRef dlogits, int64_t rows,
                                   int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * cols;
    float dot = 0.0f;
    for (int64_t j = lane; j < cols; j += 32) dot += dprobs.load(base + j) * probs.load(base + j);
    dot = warp_sum(dot);
    for (int64_t j = lane; j < cols; j += 32)
      dlogits.store(base + j, probs.load(base + j) * (dprobs.load(base + j) - dot));
  }
}

}  // namespace

void swiglu_fwd(const Tensor& gate_up, Tensor& h) {
  const int64_t rows = h.size(0), inter = h.size(1);
  if (rows * inter == 0) return;
  swiglu_fwd_kernel<<<grid_for(rows * inter, 256), 256, 0, kStream>>>(
      float_ref(gate_up, "swiglu_fwd", "gate_up"), float_ref(h, "swiglu_fwd", "h"), rows, inter);
  MF_CUDA_CHECK_LAUNCH();
}

void swiglu_bwd(const Tensor& dh, const Tensor& gate_up, Tensor& d_gate_up) {
  const int64_t rows = dh.size(0), inter = dh.size(1);
  if (rows * inter == 0) return;
  swiglu_bwd_kernel<<<grid_for(rows * inter, 256), 256, 0, kStream>>>(
      float_ref(dh, "swiglu_bwd", "dh"), float_ref(gate_up, "swiglu_bwd", "gate_up"),
      float_ref(d_gate_up, "swiglu_bwd", "d_gate_up"), rows, inter);
  MF_CUDA_CHECK_LAUNCH();
}

void softmax_fwd(const Tensor& logits, Tensor& probs) {
  const int64_t rows = logits.size(0), cols = logits.size(1);
  if (rows * cols == 0) return;
  softmax_fwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, kStream>>>(
      float_ref(logits, "softmax_fwd", "logits"), float_ref(probs, "softmax_fwd", "probs"), rows,
      cols);
  MF_CUDA_CHECK_LAUNCH();
}

void softmax_bwd(const Tensor& dprobs, const Tensor& probs, Tensor& dlogits) {
  const int64_t rows = probs.size(0), cols = probs.size(1);
  if (rows * cols == 0) return;
  softmax_bwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, kStream>>>(
      float_ref(dprobs, "softmax_bwd", "dprobs"), float_ref(probs, "softmax_bwd", "probs"),
      float_ref(dlogits, "softmax_bwd", "dlogits"), rows, cols);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
