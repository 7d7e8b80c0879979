// Nemotron-H's Mamba-2 pieces on CUDA (ops/mamba.h), with about fp32's precision throughout.
//
// The causal convolution: a thread per 8 (forward) or 4 (backward) channels walks a tile of rows
// with the last K rows' inputs in registers, loading one row ahead, 16 or 8 bytes a load on bf16
// rows; the backward also keeps the dx sums still open and adds its weight gradient into fp32 sums
// once per tile.
//
// The SSD scan in its chunked form (Mamba-2's state-space duality): one block per (sequence, head)
// walks the sequence in chunks of Q rows with the head's state H [P, N] on chip. With cum_i the
// running sum of A dt over the chunk (inclusive) and L_ij = exp(cum_i - cum_j), a chunk is
//   y_i = sum_{j<=i} (C_i . B_j) L_ij dt_j x_j + exp(cum_i) H C_i + D x_i
//   H  <- exp(cum_last) H + sum_j L_last,j dt_j x_j B_j^T
// and a document starting at row s cuts every term that reaches across it: L_ij = 0 for j < s <= i,
// and rows from s on see nothing of H. These are small matrix products over the chunk; they run on
// the bf16 tensor cores (mma_bf16.cuh), fp32 operands split in two bf16 parts, which keeps 16 bits of
// their mantissa: the gradients of A_log and dt_bias are sums over every token that nearly cancel,
// and one bf16 rounding of W, H or dL/dH would show in them. The backward walks the chunks in
// reverse, carrying dL/dH, with each chunk's starting state from a sweep of the states alone into a
// workspace (the forward's kernel without y); B and C are shared by a group's heads, so their
// gradients are fp32 atomics into one buffer.
//
// A block has only its own chunks to overlap, so it is bound by latency: it loads a chunk while L2
// fetches the next chunk's rows (prefetch_rows), and at Nemotron 3 Nano's head two blocks share a
// multiprocessor in the forward, three in the states sweep. Mamba-2's own kernels split the scan per chunk
// instead (chunk states, a pass over the states, chunk outputs, each a product batched over every
// chunk); bench/RESULTS.md (2026-12-05) compares the rates.
//
// The gated group RMSNorm: a warp per (row, group), 4 columns a load; groups of 512 (Nemotron 3 Nano)
// held in registers, so that each tensor is read once. The weight gradient as rms_norm_bwd's.
#include <cmath>
#include <optional>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/mask_view.cuh"
#include "ops/cuda/mma_bf16.cuh"

namespace moeforge::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// The scan's backward runs twice the warps: its shared memory (174 KB at Nemotron 3 Nano's head) holds one
// block a multiprocessor, and eight warps of 255 registers issued on 30% of its cycles (H100, Nsight
// Compute, 2026-12-06), each waiting on its own products. Sixteen warps at 128 registers hide more of that.
constexpr int kBwdThreads = 512;
constexpr int kBwdWarps = kBwdThreads / 32;
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

constexpr int kChunk = 64;  // Q: the rows of a chunk, two a lane of a warp (chunk_rows)
static_assert(kChunk == 64);

struct ScanArgs {
  FloatRef xbc, dt, dt_bias, a_log, d;
  MaskView mask;
  int64_t seq, heads, head_dim, groups, state, conv_dim;
  float dt_min;
  bool vec4;  // every row the scan copies or writes starts 16-byte aligned, in whole groups of 4 (load_split_rows)
  bool vec8;  // ... and, bf16, in whole groups of 8

  __device__ __forceinline__ int64_t x_col(int64_t h) const { return h * head_dim; }
  __device__ __forceinline__ int64_t b_col(int64_t h) const {
    return heads * head_dim + h / (heads / groups) * state;
  }
  __device__ __forceinline__ int64_t c_col(int64_t h) const { return b_col(h) + groups * state; }
  __host__ __device__ __forceinline__ int64_t chunks() const { return (seq + kChunk - 1) / kChunk; }
};

// The chunk's per-row values, rows i < nq from t0: the clamped time step, the running sum of
// A dt, the row of the latest document start at or before i (-1: the document began before the
// chunk) and, where asked, d dt / d raw (0 where clamped). Ends with a barrier. kChunk rows: the
// running values are a warp's scans over two rows a lane.
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
  if (threadIdx.x < 32) {  // prefix sums of A dt and prefix maxima of the starts, rows lane and lane + 32
    const int lane = threadIdx.x;
    float run[2];
    int start[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = lane + 32 * half;
      run[half] = i < nq ? A * dt[i] : 0.0f;
      start[half] = i < nq ? first[i] : -1;
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const float r = __shfl_up_sync(0xffffffffu, run[half], d);
        const int f = __shfl_up_sync(0xffffffffu, start[half], d);
        if (lane >= d) run[half] += r, start[half] = max(start[half], f);
      }
    }
    run[1] += __shfl_sync(0xffffffffu, run[0], 31);
    start[1] = max(start[1], __shfl_sync(0xffffffffu, start[0], 31));
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = lane + 32 * half;
      if (i < nq) cum[i] = run[half], first[i] = start[half];
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

// Two values to i and i + 1, i even on a 16-byte aligned tensor: one 4- or 8-byte store.
__device__ __forceinline__ void store2(const FloatRef& r, int64_t i, float v0, float v1) {
  if (r.bf16)
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(r.data) + i) = __floats2bfloat162_rn(v0, v1);
  else
    *reinterpret_cast<float2*>(static_cast<float*>(r.data) + i) = make_float2(v0, v1);
}

