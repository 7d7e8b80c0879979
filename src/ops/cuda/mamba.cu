// Nemotron-H's Mamba-2 pieces on CUDA (ops/mamba.h), fp32 arithmetic throughout (the scan's products
// in 3xTF32 on the tensor cores, about as precise).
//
// The causal convolution: a thread per 8 (forward) or 4 (backward) channels walks a tile of rows
// with the last K rows' inputs in registers, loading one row ahead, 16 or 8 bytes a load on bf16
// rows; the backward also keeps the dx sums still open and adds its weight gradient into fp32 sums
// once per tile.
//
// The SSD scan in its chunked form (Mamba-2's state-space duality): one block per (sequence, head)
// walks the sequence in chunks of Q rows with the head's state H [P, N] in shared memory. With
// cum_i the running sum of A dt over the chunk (inclusive) and L_ij = exp(cum_i - cum_j), a chunk is
//   y_i = sum_{j<=i} (C_i . B_j) L_ij dt_j x_j + exp(cum_i) H C_i + D x_i
//   H  <- exp(cum_last) H + sum_j L_last,j dt_j x_j B_j^T
// and a document starting at row s cuts every term that reaches across it: L_ij = 0 for j < s <= i,
// and rows from s on see nothing of H. These are small matrix products over the chunk; they run on
// the tensor cores from shared memory, in tf32 pieces that keep fp32's precision (3xTF32, "the
// chunk's products" below). The backward walks the chunks in reverse, carrying dL/dH, with each
// chunk's starting state from a forward sweep of the states alone into a workspace; B and C are
// shared by a group's heads, so their gradients are fp32 atomics into one buffer.
//
// A block has only its own chunks to overlap, so it is bound by latency: it loads a chunk 4 values
// a load while L2 fetches the next chunk's rows (load_rows, prefetch_rows), and two blocks share a
// multiprocessor in the forward (its chunk: scan_chunk) and the states sweep (its layout). Mamba-2's own
// kernels split the scan per chunk instead (chunk states, a pass over the states, chunk outputs,
// each a product batched over every chunk); bench/RESULTS.md (2026-12-05) compares the rates.
//
// The gated group RMSNorm: a warp per (row, group), 4 columns a load; groups of 512 (Nemotron 3 Nano)
// held in registers, so that each tensor is read once. The weight gradient as rms_norm_bwd's.
#include <cmath>
#include <optional>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/mask_view.cuh"

namespace moeforge::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxKernel = 4;      // convolution taps held in registers (Mamba-2 models use 4)
constexpr int64_t kConvRows = 64;  // rows a convolution thread walks
constexpr int kConvThreads = 128;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- causal convolution + SiLU ----

struct ConvArgs {
  FloatRef x, w, bias;  // bias.data null: none
  MaskView mask;
  int64_t batch, seq, channels;
  int kernel;

  __device__ __forceinline__ int64_t tiles() const { return (seq + kConvRows - 1) / kConvRows; }
};

// The taps of kVec channels from c, tap[i] for the input i rows back, and their biases.
template <int kVec>
struct ConvTaps {
  float tap[kMaxKernel][kVec], bias[kVec];

  __device__ ConvTaps(const ConvArgs& a, int64_t c) {
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
#pragma unroll
      for (int i = 0; i < kMaxKernel; ++i)
        tap[i][v] = i < a.kernel ? a.w.load((c + v) * a.kernel + a.kernel - 1 - i) : 0.0f;
      bias[v] = a.bias.data != nullptr ? a.bias.load(c + v) : 0.0f;
    }
  }
};

// The inputs of kVec channels in the last kMaxKernel rows, in[i] from i rows back. A row that starts
// a document clears the rows before it and a padding row enters as zero, so a window sums exactly as
// the direct convolution over the rows t's window may read.
template <int kVec>
struct ConvWindow {
  float in[kMaxKernel][kVec] = {};

  __device__ void push(bool starts_document, bool valid, const float (&x)[kVec]) {
#pragma unroll
    for (int i = kMaxKernel - 1; i > 0; --i)
#pragma unroll
      for (int v = 0; v < kVec; ++v) in[i][v] = starts_document ? 0.0f : in[i - 1][v];
#pragma unroll
    for (int v = 0; v < kVec; ++v) in[0][v] = valid ? x[v] : 0.0f;
  }
  // Before the SiLU: the bias, then the oldest row first.
  __device__ void pre(const ConvArgs& a, const ConvTaps<kVec>& taps, float (&out)[kVec]) const {
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      float s = taps.bias[v];
#pragma unroll
      for (int i = kMaxKernel - 1; i >= 0; --i)
        if (i < a.kernel) s = fmaf(taps.tap[i][v], in[i][v], s);
      out[v] = s;
    }
  }
};

// The next kConvAhead rows' chunks of kVec channels a thread has asked for, slot (t - first) %
// kConvAhead for row t: bf16 chunks as loaded (fewer registers), single values as floats. With one
// row's load in flight these kernels waited on memory (Nemotron 3 Nano's 6144 channels: 4.9 and 9.5 ms
// a step forward and backward on an H100, 1.0-1.3 TB/s, 2026-12-06).
constexpr int kConvAhead = 4;
template <int kVec>
struct ConvRowsAhead {
  using Slot = std::conditional_t<kVec == 1, float, Bf16Chunk<kVec>>;
  Slot slot[kConvAhead];

  __device__ __forceinline__ void load(int u, FloatRef t, int64_t at) {
    if constexpr (kVec == 1)
      slot[u] = t.load(at);
    else
      slot[u] = *reinterpret_cast<const Slot*>(static_cast<const __nv_bfloat16*>(t.data) + at);
  }
  __device__ __forceinline__ void get(int u, float (&x)[kVec]) const {
    if constexpr (kVec == 1)
      x[0] = slot[u];
    else
      unpack_bf16<kVec>(slot[u], x);
  }
};

// blockIdx.y: (sequence, tile of kConvRows rows); a thread per kVec channels walks its tile from the
// K - 1 rows before it, kConvAhead rows' loads ahead.
template <int kVec>
__global__ void conv_fwd_kernel(ConvArgs a, FloatRef y) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec;
  if (c >= a.channels) return;
  const int64_t b = blockIdx.y / a.tiles(), t0 = blockIdx.y % a.tiles() * kConvRows;
  const int64_t t_end = min(t0 + kConvRows, a.seq), first = max(t0 - a.kernel + 1, int64_t(0));
  const ConvTaps<kVec> taps(a, c);
  ConvWindow<kVec> window;
  ConvRowsAhead<kVec> ahead;
#pragma unroll
  for (int u = 0; u < kConvAhead; ++u)
    if (first + u < t_end) ahead.load(u, a.x, (b * a.seq + first + u) * a.channels + c);
  for (int64_t base = first; base < t_end; base += kConvAhead) {
#pragma unroll
    for (int u = 0; u < kConvAhead; ++u) {
      const int64_t t = base + u;
      if (t >= t_end) break;
      float x[kVec];
      ahead.get(u, x);
      if (t + kConvAhead < t_end) ahead.load(u, a.x, (b * a.seq + t + kConvAhead) * a.channels + c);
      const bool valid = a.mask.valid(b, t);
      window.push(a.mask.starts_document(b, t), valid, x);
      if (t < t0) continue;
      float out[kVec];
      window.pre(a, taps, out);
#pragma unroll
      for (int v = 0; v < kVec; ++v) out[v] = valid ? out[v] * sigmoid(out[v]) : 0.0f;
      store_chunk<kVec>(y, (b * a.seq + t) * a.channels + c, out);
    }
  }
}

// dx of row s (zero on a padding row) from its sum.
template <int kVec>
__device__ __forceinline__ void store_conv_dx(const ConvArgs& a, FloatRef dx, int64_t b, int64_t s, int64_t c,
                                              const float (&sum)[kVec]) {
  float out[kVec];
  const bool valid = a.mask.valid(b, s);
#pragma unroll
  for (int v = 0; v < kVec; ++v) out[v] = valid ? sum[v] : 0.0f;
  store_chunk<kVec>(dx, (b * a.seq + s) * a.channels + c, out);
}

