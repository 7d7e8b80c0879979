// Causal grouped-query attention on CUDA. bf16 attention goes to cuDNN's fused SDPA
// (attention_cudnn.cpp): plain causal as it is, packed documents and padding through the mask's
// block tables (cuDNN's variable-length layout), GPT-OSS's sinks and sliding windows with all of
// these (padded queries under a window as the tail blocks below). Everything else (masks without
// blocks, such as a padding hole inside a document; fp32; other head sizes) runs the simple, exact
// kernels here: one warp per query row (and, for dK/dV, per key row) walks the keys with an online
// softmax in fp32, lanes splitting the head dimension. That is O(T^2 D) work without tensor cores:
// correct for every mask of ops.h, not fast.
#include <climits>
#include <cmath>
#include <cstdint>

#include "ops/cuda/attention_cudnn.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mask_view.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxPerLane = 8;  // head_dim <= 256

// GPT-OSS's sink logit of query head h: one more softmax term with no value; -inf without sinks.
__device__ __forceinline__ float sink_of(FloatRef sinks, int64_t h) {
  return sinks.data != nullptr ? sinks.load(h) : -INFINITY;
}

// Shapes of q [B, T, Hq, D], k [B, T, Hkv, D], v [B, T, Hkv, Dv] and out [B, T, Hq, Dv]:
// element offset of row t (or s), head h (or g), sequence b.
struct Layout {
  int64_t batch, seq, hq, hkv, d, dv;
  __device__ __forceinline__ int64_t q_at(int64_t b, int64_t t, int64_t h) const {
    return ((b * seq + t) * hq + h) * d;
  }
  __device__ __forceinline__ int64_t k_at(int64_t b, int64_t s, int64_t g) const {
    return ((b * seq + s) * hkv + g) * d;
  }
  __device__ __forceinline__ int64_t o_at(int64_t b, int64_t t, int64_t h) const {
    return ((b * seq + t) * hq + h) * dv;
  }
  __device__ __forceinline__ int64_t v_at(int64_t b, int64_t s, int64_t g) const {
    return ((b * seq + s) * hkv + g) * dv;
  }
};

// Loads row[lane + 32 i] into r[i] (zero past d).
__device__ __forceinline__ void load_row(FloatRef t, int64_t at, int64_t d, int lane,
                                         float (&r)[kMaxPerLane]) {
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int64_t j = lane + 32 * i;
    r[i] = j < d ? t.load(at + j) : 0.0f;
  }
}

__device__ __forceinline__ float dot_row(const float (&r)[kMaxPerLane], FloatRef t, int64_t at,
                                         int64_t d, int lane) {
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int64_t j = lane + 32 * i;
    if (j < d) s += r[i] * t.load(at + j);
  }
  return warp_sum(s);
}

__device__ __forceinline__ void axpy_row(float a, FloatRef t, int64_t at, int64_t d, int lane,
                                         float (&acc)[kMaxPerLane]) {
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int64_t j = lane + 32 * i;
    if (j < d) acc[i] += a * t.load(at + j);
  }
}

__device__ __forceinline__ void store_row(FloatRef t, int64_t at, int64_t d, int lane,
                                          const float (&r)[kMaxPerLane], float scale) {
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int64_t j = lane + 32 * i;
    if (j < d) t.store(at + j, r[i] * scale);
  }
}

