// Multi-head latent attention's head assembly on CUDA (ops/mla.h): column splits and joins, and
// the per-head queries, keys and values with the decoupled rotary part. One block per token: its
// cos/sin go to shared memory once and serve every head; the key's rotary part, shared by all
// heads, is rotated once (forward) or summed over the heads in fp32 and rotated back (backward).
// Memory-bound copies otherwise; nothing synchronises the host.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxRotated = 256;  // rotated columns (2 x inv_freq) a block keeps in shared memory

// dst[r, dst_col0 + j] = src[r, src_col0 + j] for j < width, kVec columns a thread; blockIdx.y walks
// the rows.
template <int kVec>
__global__ void copy_columns_kernel(FloatRef src, int64_t src_stride, int64_t src_col0, FloatRef dst,
                                    int64_t dst_stride, int64_t dst_col0, int64_t rows, int64_t width) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    for (int64_t j = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; j < width;
         j += int64_t(gridDim.x) * blockDim.x * kVec) {
      float v[kVec];
      load_chunk<kVec>(src, r * src_stride + src_col0 + j, v);
      store_chunk<kVec>(dst, r * dst_stride + dst_col0 + j, v);
    }
}

void copy_columns(const Tensor& src, int64_t src_col0, Tensor& dst, int64_t dst_col0, int64_t width,
                  const char* op) {
  const int64_t rows = src.size(0);
  if (rows == 0 || width == 0) return;
  const FloatRef in = float_ref(src, op, "input"), out = float_ref(dst, op, "output");
  // 16-byte accesses where every row's part starts 8 bf16 into alignment.
  const bool vec = bf16_chunks(width, {&src, &dst}) && (src.size(1) | src_col0 | dst.size(1) | dst_col0) % 8 == 0;
  const int per_thread = vec ? 8 : 1;
  const dim3 grid(grid_for(width, int64_t(kThreads) * per_thread, 65535),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  if (vec)
    copy_columns_kernel<8><<<grid, kThreads, 0, current_stream()>>>(in, src.size(1), src_col0, out, dst.size(1),
                                                                    dst_col0, rows, width);
  else
    copy_columns_kernel<1><<<grid, kThreads, 0, current_stream()>>>(in, src.size(1), src_col0, out, dst.size(1),
                                                                    dst_col0, rows, width);
  MF_CUDA_CHECK_LAUNCH();
}

// The token's cos and sin per frequency, times the attention scaling, as the CPU reference: the
// angle rounded to fp32 (position * inv_freq), then sincosf with full range reduction.
__device__ void token_rotation(float position, const float* inv_freq, int64_t half, float scaling, float* cos_s,
                               float* sin_s) {
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(__fmul_rn(position, inv_freq[i]), &s, &c);
    cos_s[i] = c * scaling;
    sin_s[i] = s * scaling;
  }
}

// The input columns of pair i: (2i, 2i+1) interleaved, else (i, i + half).
__device__ __forceinline__ int64_t pair_lo(int64_t i, bool interleaved) { return interleaved ? 2 * i : i; }
__device__ __forceinline__ int64_t pair_hi(int64_t i, int64_t half, bool interleaved) {
  return interleaved ? 2 * i + 1 : i + half;
}

// Output column c of a rotated part read from x (its Dr = 2 half columns at `at`): column i < half
// is (lo cos - hi sin) of pair i, column i + half is (hi cos + lo sin).
__device__ __forceinline__ float rotated(FloatRef x, int64_t at, int64_t c, int64_t half, bool interleaved,
                                         const float* cos_s, const float* sin_s) {
  const int64_t i = c < half ? c : c - half;
  const float lo = x.load(at + pair_lo(i, interleaved)), hi = x.load(at + pair_hi(i, half, interleaved));
  return c < half ? lo * cos_s[i] - hi * sin_s[i] : hi * cos_s[i] + lo * sin_s[i];
}

// The transpose: input column j of the rotated part from the output's gradient dy (at `at`).
__device__ __forceinline__ float rotated_back(FloatRef dy, int64_t at, int64_t j, int64_t half, bool interleaved,
                                              const float* cos_s, const float* sin_s) {
  const int64_t i = interleaved ? j / 2 : (j < half ? j : j - half);
  const bool is_lo = interleaved ? j % 2 == 0 : j < half;
  const float a = dy.load(at + i), b = dy.load(at + i + half);
  return is_lo ? a * cos_s[i] + b * sin_s[i] : b * cos_s[i] - a * sin_s[i];
}

struct HeadShape {
  int64_t heads, nope, rotated, v_width;
  __host__ __device__ int64_t qk() const { return nope + rotated; }
};

__global__ void mla_heads_fwd_kernel(FloatRef q, FloatRef kv, FloatRef k_pe, const int64_t* positions,
                                     const float* inv_freq, float scaling, bool interleaved, HeadShape s,
                                     int64_t tokens, FloatRef q_out, FloatRef k_out, FloatRef v_out) {
  __shared__ float cos_s[kMaxRotated / 2], sin_s[kMaxRotated / 2], k_rot[kMaxRotated];
  const int64_t half = s.rotated / 2, qk = s.qk(), kv_width = s.nope + s.v_width;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();  // the previous token's tables are read by every thread before they change
    token_rotation(static_cast<float>(positions[t]), inv_freq, half, scaling, cos_s, sin_s);
    __syncthreads();
    for (int64_t c = threadIdx.x; c < s.rotated; c += blockDim.x)
      k_rot[c] = rotated(k_pe, t * s.rotated, c, half, interleaved, cos_s, sin_s);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < s.heads * qk; i += blockDim.x) {
      const int64_t h = i / qk, c = i % qk, row = (t * s.heads + h);
      const bool rope = c >= s.nope;
      q_out.store(row * qk + c, rope ? rotated(q, row * qk + s.nope, c - s.nope, half, interleaved, cos_s, sin_s)
                                     : q.load(row * qk + c));
      k_out.store(row * qk + c, rope ? k_rot[c - s.nope] : kv.load(row * kv_width + c));
    }
    for (int64_t i = threadIdx.x; i < s.heads * s.v_width; i += blockDim.x) {
      const int64_t h = i / s.v_width, c = i % s.v_width, row = t * s.heads + h;
      v_out.store(row * s.v_width + c, kv.load(row * kv_width + s.nope + c));
    }
  }
}

