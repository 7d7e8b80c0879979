// SwiGLU (plain and GPT-OSS's clamped one), squared ReLU and row softmax on CUDA, fp32 arithmetic.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/dropout_mask.h"
#include "ops/normal_hash.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// An activation a(gate, up) and its partial derivatives, for the gated kernels below.
struct GatedDerivatives {
  float a, d_gate, d_up;
};

// The activations below: gated ones read rows [gate (inter) | up (inter)]; Relu2 reads rows of
// inter columns as its gate and has no up.
// SwiGLU: a = silu(g) * up; da/dgate = up * sigmoid(g) * (1 + g * (1 - sigmoid(g))), da/dup = silu(g).
struct Silu {
  static constexpr bool kGated = true;
  __device__ __forceinline__ float value(float g, float u) const { return g * sigmoid(g) * u; }
  __device__ __forceinline__ GatedDerivatives derivatives(float g, float u) const {
    const float sg = sigmoid(g), silu = g * sg;
    return {silu * u, u * sg * (1.0f + g * (1.0f - sg)), silu};
  }
};

// GPT-OSS's clamped SwiGLU (ops/activation.h): a = (u + 1) * g * sigmoid(alpha g) with
// g = min(gate, limit), u = clamp(up, -limit, limit); a clamped input gets no gradient.
struct ClampedSilu {
  static constexpr bool kGated = true;
  float limit, alpha;
  __device__ __forceinline__ float value(float gate, float up) const {
    const float g = fminf(gate, limit), u = fminf(fmaxf(up, -limit), limit);
    return (u + 1.0f) * (g * sigmoid(alpha * g));
  }
  __device__ __forceinline__ GatedDerivatives derivatives(float gate, float up) const {
    const float g = fminf(gate, limit), u = fminf(fmaxf(up, -limit), limit);
    const float sg = sigmoid(alpha * g), glu = g * sg;
    return {(u + 1.0f) * glu, gate <= limit ? (u + 1.0f) * sg * (1.0f + alpha * g * (1.0f - sg)) : 0.0f,
            up >= -limit && up <= limit ? glu : 0.0f};
  }
};

// Nemotron-H's squared ReLU of a single input: a = relu(g)^2, da/dg = 2 relu(g).
struct Relu2 {
  static constexpr bool kGated = false;
  __device__ __forceinline__ float value(float g, float) const {
    const float r = fmaxf(g, 0.0f);
    return r * r;
  }
  __device__ __forceinline__ GatedDerivatives derivatives(float g, float) const {
    const float r = fmaxf(g, 0.0f);
    return {r * r, 2.0f * r, 0.0f};
  }
};

// Row r's gate column j, and its up column (gated activations only).
template <class Activation>
__device__ __forceinline__ int64_t gate_at(int64_t r, int64_t inter, int64_t j) {
  return r * (Activation::kGated ? 2 : 1) * inter + j;
}

// h = scale[r] * a(gate, up) (scale null: 1).
// kVec consecutive columns per step (see load_chunk; inter % kVec == 0, so a step stays in one row).
template <int kVec, class Activation>
__global__ void gated_fwd_kernel(FloatRef gate_up, const float* scale, FloatRef h, int64_t rows, int64_t inter,
                                 Activation act) {
  const int64_t total = rows * inter;
  for (int64_t idx = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x * kVec) {
    const int64_t r = idx / inter, j = idx % inter;
    const float s = scale != nullptr ? scale[r] : 1.0f;
    float g[kVec], u[kVec] = {}, out[kVec];
    load_chunk<kVec>(gate_up, gate_at<Activation>(r, inter, j), g);
    if constexpr (Activation::kGated) load_chunk<kVec>(gate_up, gate_at<Activation>(r, inter, j) + inter, u);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = s * act.value(g[i], u[i]);
    store_chunk<kVec>(h, idx, out);
  }
}

// With dh the gradient of s * a:  d scale = dh . a (a row sum, hence one warp per row),
// d gate = s * dh * da/dgate, d up = s * dh * da/dup. scale null: s = 1 and no d scale.
template <int kVec, class Activation>
__global__ void gated_bwd_kernel(FloatRef dh, FloatRef gate_up, const float* scale, FloatRef d_gate_up,
                                 float* d_scale, int64_t rows, int64_t inter, Activation act) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float s = scale != nullptr ? scale[r] : 1.0f;
    float dot = 0.0f;
    for (int64_t j = lane * int64_t(kVec); j < inter; j += 32 * kVec) {
      const int64_t g_at = gate_at<Activation>(r, inter, j), up_at = g_at + inter;
      float g[kVec], u[kVec] = {}, d[kVec], dg[kVec], du[kVec];
      load_chunk<kVec>(gate_up, g_at, g);
      if constexpr (Activation::kGated) load_chunk<kVec>(gate_up, up_at, u);
      load_chunk<kVec>(dh, r * inter + j, d);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const GatedDerivatives q = act.derivatives(g[i], u[i]);
        const float ds = s * d[i];
        dot += d[i] * q.a;
        dg[i] = ds * q.d_gate;
        du[i] = ds * q.d_up;
      }
      store_chunk<kVec>(d_gate_up, g_at, dg);
      if constexpr (Activation::kGated) store_chunk<kVec>(d_gate_up, up_at, du);
    }
    if (d_scale != nullptr) {
      dot = warp_sum(dot);
      if (lane == 0) d_scale[r] = dot;
    }
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

