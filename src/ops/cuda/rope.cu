// Rotary position embedding on CUDA in the rotate_half form: y = x * cos + rotate_half(x) * sin,
// rotate_half(x) = cat(-x[half:], x[:half]). One thread per (token, head, pair i / i + half).
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

__global__ void rope_kernel(FloatRef x, const int64_t* positions, const float* inv_freq,
                            float attention_scaling, float sin_sign, FloatRef y, int64_t n,
                            int64_t heads, int64_t half) {
  const int64_t total = n * heads * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, row = idx / half;  // row = token * heads + head
    const int64_t t = row / heads;
    // The angle is rounded to fp32 as in Transformers (position * inv_freq in fp32); sincosf
    // (full range reduction, not the fast intrinsic) then evaluates it to about one ulp.
    const float angle = __fmul_rn(static_cast<float>(positions[t]), inv_freq[i]);
    float s, c;
    sincosf(angle, &s, &c);
    c *= attention_scaling;
    s *= attention_scaling * sin_sign;
    const int64_t base = row * 2 * half;
    const float lo = x.load(base + i), hi = x.load(base + i + half);
    y.store(base + i, lo * c - hi * s);
    y.store(base + i + half, hi * c + lo * s);
  }
}

}  // namespace

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling, float sin_sign, Tensor& y) {
  check_dtype(positions, DType::kI64, "rope", "positions");
  check_dtype(inv_freq, DType::kF32, "rope", "inv_freq");
  const int64_t n = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  const int64_t total = n * heads * half;
  if (total == 0) return;
  rope_kernel<<<grid_for(total, 256), 256, 0, kStream>>>(
      float_ref(x, "rope", "x"), positions.data<int64_t>(), inv_freq.data<float>(),
      attention_scaling, sin_sign, float_ref(y, "rope", "y"), n, heads, half);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