// Query rows are numbered (b, h, t) with t fastest, the order of lse.
__global__ void attention_fwd_kernel(FloatRef q, FloatRef k, FloatRef v, FloatRef sinks, MaskView mask,
                                     Layout l, float scale, FloatRef out, float* lse) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = l.batch * l.hq * l.seq, warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const int64_t t = row % l.seq, h = (row / l.seq) % l.hq, b = row / (l.seq * l.hq);
    const int64_t g = h / (l.hq / l.hkv);
    float qr[kMaxPerLane], acc[kMaxPerLane] = {};
    load_row(q, l.q_at(b, t, h), l.d, lane, qr);
    // The sink starts the online softmax as a term of its own (exp(sink - sink) = 1, no value).
    const float sink = sink_of(sinks, h);
    float max = sink, sum = sinks.data != nullptr ? 1.0f : 0.0f;
    for (int64_t s = mask.first_key(t); s <= t; ++s) {
      if (!mask.allowed(b, t, s)) continue;
      const float score = scale * dot_row(qr, k, l.k_at(b, s, g), l.d, lane);
      const float new_max = fmaxf(max, score);
      const float rescale = expf(max - new_max), p = expf(score - new_max);
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) acc[i] *= rescale;
      sum = sum * rescale + p;
      axpy_row(p, v, l.v_at(b, s, g), l.dv, lane, acc);
      max = new_max;
    }
    // No allowed key: zeros and lse = -inf (or the sink), as the reference.
    store_row(out, l.o_at(b, t, h), l.dv, lane, acc, sum > 0.0f ? 1.0f / sum : 0.0f);
    if (lane == 0) lse[row] = sum > 0.0f ? max + logf(sum) : -INFINITY;
  }
}

// dS_ts = P_ts (dP_ts - delta_t) with P_ts = exp(scale q_t.k_s - lse_t), dP_ts = dO_t.v_s and
// delta_t = dO_t.O_t. This kernel: delta and dQ_t = scale sum_s dS_ts k_s; with sinks also
// d sink_h = -sum_t p_sink delta_t, p_sink = exp(sink_h - lse_t), added into dsinks [Hq] fp32.
__global__ void attention_bwd_dq_kernel(FloatRef dout, FloatRef q, FloatRef k, FloatRef v,
                                        FloatRef out, const float* lse, FloatRef sinks, MaskView mask,
                                        Layout l, float scale, float* delta, FloatRef dq, float* dsinks) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = l.batch * l.hq * l.seq, warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const int64_t t = row % l.seq, h = (row / l.seq) % l.hq, b = row / (l.seq * l.hq);
    const int64_t g = h / (l.hq / l.hkv);
    float qr[kMaxPerLane], dor[kMaxPerLane], acc[kMaxPerLane] = {};
    load_row(q, l.q_at(b, t, h), l.d, lane, qr);
    load_row(dout, l.o_at(b, t, h), l.dv, lane, dor);
    const float dlt = dot_row(dor, out, l.o_at(b, t, h), l.dv, lane);
    if (lane == 0) delta[row] = dlt;
    const float row_lse = lse[row];
    if (lane == 0 && sinks.data != nullptr) atomicAdd(&dsinks[h], -expf(sinks.load(h) - row_lse) * dlt);
    for (int64_t s = mask.first_key(t); s <= t; ++s) {
      if (!mask.allowed(b, t, s)) continue;
      const float p = expf(scale * dot_row(qr, k, l.k_at(b, s, g), l.d, lane) - row_lse);
      const float dp = dot_row(dor, v, l.v_at(b, s, g), l.dv, lane);
      axpy_row(p * (dp - dlt), k, l.k_at(b, s, g), l.d, lane, acc);
    }
    store_row(dq, l.q_at(b, t, h), l.d, lane, acc, scale);
  }
}