// As the forward, a thread per kVec channels walks its tile upwards and on into the K - 1 rows after
// it, whose pre-activation gradients reach back into the tile. dx of row s sums dpre of rows s ..
// s + K - 1 of its document, in that order; pending[i] holds row t - i's partial sum, stored once
// complete. Weight and bias gradients count only the tile's own rows and go into fp32 sums once.
template <int kVec>
__global__ void conv_bwd_kernel(ConvArgs a, FloatRef dy, FloatRef dx, float* grad_w, float* grad_bias) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec;
  if (c >= a.channels) return;
  const int64_t b = blockIdx.y / a.tiles(), t0 = blockIdx.y % a.tiles() * kConvRows;
  const int64_t t_end = min(t0 + kConvRows, a.seq), first = max(t0 - a.kernel + 1, int64_t(0));
  const int64_t last = min(t_end + a.kernel - 2, a.seq - 1);
  const ConvTaps<kVec> taps(a, c);
  ConvWindow<kVec> window;
  float pending[kMaxKernel][kVec] = {}, gw[kMaxKernel][kVec] = {}, gb[kVec] = {};
  int since_start = kMaxKernel;  // rows since the latest document start, up to kMaxKernel
  ConvRowsAhead<kVec> ahead_x, ahead_g;
#pragma unroll
  for (int u = 0; u < kConvAhead; ++u)
    if (first + u <= last) {
      ahead_x.load(u, a.x, (b * a.seq + first + u) * a.channels + c);
      ahead_g.load(u, dy, (b * a.seq + first + u) * a.channels + c);
    }
  for (int64_t base = first; base <= last; base += kConvAhead) {
#pragma unroll
    for (int u = 0; u < kConvAhead; ++u) {
      const int64_t t = base + u;
      if (t > last) break;
      float x[kVec], g[kVec];
      ahead_x.get(u, x);
      ahead_g.get(u, g);
      if (t + kConvAhead <= last) {
        ahead_x.load(u, a.x, (b * a.seq + t + kConvAhead) * a.channels + c);
        ahead_g.load(u, dy, (b * a.seq + t + kConvAhead) * a.channels + c);
      }
      const bool valid = a.mask.valid(b, t), starts = a.mask.starts_document(b, t);
      since_start = starts ? 0 : min(since_start + 1, kMaxKernel);
      window.push(starts, valid, x);
      float dpre[kVec];
      window.pre(a, taps, dpre);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        const float pre = dpre[v], sg = sigmoid(pre);
        dpre[v] = valid ? g[v] * sg * (1.0f + pre * (1.0f - sg)) : 0.0f;
      }
      // Row t - K leaves complete; row t enters.
      if (t - kMaxKernel >= t0) store_conv_dx(a, dx, b, t - kMaxKernel, c, pending[kMaxKernel - 1]);
#pragma unroll
      for (int i = kMaxKernel - 1; i > 0; --i)
#pragma unroll
        for (int v = 0; v < kVec; ++v) pending[i][v] = pending[i - 1][v];
#pragma unroll
      for (int v = 0; v < kVec; ++v) pending[0][v] = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxKernel; ++i)
        if (i < a.kernel && i <= since_start)
#pragma unroll
          for (int v = 0; v < kVec; ++v) pending[i][v] = fmaf(dpre[v], taps.tap[i][v], pending[i][v]);
      if (t >= t0 && t < t_end)
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          gb[v] += dpre[v];
#pragma unroll
          for (int i = 0; i < kMaxKernel; ++i) gw[i][v] = fmaf(dpre[v], window.in[i][v], gw[i][v]);
        }
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxKernel; ++i)
    if (last - i >= t0 && last - i < t_end) store_conv_dx(a, dx, b, last - i, c, pending[i]);
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
#pragma unroll
    for (int i = 0; i < kMaxKernel; ++i)
      if (i < a.kernel) atomicAdd(&grad_w[(c + v) * a.kernel + a.kernel - 1 - i], gw[i][v]);
    if (grad_bias != nullptr) atomicAdd(&grad_bias[c + v], gb[v]);
  }
}

ConvArgs conv_args(const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask, const char* op) {
  MF_CHECK(w.size(1) <= kMaxKernel, kUnsupported, op, ": a convolution of ", w.size(1), " taps; CUDA takes up to ",
           kMaxKernel);
  return {float_ref(x, op, "x"),
          float_ref(w, op, "w"),
          bias.defined() ? float_ref(bias, op, "bias") : FloatRef{nullptr, false},
          mask_view(mask, x.size(1), 0, op),
          x.size(0),
          x.size(1),
          x.size(2),
          static_cast<int>(w.size(1))};
}

// The launch of a convolution kernel: kVec channels a thread, a block of kConvThreads threads.
dim3 conv_grid(const ConvArgs& a, int vec) {
  const int64_t per_block = int64_t(kConvThreads) * vec;
  return dim3(static_cast<unsigned>((a.channels + per_block - 1) / per_block),
              static_cast<unsigned>(a.batch * ((a.seq + kConvRows - 1) / kConvRows)));
}

// ---- SSD scan ----

struct ScanArgs {
  FloatRef xbc, dt, dt_bias, a_log, d;
  MaskView mask;
  int64_t seq, heads, head_dim, groups, state, conv_dim;
  float dt_min;
  int chunk;  // Q
  bool vec4;  // every row the scan copies starts 16-byte aligned, in whole groups of 4 (load_rows)

  __device__ __forceinline__ int64_t x_col(int64_t h) const { return h * head_dim; }
  __device__ __forceinline__ int64_t b_col(int64_t h) const {
    return heads * head_dim + h / (heads / groups) * state;
  }
  __device__ __forceinline__ int64_t c_col(int64_t h) const { return b_col(h) + groups * state; }
  __device__ __forceinline__ int64_t chunks() const { return (seq + chunk - 1) / chunk; }
};

// The chunk's per-row values, rows i < nq from t0: the clamped time step, the running sum of
// A dt, the row of the latest document start at or before i (-1: the document began before the
// chunk) and, where asked, d dt / d raw (0 where clamped). Ends with a barrier.
__device__ void chunk_rows(const ScanArgs& s, int64_t b, int64_t h, int64_t t0, int nq, float A, float* dt,
                           float* cum, int* first, float* dt_grad) {
  const float bias = s.dt_bias.load(h);
  for (int i = threadIdx.x; i < nq; i += blockDim.x) {
    const int64_t t = t0 + i;
    // As Transformers: raw + bias, softplus (the identity above 20) and the clamp in float; a
    // padding row's raw step reads as zero.
    const float v = (s.mask.valid(b, t) ? s.dt.load((b * s.seq + t) * s.heads + h) : 0.0f) + bias;
    const float sp = v > 20.0f ? v : log1pf(expf(v));
    const bool clamped = sp < s.dt_min;
    dt[i] = clamped ? s.dt_min : sp;
    if (dt_grad != nullptr) dt_grad[i] = clamped ? 0.0f : (v > 20.0f ? 1.0f : sigmoid(v));
    first[i] = s.mask.starts_document(b, t) ? i : -1;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float run = 0.0f;
    for (int i = 0; i < nq; ++i) {
      run += A * dt[i];
      cum[i] = run;
      if (first[i] < 0 && i > 0) first[i] = first[i - 1];
    }
  }
  __syncthreads();
}

// Four consecutive values from i, a multiple of 4 on a 16-byte aligned tensor: one 8- or 16-byte load.
__device__ __forceinline__ float4 load4(const FloatRef& r, int64_t i) {
  if (r.bf16) {
    const uint2 v = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(r.data) + i);
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.y));
    return {lo.x, lo.y, hi.x, hi.y};
  }
  return *reinterpret_cast<const float4*>(static_cast<const float*>(r.data) + i);
}

// Four values to i, as load4 reads them.
__device__ __forceinline__ void store4(const FloatRef& r, int64_t i, float4 v) {
  if (r.bf16) {
    uint2 raw;
    *reinterpret_cast<__nv_bfloat162*>(&raw.x) = __floats2bfloat162_rn(v.x, v.y);
    *reinterpret_cast<__nv_bfloat162*>(&raw.y) = __floats2bfloat162_rn(v.z, v.w);
    *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(r.data) + i) = raw;
  } else {
    *reinterpret_cast<float4*>(static_cast<float*>(r.data) + i) = v;
  }
}

