// RMSNorm on CUDA, one warp per row, statistics in fp32: y = w * (x * rsqrt(mean(x^2) + eps)).
// bf16 rows take 16-byte chunks (the forward holding rows of up to 3072 columns in registers), others
// one element per lane. The residual adds around a norm ride along: forward x += residual first (the
// sum stored in x, normalised as stored), backward dx += dx_residual last. A FloatRef with null data
// means no residual.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// A warp per row, kVec columns a lane at a time (8: 16-byte chunks where every tensor is bf16 and
// 16-byte aligned and d % 8 == 0; 1: any row), each pass reading the row again (the backward's bf16
// rows, where they fit, from shared memory; see kStaged). The backward adds dw into shared memory
// every row, lane l starting at column (l / 4) % kVec of its chunk so that the 32 lanes of each step
// hit 32 banks.
// With n = x * r:  dx = r * (w*dy) - x * r^3 * sum(w*dy*x) / D,  dw += sum over rows of dy * n.
template <int kVec>
__global__ void rms_norm_fwd_kernel(FloatRef x, FloatRef residual, FloatRef w, float eps, FloatRef y, float* rstd,
                                    int64_t rows, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * d;
    float sum_sq = 0.0f;
    for (int64_t j = lane * kVec; j < d; j += 32 * kVec) {
      float v[kVec];
      load_chunk<kVec>(x, base + j, v);
      if (residual.data != nullptr) {  // the sum as stored is what the norm sees
        float add[kVec];
        load_chunk<kVec>(residual, base + j, add);
#pragma unroll
        for (int i = 0; i < kVec; ++i) v[i] += add[i];
        store_chunk<kVec>(x, base + j, v);
        load_chunk<kVec>(x, base + j, v);
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum_sq += v[i] * v[i];
    }
    const float inv = rsqrtf(warp_sum(sum_sq) / static_cast<float>(d) + eps);
    if (lane == 0) rstd[r] = inv;
    for (int64_t j = lane * kVec; j < d; j += 32 * kVec) {
      float v[kVec], wv[kVec];
      load_chunk<kVec>(x, base + j, v);
      load_chunk<kVec>(w, j, wv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[i] = wv[i] * (v[i] * inv);
      store_chunk<kVec>(y, base + j, v);
    }
  }
}

// kStaged (bf16 rows, kVec 8): the first pass copies the row's dy and x chunks into the warp's slice of
// shared memory, all of a lane's copies in flight at once (cp.async), then reads them there, as the
// second pass does. Read again from global memory, they mostly came from HBM a second time (Nsight
// Compute, H100, Qwen3's [16384, 2048] rows: 374 MB moved where the tensors are 268 MB, L2 hit rate 22%;
// staged: 258 MB). Loading four chunks ahead through registers was slower (Qwen3 9.9 -> 10.4 ms a step,
// 2026-12-06: the registers cost a block a multiprocessor); cp.async needs none (Qwen3 9.4 -> 9.0).
template <int kVec, bool kStaged>
__global__ void rms_norm_bwd_kernel(FloatRef dy, FloatRef x, FloatRef w, const float* rstd, FloatRef dx_residual,
                                    FloatRef dx, float* dw_sum, int64_t rows, int64_t d) {
  extern __shared__ float dw_block[];
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dw_block[j] = 0.0f;
  const int lane = threadIdx.x & 31;
  // The warp's [dy, x][d / 8] chunks, after dw_block (d floats, d a multiple of 8: 16-byte aligned).
  uint4* stage = kStaged ? reinterpret_cast<uint4*>(dw_block + d) + (threadIdx.x >> 5) * (d / 4) : nullptr;
  __syncthreads();
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * d;
    const float inv = rstd[r];
    float dot = 0.0f;
    if constexpr (kStaged) {  // a lane copies, then reads, only its own chunks: no barrier
      for (int64_t j = lane * 8; j < d; j += 32 * 8) {
        copy_async16(&stage[j / 8], static_cast<const __nv_bfloat16*>(dy.data) + base + j);
        copy_async16(&stage[d / 8 + j / 8], static_cast<const __nv_bfloat16*>(x.data) + base + j);
      }
      wait_async_copies();
    }
    for (int64_t j = lane * kVec; j < d; j += 32 * kVec) {
      float g[kVec], xv[kVec], wv[kVec];
      if constexpr (kStaged) {
        unpack_bf16<8>(stage[j / 8], g);
        unpack_bf16<8>(stage[d / 8 + j / 8], xv);
      } else {
        load_chunk<kVec>(dy, base + j, g);
        load_chunk<kVec>(x, base + j, xv);
      }
      load_chunk<kVec>(w, j, wv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot += wv[i] * g[i] * xv[i];
    }
    const float coef = inv * inv * inv * warp_sum(dot) / static_cast<float>(d);
    for (int64_t j = lane * kVec; j < d; j += 32 * kVec) {
      float g[kVec], xv[kVec], wv[kVec], add[kVec] = {}, out[kVec];
      if constexpr (kStaged) {  // the lane's own chunks: no barrier
        unpack_bf16<8>(stage[j / 8], g);
        unpack_bf16<8>(stage[d / 8 + j / 8], xv);
      } else {
        load_chunk<kVec>(dy, base + j, g);
        load_chunk<kVec>(x, base + j, xv);
      }
      load_chunk<kVec>(w, j, wv);
      if (dx_residual.data != nullptr) load_chunk<kVec>(dx_residual, base + j, add);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        out[i] = inv * wv[i] * g[i] - coef * xv[i] + add[i];
        g[i] *= xv[i] * inv;  // now this row's dw
      }
      store_chunk<kVec>(dx, base + j, out);
      atomic_add_rotated<kVec>(dw_block + j, g, lane / 4);
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) atomicAdd(&dw_sum[j], dw_block[j]);
}

// The forward for bf16 rows of at most 256 * kChunks columns: lane l holds the 16-byte chunks l, l + 32, ...
// of its row in registers (as bf16), so that the row is read from memory once with all its loads in flight
// together, where the row loop reads it twice, a store between each pair of loads. Same arithmetic in the
// same order as the row loop. (A backward that held dy and x so was slower than the row loop on an H100
// on 2026-12-06: Qwen3 9.9 -> 11.4 ms a step, GPT-OSS 14.5 -> 22.7.)
template <int kChunks>
__global__ void rms_norm_fwd_held_kernel(FloatRef x, FloatRef residual, FloatRef w, float eps, FloatRef y,
                                         float* rstd, int64_t rows, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int64_t base = r * d;
    uint4 x_raw[kChunks], add_raw[kChunks];
#pragma unroll
    for (int m = 0; m < kChunks; ++m) {
      const int64_t j = (lane + 32 * int64_t(m)) * 8;
      if (j >= d) break;
      x_raw[m] = load_raw(x, base + j);
      if (residual.data != nullptr) add_raw[m] = load_raw(residual, base + j);
    }
    float sum_sq = 0.0f;
#pragma unroll
    for (int m = 0; m < kChunks; ++m) {
      const int64_t j = (lane + 32 * int64_t(m)) * 8;
      if (j >= d) break;
      float v[8];
      unpack_bf16<8>(x_raw[m], v);
      if (residual.data != nullptr) {  // the sum as stored is what the norm sees
        float add[8];
        unpack_bf16<8>(add_raw[m], add);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += add[i];
        x_raw[m] = pack_bf16<8>(v);
        store_raw(x, base + j, x_raw[m]);
        unpack_bf16<8>(x_raw[m], v);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) sum_sq += v[i] * v[i];
    }
    const float inv = rsqrtf(warp_sum(sum_sq) / static_cast<float>(d) + eps);
    if (lane == 0) rstd[r] = inv;
#pragma unroll
    for (int m = 0; m < kChunks; ++m) {
      const int64_t j = (lane + 32 * int64_t(m)) * 8;
      if (j >= d) break;
      float v[8], wv[8];
      unpack_bf16<8>(x_raw[m], v);
      load_chunk<8>(w, j, wv);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = wv[i] * (v[i] * inv);
      store_chunk<8>(y, base + j, v);
    }
  }
}