// One warp per key row (b, g, s): dK_s = scale sum_{h in group g, t} dS_ts q_t,  dV_s = sum P_ts dO_t.
__global__ void attention_bwd_dkv_kernel(FloatRef dout, FloatRef q, FloatRef k, FloatRef v,
                                         const float* lse, const float* delta, MaskView mask,
                                         Layout l, float scale, FloatRef dk, FloatRef dv) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = l.batch * l.hkv * l.seq, warps = int64_t(gridDim.x) * kWarpsPerBlock;
  const int64_t group = l.hq / l.hkv;
  for (int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const int64_t s = row % l.seq, g = (row / l.seq) % l.hkv, b = row / (l.seq * l.hkv);
    float kr[kMaxPerLane], vr[kMaxPerLane], dk_acc[kMaxPerLane] = {}, dv_acc[kMaxPerLane] = {};
    load_row(k, l.k_at(b, s, g), l.d, lane, kr);
    load_row(v, l.v_at(b, s, g), l.dv, lane, vr);
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t t = s; t < mask.last_query(s); ++t) {
        if (!mask.allowed(b, t, s)) continue;
        const int64_t qrow = (b * l.hq + h) * l.seq + t;
        const float p = expf(scale * dot_row(kr, q, l.q_at(b, t, h), l.d, lane) - lse[qrow]);
        const float dp = dot_row(vr, dout, l.o_at(b, t, h), l.dv, lane);
        axpy_row(p, dout, l.o_at(b, t, h), l.dv, lane, dv_acc);
        axpy_row(p * (dp - delta[qrow]), q, l.q_at(b, t, h), l.d, lane, dk_acc);
      }
    }
    store_row(dk, l.k_at(b, s, g), l.d, lane, dk_acc, scale);
    store_row(dv, l.v_at(b, s, g), l.dv, lane, dv_acc, 1.0f);
  }
}

// The sinks [Hq] as the kernels read them; a null reference without sinks.
FloatRef sinks_ref(const Tensor& sinks, const char* op) {
  return sinks.defined() ? float_ref(sinks, op, "sinks") : FloatRef{nullptr, false};
}

Layout layout_of(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  const Layout l{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  MF_CHECK(l.d <= 32 * kMaxPerLane && l.dv <= 32 * kMaxPerLane, kUnsupported, op, ": head sizes ", l.d, " and ",
           l.dv, " exceed the CUDA kernel's limit of ", 32 * kMaxPerLane);
  return l;
}

// Elements per token row of each tensor kind cuDNN's ragged layout addresses.
struct RowSizes {
  int64_t q, k, stats, o, v;
};

// Element offsets of each block's first query row in q, stats and out-like tensors and of its
// first key row in k- and v-like tensors, from the table's first rows (rows 0 and 2 of
// [4, capacity]); entry `capacity` (one past the last block) is the end of the rows (q_tokens query rows,
// kv_tokens key rows: the tail blocks' queries are scratch rows). offsets: [5, capacity + 1] in the order
// of RowSizes.
__global__ void varlen_offsets_kernel(const int32_t* table, int64_t capacity, int64_t q_tokens, int64_t kv_tokens,
                                      RowSizes rows, int32_t* offsets) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i <= capacity;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q_first = i < capacity ? table[i] : q_tokens;
    const int64_t kv_first = i < capacity ? table[2 * capacity + i] : kv_tokens;
    const int64_t n = capacity + 1;
    offsets[i] = static_cast<int32_t>(q_first * rows.q);
    offsets[n + i] = static_cast<int32_t>(kv_first * rows.k);
    offsets[2 * n + i] = static_cast<int32_t>(q_first * rows.stats);
    offsets[3 * n + i] = static_cast<int32_t>(q_first * rows.o);
    offsets[4 * n + i] = static_cast<int32_t>(kv_first * rows.v);
  }
}

// Between lse [B, H, T] and cuDNN's token-major stats [B*T, H], either way.
__global__ void transpose_stats_kernel(float* stats, float* lse, int64_t batch, int64_t heads,
                                       int64_t seq, bool to_lse) {
  const int64_t n = batch * heads * seq;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i % heads, t = (i / heads) % seq, b = i / (heads * seq);
    float& l = lse[(b * heads + h) * seq + t];
    if (to_lse)
      l = stats[i];
    else
      stats[i] = l;
  }
}
// Stats [B*T, H] of queries that see no key: their sink (sinks_f32 [H]), or -inf without sinks.
__global__ void fill_stats_kernel(float* stats, int64_t n, int64_t heads, const float* sinks_f32) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    stats[i] = sinks_f32 != nullptr ? sinks_f32[i % heads] : -INFINITY;
}