// dst[i * dst_stride + c] = src[first + i * stride + c] for i < rows, c < cols. A block's chunk
// waits on these loads before anything else (Nsight Compute put most of the scan's stalls on them
// and on the barrier after): with vec4, 4 values a load and kBatch loads in flight a thread.
__device__ void load_rows(const FloatRef& src, int64_t first, int64_t stride, int rows, int cols, bool vec4,
                          float* dst, int dst_stride) {
  constexpr int kBatch = 4;
  const int width = vec4 ? 4 : 1, per_row = cols / width, total = rows * per_row;
  for (int base = threadIdx.x; base < total; base += kBatch * blockDim.x) {
    float4 v[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int idx = base + k * blockDim.x, i = idx / per_row, c = idx % per_row * width;
      if (idx >= total) break;
      const int64_t at = first + i * stride + c;
      v[k] = vec4 ? load4(src, at) : float4{src.load(at), 0.0f, 0.0f, 0.0f};
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int idx = base + k * blockDim.x, i = idx / per_row, c = idx % per_row * width;
      if (idx >= total) break;
      float* d = dst + i * dst_stride + c;
      d[0] = v[k].x;
      if (vec4) d[1] = v[k].y, d[2] = v[k].z, d[3] = v[k].w;
    }
  }
}

// Asks L2 for rows [first, first + rows * stride) of src, cols values each, that a later chunk will
// load: its loads then wait on L2, not on memory.
__device__ void prefetch_rows(const FloatRef& src, int64_t first, int64_t stride, int rows, int cols) {
  const int bytes = src.bf16 ? 2 : 4, lines = (cols * bytes + 127) / 128;
  for (int idx = threadIdx.x; idx < rows * lines; idx += blockDim.x) {
    const char* row = static_cast<const char*>(src.data) + (first + idx / lines * stride) * bytes;
    asm volatile("prefetch.L2 [%0];" ::"l"(row + idx % lines * 128));
  }
}

// Rows [t0, t0 + nq) of x (P columns), B and C (N columns; no C where cs is null) into shared memory. Rows are stored
// one float apart from a multiple of 32 (strides P + 1, N + 1): products whose lanes walk down a
// column (dy_i . x_j, C_i . B_j with lanes along j) then read 32 different banks.
__device__ void load_chunk_inputs(const ScanArgs& s, int64_t b, int64_t h, int64_t t0, int nq, float* xs, float* bs,
                                  float* cs) {
  const int64_t row = (b * s.seq + t0) * s.conv_dim;
  load_rows(s.xbc, row + s.x_col(h), s.conv_dim, nq, s.head_dim, s.vec4, xs, s.head_dim + 1);
  load_rows(s.xbc, row + s.b_col(h), s.conv_dim, nq, s.state, s.vec4, bs, s.state + 1);
  if (cs != nullptr) load_rows(s.xbc, row + s.c_col(h), s.conv_dim, nq, s.state, s.vec4, cs, s.state + 1);
}

// The same rows of the chunk starting at t0 (C where with_c), and its time steps, into L2 (prefetch_rows).
__device__ void prefetch_chunk_inputs(const ScanArgs& s, int64_t b, int64_t h, int64_t t0, bool with_c) {
  if (t0 < 0 || t0 >= s.seq) return;
  const int nq = static_cast<int>(s.seq - t0 < s.chunk ? s.seq - t0 : s.chunk);
  const int64_t row = (b * s.seq + t0) * s.conv_dim;
  prefetch_rows(s.xbc, row + s.x_col(h), s.conv_dim, nq, s.head_dim);
  prefetch_rows(s.xbc, row + s.b_col(h), s.conv_dim, nq, s.state);
  if (with_c) prefetch_rows(s.xbc, row + s.c_col(h), s.conv_dim, nq, s.state);
  prefetch_rows(s.dt, (b * s.seq + t0) * s.heads + h, s.heads, nq, 1);
}

// Rows i and j of one document within the chunk (j <= i) and L_ij; 0 otherwise.
__device__ __forceinline__ float decay_between(const float* cum, const int* first, int i, int j) {
  return j <= i && j >= max(first[i], 0) ? expf(cum[i] - cum[j]) : 0.0f;
}

// ---- the chunk's products on the tensor cores ----
//
// Each warp computes 16 x (8 kN) tiles of an output with mma.sync m16n8k8 (tf32 operands, fp32
// sums), reading its operands from shared memory. Each product is three of them (3xTF32: with
// v = hi + lo, hi = tf32(v), lo = tf32(v - hi), a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi), which keeps
// about fp32's precision: the gradients of A_log and dt_bias are sums over every token that nearly
// cancel, and one tf32 rounding (2^-11) of W, H or dL/dH would show in them.
constexpr int kN = 4;  // 8-column blocks of a warp's tile

__device__ __forceinline__ uint32_t to_tf32(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
}

// d += a b over one 16 x 8 x 8 block (the PTX ISA's m16n8k8 .tf32 fragment layouts).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

struct Split {
  uint32_t hi, lo;
};
__device__ __forceinline__ Split split_tf32(float v) {
  const uint32_t hi = to_tf32(v);
  return {hi, to_tf32(v - __uint_as_float(hi))};
}

// A warp's tile of a rows x cols output.
struct Tile {
  int row0, col0, col_tile;  // its first row and column; col_tile = col0 / (8 kN)
  int rows, cols;
};

// Calls body(Tile) for each of the output's tiles, the block's warps taking them in turn.
template <class Body>
__device__ __forceinline__ void for_each_tile(int rows, int cols, Body body) {
  const int col_tiles = (cols + 8 * kN - 1) / (8 * kN), tiles = (rows + 15) / 16 * col_tiles;
  for (int t = threadIdx.x >> 5; t < tiles; t += kWarps)
    body(Tile{t / col_tiles * 16, t % col_tiles * 8 * kN, t % col_tiles, rows, cols});
}

// The accumulators of one tile: acc[n][i] is the entry for_each_entry names.
using Acc = float[kN][4];

// acc += lhs(row, k) rhs(k, col) summed over k < inner. Rows and columns past the output read
// clamped (their entries are dropped), k past inner reads zero. An operand marked exact holds tf32
// values already (x, B and C of a bf16 model: 8 bits of mantissa), so its low part is zero and the
// mma that would multiply it is left out: the same sums, one or two mma where three were.
template <bool kLhsExact, bool kRhsExact, class Lhs, class Rhs>
__device__ __forceinline__ void accumulate(Acc& acc, const Tile& t, int inner, Lhs lhs, Rhs rhs) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int r0 = min(t.row0 + g, t.rows - 1), r1 = min(t.row0 + g + 8, t.rows - 1);
  int col[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) col[n] = min(t.col0 + 8 * n + g, t.cols - 1);
  auto split = [](float v, bool exact) { return exact ? Split{__float_as_uint(v), 0u} : split_tf32(v); };
  for (int k0 = 0; k0 < inner; k0 += 8) {
    const int ka = k0 + q, kb = k0 + q + 4;
    const bool in_a = ka < inner, in_b = kb < inner;
    const Split a[4] = {split(in_a ? lhs(r0, ka) : 0.0f, kLhsExact), split(in_a ? lhs(r1, ka) : 0.0f, kLhsExact),
                        split(in_b ? lhs(r0, kb) : 0.0f, kLhsExact), split(in_b ? lhs(r1, kb) : 0.0f, kLhsExact)};
    const uint32_t a_hi[4] = {a[0].hi, a[1].hi, a[2].hi, a[3].hi}, a_lo[4] = {a[0].lo, a[1].lo, a[2].lo, a[3].lo};
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      const Split b0 = split(in_a ? rhs(ka, col[n]) : 0.0f, kRhsExact);
      const Split b1 = split(in_b ? rhs(kb, col[n]) : 0.0f, kRhsExact);
      const uint32_t b_hi[2] = {b0.hi, b1.hi}, b_lo[2] = {b0.lo, b1.lo};
      if constexpr (!kLhsExact) mma_m16n8k8_tf32(acc[n], a_lo, b_hi);
      if constexpr (!kRhsExact) mma_m16n8k8_tf32(acc[n], a_hi, b_lo);
      mma_m16n8k8_tf32(acc[n], a_hi, b_hi);
    }
  }
}