// A flat index over rows of `width` pieces as (row, piece): a shift and a mask where width is a power of
// two (the head and state sizes of every Mamba-2 model we know), else a division, which costs about
// twenty instructions; the walks below split a chunk's rows this way several times a chunk.
struct RowSplit {
  int width, shift;
  bool pow2;
  __device__ explicit RowSplit(int w) : width(w), shift(0), pow2((w & (w - 1)) == 0) {
    if (pow2) shift = __popc(w - 1);
  }
  __device__ __forceinline__ int row(int idx) const { return pow2 ? idx >> shift : idx / width; }
  __device__ __forceinline__ int piece(int idx) const { return pow2 ? idx & (width - 1) : idx % width; }
};

// Asks L2 for rows [first, first + rows * stride) of src, cols values each, that a later chunk will
// load: its loads then wait on L2, not on memory.
__device__ void prefetch_rows(const FloatRef& src, int64_t first, int64_t stride, int rows, int cols) {
  const int bytes = src.bf16 ? 2 : 4;
  const RowSplit lines((cols * bytes + 127) / 128);
  for (int idx = threadIdx.x; idx < rows * lines.width; idx += blockDim.x) {
    const char* row = static_cast<const char*>(src.data) + (first + lines.row(idx) * stride) * bytes;
    asm volatile("prefetch.L2 [%0];" ::"l"(row + lines.piece(idx) * 128));
  }
}