constexpr int kThreads = 256;

// One block table of the mask as cuDNN takes it: lengths from the table, element offsets made on
// the device (no host sync).
struct VarlenScratch {
  Tensor offsets;  // [5, capacity + 1] int32
  VarlenBlocks blocks;
};
VarlenScratch varlen_blocks(const AttentionBlocks& b, bool causal, const Tensor& q, const Tensor& k,
                            const Tensor& v) {
  const int64_t hq = q.size(2), hkv = k.size(2), d = q.size(3), dv = v.size(3);
  const int64_t capacity = b.table.size(1), n = capacity + 1;
  VarlenScratch s;
  s.offsets = Tensor::empty({5, n}, DType::kI32, Device::kCUDA, "attention block offsets");
  int32_t* off = s.offsets.data<int32_t>();
  const int32_t* table = b.table.data<int32_t>();
  varlen_offsets_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(
      table, capacity, q.size(0) * q.size(1), k.size(0) * k.size(1), RowSizes{hq * d, hkv * d, hq, hq * dv, hkv * dv},
      off);
  MF_CUDA_CHECK_LAUNCH();
  s.blocks = {.causal = causal,
              .capacity = capacity,
              .max_queries = b.max_queries,
              .max_keys = b.max_keys,
              .seq_len_q = table + capacity,
              .seq_len_kv = table + 3 * capacity,
              .q_offsets = off,
              .kv_offsets = off + n,
              .stats_offsets = off + 2 * n,
              .o_offsets = off + 3 * n,
              .v_offsets = off + 4 * n};
  return s;
}

// Padded queries under a sliding window. A padded query p after its document [k0, e) sees the keys
// [max(k0, p - window + 1), e): a range that moves row by row, which no causal or full block expresses
// and one-row blocks cannot carry (their dk/dv rows would overlap in one cuDNN call). So padded block c
// of the mask becomes a block of exactly window - 1 scratch query rows, row i standing for token e + i
// (zeros where that is no query of the block: they add nothing to dk/dv, their outputs are dropped),
// against the document's last m = min(L, window - 1) keys. Token e + i then sees key e - m + j iff
// j >= i + m - (window - 1): cuDNN's bottom-right band of left bound 1 (VarlenBlocks::tail_band).
// Rows e + window - 1 on see nothing.
__global__ void tail_blocks_kernel(const int32_t* full, int64_t capacity, int64_t window, int64_t scratch_rows,
                                   int64_t tokens, int32_t* table) {
  const int64_t rows = window - 1;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < capacity;
       c += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q_first = full[c], queries = full[capacity + c], doc_len = full[3 * capacity + c];
    const int64_t end = full[2 * capacity + c] + doc_len, keys = min(doc_len, rows);
    const bool sees = queries > 0 && q_first - end < rows;
    table[c] = static_cast<int32_t>(sees ? c * rows : scratch_rows);
    table[capacity + c] = static_cast<int32_t>(sees ? rows : 0);
    table[2 * capacity + c] = static_cast<int32_t>(sees ? end - keys : tokens);
    table[3 * capacity + c] = static_cast<int32_t>(sees ? keys : 0);
  }
}

// Between token rows of x (width elements each) and the scratch rows above, either way: to the scratch,
// zeros where a row stands for no query of its block; back, only the rows that stand for one.
template <typename T>
__global__ void tail_rows_kernel(const int32_t* full, int64_t capacity, int64_t window, int64_t width,
                                 const T* from, T* to, bool to_scratch) {
  const int64_t rows = window - 1, n = capacity * rows * width;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < n; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = x % width, row = x / width, c = row / rows, i = row % rows;
    const int64_t q_first = full[c], queries = full[capacity + c];
    const int64_t token = full[2 * capacity + c] + full[3 * capacity + c] + i;
    const bool query = queries > 0 && token >= q_first && token < q_first + queries;
    if (to_scratch)
      to[x] = query ? from[token * width + col] : T(0);
    else if (query)
      to[token * width + col] = from[x];
  }
}