// Calls f(n, i, row, col) for each of the lane's entries of the tile inside the output.
template <class F>
__device__ __forceinline__ void for_each_entry(const Tile& t, F f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = t.row0 + g + 8 * (i >> 1), col = t.col0 + 8 * n + 2 * q + (i & 1);
      if (row < t.rows && col < t.cols) f(n, i, row, col);
    }
}

// partial[t.col_tile * stride + row] = the sum of value(n, i, row, col) over the tile's columns, for
// each of its rows: one writer per slot, so a caller adds a row's slots in col_tile order
// (deterministic).
template <class Value>
__device__ __forceinline__ void row_partials(const Tile& t, float* partial, int stride, Value value) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = t.row0 + g + 8 * half;
    float part = 0.0f;
#pragma unroll
    for (int n = 0; n < kN; ++n)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = t.col0 + 8 * n + 2 * q + j;
        if (row < t.rows && col < t.cols) part += value(n, 2 * half + j, row, col);
      }
    part += __shfl_xor_sync(0xffffffffu, part, 1);
    part += __shfl_xor_sync(0xffffffffu, part, 2);
    if (q == 0 && row < t.rows) partial[t.col_tile * stride + row] = part;
  }
}

// The forward's shared memory in floats: H [P][N+1], x [Q][P+1], B and C [Q][N+1], W [Q][Q+1], and
// per row dt, cum, the end-of-chunk weight and first. The states sweep has no C and no W: at
// Nemotron 3 Nano's head its 64-row chunks then fit two blocks to a multiprocessor.
__host__ __device__ inline int64_t scan_states_floats(int64_t P, int64_t N, int64_t Q) {
  return P * (N + 1) + Q * ((P + 1) + (N + 1) + 4);
}
__host__ __device__ inline int64_t scan_fwd_floats(int64_t P, int64_t N, int64_t Q) {
  return scan_states_floats(P, N, Q) + Q * ((N + 1) + (Q + 1));
}

// kStates: instead of y, write each chunk's starting state into states (the backward's workspace).
// kBf16Inputs: xbc is bf16, so x, B and C are exact in tf32 (accumulate).
// Registers for two blocks a multiprocessor (at most 128 a thread), where the chunk's shared memory
// allows two (scan_chunk); without a bound ptxas held the states sweep to 64 and spilled.
template <bool kStates, bool kBf16Inputs>
__global__ void __launch_bounds__(kThreads, 2) ssd_scan_fwd_kernel(ScanArgs s, FloatRef y, float* states) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.x / s.heads, h = blockIdx.x % s.heads;
  const int P = s.head_dim, PS = P + 1, N = s.state, NS = N + 1, Q = s.chunk, QS = Q + 1;
  float* H = smem;
  float* xs = H + P * NS;
  float* bs = xs + Q * PS;
  float* cs = kStates ? nullptr : bs + Q * NS;
  float* W = kStates ? nullptr : cs + Q * NS;
  float* dt = kStates ? bs + Q * NS : W + Q * QS;
  float* cum = dt + Q;
  float* wend = cum + Q;
  int* first = reinterpret_cast<int*>(wend + Q);
  const float A = -expf(s.a_log.load(h)), dskip = s.d.load(h);
  for (int i = threadIdx.x; i < P * NS; i += blockDim.x) H[i] = 0.0f;
  for (int64_t t0 = 0, c = 0; t0 < s.seq; t0 += Q, ++c) {
    const int nq = static_cast<int>(s.seq - t0 < Q ? s.seq - t0 : Q);
    __syncthreads();  // the previous chunk's state update has read xs, bs
    load_chunk_inputs(s, b, h, t0, nq, xs, bs, cs);
    prefetch_chunk_inputs(s, b, h, t0 + Q, !kStates);
    chunk_rows(s, b, h, t0, nq, A, dt, cum, first, nullptr);
    const int last = nq - 1;
    for (int j = threadIdx.x; j < nq; j += blockDim.x) wend[j] = decay_between(cum, first, last, j) * dt[j];
    if constexpr (kStates) {
      float* out = states + ((b * s.heads + h) * s.chunks() + c) * P * N;
      for (int idx = threadIdx.x; idx < P * N; idx += blockDim.x) out[idx] = H[idx / N * NS + idx % N];
    } else {
      // W_ij = (C_i . B_j) L_ij dt_j
      for_each_tile(nq, nq, [&](const Tile& t) {
        Acc cb = {};
        accumulate<kBf16Inputs, kBf16Inputs>(
            cb, t, N, [&](int i, int n) { return cs[i * NS + n]; }, [&](int n, int j) { return bs[j * NS + n]; });
        for_each_entry(t, [&](int a, int e, int i, int j) {
          W[i * QS + j] = cb[a][e] * decay_between(cum, first, i, j) * dt[j];
        });
      });
      __syncthreads();
      // y_i = D x_i + sum_j W_ij x_j + exp(cum_i) H C_i, the last term for rows that see the carried state
      for_each_tile(nq, P, [&](const Tile& t) {
        Acc intra = {}, carried = {};
        accumulate<false, kBf16Inputs>(
            intra, t, nq, [&](int i, int j) { return W[i * QS + j]; }, [&](int j, int p) { return xs[j * PS + p]; });
        accumulate<kBf16Inputs, false>(
            carried, t, N, [&](int i, int n) { return cs[i * NS + n]; }, [&](int n, int p) { return H[p * NS + n]; });
        for_each_entry(t, [&](int a, int e, int i, int p) {
          float acc = dskip * xs[i * PS + p] + intra[a][e];
          if (first[i] < 0) acc += expf(cum[i]) * carried[a][e];
          y.store((b * s.seq + t0 + i) * s.heads * P + s.x_col(h) + p, acc);
        });
      });
    }
    __syncthreads();
    // H <- exp(cum_last) H + sum_j L_last,j dt_j x_j B_j^T (no carry across a document start)
    const float carry = first[last] < 0 ? expf(cum[last]) : 0.0f;
    for_each_tile(P, N, [&](const Tile& t) {
      Acc acc = {};
      accumulate<kBf16Inputs, false>(
          acc, t, nq, [&](int p, int j) { return xs[j * PS + p]; },
          [&](int j, int n) { return wend[j] * bs[j * NS + n]; });
      for_each_entry(t, [&](int a, int e, int p, int n) { H[p * NS + n] = carry * H[p * NS + n] + acc[a][e]; });
    });
  }
}

// The backward's shared memory in floats: H and dL/dH [P][N+1] each, x and dy [Q][P+1], B and C
// [Q][N+1], GL and LDX [Q][Q+1], kRowValues values per row (first as int), and kRowSums partial sums
// per row and column tile of the head's channels.
constexpr int kRowValues = 10, kRowSums = 5;
__host__ __device__ inline int64_t scan_bwd_floats(int64_t P, int64_t N, int64_t Q) {
  const int64_t col_tiles = (P + 8 * kN - 1) / (8 * kN);
  return 2 * P * (N + 1) + Q * (2 * (P + 1) + 2 * (N + 1) + 2 * (Q + 1) + kRowValues + kRowSums * col_tiles);
}

struct ScanGradOut {
  FloatRef dy, d_xbc, d_dt;
  float* d_bc;       // [B * T, 2 * groups * state] fp32, zeroed: the B and C columns' gradients
  float* head_sums;  // [B * heads, 3]: d dt_bias, d a_log, d D of each (sequence, head)
};