// The same rows of the chunk starting at t0 (C where with_c), and its time steps, into L2 (prefetch_rows).
__device__ void prefetch_chunk_inputs(const ScanArgs& s, int64_t b, int64_t h, int64_t t0, bool with_c) {
  if (t0 < 0 || t0 >= s.seq) return;
  const int nq = static_cast<int>(s.seq - t0 < kChunk ? s.seq - t0 : kChunk);
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

// ---- the scan on the bf16 tensor cores ----
//
// One block per (sequence, head) walks its chunks of kChunk rows, with the chunk's products on
// mma.sync m16n8k16 (mma_bf16.cuh): x, B and C of a bf16 model are bf16 already, and the fp32 values
// a product reads (dy, W, the states, x or dy scaled per row) are stored split in two bf16 parts. The
// carried state (H forward, dL/dH backward) stays fp32 in the registers of the warps that update it:
// warp w holds its 16 x 32 tiles w, w + 8, ... (kHTiles of them), and after each update writes their
// split copy to shared memory for the next chunk's products. P and N are padded to multiples of 32
// with zeros.

__host__ __device__ inline int round_up_32(int64_t v) { return static_cast<int>((v + 31) / 32 * 32); }

// Strides (bf16 elements) and sizes of the shared arrays: rows of x-like [Q][Pp], state-like [Pp][Np],
// B/C-like [Q][Np] and chunk-square [Q][Q] values, each row padded by mma::kPad.
struct ScanLayout {
  int pp, np, p_stride, n_stride, q_stride;
  bool exact;  // x, B and C are bf16: no lo parts

  __host__ __device__ ScanLayout(int64_t P, int64_t N, bool exact_inputs)
      : pp(round_up_32(P)), np(round_up_32(N)), p_stride(pp + mma::kPad), n_stride(np + mma::kPad),
        q_stride(kChunk + mma::kPad), exact(exact_inputs) {}
  __host__ __device__ int64_t rows_p() const { return int64_t(kChunk) * p_stride; }
  __host__ __device__ int64_t rows_n() const { return int64_t(kChunk) * n_stride; }
  __host__ __device__ int64_t state() const { return int64_t(pp) * n_stride; }
  __host__ __device__ int64_t square() const { return int64_t(kChunk) * q_stride; }
  __host__ __device__ int64_t inputs() const { return (exact ? 1 : 2) * (rows_p() + 2 * rows_n()); }
  // The forward: x, B, C; the state's split copy; a scratch pair of [Q][max(Q, Pp)] (W, then x scaled
  // by the end weights); per row dt, cum, E, the end weights and first.
  __host__ __device__ int64_t scratch() const { return int64_t(kChunk) * ((pp > kChunk ? pp : kChunk) + mma::kPad); }
  __host__ __device__ int64_t fwd_bytes() const {
    return 2 * (inputs() + 2 * state() + 2 * scratch()) + int64_t(kChunk) * 5 * 4;
  }
  // The backward's sweep of the states: the forward's arrays without C and the state's split copy.
  __host__ __device__ int64_t sweep_bytes() const {
    return 2 * ((exact ? 1 : 2) * (rows_p() + rows_n()) + 2 * scratch()) + int64_t(kChunk) * 5 * 4;
  }
  // The backward: x, B, C; dy, H, dL/dH, GL (then LDX dt) and x dt (then E dy) split; kRowValues values
  // and kRowSums partial sums per row and column tile of the head's channels.
  __host__ __device__ int64_t bwd_bytes() const;
  __host__ __device__ int h_tiles() const { return pp / 16 * (np / 32); }
};
constexpr int kRowValues = 10, kRowSums = 5;
__host__ __device__ inline int64_t ScanLayout::bwd_bytes() const {
  return 2 * (inputs() + 2 * (2 * rows_p() + 2 * state() + square())) +
         int64_t(kChunk) * (kRowValues + kRowSums * (pp / 32)) * 4;
}

// Rows [0, rows) of `cols` values from `first` (row stride `stride`) into dst's first `padded_rows`
// rows of `padded` columns, zeros elsewhere; the caller checks alignment for vec. vec 8: bf16 rows,
// 16 bytes a cp.async, so that every copy of a chunk is in flight at once (the caller waits:
// wait_async_copies, then a barrier). vec 4: 4 values a load, kBatch loads in flight a thread, then
// split. vec 1: a value at a time.
__device__ void load_split_rows(const FloatRef& src, int64_t first, int64_t stride, int rows, int padded_rows,
                                int cols, int padded, int vec, const mma::Split& dst) {
  if (vec == 8) {
    const auto* base = static_cast<const __nv_bfloat16*>(src.data);
    const RowSplit per_row(padded / 8);
    for (int idx = threadIdx.x; idx < padded_rows * per_row.width; idx += blockDim.x) {
      const int i = per_row.row(idx), c = per_row.piece(idx) * 8;
      const bool valid = i < rows && c < cols;
      copy_async16_or_zero(dst.hi + i * dst.stride + c, valid ? base + first + i * stride + c : base, valid);
    }
  } else if (vec == 4) {
    constexpr int kBatch = 4;
    const RowSplit per_row(padded / 4);
    const int total = padded_rows * per_row.width;
    for (int start = threadIdx.x; start < total; start += kBatch * blockDim.x) {
      float4 v[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int idx = start + k * blockDim.x, i = per_row.row(idx), c = per_row.piece(idx) * 4;
        v[k] = idx < total && i < rows && c < cols ? load4(src, first + i * stride + c)
                                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int idx = start + k * blockDim.x, i = per_row.row(idx), c = per_row.piece(idx) * 4;
        if (idx >= total) break;
        mma::store_split2(dst, i, c, v[k].x, v[k].y);
        mma::store_split2(dst, i, c + 2, v[k].z, v[k].w);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < padded_rows * padded; idx += blockDim.x) {
      const int i = idx / padded, c = idx % padded;
      mma::store_split(dst, i, c, i < rows && c < cols ? src.load(first + i * stride + c) : 0.0f);
    }
  }
}

// Rows [t0, t0 + nq) of the chunk's x, B and C (C where cs is given) into shared memory.
__device__ void load_chunk_inputs(const ScanArgs& s, const ScanLayout& l, int64_t b, int64_t h, int64_t t0, int nq,
                               const mma::Split& xs, const mma::Split& bs, const mma::Split* cs) {
  const int64_t row = (b * s.seq + t0) * s.conv_dim;
  const int vec = s.vec8 ? 8 : s.vec4 && !s.xbc.bf16 ? 4 : 1;
  const int P = static_cast<int>(s.head_dim), N = static_cast<int>(s.state);
  load_split_rows(s.xbc, row + s.x_col(h), s.conv_dim, nq, kChunk, P, l.pp, vec, xs);
  load_split_rows(s.xbc, row + s.b_col(h), s.conv_dim, nq, kChunk, N, l.np, vec, bs);
  if (cs != nullptr) load_split_rows(s.xbc, row + s.c_col(h), s.conv_dim, nq, kChunk, N, l.np, vec, *cs);
}

// Carves a kernel's shared memory into arrays, in order.
struct SharedCarver {
  unsigned char* next;

  __device__ mma::Split split(int64_t elements, bool with_lo, int stride) {
    __nv_bfloat16* hi = reinterpret_cast<__nv_bfloat16*>(next);
    next += elements * 2;
    __nv_bfloat16* lo = nullptr;
    if (with_lo) lo = reinterpret_cast<__nv_bfloat16*>(next), next += elements * 2;
    return {hi, lo, stride};
  }
  __device__ float* floats(int64_t n) {
    float* p = reinterpret_cast<float*>(next);
    next += n * 4;
    return p;
  }
};

// Calls f(k, row0, col0) for each of the warp's tiles of a carried [Pp][Np] state (kHTiles at most):
// tiles w, w + warps, ... of the block's warps.
template <int kHTiles, class F>
__device__ __forceinline__ void for_each_state_tile(const ScanLayout& l, F f) {
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5, col_tiles = l.np / 32;
#pragma unroll
  for (int k = 0; k < kHTiles; ++k) {
    const int t = warp + warps * k;
    if (t >= l.h_tiles()) break;
    f(k, t / col_tiles * 16, t % col_tiles * 32);
  }
}

// Calls f(k, n, i, at) for each entry of the warp's state tiles inside [P][N], at = row * N + column.
template <int kHTiles, class F>
__device__ __forceinline__ void for_each_state_entry(const ScanLayout& l, int P, int N, F f) {
  for_each_state_tile<kHTiles>(l, [&](int k, int row0, int col0) {
    mma::for_each_entry(row0, col0, [&](int n, int i, mma::Entry e) {
      if (e.row < P && e.col < N) f(k, n, i, e.row * N + e.col);
    });
  });
}

// The carried state's tile k: scaled by `carry`, then acc += a^T b over the chunk's rows (a [Q][Pp] and
// b [Q][Np] as stored), then (kCopy) its split copy into shared memory.
template <int kHTiles, bool kCopy = true>
__device__ __forceinline__ void update_state(float (&state)[kHTiles][4][4], const ScanLayout& l, float carry,
                                             const mma::Split& a, const mma::Split& b, const mma::Split& copy) {
  for_each_state_tile<kHTiles>(l, [&](int k, int row0, int col0) {
    mma::for_each_entry(row0, col0, [&](int n, int i, mma::Entry) { state[k][n][i] *= carry; });
    mma::product<true, true>(state[k], a, b, row0, col0, kChunk);
    if constexpr (kCopy)
      mma::for_each_entry_pair(row0, col0, [&](int n, int i, mma::Entry e) {
        mma::store_split2(copy, e.row, e.col, state[k][n][i], state[k][n][i + 1]);
      });
  });
}

// L_ij for rows i, j and j + 1 of the chunk's nq rows (decay_between; zero outside them).
struct ChunkDecays {
  int nq;
  const float* cum;
  const int* first;
  // A table of every L_ij of the chunk ([kChunk][kDecayStride] fp32), or null: each computed when asked.
  float* table;

  __device__ __forceinline__ float at(int i, int j) const {
    return i < nq && j < nq ? decay_between(cum, first, i, j) : 0.0f;
  }
  __device__ __forceinline__ float2 pair(int i, int j) const;
  __device__ __forceinline__ void fill_table() const;
};
// The backward's chunk squares (GL, then LDX dt) read every L_ij twice, each an exp of a difference,
// eight warps computing it while the other eight wait at the barrier: a table, filled once a chunk by
// all sixteen, holds them where shared memory allows. Rows padded so that a half-warp's 8-byte reads of
// a warp tile fall in different banks. Measured (bench/RESULTS.md, 2026-12-06, H100 and H200): the
// backward 1.5-2% faster, far less than the instructions it removes, as the phases' chain of barriers
// and dependent products sets the pace.
constexpr int kDecayStride = kChunk + 8;
constexpr int64_t kDecayTableBytes = int64_t(kChunk) * kDecayStride * 4;

__device__ __forceinline__ float2 ChunkDecays::pair(int i, int j) const {
  if (table != nullptr) return *reinterpret_cast<const float2*>(table + i * kDecayStride + j);
  return {at(i, j), at(i, j + 1)};
}

// Fills the table (when there is one) for the chunk; the caller's barrier follows.
__device__ __forceinline__ void ChunkDecays::fill_table() const {
  if (table == nullptr) return;
  for (int idx = threadIdx.x; idx < kChunk * kChunk; idx += blockDim.x) {
    const int i = idx / kChunk, j = idx % kChunk;
    table[i * kDecayStride + j] = at(i, j);
  }
}

// A chunk-square [Q][Q] product into `out` (split): product(acc, row0, col0) fills each warp tile,
// entry(v, L_ij, j) gives the stored value.
template <class Product, class Entry>
__device__ __forceinline__ void square_tiles(const ChunkDecays& decays, Product product, Entry entry,
                                             const mma::Split& out) {
  for (int t = threadIdx.x >> 5; t < kChunk / 16 * (kChunk / 32); t += blockDim.x >> 5) {
    const int row0 = t / (kChunk / 32) * 16, col0 = t % (kChunk / 32) * 32;
    mma::Acc acc = {};
    product(acc, row0, col0);
    mma::for_each_entry_pair(row0, col0, [&](int n, int i, mma::Entry e) {
      const float2 l = decays.pair(e.row, e.col);
      mma::store_split2(out, e.row, e.col, entry(acc[n][i], l.x, e.col), entry(acc[n][i + 1], l.y, e.col + 1));
    });
  }
}

// dst[j] = scale(j) * src[j] for the chunk's kChunk rows of `cols` (even) values: a warp a row, two
// values a lane.
template <class Scale>
__device__ __forceinline__ void scale_rows(const mma::Split& src, const mma::Split& dst, int cols, Scale scale) {
  const int lane = threadIdx.x & 31;
  for (int j = threadIdx.x >> 5; j < kChunk; j += blockDim.x >> 5) {
    const float k = scale(j);
    for (int p = 2 * lane; p < cols; p += 64) {
      const float2 v = mma::load_split2(src, j, p);
      mma::store_split2(dst, j, p, k * v.x, k * v.y);
    }
  }
}

// The forward's y; or, kStates (the backward's sweep), each chunk's starting state into states
// [B * heads][chunks][P][N] (the backward's workspace) and no y: then C and the state's split copy are
// neither loaded nor kept (ScanLayout::sweep_bytes()), and three blocks share a multiprocessor where the
// state is two tiles a warp (no measurable change against two on an H100, 2026-12-06).
template <bool kExact, int kHTiles, bool kStates>
__global__ void __launch_bounds__(kThreads, kHTiles > 2 ? 1 : kStates ? 3 : 2)
    ssd_scan_fwd_kernel(ScanArgs s, FloatRef y, float* states) {
  extern __shared__ __align__(16) unsigned char scan_smem[];
  const int64_t b = blockIdx.x / s.heads, h = blockIdx.x % s.heads;
  const int P = static_cast<int>(s.head_dim), N = static_cast<int>(s.state);
  const ScanLayout l(P, N, kExact);
  SharedCarver carve{scan_smem};
  const mma::Split xs = carve.split(l.rows_p(), !kExact, l.p_stride), bs = carve.split(l.rows_n(), !kExact, l.n_stride);
  mma::Split cs{}, hs{};
  if constexpr (!kStates) {
    cs = carve.split(l.rows_n(), !kExact, l.n_stride);
    hs = carve.split(l.state(), true, l.n_stride);
  }
  const mma::Split scratch = carve.split(l.scratch(), true, (l.pp > kChunk ? l.pp : kChunk) + mma::kPad);
  float* dt = carve.floats(kChunk);
  float* cum = carve.floats(kChunk);
  float* E = carve.floats(kChunk);
  float* wend = carve.floats(kChunk);
  int* first = reinterpret_cast<int*>(carve.floats(kChunk));
  const float A = -expf(s.a_log.load(h)), dskip = s.d.load(h);
  const int warp = threadIdx.x >> 5, y_col_tiles = l.pp / 32;
  float hreg[kHTiles][4][4] = {};  // the state H, fp32
  if constexpr (!kStates)
    for (int i = threadIdx.x; i < l.state(); i += blockDim.x) hs.hi[i] = hs.lo[i] = __float2bfloat16_rn(0.0f);
  for (int64_t t0 = 0, c = 0; t0 < s.seq; t0 += kChunk, ++c) {
    const int nq = static_cast<int>(s.seq - t0 < kChunk ? s.seq - t0 : kChunk), last = nq - 1;
    __syncthreads();  // the previous chunk is done with the shared rows
    load_chunk_inputs(s, l, b, h, t0, nq, xs, bs, kStates ? nullptr : &cs);
    prefetch_chunk_inputs(s, b, h, t0 + kChunk, !kStates);
    wait_async_copies();
    chunk_rows(s, b, h, t0, nq, A, dt, cum, first, nullptr);
    for (int i = threadIdx.x; i < kChunk; i += blockDim.x) {
      E[i] = i < nq && first[i] < 0 ? expf(cum[i]) : 0.0f;
      wend[i] = i < nq ? decay_between(cum, first, last, i) * dt[i] : 0.0f;
    }
    if constexpr (kStates) {
      float* out = states + ((b * s.heads + h) * s.chunks() + c) * P * N;
      for_each_state_entry<kHTiles>(l, P, N, [&](int k, int n, int i, int at) { out[at] = hreg[k][n][i]; });
    }
    __syncthreads();
    if constexpr (!kStates) {
      // W_ij = (C_i . B_j) L_ij dt_j, split into the scratch pair
      square_tiles(ChunkDecays{nq, cum, first, nullptr}, [&](mma::Acc& acc, int row0, int col0) {
        mma::product<false, false>(acc, cs, bs, row0, col0, l.np);
      }, [&](float v, float decay, int j) { return decay == 0.0f ? 0.0f : v * decay * dt[j]; }, scratch);
      __syncthreads();
      // y_i = D x_i + sum_j W_ij x_j + E_i H C_i
      for (int t = warp; t < kChunk / 16 * y_col_tiles; t += kWarps) {
        const int row0 = t / y_col_tiles * 16, col0 = t % y_col_tiles * 32;
        mma::Acc intra = {}, carried = {};
        mma::product<false, true>(intra, scratch, xs, row0, col0, kChunk);
        if (c > 0) mma::product<false, false>(carried, cs, hs, row0, col0, l.np);
        mma::for_each_entry(row0, col0, [&](int n, int i, mma::Entry e) {
          if (e.row < nq && e.col < P)
            y.store((b * s.seq + t0 + e.row) * s.heads * P + s.x_col(h) + e.col,
                    dskip * mma::load_split(xs, e.row, e.col) + intra[n][i] + E[e.row] * carried[n][i]);
        });
      }
      __syncthreads();  // W and the state's split copy are read
    }
    // x_j w_j (the end weights L_last,j dt_j), split into the scratch pair
    scale_rows(xs, scratch, l.pp, [&](int j) { return wend[j]; });
    __syncthreads();
    // H <- exp(cum_last) H + sum_j w_j x_j B_j^T (no carry across a document start)
    update_state<kHTiles, !kStates>(hreg, l, first[last] < 0 ? expf(cum[last]) : 0.0f, scratch, bs, hs);
  }
}

struct ScanGradOut {
  FloatRef dy, d_xbc, d_dt;
  float* d_bc;       // [B * T, 2 * groups * state] fp32, zeroed: the B and C columns' gradients
  float* head_sums;  // [B * heads, 3]: d dt_bias, d a_log, d D of each (sequence, head)
};

// dst += scale(row) src over a warp tile at (row0, col0).
template <class Scale>
__device__ __forceinline__ void add_scaled_rows(mma::Acc& dst, const mma::Acc& src, int row0, int col0, Scale scale) {
  mma::for_each_entry(row0, col0, [&](int n, int i, mma::Entry e) { dst[n][i] += scale(e.row) * src[n][i]; });
}
__device__ __forceinline__ void zero(mma::Acc& acc) {
  mma::for_each_entry(0, 0, [&](int n, int i, mma::Entry) { acc[n][i] = 0.0f; });
}

// The sum of v over this lane and the lanes above it.
__device__ __forceinline__ float suffix_sum(float v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const float above = __shfl_down_sync(0xffffffffu, v, d);
    if (lane + d < 32) v += above;
  }
  return v;
}

// Sums over the 32 columns of a warp's tile, for each of its rows: partial[row] = the sum of
// value(n, i, row, col) over the tile's entries. One writer per slot.
template <class Value>
__device__ __forceinline__ void tile_row_sums(int row0, int col0, float* partial, Value value) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float part = 0.0f;
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const mma::Entry e = mma::entry(row0, col0, n, 2 * half + j);
        part += value(n, 2 * half + j, e.row, e.col);
      }
    part += __shfl_xor_sync(0xffffffffu, part, 1);
    part += __shfl_xor_sync(0xffffffffu, part, 2);
    if ((lane & 3) == 0) partial[row0 + (lane >> 2) + 8 * half] = part;
  }
}

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
// The chunks run in reverse; each starts from its state in `states` (ssd_scan_fwd_kernel's sweep).
// decay_table: shared memory holds a table of the chunk's L_ij too (kDecayTableBytes past bwd_bytes()).
template <bool kExact, int kHTiles>
__global__ void __launch_bounds__(kBwdThreads, 1)
    ssd_scan_bwd_kernel(ScanArgs s, const float* states, ScanGradOut g, bool decay_table) {
  extern __shared__ __align__(16) unsigned char scan_smem[];
  __shared__ float hh_sums[kBwdWarps];
  const int64_t b = blockIdx.x / s.heads, h = blockIdx.x % s.heads;
  const int P = static_cast<int>(s.head_dim), N = static_cast<int>(s.state);
  const ScanLayout l(P, N, kExact);
  SharedCarver carve{scan_smem};
  const mma::Split xs = carve.split(l.rows_p(), !kExact, l.p_stride), bs = carve.split(l.rows_n(), !kExact, l.n_stride),
                   cs = carve.split(l.rows_n(), !kExact, l.n_stride), dys = carve.split(l.rows_p(), true, l.p_stride),
                   hs = carve.split(l.state(), true, l.n_stride), dhs = carve.split(l.state(), true, l.n_stride),
                   square = carve.split(l.square(), true, l.q_stride),  // GL, then LDX dt
                   scaled = carve.split(l.rows_p(), true, l.p_stride);  // x dt, then E dy
  float* dt = carve.floats(kChunk);
  float* cum = carve.floats(kChunk);
  float* dt_grad = carve.floats(kChunk);
  float* E = carve.floats(kChunk);
  float* wend = carve.floats(kChunk);
  float* ddt = carve.floats(kChunk);  // d dt_j as a factor
  float* dcum = carve.floats(kChunk);
  float* tend = carve.floats(kChunk);  // T_j = w_j dt_j x_j . dH B_j
  float* dy_x = carve.floats(kChunk);  // dy_j . x_j
  int* first = reinterpret_cast<int*>(carve.floats(kChunk));
  // Row sums over the head's channels, one partial sum per column tile: x . intra, x . dH B,
  // dy . y_intra, dy . H C and dy . x.
  const int col_tiles = l.pp / 32;
  float* partials = carve.floats(int64_t(kChunk) * kRowSums * col_tiles);
  float* table = decay_table ? carve.floats(int64_t(kChunk) * kDecayStride) : nullptr;
  auto row_sum = [&](int which, int r) {
    float sum = 0.0f;
    for (int ct = 0; ct < col_tiles; ++ct) sum += partials[(which * col_tiles + ct) * kChunk + r];
    return sum;
  };
  const float A = -expf(s.a_log.load(h)), dskip = s.d.load(h);
  const int64_t width = s.heads * P, bc_width = 2 * s.groups * N;
  const int64_t group_bc = h / (s.heads / s.groups) * N;
  const FloatRef state_ref{const_cast<float*>(states), false};
  const int warp = threadIdx.x >> 5;
  constexpr int kHalfWarps = kBwdWarps / 2;
  const bool second_half = warp >= kHalfWarps;
  const int dy_vec = s.vec4 ? 4 : 1;
  float dh[kHTiles][4][4] = {};  // dL/dH at the chunk's end, fp32
  for (int i = threadIdx.x; i < l.state(); i += blockDim.x) dhs.hi[i] = dhs.lo[i] = __float2bfloat16_rn(0.0f);
  float sum_bias = 0.0f, sum_dA = 0.0f, sum_d = 0.0f;  // warp 0's, a lane's rows
  for (int64_t c = s.chunks() - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk;
    const int nq = static_cast<int>(s.seq - t0 < kChunk ? s.seq - t0 : kChunk), last = nq - 1;
    __syncthreads();  // the previous chunk is done with the shared rows
    const int64_t state_at = ((b * s.heads + h) * s.chunks() + c) * P * N;
    load_chunk_inputs(s, l, b, h, t0, nq, xs, bs, &cs);
    load_split_rows(g.dy, (b * s.seq + t0) * width + s.x_col(h), width, nq, kChunk, P, l.pp, dy_vec, dys);
    load_split_rows(state_ref, state_at, N, P, l.pp, N, l.np, s.vec4 ? 4 : 1, hs);
    {  // <dH, H>, the carried state's share of d cum_last, from the state just loaded (L1): each warp's
       // sum into hh_sums now, their total where warp 0 needs it, after the chunk's last barrier
      float hh = 0.0f;
      for_each_state_entry<kHTiles>(l, P, N,
                                    [&](int k, int n, int i, int at) { hh += dh[k][n][i] * states[state_at + at]; });
      hh = warp_sum(hh);
      if ((threadIdx.x & 31) == 0) hh_sums[warp] = hh;
    }
    if (c > 0) {  // the chunk before, next
      prefetch_chunk_inputs(s, b, h, t0 - kChunk, true);
      prefetch_rows(g.dy, (b * s.seq + t0 - kChunk) * width + s.x_col(h), width, kChunk, P);
      prefetch_rows(state_ref, state_at - P * N, N, P, N);
    }
    wait_async_copies();
    chunk_rows(s, b, h, t0, nq, A, dt, cum, first, dt_grad);
    for (int i = threadIdx.x; i < kChunk; i += blockDim.x) {
      E[i] = i < nq && first[i] < 0 ? expf(cum[i]) : 0.0f;
      wend[i] = i < nq ? decay_between(cum, first, last, i) : 0.0f;
    }
    const ChunkDecays decays{nq, cum, first, table};
    decays.fill_table();
    __syncthreads();
    // GL_ij = G_ij L_ij into the square pair; x_j dt_j.
    square_tiles(decays, [&](mma::Acc& acc, int row0, int col0) {
      mma::product<false, false>(acc, cs, bs, row0, col0, l.np);
    }, [&](float v, float decay, int) { return v * decay; }, square);
    scale_rows(xs, scaled, l.pp, [&](int j) { return j < nq ? dt[j] : 0.0f; });
    __syncthreads();
    // Row r's channels, with v_r = dH B_r, hc_r = H C_r, intra_r = sum_i G_ir L_ir dy_i and
    // y_intra_r = sum_j G_rj L_rj dt_j x_j: the first half of the warps makes the x columns of d_xbc
    // (from intra and v) and those two row sums, the second half the row sums of y_intra, hc and dy . x.
    for (int t = warp % kHalfWarps; t < kChunk / 16 * col_tiles; t += kHalfWarps) {
      const int row0 = t / col_tiles * 16, ct = t % col_tiles, col0 = ct * 32;
      // One product at a time, each consumed at once.
      auto x_at = [&](int r, int p) { return mma::load_split(xs, r, p); };
      auto dy_at = [&](int r, int p) { return mma::load_split(dys, r, p); };
      auto sums = [&](int which) { return partials + (which * col_tiles + ct) * kChunk; };
      mma::Acc acc = {};
      if (second_half) {
        mma::product<false, true>(acc, square, scaled, row0, col0, kChunk);  // y_intra
        tile_row_sums(row0, col0, sums(2), [&](int n, int i, int r, int p) { return dy_at(r, p) * acc[n][i]; });
        zero(acc);
        mma::product<false, false>(acc, cs, hs, row0, col0, l.np);  // hc
        tile_row_sums(row0, col0, sums(3), [&](int n, int i, int r, int p) { return dy_at(r, p) * acc[n][i]; });
        tile_row_sums(row0, col0, sums(4), [&](int, int, int r, int p) { return dy_at(r, p) * x_at(r, p); });
        continue;
      }
      mma::Acc dx = {};
      mma::product<true, true>(acc, square, dys, row0, col0, kChunk);  // intra
      tile_row_sums(row0, col0, sums(0), [&](int n, int i, int r, int p) { return x_at(r, p) * acc[n][i]; });
      add_scaled_rows(dx, acc, row0, col0, [&](int r) { return dt[r]; });
      zero(acc);
      mma::product<false, false>(acc, bs, dhs, row0, col0, l.np);  // v
      tile_row_sums(row0, col0, sums(1), [&](int n, int i, int r, int p) { return x_at(r, p) * acc[n][i]; });
      add_scaled_rows(dx, acc, row0, col0, [&](int r) { return wend[r] * dt[r]; });
      auto d_xbc_at = [&](int r, int p) { return (b * s.seq + t0 + r) * s.conv_dim + s.x_col(h) + p; };
      if (s.vec4) {  // P a multiple of 4: a lane's two adjacent columns in one store
        mma::for_each_entry_pair(row0, col0, [&](int n, int i, mma::Entry e) {
          if (e.row >= nq || e.col >= P) return;
          const float2 d = mma::load_split2(dys, e.row, e.col);
          store2(g.d_xbc, d_xbc_at(e.row, e.col), dskip * d.x + dx[n][i], dskip * d.y + dx[n][i + 1]);
        });
      } else {
        mma::for_each_entry(row0, col0, [&](int n, int i, mma::Entry e) {
          if (e.row < nq && e.col < P) g.d_xbc.store(d_xbc_at(e.row, e.col), dskip * dy_at(e.row, e.col) + dx[n][i]);
        });
      }
    }
    __syncthreads();
    for (int r = threadIdx.x; r < kChunk; r += blockDim.x) {
      if (r >= nq) {
        tend[r] = 0.0f;
        continue;
      }
      const float x_intra = row_sum(0, r), x_state = row_sum(1, r), dy_y = row_sum(2, r), dy_hc = row_sum(3, r);
      ddt[r] = x_intra + wend[r] * x_state;
      tend[r] = wend[r] * dt[r] * x_state;
      dcum[r] = dy_y - dt[r] * x_intra + E[r] * dy_hc - tend[r];
      dy_x[r] = row_sum(4, r);
    }
    // E_i dy_i (for the state's gradient) in place of x dt, and (L DX)_ij dt_j in place of GL, both read above.
    scale_rows(dys, scaled, l.pp, [&](int i) { return E[i]; });
    square_tiles(decays, [&](mma::Acc& acc, int row0, int col0) {
      mma::product<false, false>(acc, dys, xs, row0, col0, l.pp);
    }, [&](float v, float decay, int j) { return decay == 0.0f ? 0.0f : v * decay * dt[j]; }, square);
    __syncthreads();
    // B and C: the group's heads add into d_bc, dB from the first half of the warps, dC from the second.
    // The dt_r of dB_r is in LDX dt already.
    for (int t = warp % kHalfWarps; t < kChunk / 16 * (l.np / 32); t += kHalfWarps) {
      const int row0 = t / (l.np / 32) * 16, col0 = t % (l.np / 32) * 32;
      mma::Acc grad = {}, acc = {};
      if (second_half) {
        mma::product<false, true>(grad, square, bs, row0, col0, kChunk);
        mma::product<false, true>(acc, dys, hs, row0, col0, l.pp);  // the state's share of dC
        add_scaled_rows(grad, acc, row0, col0, [&](int r) { return E[r]; });
      } else {
        mma::product<true, true>(grad, square, cs, row0, col0, kChunk);
        mma::product<false, true>(acc, xs, dhs, row0, col0, l.pp);  // the state's share of dB
        add_scaled_rows(grad, acc, row0, col0, [&](int r) { return wend[r] * dt[r]; });
      }
      // A lane's two entries of a row are adjacent columns: one 8-byte atomic where N is even.
      mma::for_each_entry_pair(row0, col0, [&](int n, int i, mma::Entry e) {
        if (e.row >= nq || e.col >= N) return;
        float* at = g.d_bc + (b * s.seq + t0 + e.row) * bc_width + (second_half ? s.groups * N : 0) + group_bc + e.col;
        if (N % 2 == 0) {
          atomicAdd(reinterpret_cast<float2*>(at), float2{grad[n][i], grad[n][i + 1]});
        } else {
          atomicAdd(at, grad[n][i]);
          if (e.col + 1 < N) atomicAdd(at + 1, grad[n][i + 1]);
        }
      });
    }
    __syncthreads();  // the products that read dH's copy are done
    const float carry = E[last];
    if (warp == 0) {  // the chunk's rows, lane and lane + 32, from the last up
      const int lane = threadIdx.x & 31;
      const float hh = warp_sum(lane < kBwdWarps ? hh_sums[lane] : 0.0f);
      // The end-of-chunk terms go into d cum_last: every T_j and the carried state's.
      const float end = warp_sum(tend[lane] + tend[lane + 32]) + carry * hh;  // tend is 0 past nq
      auto dcum_at = [&](int k) { return k < nq ? dcum[k] + (k == last ? end : 0.0f) : 0.0f; };
      // d (A dt_k) = the sum of d cum_i over i >= k: suffix sums of the upper half, then of the lower
      const float upper = suffix_sum(dcum_at(lane + 32));
      const float lower = suffix_sum(dcum_at(lane)) + __shfl_sync(0xffffffffu, upper, 0);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int k = lane + 32 * half;
        if (k >= nq) continue;
        const float d_la = first[k] == k ? 0.0f : (half ? upper : lower);
        const float d_raw = dt_grad[k] * (ddt[k] + A * d_la);
        const int64_t t = t0 + k;
        g.d_dt.store((b * s.seq + t) * s.heads + h, s.mask.valid(b, t) ? d_raw : 0.0f);
        sum_bias += d_raw;
        sum_dA += dt[k] * d_la;
        sum_d += dy_x[k];
      }
    }
    // dH <- E_last dH + sum_i E_i dy_i C_i^T
    update_state<kHTiles>(dh, l, carry, scaled, cs, dhs);
  }
  if (warp == 0) {
    sum_bias = warp_sum(sum_bias), sum_dA = warp_sum(sum_dA), sum_d = warp_sum(sum_d);
    if (threadIdx.x == 0) {
      float* out = g.head_sums + (b * s.heads + h) * 3;
      out[0] = sum_bias;
      out[1] = sum_dA * A;  // dA / d a_log = A
      out[2] = sum_d;
    }
  }
}