// The padded queries under a window of at least 2 (a window of 1 shows a padded query nothing) as
// cuDNN's blocks (above), from the mask's full blocks.
struct TailBlocks {
  AttentionBlocks blocks;
  const AttentionBlocks* full = nullptr;
  int64_t window = 0;

  TailBlocks(const AttentionBlocks& f, int64_t w, int64_t tokens) : full(&f), window(w) {
    const int64_t capacity = f.table.size(1);
    blocks.count = capacity;
    blocks.max_queries = window - 1;
    blocks.max_keys = std::min(f.max_keys, window - 1);
    blocks.table = Tensor::empty({4, capacity}, DType::kI32, Device::kCUDA, "attention tail blocks");
    tail_blocks_kernel<<<grid_for(capacity, kThreads), kThreads, 0, current_stream()>>>(
        f.table.data<int32_t>(), capacity, window, capacity * (window - 1), tokens, blocks.table.data<int32_t>());
    MF_CUDA_CHECK_LAUNCH();
  }
  // x [B, T, ...] (or [B*T, ...]) as scratch rows [1, rows, ...] (or [rows, ...]).
  Tensor to_scratch(const Tensor& x, int64_t tokens) const {
    const int64_t width = x.numel() / tokens, rows = full->table.size(1) * (window - 1);
    Shape shape = x.shape();
    if (shape.size() == 4) shape[1] = rows;  // [1, rows, H, D]
    shape[0] = shape.size() == 4 ? 1 : rows;
    Tensor s = Tensor::empty(shape, x.dtype(), Device::kCUDA, "attention tail scratch");
    copy_rows(x, s, width, true);
    return s;
  }
  void from_scratch(const Tensor& s, Tensor& x, int64_t tokens) const { copy_rows(s, x, x.numel() / tokens, false); }
  // The blocks as cuDNN takes them, the queries being the scratch rows qs.
  VarlenScratch varlen(const Tensor& qs, const Tensor& k, const Tensor& v) const {
    VarlenScratch s = varlen_blocks(blocks, false, qs, k, v);
    s.blocks.tail_band = true;
    return s;
  }

 private:
  void copy_rows(const Tensor& from, const Tensor& to, int64_t width, bool to_scratch) const {
    const int64_t capacity = full->table.size(1), n = capacity * (window - 1) * width;
    const int32_t* f = full->table.data<int32_t>();
    if (from.dtype() == DType::kF32)
      tail_rows_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(
          f, capacity, window, width, from.data<float>(), to.data<float>(), to_scratch);
    else  // bf16 (cuDNN's tensors), moved as their bits
      tail_rows_kernel<<<grid_for(n, kThreads), kThreads, 0, current_stream()>>>(
          f, capacity, window, width, static_cast<const uint16_t*>(from.raw_data()),
          static_cast<uint16_t*>(to.raw_data()), to_scratch);
    MF_CUDA_CHECK_LAUNCH();
  }
};