// Per chunk, with G_ij = C_i . B_j, DX_ij = dy_i . x_j, E_i = exp(cum_i) where row i sees the
// carried state (else 0), w_j = L_last,j and dH = dL/dH at the chunk's end:
//   dx_j  = D dy_j + dt_j sum_i G_ij L_ij dy_i + w_j dt_j dH B_j
//   dC_i  = sum_j L_ij DX_ij dt_j B_j + E_i dy_i^T H
//   dB_j  = dt_j sum_i L_ij DX_ij C_i + w_j dt_j x_j^T dH
//   dt_j (as a factor) gets x_j . (sum_i G_ij L_ij dy_i) + w_j x_j . dH B_j
//   the log-decays through cum: R_ij = G_ij L_ij dt_j DX_ij adds to d cum_i and subtracts from
//   d cum_j; likewise the carried-state terms; d (A dt_k) = sum_{i >= k} d cum_i (none at a
//   document start, which no term crosses)
//   dH (for the chunk before) = E_last dH + sum_i E_i dy_i C_i^T.
template <bool kBf16Inputs>
__global__ void __launch_bounds__(kThreads) ssd_scan_bwd_kernel(ScanArgs s, const float* states, ScanGradOut g) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.x / s.heads, h = blockIdx.x % s.heads;
  const int P = s.head_dim, PS = P + 1, N = s.state, NS = N + 1, Q = s.chunk, QS = Q + 1;
  float* H = smem;
  float* dH = H + P * NS;
  float* xs = dH + P * NS;
  float* dys = xs + Q * PS;
  float* bs = dys + Q * PS;
  float* cs = bs + Q * NS;
  float* GL = cs + Q * NS;   // G_ij L_ij
  float* LDX = GL + Q * QS;  // L_ij DX_ij
  float* dt = LDX + Q * QS;
  float* cum = dt + Q;
  float* dt_grad = cum + Q;
  float* E = dt_grad + Q;
  float* wend = E + Q;
  float* ddt = wend + Q;  // d dt_j as a factor
  float* dcum = ddt + Q;
  float* tend = dcum + Q;  // T_j = w_j dt_j x_j . dH B_j
  float* dy_x = tend + Q;   // dy_j . x_j
  int* first = reinterpret_cast<int*>(dy_x + Q);
  // Row sums over the head's channels, kRowSums partial ones per column tile (row_partials):
  // x . intra, x . dH B, dy . y_intra, dy . H C and dy . x.
  const int col_tiles = (P + 8 * kN - 1) / (8 * kN);
  float* partials = reinterpret_cast<float*>(first + Q);
  auto row_sum = [&](int which, int r) {
    float sum = 0.0f;
    for (int ct = 0; ct < col_tiles; ++ct) sum += partials[(which * col_tiles + ct) * Q + r];
    return sum;
  };
  __shared__ float scratch[32];
  const float A = -expf(s.a_log.load(h)), dskip = s.d.load(h);
  const int64_t width = s.heads * P, bc_width = 2 * s.groups * N;
  const int64_t group_bc = h / (s.heads / s.groups) * N;
  const FloatRef state_ref{const_cast<float*>(states), false};
  for (int i = threadIdx.x; i < P * NS; i += blockDim.x) dH[i] = 0.0f;
  float sum_bias = 0.0f, sum_dA = 0.0f, sum_d = 0.0f;  // thread 0's
  for (int64_t c = s.chunks() - 1; c >= 0; --c) {
    const int64_t t0 = c * Q;
    const int nq = static_cast<int>(s.seq - t0 < Q ? s.seq - t0 : Q), last = nq - 1;
    __syncthreads();  // the previous chunk is done with the shared rows
    const int64_t state_at = ((b * s.heads + h) * s.chunks() + c) * P * N;
    load_chunk_inputs(s, b, h, t0, nq, xs, bs, cs);
    load_rows(g.dy, (b * s.seq + t0) * width + s.x_col(h), width, nq, P, s.vec4, dys, PS);
    load_rows(state_ref, state_at, N, P, N, s.vec4, H, NS);
    if (c > 0) {  // the chunk before, next
      prefetch_chunk_inputs(s, b, h, t0 - Q, true);
      prefetch_rows(g.dy, (b * s.seq + t0 - Q) * width + s.x_col(h), width, Q, P);
      prefetch_rows(state_ref, state_at - P * N, N, P, N);
    }
    chunk_rows(s, b, h, t0, nq, A, dt, cum, first, dt_grad);
    for (int i = threadIdx.x; i < nq; i += blockDim.x) {
      E[i] = first[i] < 0 ? expf(cum[i]) : 0.0f;
      wend[i] = decay_between(cum, first, last, i);
    }
    // GL and LDX.
    for_each_tile(nq, nq, [&](const Tile& t) {
      Acc cb = {}, dx = {};
      accumulate<kBf16Inputs, kBf16Inputs>(
          cb, t, N, [&](int i, int n) { return cs[i * NS + n]; }, [&](int n, int j) { return bs[j * NS + n]; });
      accumulate<false, kBf16Inputs>(
          dx, t, P, [&](int i, int p) { return dys[i * PS + p]; }, [&](int p, int j) { return xs[j * PS + p]; });
      for_each_entry(t, [&](int a, int e, int i, int j) {
        const float l = decay_between(cum, first, i, j);
        GL[i * QS + j] = cb[a][e] * l;
        LDX[i * QS + j] = dx[a][e] * l;
      });
    });
    __syncthreads();
    // Row r's channels: the x columns of d_xbc, and the row sums. v_r = dH B_r, hc_r = H C_r,
    // intra_r = sum_i G_ir L_ir dy_i, y_intra_r = sum_j G_rj L_rj dt_j x_j.
    for_each_tile(nq, P, [&](const Tile& t) {
      Acc v = {}, hc = {}, intra = {}, y_intra = {};
      accumulate<kBf16Inputs, false>(
          v, t, N, [&](int r, int n) { return bs[r * NS + n]; }, [&](int n, int p) { return dH[p * NS + n]; });
      accumulate<kBf16Inputs, false>(
          hc, t, N, [&](int r, int n) { return cs[r * NS + n]; }, [&](int n, int p) { return H[p * NS + n]; });
      accumulate<false, false>(
          intra, t, nq, [&](int r, int i) { return GL[i * QS + r]; }, [&](int i, int p) { return dys[i * PS + p]; });
      accumulate<false, kBf16Inputs>(
          y_intra, t, nq, [&](int r, int j) { return GL[r * QS + j] * dt[j]; },
          [&](int j, int p) { return xs[j * PS + p]; });
      for_each_entry(t, [&](int a, int e, int r, int p) {
        g.d_xbc.store((b * s.seq + t0 + r) * s.conv_dim + s.x_col(h) + p,
                      dskip * dys[r * PS + p] + dt[r] * intra[a][e] + wend[r] * dt[r] * v[a][e]);
      });
      float* sums = partials;  // kRowSums arrays of [col_tiles][Q]
      const int sum_size = col_tiles * Q;
      row_partials(t, sums, Q, [&](int a, int e, int r, int p) { return xs[r * PS + p] * intra[a][e]; });
      row_partials(t, sums + sum_size, Q, [&](int a, int e, int r, int p) { return xs[r * PS + p] * v[a][e]; });
      row_partials(t, sums + 2 * sum_size, Q,
                   [&](int a, int e, int r, int p) { return dys[r * PS + p] * y_intra[a][e]; });
      row_partials(t, sums + 3 * sum_size, Q, [&](int a, int e, int r, int p) { return dys[r * PS + p] * hc[a][e]; });
      row_partials(t, sums + 4 * sum_size, Q, [&](int, int, int r, int p) { return dys[r * PS + p] * xs[r * PS + p]; });
    });
    __syncthreads();
    for (int r = threadIdx.x; r < nq; r += blockDim.x) {
      const float x_intra = row_sum(0, r), x_state = row_sum(1, r), dy_y = row_sum(2, r), dy_hc = row_sum(3, r);
      ddt[r] = x_intra + wend[r] * x_state;
      tend[r] = wend[r] * dt[r] * x_state;
      dcum[r] = dy_y - dt[r] * x_intra + E[r] * dy_hc - tend[r];
      dy_x[r] = row_sum(4, r);
    }
    // B and C: the group's heads add into d_bc.
    for_each_tile(nq, N, [&](const Tile& t) {
      Acc dc = {}, dc_state = {}, db = {}, db_state = {};
      accumulate<false, kBf16Inputs>(
          dc, t, nq, [&](int r, int j) { return LDX[r * QS + j] * dt[j]; },
          [&](int j, int n) { return bs[j * NS + n]; });
      accumulate<false, kBf16Inputs>(
          db, t, nq, [&](int r, int i) { return LDX[i * QS + r]; }, [&](int i, int n) { return cs[i * NS + n]; });
      accumulate<false, false>(
          dc_state, t, P, [&](int r, int p) { return dys[r * PS + p]; }, [&](int p, int n) { return H[p * NS + n]; });
      accumulate<kBf16Inputs, false>(
          db_state, t, P, [&](int r, int p) { return xs[r * PS + p]; }, [&](int p, int n) { return dH[p * NS + n]; });
      for_each_entry(t, [&](int a, int e, int r, int n) {
        float* row_bc = g.d_bc + (b * s.seq + t0 + r) * bc_width + group_bc;
        atomicAdd(&row_bc[n], dt[r] * (db[a][e] + wend[r] * db_state[a][e]));
        atomicAdd(&row_bc[s.groups * N + n], dc[a][e] + E[r] * dc_state[a][e]);
      });
    });
    float hh = 0.0f;  // <dH, H>: the carried state's share of d cum_last
    for (int idx = threadIdx.x; idx < P * N; idx += blockDim.x) {
      const int at = idx / N * NS + idx % N;
      hh += dH[at] * H[at];
    }
    hh = block_sum(hh, scratch);  // also the barrier after the passes that read dH
    const float carry = E[last];
    if (threadIdx.x == 0) {
      float tsum = 0.0f;
      for (int j = 0; j < nq; ++j) tsum += tend[j];
      dcum[last] += tsum + carry * hh;
      float d_log_decay = 0.0f;
      for (int k = last; k >= 0; --k) {
        d_log_decay += dcum[k];
        const float d_la = first[k] == k ? 0.0f : d_log_decay;
        const float d_raw = dt_grad[k] * (ddt[k] + A * d_la);
        const int64_t t = t0 + k;
        g.d_dt.store((b * s.seq + t) * s.heads + h, s.mask.valid(b, t) ? d_raw : 0.0f);
        sum_bias += d_raw;
        sum_dA += dt[k] * d_la;
        sum_d += dy_x[k];
      }
    }
    // dH <- E_last dH + sum_i E_i dy_i C_i^T
    for_each_tile(P, N, [&](const Tile& t) {
      Acc acc = {};
      accumulate<false, kBf16Inputs>(
          acc, t, nq, [&](int p, int i) { return E[i] * dys[i * PS + p]; },
          [&](int i, int n) { return cs[i * NS + n]; });
      for_each_entry(t, [&](int a, int e, int p, int n) { dH[p * NS + n] = carry * dH[p * NS + n] + acc[a][e]; });
    });
  }
  if (threadIdx.x == 0) {
    float* out = g.head_sums + (b * s.heads + h) * 3;
    out[0] = sum_bias;
    out[1] = sum_dA * A;  // dA / d a_log = A
    out[2] = sum_d;
  }
}