__global__ void mla_heads_bwd_kernel(FloatRef dq, FloatRef dk, FloatRef dv, const int64_t* positions,
                                     const float* inv_freq, float scaling, bool interleaved, HeadShape s,
                                     int64_t tokens, FloatRef dq_in, FloatRef dkv, FloatRef dk_pe) {
  __shared__ float cos_s[kMaxRotated / 2], sin_s[kMaxRotated / 2], dk_sum[kMaxRotated];
  const int64_t half = s.rotated / 2, qk = s.qk(), kv_width = s.nope + s.v_width;
  // dk_sum is read through a FloatRef of its own (fp32 in shared memory).
  const FloatRef sum_ref{dk_sum, false};
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();
    token_rotation(static_cast<float>(positions[t]), inv_freq, half, scaling, cos_s, sin_s);
    // The shared key part's gradient: the heads' shares summed in fp32 before the rotation back.
    for (int64_t c = threadIdx.x; c < s.rotated; c += blockDim.x) {
      float sum = 0.0f;
      for (int64_t h = 0; h < s.heads; ++h) sum += dk.load((t * s.heads + h) * qk + s.nope + c);
      dk_sum[c] = sum;
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < s.rotated; j += blockDim.x)
      dk_pe.store(t * s.rotated + j, rotated_back(sum_ref, 0, j, half, interleaved, cos_s, sin_s));
    for (int64_t i = threadIdx.x; i < s.heads * qk; i += blockDim.x) {
      const int64_t h = i / qk, c = i % qk, row = t * s.heads + h;
      dq_in.store(row * qk + c, c >= s.nope ? rotated_back(dq, row * qk + s.nope, c - s.nope, half, interleaved,
                                                           cos_s, sin_s)
                                            : dq.load(row * qk + c));
    }
    for (int64_t i = threadIdx.x; i < s.heads * kv_width; i += blockDim.x) {
      const int64_t h = i / kv_width, c = i % kv_width, row = t * s.heads + h;
      dkv.store(row * kv_width + c, c < s.nope ? dk.load(row * qk + c) : dv.load(row * s.v_width + c - s.nope));
    }
  }
}

HeadShape head_shape(const Tensor& q_like, int64_t rotated, int64_t v_width, const char* op) {
  MF_CHECK(rotated <= kMaxRotated, kUnsupported, op, ": ", rotated, " rotated columns exceed the CUDA kernel's ",
           kMaxRotated);
  return {q_like.size(1), q_like.size(2) - rotated, rotated, v_width};
}

unsigned token_grid(int64_t tokens) { return grid_for(tokens, 1, 65535LL * 16); }

}  // namespace

void split_columns(const Tensor& x, std::vector<Tensor>& parts) {
  int64_t first = 0;
  for (Tensor& part : parts) {
    copy_columns(x, first, part, 0, part.size(1), "split_columns");
    first += part.size(1);
  }
}

void concat_columns(const std::vector<Tensor>& parts, Tensor& out) {
  int64_t first = 0;
  for (const Tensor& part : parts) {
    copy_columns(part, 0, out, first, part.size(1), "concat_columns");
    first += part.size(1);
  }
}

void mla_heads_fwd(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const MlaRope& rope, MlaHeads& out) {
  const char* op = "mla_heads_fwd";
  const int64_t tokens = q.size(0);
  const HeadShape s = head_shape(q, k_pe.size(1), out.v.size(2), op);
  if (tokens == 0) return;
  mla_heads_fwd_kernel<<<token_grid(tokens), kThreads, 0, current_stream()>>>(
      float_ref(q, op, "q"), float_ref(kv, op, "kv"), float_ref(k_pe, op, "k_pe"), rope.positions.data<int64_t>(),
      rope.inv_freq.data<float>(), rope.attention_scaling, rope.interleaved, s, tokens, float_ref(out.q, op, "q out"),
      float_ref(out.k, op, "k out"), float_ref(out.v, op, "v out"));
  MF_CUDA_CHECK_LAUNCH();
}

void mla_heads_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const MlaRope& rope, MlaHeadsGrads& grads) {
  const char* op = "mla_heads_bwd";
  const int64_t tokens = dq.size(0);
  const HeadShape s = head_shape(dq, grads.dk_pe.size(1), dv.size(2), op);
  if (tokens == 0) return;
  mla_heads_bwd_kernel<<<token_grid(tokens), kThreads, 0, current_stream()>>>(
      float_ref(dq, op, "dq"), float_ref(dk, op, "dk"), float_ref(dv, op, "dv"), rope.positions.data<int64_t>(),
      rope.inv_freq.data<float>(), rope.attention_scaling, rope.interleaved, s, tokens,
      float_ref(grads.dq, op, "dq in"), float_ref(grads.dkv, op, "dkv"), float_ref(grads.dk_pe, op, "dk_pe"));
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
