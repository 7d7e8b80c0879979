// Rotary position embedding on CUDA in the rotate_half form: y = x * cos + rotate_half(x) * sin,
// rotate_half(x) = cat(-x[half:], x[:half]). Each thread rotates pairs (i, i + half) of one head.
// Also Qwen3's per-head q/k-norm fused with the rotation that follows it.
#include <type_traits>

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

// ---- q/k-norm + RoPE in one pass ----
// kLanes = D / 8 lanes hold one head row, 8 columns each, so a warp holds 32 / kLanes rows; the
// partner of column j in the other half of the head (j -+ D/2) sits kLanes / 2 lanes away. A warp
// takes whole tokens and walks their heads: the rotation depends on the token and the column alone,
// so a lane evaluates its 8 sines and cosines once a token, not once a head (full-range sincosf, 32
// times over for Qwen3's query heads, was what bound these kernels).

constexpr int kWarpsPerBlock = 8;
// Head rows per lane whose loads a warp issues together before using the first. A row at a time left
// these kernels at about half the memory bandwidth: the compiler cannot move a row's loads above the
// last row's store (the tensors might overlap), so each row paid a full memory latency.
constexpr int kBatch = 4;

template <int kLanes>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The scaled cosines and sines of a lane's 8 columns at a position (sin_sign -1: the transpose, for
// the backward).
struct Rotation {
  float c[8], s[8];
  __device__ __forceinline__ Rotation(float position, const float* inv_freq, int64_t freq0,
                                      float attention_scaling, float sin_sign) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float angle = __fmul_rn(position, inv_freq[freq0 + i]);  // as rope_kernel
      sincosf(angle, &s[i], &c[i]);
      c[i] *= attention_scaling;
      s[i] *= attention_scaling * sin_sign;
    }
  }
  // Rotates a lane's 8 columns v given its partner's p: first half y = v c - p s, second half
  // y = v c + p s.
  __device__ __forceinline__ void apply(const float (&v)[8], const float (&p)[8], bool first_half,
                                        float (&y)[8]) const {
#pragma unroll
    for (int i = 0; i < 8; ++i) y[i] = first_half ? v[i] * c[i] - p[i] * s[i] : v[i] * c[i] + p[i] * s[i];
  }
};

template <int kLanes>
struct HeadLanes {
  static constexpr int kD = kLanes * 8, kRowsPerWarp = 32 / kLanes;
  int sub;           // this lane's chunk of the row
  bool first_half;   // its columns are in the first half of the head
  int64_t col, freq0;
  // The warp's tokens are first_token, first_token + token_step, ...; of each, the heads h0 +
  // row_in_warp for h0 = 0, kRowsPerWarp, ...: the bounds are the same for the whole warp, so
  // every lane takes part in the shuffles.
  int64_t first_token, token_step, row_in_warp;
  __device__ HeadLanes() {
    sub = (threadIdx.x & 31) % kLanes;
    first_half = sub < kLanes / 2;
    col = sub * int64_t(8);
    freq0 = first_half ? col : col - kD / 2;
    first_token = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
    token_step = int64_t(gridDim.x) * kWarpsPerBlock;
    row_in_warp = (threadIdx.x & 31) / kLanes;
  }
};

template <int kLanes>
__global__ void qk_norm_rope_fwd_kernel(FloatRef x, FloatRef w, float eps, const int64_t* positions,
                                        const float* inv_freq, float attention_scaling, FloatRef y,
                                        float* rstd, int64_t tokens, int64_t heads) {
  using L = HeadLanes<kLanes>;
  const L lane;
  float wv[8];
  load_chunk<8>(w, lane.col, wv);
  for (int64_t t = lane.first_token; t < tokens; t += lane.token_step) {
    const Rotation rotation(static_cast<float>(positions[t]), inv_freq, lane.freq0, attention_scaling, 1.0f);
    for (int64_t h0 = 0; h0 < heads; h0 += kBatch * L::kRowsPerWarp) {
      uint4 x_raw[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {  // every load of the batch in flight before the first is used
        const int64_t h = h0 + b * L::kRowsPerWarp + lane.row_in_warp;
        if (h < heads) x_raw[b] = load_raw(x, (t * heads + h) * L::kD + lane.col);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t h = h0 + b * L::kRowsPerWarp + lane.row_in_warp, r = t * heads + h;
        const bool valid = h < heads;
        float v[8] = {};
        if (valid) unpack_bf16<8>(x_raw[b], v);
        float sum_sq = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) sum_sq += v[i] * v[i];
        const float inv = rsqrtf(group_sum<kLanes>(sum_sq) / static_cast<float>(L::kD) + eps);
        float n[8], partner[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) n[i] = wv[i] * (v[i] * inv);
#pragma unroll
        for (int i = 0; i < 8; ++i) partner[i] = __shfl_xor_sync(0xffffffffu, n[i], kLanes / 2);
        if (!valid) continue;
        if (lane.sub == 0) rstd[r] = inv;
        float out[8];
        rotation.apply(n, partner, lane.first_half, out);
        store_chunk<8>(y, r * L::kD + lane.col, out);
      }
    }
  }
}