// The B and C columns of d_xbc from the fp32 sums.
__global__ void store_bc_kernel(const float* d_bc, FloatRef d_xbc, int64_t rows, int64_t bc_width, int64_t conv_dim) {
  const int64_t total = rows * bc_width, first_col = conv_dim - bc_width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    d_xbc.store(i / bc_width * conv_dim + first_col + i % bc_width, d_bc[i]);
}

// grad[h] += the sum over sequences of head_sums[b, h, which], in sequence order.
__global__ void add_head_sums_kernel(const float* head_sums, int64_t batch, int64_t heads, FloatRef grad_bias,
                                     FloatRef grad_a_log, FloatRef grad_d) {
  const int64_t h = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (h >= heads) return;
  float sums[3] = {};
  for (int64_t b = 0; b < batch; ++b)
    for (int k = 0; k < 3; ++k) sums[k] += head_sums[(b * heads + h) * 3 + k];
  grad_bias.store(h, grad_bias.load(h) + sums[0]);
  grad_a_log.store(h, grad_a_log.load(h) + sums[1]);
  grad_d.store(h, grad_d.load(h) + sums[2]);
}

// The largest chunk of 64, 32 or 16 rows whose shared memory fits, refused by name otherwise. With
// two_per_sm, the largest whose blocks fit two to a multiprocessor, where one does: a block has 8
// warps, too few alone to hide the latency of its loads and barriers.
int scan_chunk(const SsdShape& shape, int64_t (*floats)(int64_t, int64_t, int64_t), bool two_per_sm,
               const char* op) {
  const int64_t limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const int64_t per_sm = device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  const int64_t reserved = device_attribute(cudaDevAttrReservedSharedMemoryPerBlock);
  auto bytes = [&](int q) { return floats(shape.head_dim, shape.state, q) * int64_t(sizeof(float)); };
  if (two_per_sm)
    for (int q : {64, 32})
      if (2 * (bytes(q) + reserved) <= per_sm) return q;
  for (int q : {64, 32, 16})
    if (bytes(q) <= limit) return q;
  fail(ErrorCode::kUnsupported, op, ": a head of ", shape.head_dim, " channels with a state of ", shape.state,
       " does not fit the scan's shared memory (", limit, " bytes)");
}

// A tensor whose rows load_rows may read 4 values a load: 16-byte aligned, rows a multiple of 4 long.
bool vec4_rows(const Tensor& t) { return aligned16(t) && t.size(t.dim() - 1) % 4 == 0; }

ScanArgs scan_args(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                   const SsdShape& shape, const AttentionMask& mask, int chunk, const char* op) {
  return {float_ref(xbc, op, "xbc"),
          float_ref(dt, op, "dt"),
          float_ref(dt_bias, op, "dt_bias"),
          float_ref(a_log, op, "a_log"),
          float_ref(d, op, "d"),
          mask_view(mask, xbc.size(1), 0, op),
          xbc.size(1),
          shape.heads,
          shape.head_dim,
          shape.groups,
          shape.state,
          xbc.size(2),
          shape.dt_min,
          chunk,
          vec4_rows(xbc) && shape.head_dim % 4 == 0 && shape.state % 4 == 0};
}

template <class Kernel, class... Args>
void launch_scan(Kernel kernel, int64_t blocks, int64_t floats, Args... args) {
  const size_t bytes = static_cast<size_t>(floats) * sizeof(float);
  allow_shared(kernel, bytes);
  MF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, current_stream()>>>(args...);
  MF_CUDA_CHECK_LAUNCH();
}

// ---- gated group RMSNorm ----

struct GatedNormArgs {
  FloatRef y, z, w;
  int64_t rows, width, group;
};

// kVec (1 or 4) consecutive values from i through FloatRef; with 4, one access (load4, store4).
template <int kVec>
__device__ __forceinline__ void load_values(const FloatRef& r, int64_t i, float (&v)[kVec]) {
  if constexpr (kVec == 1) {
    v[0] = r.load(i);
  } else {
    const float4 f = load4(r, i);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  }
}
template <int kVec>
__device__ __forceinline__ void store_values(const FloatRef& r, int64_t i, const float (&v)[kVec]) {
  if constexpr (kVec == 1)
    r.store(i, v[0]);
  else
    store4(r, i, make_float4(v[0], v[1], v[2], v[3]));
}

// g = y silu(z) at kVec columns from `at`.
template <int kVec>
__device__ __forceinline__ void gated(const GatedNormArgs& a, int64_t at, float (&g)[kVec]) {
  float yv[kVec];
  load_values<kVec>(a.y, at, yv);
  load_values<kVec>(a.z, at, g);
#pragma unroll
  for (int v = 0; v < kVec; ++v) g[v] = yv[v] * (g[v] * sigmoid(g[v]));
}

// A warp per (row, group), kVec columns a lane at a time; the second pass reads the group again
// from L1.
template <int kVec>
__global__ void gated_norm_fwd_kernel(GatedNormArgs a, float eps, FloatRef out, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t groups = a.width / a.group, items = a.rows * groups;
  for (int64_t it = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); it < items; it += int64_t(gridDim.x) * kWarps) {
    const int64_t r = it / groups, k = it % groups, base = r * a.width + k * a.group;
    float sum = 0.0f;
    for (int64_t j = lane * kVec; j < a.group; j += 32 * kVec) {
      float g[kVec];
      gated<kVec>(a, base + j, g);
#pragma unroll
      for (int v = 0; v < kVec; ++v) sum += g[v] * g[v];
    }
    const float rs = rsqrtf(warp_sum(sum) / static_cast<float>(a.group) + eps);
    if (lane == 0) rstd[it] = rs;
    for (int64_t j = lane * kVec; j < a.group; j += 32 * kVec) {
      float g[kVec], wv[kVec];
      gated<kVec>(a, base + j, g);
      load_values<kVec>(a.w, k * a.group + j, wv);
#pragma unroll
      for (int v = 0; v < kVec; ++v) g[v] = wv[v] * (g[v] * rs);
      store_values<kVec>(out, base + j, g);
    }
  }
}