// d sink_h = -sum over rows (b, t) of exp(sink_h - lse) * (dO . O): the sinks' gradient when cuDNN
// computed dq/dk/dv. Warp task w sums rows [w % splits * kSinkRows, + kSinkRows) of (b, h) = w / splits
// into partial[w]; sink_grad_sum_kernel adds each head's partials in a fixed order. One fp32 atomic per row
// (each warp a row, rows t fastest) put every concurrent warp on the same one or two heads' sums, which
// serialised them: at GPT-OSS's 4 x 4096 x 64 rows about 2 ms a call on an H100 (2026-12-06).
constexpr int64_t kSinkRows = 64;
__global__ void sink_grad_kernel(FloatRef dout, FloatRef out, const float* lse, FloatRef sinks, int64_t batch,
                                 int64_t heads, int64_t seq, int64_t dv, float* partial) {
  const int lane = threadIdx.x & 31;
  const int64_t splits = (seq + kSinkRows - 1) / kSinkRows;
  for (int64_t w = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); w < batch * heads * splits;
       w += int64_t(gridDim.x) * kWarpsPerBlock) {
    const int64_t bh = w / splits, h = bh % heads, b = bh / heads, t0 = w % splits * kSinkRows;
    const float sink = sinks.load(h);
    float sum = 0.0f;
#pragma unroll 4
    for (int64_t t = t0; t < t0 + kSinkRows; ++t) {
      if (t >= seq) break;
      const int64_t at = ((b * seq + t) * heads + h) * dv;  // [B, T, Hq, Dv]
      float dot = 0.0f;
      for (int64_t j = lane; j < dv; j += 32) dot += dout.load(at + j) * out.load(at + j);
      sum += -expf(sink - lse[bh * seq + t]) * warp_sum(dot);
    }
    if (lane == 0) partial[w] = sum;
  }
}

// dsinks[h] = the partials of head h, batch by batch, split by split.
__global__ void sink_grad_sum_kernel(const float* partial, int64_t batch, int64_t heads, int64_t splits,
                                     float* dsinks) {
  const int64_t h = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (h >= heads) return;
  float sum = 0.0f;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < splits; ++s) sum += partial[(b * heads + h) * splits + s];
  dsinks[h] = sum;
}

void sink_grads(const Tensor& dout, const Tensor& out, const Tensor& lse, const Tensor& sinks, Tensor& dsinks) {
  const int64_t b = out.size(0), t = out.size(1), hq = out.size(2), dv = out.size(3);
  const int64_t splits = (t + kSinkRows - 1) / kSinkRows, warps = b * hq * splits;
  Tensor sum = Tensor::zeros({hq}, DType::kF32, Device::kCUDA, "attention_bwd dsinks sum");
  if (warps > 0) {
    Tensor partial = Tensor::empty({warps}, DType::kF32, Device::kCUDA, "attention_bwd dsinks partial sums");
    sink_grad_kernel<<<grid_for(warps, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
        float_ref(dout, "attention_bwd", "dout"), float_ref(out, "attention_bwd", "out"), lse.data<float>(),
        float_ref(sinks, "attention_bwd", "sinks"), b, hq, t, dv, partial.data<float>());
    MF_CUDA_CHECK_LAUNCH();
    sink_grad_sum_kernel<<<grid_for(hq, kThreads), kThreads, 0, current_stream()>>>(partial.data<float>(), b, hq,
                                                                                   splits, sum.data<float>());
    MF_CUDA_CHECK_LAUNCH();
  }
  cast(sum, dsinks);
}

// The sinks as cuDNN takes them: fp32 (undefined without sinks).
Tensor sinks_f32(const Tensor& sinks) {
  if (!sinks.defined() || sinks.dtype() == DType::kF32) return sinks;
  Tensor f32 = Tensor::empty(sinks.shape(), DType::kF32, Device::kCUDA, "attention sinks fp32");
  cast(sinks, f32);
  return f32;
}

// Whether cuDNN's block kernels run this mask: it has blocks, and element offsets fit int32.
bool runs_as_blocks(const AttentionMask& mask, const Tensor& q) {
  return mask.documents.defined() && q.numel() <= INT32_MAX;
}

}  // namespace