template <class Activation>
void gated_fwd(const Tensor& gate_up, const Tensor& row_scale, Tensor& h, Activation act, const char* op) {
  const int64_t rows = h.size(0), inter = h.size(1);
  if (rows * inter == 0) return;
  const bool vec = bf16_chunks(inter, {&gate_up, &h});
  (vec ? gated_fwd_kernel<8, Activation> : gated_fwd_kernel<1, Activation>)<<<
      grid_for(rows * inter / (vec ? 8 : 1), 256), 256, 0, current_stream()>>>(
      float_ref(gate_up, op, "gate_up"), row_scale.defined() ? row_scale.data<float>() : nullptr,
      float_ref(h, op, "h"), rows, inter, act);
  MF_CUDA_CHECK_LAUNCH();
}

template <class Activation>
void gated_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale, SwigluGrads& grads,
               Activation act, const char* op) {
  const int64_t rows = dh.size(0), inter = dh.size(1);
  if (rows == 0) return;
  const bool vec = bf16_chunks(inter, {&dh, &gate_up, &grads.d_gate_up});
  (vec ? gated_bwd_kernel<8, Activation> : gated_bwd_kernel<1, Activation>)<<<
      grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      float_ref(dh, op, "dh"), float_ref(gate_up, op, "gate_up"),
      row_scale.defined() ? row_scale.data<float>() : nullptr, float_ref(grads.d_gate_up, op, "d_gate_up"),
      grads.d_row_scale.defined() ? grads.d_row_scale.data<float>() : nullptr, rows, inter, act);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace

void swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale, Tensor& h) {
  gated_fwd(gate_up, row_scale, h, Silu{}, "swiglu_fwd");
}

void swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale, SwigluGrads& grads) {
  gated_bwd(dh, gate_up, row_scale, grads, Silu{}, "swiglu_bwd");
}

void clamped_swiglu_fwd(const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale, Tensor& h) {
  gated_fwd(gate_up, row_scale, h, ClampedSilu{c.limit, c.alpha}, "clamped_swiglu_fwd");
}

void clamped_swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale,
                        SwigluGrads& grads) {
  gated_bwd(dh, gate_up, row_scale, grads, ClampedSilu{c.limit, c.alpha}, "clamped_swiglu_bwd");
}

void relu2_fwd(const Tensor& x, const Tensor& row_scale, Tensor& h) {
  gated_fwd(x, row_scale, h, Relu2{}, "relu2_fwd");
}

void relu2_bwd(const Tensor& dh, const Tensor& x, const Tensor& row_scale, SwigluGrads& grads) {
  gated_bwd(dh, x, row_scale, grads, Relu2{}, "relu2_bwd");
}

void softmax_fwd(const Tensor& logits, Tensor& probs) {
  const int64_t rows = logits.size(0), cols = logits.size(1);
  if (rows * cols == 0) return;
  softmax_fwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      float_ref(logits, "softmax_fwd", "logits"), float_ref(probs, "softmax_fwd", "probs"), rows,
      cols);
  MF_CUDA_CHECK_LAUNCH();
}

void softmax_bwd(const Tensor& dprobs, const Tensor& probs, Tensor& dlogits) {
  const int64_t rows = probs.size(0), cols = probs.size(1);
  if (rows * cols == 0) return;
  softmax_bwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      float_ref(dprobs, "softmax_bwd", "dprobs"), float_ref(probs, "softmax_bwd", "probs"),
      float_ref(dlogits, "softmax_bwd", "dlogits"), rows, cols);
  MF_CUDA_CHECK_LAUNCH();
}

namespace {

// exp never overflows: 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) for x < 0.
__device__ __forceinline__ float stable_sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

__global__ void sigmoid_fwd_kernel(FloatRef x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = stable_sigmoid(x.load(i));
}

// dx = dy * y * (1 - y).
__global__ void sigmoid_bwd_kernel(const float* dy, const float* y, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

}  // namespace

void sigmoid_fwd(const Tensor& x, Tensor& y) {
  check_dtype(y, DType::kF32, "sigmoid_fwd", "y");
  const int64_t n = x.numel();
  if (n == 0) return;
  sigmoid_fwd_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(float_ref(x, "sigmoid_fwd", "x"),
                                                           y.data<float>(), n);
  MF_CUDA_CHECK_LAUNCH();
}

void sigmoid_bwd(const Tensor& dy, const Tensor& y, Tensor& dx) {
  check_dtype(dy, DType::kF32, "sigmoid_bwd", "dy");
  check_dtype(y, DType::kF32, "sigmoid_bwd", "y");
  check_dtype(dx, DType::kF32, "sigmoid_bwd", "dx");
  const int64_t n = y.numel();
  if (n == 0) return;
  sigmoid_bwd_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(dy.data<float>(), y.data<float>(),
                                                           dx.data<float>(), n);
  MF_CUDA_CHECK_LAUNCH();
}

namespace {

__global__ void dropout_kernel(FloatRef x, FloatRef y, int64_t n, uint64_t seed, uint32_t threshold, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y.store(i, dropout_keeps(seed, static_cast<uint64_t>(i), threshold) ? x.load(i) * scale : 0.0f);
}

__global__ void init_normal_kernel(FloatRef x, int64_t n, uint64_t seed, uint64_t stream, float std_dev) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x.store(i, normal_at(seed, stream, static_cast<uint64_t>(i), std_dev));
}

}  // namespace

void dropout(const Tensor& x, float p, uint64_t seed, Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  dropout_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(float_ref(x, "dropout", "x"), float_ref(y, "dropout", "y"), n,
                                                         seed, dropout_threshold(p), 1.0f / (1.0f - p));
  MF_CUDA_CHECK_LAUNCH();
}

void init_normal(Tensor& x, uint64_t seed, uint64_t stream, float std_dev) {
  const int64_t n = x.numel();
  if (n == 0) return;
  init_normal_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(float_ref(x, "init_normal", "x"), n, seed, stream,
                                                             std_dev);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