// One column's gradients, with n = y silu(z) rstd and dn = dout w: dg = rstd (dn - n mean) (mean:
// the group's mean of dn n); dy = dg silu(z), dz = dg y silu'(z), and dw's term dout n.
struct GatedNormGrad {
  float dy, dz, dw;
};
__device__ __forceinline__ GatedNormGrad gated_norm_grad(float y, float z, float dout, float w, float rs, float mean) {
  const float sg = sigmoid(z), normed = y * z * sg * rs;
  const float dg = rs * (dout * w - normed * mean);
  return {dg * z * sg, dg * y * sg * (1.0f + z * (1.0f - sg)), dout * normed};
}

// With n = g rstd and dn = dout w: dg = rstd (dn - n mean(dn n)) per group; dy = dg silu(z),
// dz = dg y silu'(z); dw += dout n, summed per block in shared memory.
template <int kVec>
__global__ void gated_norm_bwd_kernel(GatedNormArgs a, FloatRef dout, const float* rstd, FloatRef dy, FloatRef dz,
                                      float* dw_sum) {
  extern __shared__ float dw_block[];
  for (int64_t j = threadIdx.x; j < a.width; j += blockDim.x) dw_block[j] = 0.0f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t groups = a.width / a.group, items = a.rows * groups;
  for (int64_t it = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); it < items; it += int64_t(gridDim.x) * kWarps) {
    const int64_t r = it / groups, k = it % groups, base = r * a.width + k * a.group;
    const float rs = rstd[it];
    float dot = 0.0f;
    for (int64_t j = lane * kVec; j < a.group; j += 32 * kVec) {
      float g[kVec], go[kVec], wv[kVec];
      gated<kVec>(a, base + j, g);
      load_values<kVec>(dout, base + j, go);
      load_values<kVec>(a.w, k * a.group + j, wv);
#pragma unroll
      for (int v = 0; v < kVec; ++v) dot += go[v] * wv[v] * g[v] * rs;
    }
    const float mean = warp_sum(dot) / static_cast<float>(a.group);
    for (int64_t j = lane * kVec; j < a.group; j += 32 * kVec) {
      const int64_t col = k * a.group + j;
      float zv[kVec], yv[kVec], go[kVec], wv[kVec], d_y[kVec], d_z[kVec], dw[kVec];
      load_values<kVec>(a.z, base + j, zv);
      load_values<kVec>(a.y, base + j, yv);
      load_values<kVec>(dout, base + j, go);
      load_values<kVec>(a.w, col, wv);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        const GatedNormGrad gr = gated_norm_grad(yv[v], zv[v], go[v], wv[v], rs, mean);
        d_y[v] = gr.dy, d_z[v] = gr.dz, dw[v] = gr.dw;
      }
      atomic_add_rotated<kVec>(dw_block + col, dw, lane / 8);  // 32 lanes, 32 banks
      store_values<kVec>(dy, base + j, d_y);
      store_values<kVec>(dz, base + j, d_z);
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < a.width; j += blockDim.x) atomicAdd(&dw_sum[j], dw_block[j]);
}

// The same with a group of exactly 32 * 4 * kSteps columns (Nemotron 3 Nano's 512: kSteps 4): a lane
// keeps its 4 * kSteps columns of the row in registers between the sums and the outputs, so each
// tensor is read once, all of a lane's loads in flight together. The backward's weight gradient
// stays in registers while a warp's group stays the same (its stride over (row, group) items is a
// multiple of the group count at Nemotron's shapes), going to shared memory when the group changes;
// at 128 registers two blocks share a multiprocessor.
template <int kSteps>
__global__ void gated_norm_fwd_regs_kernel(GatedNormArgs a, float eps, FloatRef out, float* rstd) {
  const int lane = threadIdx.x & 31;
  const int64_t groups = a.width / a.group, items = a.rows * groups;
  for (int64_t it = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); it < items; it += int64_t(gridDim.x) * kWarps) {
    const int64_t r = it / groups, k = it % groups, base = r * a.width + k * a.group + lane * 4;
    float g[kSteps][4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) gated<4>(a, base + s * 128, g[s]);
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int v = 0; v < 4; ++v) sum += g[s][v] * g[s][v];
    const float rs = rsqrtf(warp_sum(sum) / static_cast<float>(a.group) + eps);
    if (lane == 0) rstd[it] = rs;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      float wv[4];
      load_values<4>(a.w, k * a.group + lane * 4 + s * 128, wv);
#pragma unroll
      for (int v = 0; v < 4; ++v) g[s][v] = wv[v] * (g[s][v] * rs);
      store_values<4>(out, base + s * 128, g[s]);
    }
  }
}

template <int kSteps>
__global__ void __launch_bounds__(kThreads, 2)
    gated_norm_bwd_regs_kernel(GatedNormArgs a, FloatRef dout, const float* rstd, FloatRef dy, FloatRef dz,
                               float* dw_sum) {
  extern __shared__ float dw_block[];
  for (int64_t j = threadIdx.x; j < a.width; j += blockDim.x) dw_block[j] = 0.0f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t groups = a.width / a.group, items = a.rows * groups;
  float dw[kSteps][4] = {};
  int64_t dw_group = -1;  // the group whose weight gradient dw holds
  auto flush = [&] {
    if (dw_group < 0) return;
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
      atomic_add_rotated<4>(dw_block + dw_group * a.group + lane * 4 + s * 128, dw[s], lane / 8);
  };
  for (int64_t it = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); it < items; it += int64_t(gridDim.x) * kWarps) {
    const int64_t r = it / groups, k = it % groups, base = r * a.width + k * a.group + lane * 4;
    if (k != dw_group) {
      flush();
      dw_group = k;
#pragma unroll
      for (int s = 0; s < kSteps; ++s)
#pragma unroll
        for (int v = 0; v < 4; ++v) dw[s][v] = 0.0f;
    }
    float yv[kSteps][4], zv[kSteps][4], go[kSteps][4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      load_values<4>(a.y, base + s * 128, yv[s]);
      load_values<4>(a.z, base + s * 128, zv[s]);
      load_values<4>(dout, base + s * 128, go[s]);
    }
    const float rs = rstd[it];
    float wv[kSteps][4], dot = 0.0f;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      load_values<4>(a.w, k * a.group + lane * 4 + s * 128, wv[s]);
#pragma unroll
      for (int v = 0; v < 4; ++v) dot += go[s][v] * wv[s][v] * (yv[s][v] * (zv[s][v] * sigmoid(zv[s][v]))) * rs;
    }
    const float mean = warp_sum(dot) / static_cast<float>(a.group);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      float d_y[4], d_z[4];
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const GatedNormGrad gr = gated_norm_grad(yv[s][v], zv[s][v], go[s][v], wv[s][v], rs, mean);
        d_y[v] = gr.dy, d_z[v] = gr.dz;
        dw[s][v] += gr.dw;
      }
      store_values<4>(dy, base + s * 128, d_y);
      store_values<4>(dz, base + s * 128, d_z);
    }
  }
  flush();
  __syncthreads();
  for (int64_t j = threadIdx.x; j < a.width; j += blockDim.x) atomicAdd(&dw_sum[j], dw_block[j]);
}

// Whether the gated norm's lanes can take 4 columns a load: groups of whole 4s, 16-byte aligned tensors.
bool gated_norm_vec4(int64_t group, std::initializer_list<const Tensor*> tensors) {
  if (group % 4 != 0) return false;
  for (const Tensor* t : tensors)
    if (!aligned16(*t)) return false;
  return true;
}