// The rotation's transpose gives the gradient of the normalised row, then the RMSNorm backward (as
// rms_norm_bwd's, but the lane's dw partial sums stay in registers across its rows).
template <int kLanes>
__global__ void qk_norm_rope_bwd_kernel(FloatRef dy, FloatRef x, FloatRef w, const float* rstd,
                                        const int64_t* positions, const float* inv_freq,
                                        float attention_scaling, FloatRef dx, float* dw_sum,
                                        int64_t tokens, int64_t heads) {
  using L = HeadLanes<kLanes>;
  __shared__ float dw_block[L::kD];
  for (int j = threadIdx.x; j < L::kD; j += blockDim.x) dw_block[j] = 0.0f;
  __syncthreads();
  const L lane;
  float wv[8], dw[8] = {};
  load_chunk<8>(w, lane.col, wv);
  for (int64_t t = lane.first_token; t < tokens; t += lane.token_step) {
    const Rotation rotation(static_cast<float>(positions[t]), inv_freq, lane.freq0, attention_scaling, -1.0f);
    for (int64_t h0 = 0; h0 < heads; h0 += kBatch * L::kRowsPerWarp) {
      uint4 g_raw[kBatch], x_raw[kBatch];
      float inv_rms[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {  // every load of the batch in flight before the first is used
        const int64_t h = h0 + b * L::kRowsPerWarp + lane.row_in_warp;
        if (h < heads) {
          g_raw[b] = load_raw(dy, (t * heads + h) * L::kD + lane.col);
          x_raw[b] = load_raw(x, (t * heads + h) * L::kD + lane.col);
          inv_rms[b] = rstd[t * heads + h];
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t h = h0 + b * L::kRowsPerWarp + lane.row_in_warp, r = t * heads + h;
        const bool valid = h < heads;
        float g[8] = {}, xv[8] = {}, partner[8], dn[8] = {};
        if (valid) {
          unpack_bf16<8>(g_raw[b], g);
          unpack_bf16<8>(x_raw[b], xv);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) partner[i] = __shfl_xor_sync(0xffffffffu, g[i], kLanes / 2);
        if (valid) rotation.apply(g, partner, lane.first_half, dn);
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot += wv[i] * dn[i] * xv[i];
        dot = group_sum<kLanes>(dot);
        if (!valid) continue;
        const float inv = inv_rms[b];
        const float coef = inv * inv * inv * dot / static_cast<float>(L::kD);
        float out[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          out[i] = inv * wv[i] * dn[i] - coef * xv[i];
          dw[i] += dn[i] * xv[i] * inv;
        }
        store_chunk<8>(dx, r * L::kD + lane.col, out);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) atomicAdd(&dw_block[lane.col + i], dw[i]);
  __syncthreads();
  for (int j = threadIdx.x; j < L::kD; j += blockDim.x) atomicAdd(&dw_sum[j], dw_block[j]);
}

// Lanes per head row of the one-pass kernels (2 .. 32), or 0 where the two ops run in turn.
int head_lanes(int64_t d, std::initializer_list<const Tensor*> tensors) {
  if (d % 16 != 0 || d > 256 || !bf16_chunks(d, tensors)) return 0;
  return static_cast<int>(d / 8);
}

// Calls launch(std::integral_constant<int, lanes>) for lanes 2, 4, ..., 32: one instantiation of a
// one-pass kernel per head size.
template <class Launch>
void with_head_lanes(int lanes, Launch&& launch) {
  switch (lanes) {
    case 2: launch(std::integral_constant<int, 2>{}); break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    case 8: launch(std::integral_constant<int, 8>{}); break;
    case 16: launch(std::integral_constant<int, 16>{}); break;
    default: launch(std::integral_constant<int, 32>{});
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
  (vec ? rope_kernel<8> : rope_kernel<1>)<<<grid_for(total / (vec ? 8 : 1), 256), 256, 0, current_stream()>>>(
      float_ref(x, "rope", "x"), positions.data<int64_t>(), inv_freq.data<float>(),
      attention_scaling, sin_sign, float_ref(y, "rope", "y"), n, heads, half);
  MF_CUDA_CHECK_LAUNCH();
}

void qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                      const Tensor& inv_freq, float attention_scaling, Tensor& y, Tensor& rstd) {
  check_dtype(positions, DType::kI64, "qk_norm_rope_fwd", "positions");
  check_dtype(inv_freq, DType::kF32, "qk_norm_rope_fwd", "inv_freq");
  check_dtype(rstd, DType::kF32, "qk_norm_rope_fwd", "rstd");
  const int64_t heads = x.size(1), d = x.size(2), rows = x.size(0) * heads;
  if (rows == 0) return;
  const int lanes = head_lanes(d, {&x, &w, &y});
  if (lanes == 0) {  // the two ops in turn, through a bf16 (or fp32) intermediate
    Tensor normed = Tensor::empty(x.shape(), x.dtype(), Device::kCUDA, "q/k-norm output");
    Tensor normed_rows = normed.view({rows, d});
    rms_norm_fwd(x.view({rows, d}), w, eps, normed_rows, rstd);
    rope_apply(normed, positions, inv_freq, attention_scaling, 1.0f, y);
    return;
  }
  const FloatRef xr = float_ref(x, "qk_norm_rope_fwd", "x"), wr = float_ref(w, "qk_norm_rope_fwd", "w"),
                 yr = float_ref(y, "qk_norm_rope_fwd", "y");
  const unsigned block = 32 * kWarpsPerBlock;
  with_head_lanes(lanes, [&](auto kLanes) {
    qk_norm_rope_fwd_kernel<kLanes><<<grid_for(x.size(0), kWarpsPerBlock), block, 0, current_stream()>>>(
        xr, wr, eps, positions.data<int64_t>(), inv_freq.data<float>(), attention_scaling, yr,
        rstd.data<float>(), x.size(0), heads);
  });
  MF_CUDA_CHECK_LAUNCH();
}

void qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                      Tensor& dx, Tensor& grad_w) {
  check_dtype(positions, DType::kI64, "qk_norm_rope_bwd", "positions");
  check_dtype(inv_freq, DType::kF32, "qk_norm_rope_bwd", "inv_freq");
  check_dtype(rstd, DType::kF32, "qk_norm_rope_bwd", "rstd");
  const int64_t heads = x.size(1), d = x.size(2), rows = x.size(0) * heads;
  if (rows == 0) return;
  const int lanes = head_lanes(d, {&dy, &x, &w, &dx});
  if (lanes == 0) {
    Tensor d_normed = Tensor::empty(x.shape(), dy.dtype(), Device::kCUDA, "q/k-norm output gradient");
    rope_apply(dy, positions, inv_freq, attention_scaling, -1.0f, d_normed);
    Tensor dx_rows = dx.view({rows, d});
    rms_norm_bwd(d_normed.view({rows, d}), x.view({rows, d}), w, rstd, Tensor(), dx_rows, grad_w);
    return;
  }
  const WeightGradSum dw_sum(grad_w, "qk_norm_rope_bwd");
  float* dw = dw_sum.sum;
  const FloatRef dyr = float_ref(dy, "qk_norm_rope_bwd", "dy"), xr = float_ref(x, "qk_norm_rope_bwd", "x"),
                 wr = float_ref(w, "qk_norm_rope_bwd", "w"), dxr = float_ref(dx, "qk_norm_rope_bwd", "dx");
  const unsigned block = 32 * kWarpsPerBlock;
  with_head_lanes(lanes, [&](auto kLanes) {
    qk_norm_rope_bwd_kernel<kLanes>
        <<<grid_for(x.size(0), kWarpsPerBlock, 4 * sm_count()), block, 0, current_stream()>>>(
            dyr, xr, wr, rstd.data<float>(), positions.data<int64_t>(), inv_freq.data<float>(),
            attention_scaling, dxr, dw, x.size(0), heads);
  });
  MF_CUDA_CHECK_LAUNCH();
  dw_sum.finish();
}

}  // namespace moeforge::ops::cuda