// The scan's layout for a head, refused by name where its state has more than 32 tiles of 16 x 32 (four a
// warp) or its shared memory does not fit.
ScanLayout scan_layout(const SsdShape& shape, bool exact, bool backward, const char* op) {
  const ScanLayout layout(shape.head_dim, shape.state, exact);
  const int64_t limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const int64_t bytes = backward ? std::max(layout.fwd_bytes(), layout.bwd_bytes()) : layout.fwd_bytes();
  MF_CHECK(layout.h_tiles() <= 4 * kWarps && bytes <= limit, kUnsupported, op, ": a head of ", shape.head_dim,
           " channels with a state of ", shape.state, exact ? "" : " in float32",
           " is beyond the scan's kernels (a state of at most 32 tiles of 16 x 32; ", bytes,
           " bytes of shared memory where ", limit, " fit)");
  return layout;
}

// A tensor whose rows the scan may read 4 values a load: 16-byte aligned, rows a multiple of 4 long.
bool vec4_rows(const Tensor& t) { return aligned16(t) && t.size(t.dim() - 1) % 4 == 0; }

ScanArgs scan_args(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                   const SsdShape& shape, const AttentionMask& mask, const char* op) {
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
          vec4_rows(xbc) && shape.head_dim % 4 == 0 && shape.state % 4 == 0,
          xbc.dtype() == DType::kBF16 && aligned16(xbc) && xbc.size(2) % 8 == 0 && shape.head_dim % 8 == 0 &&
              shape.state % 8 == 0};
}