GatedNormArgs gated_norm_args(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group, const char* op) {
  return {float_ref(y, op, "y"), float_ref(z, op, "z"), float_ref(w, op, "w"), y.size(0), y.size(1), group};
}

}  // namespace

void causal_conv1d_silu_fwd(const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask,
                            Tensor& y) {
  const char* op = "causal_conv1d_silu_fwd";
  if (x.numel() == 0) return;
  const ConvArgs a = conv_args(x, w, bias, mask, op);
  const FloatRef out = float_ref(y, op, "y");
  if (bf16_chunks(a.channels, {&x, &y}))
    conv_fwd_kernel<8><<<conv_grid(a, 8), kConvThreads, 0, current_stream()>>>(a, out);
  else
    conv_fwd_kernel<1><<<conv_grid(a, 1), kConvThreads, 0, current_stream()>>>(a, out);
  MF_CUDA_CHECK_LAUNCH();
}

void causal_conv1d_silu_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                            const AttentionMask& mask, Tensor& dx, Tensor& grad_w, Tensor& grad_bias) {
  const char* op = "causal_conv1d_silu_bwd";
  if (x.numel() == 0) return;
  const ConvArgs a = conv_args(x, w, bias, mask, op);
  const WeightGradSum w_sum(grad_w, op);
  std::optional<WeightGradSum> bias_sum;
  if (bias.defined()) bias_sum.emplace(grad_bias, op);
  const FloatRef d_out = float_ref(dy, op, "dy"), d_in = float_ref(dx, op, "dx");
  float* bias_grad = bias_sum ? bias_sum->sum : nullptr;
  // Four channels a thread: eight would hold twice the registers for the sums and windows.
  if (bf16_chunks(a.channels, {&x, &dy, &dx}))
    conv_bwd_kernel<4><<<conv_grid(a, 4), kConvThreads, 0, current_stream()>>>(a, d_out, d_in, w_sum.sum, bias_grad);
  else
    conv_bwd_kernel<1><<<conv_grid(a, 1), kConvThreads, 0, current_stream()>>>(a, d_out, d_in, w_sum.sum, bias_grad);
  MF_CUDA_CHECK_LAUNCH();
  w_sum.finish();
  if (bias_sum) bias_sum->finish();
}

void ssd_scan_fwd(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                  const SsdShape& shape, const AttentionMask& mask, Tensor& y) {
  const char* op = "ssd_scan_fwd";
  if (xbc.numel() == 0) return;
  const int q = scan_chunk(shape, scan_fwd_floats, /*two_per_sm=*/true, op);
  const ScanArgs s = scan_args(xbc, dt, dt_bias, a_log, d, shape, mask, q, op);
  launch_scan(s.xbc.bf16 ? ssd_scan_fwd_kernel<false, true> : ssd_scan_fwd_kernel<false, false>,
              xbc.size(0) * shape.heads, scan_fwd_floats(shape.head_dim, shape.state, q), s, float_ref(y, op, "y"),
              static_cast<float*>(nullptr));
}

void ssd_scan_bwd(const Tensor& dy, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log,
                  const Tensor& d, const SsdShape& shape, const AttentionMask& mask, SsdScanGrads& grads,
                  Tensor& grad_dt_bias, Tensor& grad_a_log, Tensor& grad_d) {
  const char* op = "ssd_scan_bwd";
  if (xbc.numel() == 0) return;
  const int64_t batch = xbc.size(0), seq = xbc.size(1), blocks = batch * shape.heads;
  const int q = scan_chunk(shape, scan_bwd_floats, /*two_per_sm=*/false, op);
  ScanArgs s = scan_args(xbc, dt, dt_bias, a_log, d, shape, mask, q, op);
  s.vec4 = s.vec4 && vec4_rows(dy);
  const int64_t chunks = (seq + q - 1) / q, bc_width = 2 * shape.groups * shape.state;
  Tensor states = Tensor::empty({blocks, chunks, shape.head_dim, shape.state}, DType::kF32, Device::kCUDA,
                                "ssd_scan chunk states");
  Tensor d_bc = Tensor::zeros({batch * seq, bc_width}, DType::kF32, Device::kCUDA, "ssd_scan B/C gradients");
  Tensor head_sums = Tensor::empty({blocks, 3}, DType::kF32, Device::kCUDA, "ssd_scan per-head sums");
  launch_scan(s.xbc.bf16 ? ssd_scan_fwd_kernel<true, true> : ssd_scan_fwd_kernel<true, false>, blocks,
              scan_states_floats(shape.head_dim, shape.state, q), s, FloatRef{nullptr, false}, states.data<float>());
  const ScanGradOut out{float_ref(dy, op, "dy"), float_ref(grads.d_xbc, op, "d_xbc"), float_ref(grads.d_dt, op, "d_dt"),
                        d_bc.data<float>(), head_sums.data<float>()};
  launch_scan(s.xbc.bf16 ? ssd_scan_bwd_kernel<true> : ssd_scan_bwd_kernel<false>, blocks,
              scan_bwd_floats(shape.head_dim, shape.state, q), s,
              static_cast<const float*>(states.data<float>()), out);
  store_bc_kernel<<<grid_for(d_bc.numel(), kThreads), kThreads, 0, current_stream()>>>(
      d_bc.data<float>(), out.d_xbc, batch * seq, bc_width, xbc.size(2));
  MF_CUDA_CHECK_LAUNCH();
  add_head_sums_kernel<<<grid_for(shape.heads, kThreads), kThreads, 0, current_stream()>>>(
      head_sums.data<float>(), batch, shape.heads, float_ref(grad_dt_bias, op, "grad_dt_bias"),
      float_ref(grad_a_log, op, "grad_a_log"), float_ref(grad_d, op, "grad_d"));
  MF_CUDA_CHECK_LAUNCH();
}

void gated_rms_norm_fwd(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size, float eps,
                        Tensor& out, Tensor& rstd) {
  const char* op = "gated_rms_norm_fwd";
  if (y.numel() == 0) return;
  check_dtype(rstd, DType::kF32, op, "rstd");
  const GatedNormArgs a = gated_norm_args(y, z, w, group_size, op);
  const unsigned grid = grid_for(rstd.numel(), kWarps);
  const FloatRef o = float_ref(out, op, "out");
  const bool vec4 = gated_norm_vec4(group_size, {&y, &z, &w, &out});
  if (vec4 && group_size == 512)
    gated_norm_fwd_regs_kernel<4><<<grid, kThreads, 0, current_stream()>>>(a, eps, o, rstd.data<float>());
  else if (vec4)
    gated_norm_fwd_kernel<4><<<grid, kThreads, 0, current_stream()>>>(a, eps, o, rstd.data<float>());
  else
    gated_norm_fwd_kernel<1><<<grid, kThreads, 0, current_stream()>>>(a, eps, o, rstd.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void gated_rms_norm_bwd(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size,
                        const Tensor& rstd, GatedRmsNormGrads& grads, Tensor& grad_w) {
  const char* op = "gated_rms_norm_bwd";
  if (y.numel() == 0) return;
  check_dtype(rstd, DType::kF32, op, "rstd");
  const WeightGradSum w_sum(grad_w, op);
  const size_t shared = static_cast<size_t>(y.size(1)) * sizeof(float);
  auto launch = [&](auto kernel) {
    allow_shared(kernel, shared);
    kernel<<<grid_for(rstd.numel(), kWarps, 4 * sm_count()), kThreads, shared, current_stream()>>>(
        gated_norm_args(y, z, w, group_size, op), float_ref(dout, op, "dout"), rstd.data<float>(),
        float_ref(grads.dy, op, "dy"), float_ref(grads.dz, op, "dz"), w_sum.sum);
  };
  const bool vec4 = gated_norm_vec4(group_size, {&dout, &y, &z, &w, &grads.dy, &grads.dz});
  if (vec4 && group_size == 512)
    launch(gated_norm_bwd_regs_kernel<4>);
  else if (vec4)
    launch(gated_norm_bwd_kernel<4>);
  else
    launch(gated_norm_bwd_kernel<1>);
  MF_CUDA_CHECK_LAUNCH();
  w_sum.finish();
}

}  // namespace moeforge::ops::cuda
