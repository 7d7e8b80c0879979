// RMSNorm on CUDA, one warp per row, statistics in fp32: y = w * (x * rsqrt(mean(x^2) + eps)).
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__global__ void rms_norm_fwd_kernel(FloatRef x, FloatRef w, float eps, FloatRef y, float* rstd,
                                    int64_t rows, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * d;
    float sum_sq = 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
      const float v = x.load(base + j);
      sum_sq += v * v;
    }
    const float inv = rsqrtf(warp_sum(sum_sq) / static_cast<float>(d) + eps);
    if (lane == 0) rstd[r] = inv;
    for (int64_t j = lane; j < d; j += 32) y.store(base + j, w.load(j) * (x.load(base + j) * inv));
  }
}

// With n = x * r:  dx = r * (w*dy) - x * r^3 * sum(w*dy*x) / D,  dw += sum over rows of dy * n.
// Each block sums its rows' dw in shared memory and adds that into dw_sum (fp32) once.
__global__ void rms_norm_bwd_kernel(FloatRef dy, FloatRef x, FloatRef w, const float* rstd,
                                    FloatRef dx, float* dw_sum, int64_t rows, int64_t d) {
  extern __shared__ float dw_block[];
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dw_block[j] = 0.0f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * d;
    const float inv = rstd[r];
    float dot = 0.0f;
    for (int64_t j = lane; j < d; j += 32) dot += w.load(j) * dy.load(base + j) * x.load(base + j);
    const float coef = inv * inv * inv * warp_sum(dot) / static_cast<float>(d);
    for (int64_t j = lane; j < d; j += 32) {
      const float g = dy.load(base + j), xv = x.load(base + j);
      dx.store(base + j, inv * w.load(j) * g - coef * xv);
      atomicAdd(&dw_block[j], g * xv * inv);
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) atomicAdd(&dw_sum[j], dw_block[j]);
}

}  // namespace

void rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const int64_t rows = x.size(0), d = x.size(1);
  check_dtype(rstd, DType::kF32, "rms_norm_fwd", "rstd");
  if (rows == 0) return;
  rms_norm_fwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, kStream>>>(
      float_ref(x, "rms_norm_fwd", "x"), float_ref(w, "rms_norm_fwd", "w"), eps,
      float_ref(y, "rms_norm_fwd", "y"), rstd.data<float>(), rows, d);
  MF_CUDA_CHECK_LAUNCH();
}

void rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                  Tensor& dx, Tensor& grad_w) {
  const int64_t rows = x.size(0), d = x.size(1);
  check_dtype(rstd, DType::kF32, "rms_norm_bwd", "rstd");
  if (rows == 0 || d == 0) return;
  const FloatRef gw = float_ref(grad_w, "rms_norm_bwd", "grad_w");
  // fp32 gradients are accumulated in place; bf16 ones through an fp32 sum added once at the end.
  Tensor dw_sum;
  if (gw.bf16) dw_sum = Tensor::zeros({d}, DType::kF32, Device::kCUDA, "rms_norm_bwd dw sum");
  float* dw = gw.bf16 ? dw_sum.data<float>() : static_cast<float*>(gw.data);
  const size_t shared = static_cast<size_t>(d) * sizeof(float);
  if (shared > 48 * 1024)
    MF_CUDA_CHECK(cudaFuncSetAttribute(rms_norm_bwd_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared)));
  const unsigned grid = grid_for(rows, kWarpsPerBlock, 4 * sm_count());
  rms_norm_bwd_kernel<<<grid, 32 * kWarpsPerBlock, shared, kStream>>>(
      float_ref(dy, "rms_norm_bwd", "dy"), float_ref(x, "rms_norm_bwd", "x"),
      float_ref(w, "rms_norm_bwd", "w"), rstd.data<float>(), float_ref(dx, "rms_norm_bwd", "dx"),
      dw, rows, d);
  MF_CUDA_CHECK_LAUNCH();
  if (gw.bf16) accumulate_f32(gw, dw, d);
}

}  // namespace moeforge::ops::cuda