void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                   float scale, const Tensor& sinks, int64_t window, Tensor& out, Tensor& lse) {
  check_dtype(lse, DType::kF32, "attention_fwd", "lse");
  const bool masked = mask.key_valid.defined() || mask.segment.defined();
  if (cudnn_attention_takes(q, v, {&k, &out})) {
    if (!masked) return cudnn_attention_fwd(q, k, v, scale, sinks_f32(sinks), window, out, lse);
    if (runs_as_blocks(mask, q)) {
      const AttentionDocuments& docs = mask.documents;
      const int64_t b = q.size(0), t = q.size(1), hq = q.size(2);
      const Tensor sinks32 = sinks_f32(sinks);
      Tensor stats = Tensor::empty({b * t, hq}, DType::kF32, Device::kCUDA, "attention stats");
      // Padding present: rows outside the blocks start as zero output and lse -inf (their sink with
      // sinks); the padded queries' own blocks then write theirs.
      if (!docs.covers_all_tokens) {
        out.fill_zero();
        fill_stats_kernel<<<grid_for(stats.numel(), kThreads), kThreads, 0, current_stream()>>>(
            stats.data<float>(), stats.numel(), hq, sinks32.defined() ? sinks32.data<float>() : nullptr);
        MF_CUDA_CHECK_LAUNCH();
      }
      // The two kinds of blocks write disjoint query rows of out and stats.
      cudnn_varlen_attention_fwd(q, k, v, varlen_blocks(docs.causal, true, q, k, v).blocks, scale, sinks32, window,
                                 out, stats);
      if (docs.full.table.defined() && window == 0)
        cudnn_varlen_attention_fwd(q, k, v, varlen_blocks(docs.full, false, q, k, v).blocks, scale, sinks32, 0, out,
                                   stats);
      if (docs.full.table.defined() && window > 1) {
        const TailBlocks tail(docs.full, window, b * t);
        const Tensor qs = tail.to_scratch(q, b * t);
        Tensor os = Tensor::empty({1, qs.size(1), hq, v.size(3)}, q.dtype(), Device::kCUDA, "attention tail out");
        Tensor ss = Tensor::empty({qs.size(1), hq}, DType::kF32, Device::kCUDA, "attention tail stats");
        cudnn_varlen_attention_fwd(qs, k, v, tail.varlen(qs, k, v).blocks, scale, sinks32, 0, os, ss);
        tail.from_scratch(os, out, b * t);
        tail.from_scratch(ss, stats, b * t);
      }
      transpose_stats_kernel<<<grid_for(stats.numel(), kThreads), kThreads, 0, current_stream()>>>(
          stats.data<float>(), lse.data<float>(), b, hq, t, /*to_lse=*/true);
      MF_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  const Layout l = layout_of(q, k, v, "attention_fwd");
  const int64_t rows = l.batch * l.hq * l.seq;
  if (rows == 0) return;
  attention_fwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      float_ref(q, "attention_fwd", "q"), float_ref(k, "attention_fwd", "k"),
      float_ref(v, "attention_fwd", "v"), sinks_ref(sinks, "attention_fwd"),
      mask_view(mask, l.seq, window, "attention_fwd"), l, scale, float_ref(out, "attention_fwd", "out"),
      lse.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& out, const Tensor& lse, const AttentionMask& mask, float scale,
                   const Tensor& sinks, int64_t window, AttentionGrads& grads) {
  check_dtype(lse, DType::kF32, "attention_bwd", "lse");
  const bool masked = mask.key_valid.defined() || mask.segment.defined();
  if (cudnn_attention_takes(q, v, {&k, &out, &dout, &grads.dq, &grads.dk, &grads.dv})) {
    if (!masked) {
      cudnn_attention_bwd(dout, q, k, v, out, lse, scale, window, grads);
      if (sinks.defined()) sink_grads(dout, out, lse, sinks, grads.dsinks);
      return;
    }
    if (runs_as_blocks(mask, q)) {
      const AttentionDocuments& docs = mask.documents;
      const int64_t b = q.size(0), t = q.size(1), hq = q.size(2);
      Tensor stats = Tensor::empty({b * t, hq}, DType::kF32, Device::kCUDA, "attention stats");
      transpose_stats_kernel<<<grid_for(stats.numel(), kThreads), kThreads, 0, current_stream()>>>(
          stats.data<float>(), lse.data<float>(), b, hq, t, /*to_lse=*/false);
      MF_CUDA_CHECK_LAUNCH();
      if (!docs.covers_all_tokens)  // padding present: padded keys get no gradient, nor do
                                    // queries that see nothing
        for (Tensor* g : {&grads.dq, &grads.dk, &grads.dv}) g->fill_zero();
      cudnn_varlen_attention_bwd(dout, q, k, v, out, stats, varlen_blocks(docs.causal, true, q, k, v).blocks, scale,
                                 window, grads);
      if (sinks.defined()) sink_grads(dout, out, lse, sinks, grads.dsinks);
      if (docs.full.table.defined() && window != 1) {  // a window of 1 shows a padded query nothing
        // Padded queries write their own dq rows, but their dk/dv land on the documents' key
        // rows, which cuDNN overwrites: those go to zeroed buffers and are added.
        AttentionGrads padded{grads.dq, Tensor::zeros(grads.dk.shape(), grads.dk.dtype(), Device::kCUDA),
                              Tensor::zeros(grads.dv.shape(), grads.dv.dtype(), Device::kCUDA), Tensor()};
        if (window == 0) {
          cudnn_varlen_attention_bwd(dout, q, k, v, out, stats, varlen_blocks(docs.full, false, q, k, v).blocks,
                                     scale, 0, padded);
        } else {  // the tail blocks' queries are scratch rows, dq too
          const TailBlocks tail(docs.full, window, b * t);
          const Tensor qs = tail.to_scratch(q, b * t);
          padded.dq = Tensor::empty(qs.shape(), q.dtype(), Device::kCUDA, "attention tail dq");
          cudnn_varlen_attention_bwd(tail.to_scratch(dout, b * t), qs, k, v, tail.to_scratch(out, b * t),
                                     tail.to_scratch(stats, b * t), tail.varlen(qs, k, v).blocks, scale, 0, padded);
          tail.from_scratch(padded.dq, grads.dq, b * t);
        }
        add_inplace(grads.dk, padded.dk);
        add_inplace(grads.dv, padded.dv);
      }
      return;
    }
  }
  const Layout l = layout_of(q, k, v, "attention_bwd");
  const int64_t q_rows = l.batch * l.hq * l.seq, kv_rows = l.batch * l.hkv * l.seq;
  if (q_rows == 0) return;
  const MaskView m = mask_view(mask, l.seq, window, "attention_bwd");
  const FloatRef fq = float_ref(q, "attention_bwd", "q"), fk = float_ref(k, "attention_bwd", "k"),
                 fv = float_ref(v, "attention_bwd", "v"),
                 fdo = float_ref(dout, "attention_bwd", "dout");
  Tensor delta = Tensor::empty({q_rows}, DType::kF32, Device::kCUDA, "attention_bwd row dots");
  // The sinks' gradient is summed in fp32 with atomics, then written in the sinks' dtype.
  Tensor dsinks_sum;
  if (sinks.defined()) dsinks_sum = Tensor::zeros({l.hq}, DType::kF32, Device::kCUDA, "attention_bwd dsinks sum");
  attention_bwd_dq_kernel<<<grid_for(q_rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      fdo, fq, fk, fv, float_ref(out, "attention_bwd", "out"), lse.data<float>(), sinks_ref(sinks, "attention_bwd"),
      m, l, scale, delta.data<float>(), float_ref(grads.dq, "attention_bwd", "dq"),
      sinks.defined() ? dsinks_sum.data<float>() : nullptr);
  MF_CUDA_CHECK_LAUNCH();
  if (sinks.defined()) cast(dsinks_sum, grads.dsinks);
  attention_bwd_dkv_kernel<<<grid_for(kv_rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      fdo, fq, fk, fv, lse.data<float>(), delta.data<float>(), m, l, scale,
      float_ref(grads.dk, "attention_bwd", "dk"), float_ref(grads.dv, "attention_bwd", "dv"));
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