// Chunks per lane of rms_norm_fwd_held_kernel for bf16 rows of d columns, 0 beyond its widest.
int held_chunks(int64_t d) {
  const int64_t per_lane = (d / 8 + 31) / 32;
  for (int c : {1, 2, 4, 8, 12})
    if (per_lane <= c) return c;
  return 0;
}

// rms_norm_fwd, after x += *residual when residual is given.
void norm_fwd(const Tensor& x, const Tensor* residual, const Tensor& w, float eps, Tensor& y,
              Tensor& rstd, const char* op) {
  const int64_t rows = x.size(0), d = x.size(1);
  check_dtype(rstd, DType::kF32, op, "rstd");
  if (rows == 0) return;
  const FloatRef xr = float_ref(x, op, "x"), wr = float_ref(w, op, "w"), yr = float_ref(y, op, "y");
  const FloatRef rr = residual != nullptr ? float_ref(*residual, op, "residual") : FloatRef{nullptr, false};
  const unsigned grid = grid_for(rows, kWarpsPerBlock), block = 32 * kWarpsPerBlock;
  float* rs = rstd.data<float>();
  auto launch = [&](auto kernel) { kernel<<<grid, block, 0, current_stream()>>>(xr, rr, wr, eps, yr, rs, rows, d); };
  if (!bf16_chunks(d, {&x, &w, &y, residual != nullptr ? residual : &x})) {
    launch(rms_norm_fwd_kernel<1>);
  } else {
    switch (held_chunks(d)) {
      case 1: launch(rms_norm_fwd_held_kernel<1>); break;
      case 2: launch(rms_norm_fwd_held_kernel<2>); break;
      case 4: launch(rms_norm_fwd_held_kernel<4>); break;
      case 8: launch(rms_norm_fwd_held_kernel<8>); break;
      case 12: launch(rms_norm_fwd_held_kernel<12>); break;
      default: launch(rms_norm_fwd_kernel<8>);
    }
  }
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  norm_fwd(x, nullptr, w, eps, y, rstd, "rms_norm_fwd");
}

