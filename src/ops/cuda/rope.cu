// Rotary position embedding on CUDA in the rotate_half form: y = x * cos + rotate_half(x) * sin,
// rotate_half(x) = cat(-x[half:], x[:half]). Each thread rotates pairs (i, i + half) of one head.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

// kVec consecutive pairs per thread (kVec == 8: two 16-byte accesses, half % 8 == 0).
template <int kVec>
__global__ void rope_kernel(FloatRef x, const int64_t* positions, const float* inv_freq,
                            float attention_scaling, float sin_sign, FloatRef y, int64_t n,
                            int64_t heads, int64_t half) {
  const int64_t total = n * heads * half;
  for (int64_t idx = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x * kVec) {
    const int64_t i = idx % half, row = idx / half;  // row = token * heads + head
    const float position = static_cast<float>(positions[row / heads]);
    const int64_t base = row * 2 * half;
    float lo[kVec], hi[kVec], out_lo[kVec], out_hi[kVec];
    load_chunk<kVec>(x, base + i, lo);
    load_chunk<kVec>(x, base + i + half, hi);
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      // The angle is rounded to fp32 as in Transformers (position * inv_freq in fp32); sincosf
      // (full range reduction, not the fast intrinsic) then evaluates it to about one ulp.
      const float angle = __fmul_rn(position, inv_freq[i + v]);
      float s, c;
      sincosf(angle, &s, &c);
      c *= attention_scaling;
      s *= attention_scaling * sin_sign;
      out_lo[v] = lo[v] * c - hi[v] * s;
      out_hi[v] = hi[v] * c + lo[v] * s;
    }
    store_chunk<kVec>(y, base + i, out_lo);
    store_chunk<kVec>(y, base + i + half, out_hi);
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
  const bool vec = bf16_chunks(half, {&x, &y});
  (vec ? rope_kernel<8> : rope_kernel<1>)<<<grid_for(total / (vec ? 8 : 1), 256), 256, 0, kStream>>>(
      float_ref(x, "rope", "x"), positions.data<int64_t>(), inv_freq.data<float>(),
      attention_scaling, sin_sign, float_ref(y, "rope", "y"), n, heads, half);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