template <class Kernel, class... Args>
void launch_scan(Kernel kernel, int64_t blocks, int threads, int64_t shared_bytes, Args... args) {
  const size_t bytes = static_cast<size_t>(shared_bytes);
  allow_shared(kernel, bytes);
  MF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  kernel<<<static_cast<unsigned>(blocks), threads, bytes, current_stream()>>>(args...);
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
  const ScanArgs s = scan_args(xbc, dt, dt_bias, a_log, d, shape, mask, op);
  const ScanLayout layout = scan_layout(shape, s.xbc.bf16, /*backward=*/false, op);
  const bool two = layout.h_tiles() <= 2 * kWarps;
  const auto kernel = s.xbc.bf16 ? (two ? ssd_scan_fwd_kernel<true, 2, false> : ssd_scan_fwd_kernel<true, 4, false>)
                                 : (two ? ssd_scan_fwd_kernel<false, 2, false> : ssd_scan_fwd_kernel<false, 4, false>);
  launch_scan(kernel, xbc.size(0) * shape.heads, kThreads, layout.fwd_bytes(), s, float_ref(y, op, "y"),
              static_cast<float*>(nullptr));
}

void ssd_scan_bwd(const Tensor& dy, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log,
                  const Tensor& d, const SsdShape& shape, const AttentionMask& mask, SsdScanGrads& grads,
                  Tensor& grad_dt_bias, Tensor& grad_a_log, Tensor& grad_d) {
  const char* op = "ssd_scan_bwd";
  if (xbc.numel() == 0) return;
  const int64_t batch = xbc.size(0), seq = xbc.size(1), blocks = batch * shape.heads;
  ScanArgs s = scan_args(xbc, dt, dt_bias, a_log, d, shape, mask, op);
  s.vec4 = s.vec4 && vec4_rows(dy) && vec4_rows(grads.d_xbc);
  const ScanLayout layout = scan_layout(shape, s.xbc.bf16, /*backward=*/true, op);
  const int64_t bc_width = 2 * shape.groups * shape.state;
  Tensor states = Tensor::empty({blocks, s.chunks(), shape.head_dim, shape.state}, DType::kF32, Device::kCUDA,
                                "ssd_scan chunk states");
  Tensor d_bc = Tensor::zeros({batch * seq, bc_width}, DType::kF32, Device::kCUDA, "ssd_scan B/C gradients");
  Tensor head_sums = Tensor::empty({blocks, 3}, DType::kF32, Device::kCUDA, "ssd_scan per-head sums");
  const bool two = layout.h_tiles() <= 2 * kWarps;
  const auto sweep = s.xbc.bf16 ? (two ? ssd_scan_fwd_kernel<true, 2, true> : ssd_scan_fwd_kernel<true, 4, true>)
                                : (two ? ssd_scan_fwd_kernel<false, 2, true> : ssd_scan_fwd_kernel<false, 4, true>);
  launch_scan(sweep, blocks, kThreads, layout.sweep_bytes(), s, FloatRef{nullptr, false}, states.data<float>());
  const ScanGradOut out{float_ref(dy, op, "dy"), float_ref(grads.d_xbc, op, "d_xbc"), float_ref(grads.d_dt, op, "d_dt"),
                        d_bc.data<float>(), head_sums.data<float>()};
  const bool one = layout.h_tiles() <= kBwdWarps;  // the backward's state tiles a warp: one or two
  const auto kernel = s.xbc.bf16 ? (one ? ssd_scan_bwd_kernel<true, 1> : ssd_scan_bwd_kernel<true, 2>)
                                 : (one ? ssd_scan_bwd_kernel<false, 1> : ssd_scan_bwd_kernel<false, 2>);
  const bool decay_table =
      layout.bwd_bytes() + kDecayTableBytes <= device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  launch_scan(kernel, blocks, kBwdThreads, layout.bwd_bytes() + (decay_table ? kDecayTableBytes : 0), s,
              static_cast<const float*>(states.data<float>()), out, decay_table);
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