void add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& y,
                      Tensor& rstd) {
  norm_fwd(x, &residual, w, eps, y, rstd, "add_rms_norm_fwd");
}

void rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                  const Tensor& dx_residual, Tensor& dx, Tensor& grad_w) {
  const int64_t rows = x.size(0), d = x.size(1);
  check_dtype(rstd, DType::kF32, "rms_norm_bwd", "rstd");
  if (rows == 0 || d == 0) return;
  const WeightGradSum dw_sum(grad_w, "rms_norm_bwd");
  float* dw = dw_sum.sum;
  const FloatRef dyr = float_ref(dy, "rms_norm_bwd", "dy"), xr = float_ref(x, "rms_norm_bwd", "x"),
                 wr = float_ref(w, "rms_norm_bwd", "w"), dxr = float_ref(dx, "rms_norm_bwd", "dx");
  const bool add = dx_residual.defined();
  const FloatRef dr = add ? float_ref(dx_residual, "rms_norm_bwd", "dx_residual") : FloatRef{nullptr, false};
  const float* rs = rstd.data<float>();
  auto launch = [&](auto kernel, size_t shared) {
    allow_shared(kernel, shared);
    int per_sm = 0;
    MF_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * kWarpsPerBlock, shared));
    const unsigned grid = grid_for(rows, kWarpsPerBlock, std::max(per_sm, 1) * sm_count());
    kernel<<<grid, 32 * kWarpsPerBlock, shared, current_stream()>>>(dyr, xr, wr, rs, dr, dxr, dw, rows, d);
  };
  const int64_t dw_bytes = d * int64_t(sizeof(float));
  // Rows staged (dy and x, bf16, a warp's row each) where three blocks fit a multiprocessor. On an H100
  // (2026-12-06): Qwen3's and Moonlight's 2048 columns 9.9 -> 9.0 and 11.1 -> 10.3 ms a step; at two
  // blocks a multiprocessor GPT-OSS's 2880 columns were slower (14.5 -> 15.4 with cp.async), Nemotron 3
  // Nano's 2688 about even (6.9 -> 6.8).
  const int64_t staged_bytes = dw_bytes + kWarpsPerBlock * 2 * d * 2;
  const int64_t sm_bytes = device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  const int64_t reserved = device_attribute(cudaDevAttrReservedSharedMemoryPerBlock);
  if (!bf16_chunks(d, {&dy, &x, &w, &dx, add ? &dx_residual : &dx}))
    launch(rms_norm_bwd_kernel<1, false>, dw_bytes);
  else if (3 * (staged_bytes + reserved) <= sm_bytes)
    launch(rms_norm_bwd_kernel<8, true>, staged_bytes);
  else
    launch(rms_norm_bwd_kernel<8, false>, dw_bytes);
  MF_CUDA_CHECK_LAUNCH();
  dw_sum.finish();
}

}  // namespace moeforge::ops::cuda
