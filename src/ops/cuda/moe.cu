// MoE routing on CUDA: top-k routing, the stable counting sort of (token, slot) pairs by expert,
// and the gathers/scatters around the experts. Nothing here synchronises the host: per-expert
// counts and offsets are produced and consumed on the device.
#include <cstdint>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kChunk = 256;  // (token, slot) pairs per block of the counting sort; one per thread
constexpr int kMaxTopK = 32;  // one lane keeps each chosen expert

// (v, i) ranks before (v2, i2): higher probability first, then the lower expert index.
__device__ __forceinline__ bool ranks_before(float v, int i, float v2, int i2) {
  return v > v2 || (v == v2 && i < i2);
}

// The best of the lanes' candidates (best_v, best_i) by ranks_before; every lane gets it.
__device__ __forceinline__ void warp_best(float& best_v, int& best_i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ranks_before(ov, oi, best_v, best_i)) {
      best_v = ov;
      best_i = oi;
    }
  }
}

// The warp's top k of the candidate experts, k rounds: each round picks the best pair ranking after
// the previous pick, so nothing chosen needs remembering. Lane j < k returns round j's expert.
// value(e, v) says whether expert e is a candidate and sets its value v.
template <typename Value>
__device__ __forceinline__ int warp_topk(int experts, int k, int lane, Value value) {
  float prev_v = INFINITY;
  int prev_i = -1, mine = experts;
  for (int j = 0; j < k; ++j) {
    float best_v = -INFINITY;
    int best_i = experts;
    for (int e = lane; e < experts; e += 32) {
      float v;
      if (value(e, v) && ranks_before(prev_v, prev_i, v, e) && ranks_before(v, e, best_v, best_i)) {
        best_v = v;
        best_i = e;
      }
    }
    warp_best(best_v, best_i);
    if (lane == j) mine = best_i;
    prev_v = best_v;
    prev_i = best_i;
  }
  return mine;
}

// One warp per row.
__global__ void router_topk_kernel(const float* probs, int64_t rows, int experts, int k, bool norm,
                                   int32_t* out_index, float* out_weight) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float* p = probs + r * experts;
    const int mine_i = warp_topk(experts, k, lane, [p](int e, float& v) {
      v = p[e];
      return true;
    });
    const float mine_v = lane < k ? p[mine_i] : 0.0f;
    const float sum = warp_sum(mine_v);
    if (lane < k) {
      out_index[r * k + lane] = mine_i;
      out_weight[r * k + lane] = norm ? mine_v / sum : mine_v;
    }
  }
}

// DeepSeek-V3's group-limited choice, one warp per row (the CPU reference's rules and ties):
// 1. each group's score, the sum of its two best biased scores, lands in lane g (n_group <= 32);
// 2. topk_group rounds pick the best groups, recorded as a bit mask;
// 3. k rounds pick the best biased scores inside those groups (warp_topk).
// The weights are the unbiased scores of the choices, renormalised when `norm`.
__global__ void router_group_topk_kernel(const float* scores, const float* bias, int64_t rows, int experts,
                                         int n_group, int topk_group, int k, bool norm, int32_t* out_index,
                                         float* out_weight) {
  const int lane = threadIdx.x & 31, group_size = experts / n_group;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float* s = scores + r * experts;
    float group_score = -INFINITY;
    for (int g = 0; g < n_group; ++g) {
      float first = -INFINITY, second = -INFINITY;
      for (int j = lane; j < group_size; j += 32) {
        const float v = s[g * group_size + j] + bias[g * group_size + j];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      for (int o = 16; o > 0; o >>= 1) {  // merge the lanes' two best
        const float of = __shfl_xor_sync(0xffffffffu, first, o), os = __shfl_xor_sync(0xffffffffu, second, o);
        second = fmaxf(fminf(first, of), fmaxf(second, os));
        first = fmaxf(first, of);
      }
      if (lane == g) group_score = first + second;
    }
    uint32_t chosen_groups = 0;
    float prev_v = INFINITY;
    int prev_i = -1;
    for (int j = 0; j < topk_group; ++j) {
      float best_v = -INFINITY;
      int best_i = n_group;
      if (lane < n_group && ranks_before(prev_v, prev_i, group_score, lane)) {
        best_v = group_score;
        best_i = lane;
      }
      warp_best(best_v, best_i);
      chosen_groups |= 1u << best_i;
      prev_v = best_v;
      prev_i = best_i;
    }
    const int mine_i = warp_topk(experts, k, lane, [&](int e, float& v) {
      if (!(chosen_groups >> (e / group_size) & 1u)) return false;
      v = s[e] + bias[e];
      return true;
    });
    const float mine_s = lane < k ? s[mine_i] : 0.0f;
    const float sum = warp_sum(mine_s);
    if (lane < k) {
      out_index[r * k + lane] = mine_i;
      out_weight[r * k + lane] = norm ? mine_s / sum : mine_s;
    }
  }
}

// One block: bias[e] += rate where expert e's load is below the mean, -= rate above it (compared as
// load x E against the total, in double, so the mean needs no division).
__global__ void router_bias_update_kernel(float* bias, const float* load, int experts, float rate) {
  __shared__ double total;
  if (threadIdx.x == 0) {
    double t = 0;
    for (int e = 0; e < experts; ++e) t += load[e];
    total = t;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const double scaled = static_cast<double>(load[e]) * experts;
    bias[e] += scaled < total ? rate : scaled > total ? -rate : 0.0f;
  }
}

// The expert owning sorted row r: the last e with offsets[e] <= r (an empty expert's offset equals
// the next one's, so the search passes over it).
__device__ __forceinline__ int expert_of_row(const int64_t* offsets, int experts, int64_t r) {
  int lo = 0, hi = experts - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= r) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// y[r] += s[r] * bias[e(r)], a thread per kVec consecutive elements (8: one 16-byte access of each
// operand; a warp per row reading 2 bytes a lane ran at about a fortieth of the memory's rate on
// GPT-OSS).
template <int kVec>
__global__ void grouped_bias_add_kernel(FloatRef y, FloatRef bias, const int64_t* offsets, const float* scale,
                                        int64_t rows, int64_t cols, int experts) {
  const int64_t chunks = rows * cols / kVec;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < chunks;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = idx * kVec, r = at / cols, j = at % cols;
    const int e = expert_of_row(offsets, experts, r);
    const float s = scale != nullptr ? scale[r] : 1.0f;
    float v[kVec], b[kVec];
    load_chunk<kVec>(y, at, v);
    load_chunk<kVec>(bias, e * cols + j, b);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] += s * b[i];
    store_chunk<kVec>(y, at, v);
  }
}

// d_scale[r] = dy[r] . bias[e(r)], one warp per row, kVec consecutive elements a lane.
template <int kVec>
__global__ void grouped_bias_row_dot_kernel(FloatRef dy, FloatRef bias, const int64_t* offsets, int64_t rows,
                                            int64_t cols, int experts, float* d_scale) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int e = expert_of_row(offsets, experts, r);
    float dot = 0.0f;
    for (int64_t j = lane * kVec; j < cols; j += 32 * kVec) {
      float d[kVec], b[kVec];
      load_chunk<kVec>(dy, r * cols + j, d);
      load_chunk<kVec>(bias, e * cols + j, b);
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot += d[i] * b[i];
    }
    dot = warp_sum(dot);
    if (lane == 0) d_scale[r] = dot;
  }
}

// grad_bias[e, j] += sum over expert e's rows of s[r] dy[r, j]. Block (column tile, expert): a warp
// spans 32 kVec consecutive columns, its lanes kVec each (16-byte reads when kVec is 8); the block's
// warps take every kWarpsPerBlock-th row of the expert, and their sums are added in warp order
// (deterministic).
template <int kVec>
__global__ void grouped_bias_grad_kernel(FloatRef dy, const int64_t* offsets, const float* scale, int64_t cols,
                                         FloatRef grad_bias) {
  __shared__ float partial[kWarpsPerBlock][32 * kVec];
  const int e = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t j = (blockIdx.x * int64_t(32) + lane) * kVec;
  float sum[kVec] = {};
  if (j < cols)
    for (int64_t r = offsets[e] + warp; r < offsets[e + 1]; r += kWarpsPerBlock) {
      float d[kVec];
      load_chunk<kVec>(dy, r * cols + j, d);
      const float s = scale != nullptr ? scale[r] : 1.0f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum[i] += s * d[i];
    }
#pragma unroll
  for (int i = 0; i < kVec; ++i) partial[warp][lane * kVec + i] = sum[i];
  __syncthreads();
  for (int c = threadIdx.x; c < 32 * kVec; c += blockDim.x) {
    const int64_t col = blockIdx.x * int64_t(32) * kVec + c;
    if (col >= cols) continue;
    float total = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += partial[w][c];
    grad_bias.store(e * cols + col, grad_bias.load(e * cols + col) + total);
  }
}

// grouped_bias_bwd's sums in one read of dy (bf16, 16-byte chunks): the column sums of
// grouped_bias_grad_kernel and, with kDot, each row's dot with its expert's bias as a partial sum per
// column tile, dot_part[r, tile], which grouped_bias_dot_sum_kernel adds up in tile order. A warp loads
// four of its rows before using the first.
constexpr int kRowsAhead = 4;
template <bool kDot>
__global__ void grouped_bias_grad_dot_kernel(FloatRef dy, FloatRef bias, const int64_t* offsets, const float* scale,
                                             int64_t cols, FloatRef grad_bias, float* dot_part) {
  __shared__ float partial[kWarpsPerBlock][32 * 8];
  const int e = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t j = (blockIdx.x * int64_t(32) + lane) * 8, tiles = gridDim.x;
  const bool in_row = j < cols;
  float sum[8] = {}, b[8] = {};
  if (kDot && in_row) load_chunk<8>(bias, e * cols + j, b);
  const int64_t first = offsets[e], end = offsets[e + 1];
  for (int64_t r0 = first + warp; r0 < end; r0 += kWarpsPerBlock * kRowsAhead) {
    uint4 raw[kRowsAhead];
    float row_scale[kRowsAhead];
#pragma unroll
    for (int u = 0; u < kRowsAhead; ++u) {
      const int64_t r = r0 + u * kWarpsPerBlock;
      if (in_row && r < end) raw[u] = load_raw(dy, r * cols + j);
      row_scale[u] = scale != nullptr && r < end ? scale[r] : 1.0f;
    }
#pragma unroll
    for (int u = 0; u < kRowsAhead; ++u) {
      const int64_t r = r0 + u * kWarpsPerBlock;
      if (r >= end) break;  // the same for the whole warp
      float d[8] = {}, dot = 0.0f;
      if (in_row) unpack_bf16<8>(raw[u], d);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        sum[i] += row_scale[u] * d[i];
        dot += d[i] * b[i];
      }
      if constexpr (kDot) {
        dot = warp_sum(dot);
        if (lane == 0) dot_part[r * tiles + blockIdx.x] = dot;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) partial[warp][lane * 8 + i] = sum[i];
  __syncthreads();
  for (int c = threadIdx.x; c < 32 * 8; c += blockDim.x) {
    const int64_t col = blockIdx.x * int64_t(32) * 8 + c;
    if (col >= cols) continue;
    float total = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += partial[w][c];
    grad_bias.store(e * cols + col, grad_bias.load(e * cols + col) + total);
  }
}

// d_scale[r] = the sum of dot_part[r, :] in tile order, a thread per row.
__global__ void grouped_bias_dot_sum_kernel(const float* dot_part, int64_t rows, int64_t tiles, float* d_scale) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    float total = 0.0f;
    for (int64_t t = 0; t < tiles; ++t) total += dot_part[r * tiles + t];
    d_scale[r] = total;
  }
}

// One thread per row: the weights of given expert choices.
__global__ void router_weights_kernel(const float* probs, const int32_t* index, int64_t rows,
                                      int experts, int k, bool norm, float* weight) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int e = index[r * k + j];
      if (e < 0 || e >= experts) __trap();  // indices come from another run's router_topk
      sum += probs[r * experts + e];
    }
    for (int j = 0; j < k; ++j) {
      const float p = probs[r * experts + index[r * k + j]];
      weight[r * k + j] = norm ? p / sum : p;
    }
  }
}

// dp_j = dw_j without renormalisation; with it (w_j = p_j / S): dp_j = (dw_j - sum_i dw_i w_i) / S.
__global__ void router_topk_bwd_kernel(FloatRef d_weight, const float* probs, const int32_t* index,
                                       int64_t rows, int experts, int k, bool norm, float* dprobs) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    float* d = dprobs + r * experts;
    for (int e = lane; e < experts; e += 32) d[e] = 0.0f;
    int e = 0;
    float p = 0.0f, dw = 0.0f;
    if (lane < k) {
      e = index[r * k + lane];
      if (e < 0 || e >= experts) __trap();  // indices come from router_topk
      p = probs[r * experts + e];
      dw = d_weight.load(r * k + lane);
    }
    const float sum = warp_sum(p);
    const float dot = warp_sum(lane < k ? dw * (p / sum) : 0.0f);
    __syncwarp();
    if (lane < k) d[e] = norm ? (dw - dot) / sum : dw;
  }
}

// Counting sort, pass 1: per-chunk expert histograms, counts[chunk][e].
__global__ void expert_count_kernel(const int32_t* expert_of, int64_t pairs, int experts,
                                    int32_t* counts) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t i = blockIdx.x * int64_t(kChunk) + threadIdx.x;
  if (i < pairs) {
    const int e = expert_of[i];
    if (e < -1 || e >= experts) __trap();  // indices come from the routers; -1: held elsewhere
    if (e >= 0) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    counts[blockIdx.x * int64_t(experts) + e] = hist[e];
}

// Pass 2 (one block of kScanThreads): turns counts[chunk][e] into the first row of chunk's pairs of
// expert e counted from the expert's first row, and writes offsets[E+1]. The experts go 32 at a time,
// a lane each, so that a warp's loads of one chunk's counts are one coalesced read; the warps split
// the chunks into contiguous ranges, sum them, scan the sums down the warps, then write the prefixes.
// (One warp walking an expert's counts a chunk at a time, strided by the expert count, was a chain of
// dependent loads: 0.2 ms a call at Qwen3's 512 chunks x 128 experts.)
constexpr int kScanThreads = 1024;
__global__ void __launch_bounds__(kScanThreads) expert_scan_kernel(int32_t* counts, int64_t chunks, int experts,
                                                                  int64_t held, int64_t* offsets) {
  constexpr int kWarps = kScanThreads / 32;
  __shared__ int32_t warp_prefix[kWarps][33];  // [warp][lane], padded against bank conflicts
  extern __shared__ int64_t totals[];          // [experts]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t per_warp = (chunks + kWarps - 1) / kWarps;
  const int64_t c_begin = min(chunks, warp * per_warp), c_end = min(chunks, c_begin + per_warp);
  for (int e0 = 0; e0 < experts; e0 += 32) {
    const int e = e0 + lane;
    int32_t sum = 0;
    if (e < experts) {
#pragma unroll 4
      for (int64_t c = c_begin; c < c_end; ++c) sum += counts[c * experts + e];
    }
    warp_prefix[warp][lane] = sum;
    __syncthreads();
    if (warp == 0) {  // exclusive scan down the warps, a lane (expert) each
      int32_t running = 0;
      for (int w = 0; w < kWarps; ++w) {
        const int32_t s = warp_prefix[w][lane];
        warp_prefix[w][lane] = running;
        running += s;
      }
      if (e < experts) totals[e] = running;
    }
    __syncthreads();
    if (e < experts) {
      int32_t running = warp_prefix[warp][lane];
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int32_t count = counts[c * experts + e];
        counts[c * experts + e] = running;
        running += count;
      }
    }
    __syncthreads();  // warp_prefix is the next group's
  }
  if (warp == 0) {  // offsets: an exclusive scan of the totals, consecutive experts a lane
    const int per_lane = (experts + 31) / 32;
    const int e_begin = min(experts, lane * per_lane), e_end = min(experts, e_begin + per_lane);
    int64_t sum = 0;
    for (int e = e_begin; e < e_end; ++e) sum += totals[e];
    int64_t inclusive = sum;
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= o) inclusive += up;
    }
    int64_t running = inclusive - sum;
    for (int e = e_begin; e < e_end; ++e) {
      offsets[e] = running;
      running += totals[e];
    }
    if (lane == 31) {
      offsets[experts] = inclusive;
      if (inclusive != held) __trap();  // a -1 in a full permutation, or a wrong count of held slots
    }
  }
}

// Pass 3: each pair's sorted row = its expert's first row + its chunk's base within the expert + its
// rank among the chunk's earlier pairs of that expert (lanes of the warp via match_any, earlier warps
// via shared counts).
__global__ void expert_scatter_kernel(const int32_t* expert_of, int64_t pairs, int experts, int k,
                                      const int32_t* chunk_base, const int64_t* offsets,
                                      int32_t* source_row, int32_t* slot_of) {
  extern __shared__ int32_t warp_counts[];  // [kChunk / 32][experts]
  constexpr int kWarps = kChunk / 32;
  for (int i = threadIdx.x; i < kWarps * experts; i += blockDim.x) warp_counts[i] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t i = blockIdx.x * int64_t(kChunk) + threadIdx.x;
  const int e = i < pairs ? expert_of[i] : -1;
  const unsigned same = __match_any_sync(0xffffffffu, e);
  const int rank_in_warp = __popc(same & ((1u << lane) - 1));
  if (e >= 0 && rank_in_warp == 0) warp_counts[warp * experts + e] = __popc(same);
  __syncthreads();
  if (e < 0) {
    if (i < pairs) slot_of[i] = -1;  // held elsewhere (moe.h: partial permutations)
    return;
  }
  int rank = rank_in_warp;
  for (int w = 0; w < warp; ++w) rank += warp_counts[w * experts + e];
  const int32_t row = static_cast<int32_t>(offsets[e]) + chunk_base[blockIdx.x * int64_t(experts) + e] + rank;
  source_row[row] = static_cast<int32_t>(i / k);
  slot_of[i] = row;
}

// The sorted row of pair i, or -1 for a slot a partial permutation does not hold (moe.h).
__device__ __forceinline__ int64_t checked_slot(const int32_t* slot_of, int64_t i, int64_t rows) {
  const int64_t row = slot_of[i];
  if (row < -1 || row >= rows) __trap();  // slots come from make_permutation
  return row;
}

// sorted[slot_of[t, j]] = x[t] for each held slot j, whole rows as 16-byte words, a warp per token:
// a token's row is read once, where gathering sorted row by sorted row read it k times, mostly from
// HBM (x is larger than L2 at 16k tokens). A lane loads up to kWordsAhead words before storing them.
constexpr int kWordsAhead = 8;
__global__ void scatter_rows_vec_kernel(const uint4* __restrict__ x, const int32_t* __restrict__ slot_of,
                                        uint4* __restrict__ sorted, int64_t n_tokens, int k, int64_t rows,
                                        int64_t row_words) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t t = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); t < n_tokens; t += warps) {
    for (int64_t j0 = lane; j0 < row_words; j0 += 32 * kWordsAhead) {
      uint4 words[kWordsAhead];
#pragma unroll
      for (int i = 0; i < kWordsAhead; ++i)
        if (j0 + 32 * i < row_words) words[i] = x[t * row_words + j0 + 32 * i];
      for (int j = 0; j < k; ++j) {
        const int64_t row = checked_slot(slot_of, t * k + j, rows);
        if (row < 0) continue;
#pragma unroll
        for (int i = 0; i < kWordsAhead; ++i)
          if (j0 + 32 * i < row_words) sorted[row * row_words + j0 + 32 * i] = words[i];
      }
    }
  }
}

// sorted[r] = x[source_row[r]], a value at a time: rows that are not whole 16-byte words.
__global__ void gather_rows_kernel(FloatRef x, const int32_t* source_row, FloatRef sorted,
                                   int64_t rows, int64_t n_tokens, int64_t hidden) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t src = source_row[r];
    if (src < 0 || src >= n_tokens) __trap();
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
      sorted.store(r * hidden + j, x.load(src * hidden + j));
  }
}

// out[t] = sum_j sorted[slot_of[t, j]], one block per token, kVec columns at a time (see
// load_chunk).
template <int kVec>
__global__ void unpermute_kernel(FloatRef sorted, const int32_t* slot_of, FloatRef out, int64_t n,
                                 int k, int64_t rows, int64_t hidden) {
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    for (int64_t c = threadIdx.x * int64_t(kVec); c < hidden; c += blockDim.x * int64_t(kVec)) {
      float acc[kVec] = {};
      for (int j = 0; j < k; ++j) {
        const int64_t row = checked_slot(slot_of, t * k + j, rows);
        if (row < 0) continue;
        float v[kVec];
        load_chunk<kVec>(sorted, row * hidden + c, v);
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[i] += v[i];
      }
      store_chunk<kVec>(out, t * hidden + c, acc);
    }
  }
}

// sorted[slot_of[i]] = weight[i] (to_sorted), or weight[i] = sorted[slot_of[i]], over the N*k
// (token, slot) pairs; a slot a partial permutation does not hold moves nothing, or gets 0.
__global__ void move_weights_kernel(const float* from, const int32_t* slot_of, float* to,
                                    int64_t pairs, int64_t rows, bool to_sorted) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = checked_slot(slot_of, i, rows);
    if (to_sorted) {
      if (row >= 0) to[row] = from[i];
    } else {
      to[i] = row >= 0 ? from[row] : 0.0f;
    }
  }
}

void move_weights(const Tensor& from, const Permutation& p, Tensor& to, bool to_sorted,
                  const char* op) {
  check_dtype(p.slot_of, DType::kI32, op, "slot_of");
  const int64_t pairs = p.slot_of.numel();
  if (pairs == 0) return;
  move_weights_kernel<<<grid_for(pairs, 256), 256, 0, current_stream()>>>(
      from.data<float>(), p.slot_of.data<int32_t>(), to.data<float>(), pairs, p.source_row.numel(), to_sorted);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace

void router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob, TopK& topk) {
  check_dtype(probs, DType::kF32, "router_topk", "probs");
  check_dtype(topk.index, DType::kI32, "router_topk", "topk.index");
  check_dtype(topk.weight, DType::kF32, "router_topk", "topk.weight");
  MF_CHECK(k <= kMaxTopK, kUnsupported, "router_topk: k = ", k, " exceeds the CUDA limit of ",
           kMaxTopK);
  const int64_t rows = probs.size(0);
  if (rows == 0 || k == 0) return;
  router_topk_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      probs.data<float>(), rows, static_cast<int>(probs.size(1)), static_cast<int>(k),
      norm_topk_prob, topk.index.data<int32_t>(), topk.weight.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void router_group_topk(const Tensor& scores, const Tensor& bias, int64_t k, int64_t n_group, int64_t topk_group,
                       bool norm_topk_prob, TopK& topk) {
  check_dtype(scores, DType::kF32, "router_group_topk", "scores");
  check_dtype(bias, DType::kF32, "router_group_topk", "bias");
  MF_CHECK(k <= kMaxTopK && n_group <= 32, kUnsupported, "router_group_topk: k = ", k, " and n_group = ", n_group,
           " exceed the CUDA limits of ", kMaxTopK, " and 32");
  const int64_t rows = scores.size(0);
  if (rows == 0) return;
  router_group_topk_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      scores.data<float>(), bias.data<float>(), rows, static_cast<int>(scores.size(1)), static_cast<int>(n_group),
      static_cast<int>(topk_group), static_cast<int>(k), norm_topk_prob, topk.index.data<int32_t>(),
      topk.weight.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void router_bias_update(Tensor& bias, const Tensor& load, float rate) {
  check_dtype(bias, DType::kF32, "router_bias_update", "bias");
  check_dtype(load, DType::kF32, "router_bias_update", "load");
  router_bias_update_kernel<<<1, 256, 0, current_stream()>>>(bias.data<float>(), load.data<float>(),
                                                             static_cast<int>(bias.numel()), rate);
  MF_CUDA_CHECK_LAUNCH();
}

void grouped_bias_add(Tensor& y, const Tensor& bias, const Tensor& offsets, const Tensor& row_scale) {
  const char* op = "grouped_bias_add";
  const int64_t rows = y.size(0), cols = y.size(1);
  if (rows == 0) return;
  const bool vec = bf16_chunks(cols, {&y, &bias});
  const auto kernel = vec ? grouped_bias_add_kernel<8> : grouped_bias_add_kernel<1>;
  kernel<<<grid_for(rows * cols / (vec ? 8 : 1), 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      float_ref(y, op, "y"), float_ref(bias, op, "bias"), offsets.data<int64_t>(),
      row_scale.defined() ? row_scale.data<float>() : nullptr, rows, cols, static_cast<int>(bias.size(0)));
  MF_CUDA_CHECK_LAUNCH();
}

void grouped_bias_bwd(const Tensor& dy, const Tensor& bias, const Tensor& offsets, Tensor& grad_bias,
                      const Tensor& row_scale, Tensor& d_row_scale) {
  const char* op = "grouped_bias_bwd";
  const int64_t rows = dy.size(0), cols = dy.size(1), experts = bias.size(0);
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  if (rows > 0 && grad_bias.defined() && bf16_chunks(cols, {&dy, &bias})) {
    const int64_t tiles = (cols + 255) / 256;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(experts));
    if (!d_row_scale.defined()) {
      grouped_bias_grad_dot_kernel<false><<<grid, 32 * kWarpsPerBlock, 0, current_stream()>>>(
          float_ref(dy, op, "dy"), float_ref(bias, op, "bias"), offsets.data<int64_t>(), scale, cols,
          float_ref(grad_bias, op, "grad_bias"), nullptr);
      MF_CUDA_CHECK_LAUNCH();
      return;
    }
    Tensor dot_part = Tensor::zeros({rows, tiles}, DType::kF32, Device::kCUDA, "bias dot partial sums");
    grouped_bias_grad_dot_kernel<true><<<grid, 32 * kWarpsPerBlock, 0, current_stream()>>>(
        float_ref(dy, op, "dy"), float_ref(bias, op, "bias"), offsets.data<int64_t>(), scale, cols,
        float_ref(grad_bias, op, "grad_bias"), dot_part.data<float>());
    MF_CUDA_CHECK_LAUNCH();
    grouped_bias_dot_sum_kernel<<<grid_for(rows, 256), 256, 0, current_stream()>>>(dot_part.data<float>(), rows, tiles,
                                                                                    d_row_scale.data<float>());
    MF_CUDA_CHECK_LAUNCH();
    return;
  }
  if (rows > 0 && d_row_scale.defined()) {
    const auto kernel =
        bf16_chunks(cols, {&dy, &bias}) ? grouped_bias_row_dot_kernel<8> : grouped_bias_row_dot_kernel<1>;
    kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
        float_ref(dy, op, "dy"), float_ref(bias, op, "bias"), offsets.data<int64_t>(), rows, cols,
        static_cast<int>(experts), d_row_scale.data<float>());
    MF_CUDA_CHECK_LAUNCH();
  }
  if (!grad_bias.defined() || cols == 0) return;
  const int vec = bf16_chunks(cols, {&dy}) ? 8 : 1;
  const dim3 grid(static_cast<unsigned>((cols + 32 * vec - 1) / (32 * vec)), static_cast<unsigned>(experts));
  const auto kernel = vec == 8 ? grouped_bias_grad_kernel<8> : grouped_bias_grad_kernel<1>;
  kernel<<<grid, 32 * kWarpsPerBlock, 0, current_stream()>>>(float_ref(dy, op, "dy"), offsets.data<int64_t>(), scale,
                                                             cols, float_ref(grad_bias, op, "grad_bias"));
  MF_CUDA_CHECK_LAUNCH();
}

void router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob,
                        Tensor& weight) {
  const int64_t rows = probs.size(0);
  if (rows == 0) return;
  router_weights_kernel<<<grid_for(rows, 256), 256, 0, current_stream()>>>(
      probs.data<float>(), index.data<int32_t>(), rows, static_cast<int>(probs.size(1)),
      static_cast<int>(index.size(1)), norm_topk_prob, weight.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                     bool norm_topk_prob, Tensor& dprobs) {
  check_dtype(probs, DType::kF32, "router_topk_bwd", "probs");
  check_dtype(topk.index, DType::kI32, "router_topk_bwd", "topk.index");
  check_dtype(dprobs, DType::kF32, "router_topk_bwd", "dprobs");
  const int64_t rows = probs.size(0), k = topk.index.size(1);
  MF_CHECK(k <= kMaxTopK, kUnsupported, "router_topk_bwd: k = ", k, " exceeds the CUDA limit of ",
           kMaxTopK);
  if (rows == 0) return;
  router_topk_bwd_kernel<<<grid_for(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
      float_ref(d_weight, "router_topk_bwd", "d_weight"), probs.data<float>(),
      topk.index.data<int32_t>(), rows, static_cast<int>(probs.size(1)), static_cast<int>(k),
      norm_topk_prob, dprobs.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void make_permutation(const Tensor& topk_index, int64_t num_experts, Permutation& p) {
  check_dtype(topk_index, DType::kI32, "make_permutation", "topk_index");
  check_dtype(p.offsets, DType::kI64, "make_permutation", "offsets");
  const int64_t pairs = topk_index.numel();
  const int k = static_cast<int>(topk_index.size(1));
  const int experts = static_cast<int>(num_experts);
  const int64_t chunks = (pairs + kChunk - 1) / kChunk;
  const size_t scatter_shared = sizeof(int32_t) * (kChunk / 32) * experts;
  MF_CHECK(scatter_shared <= 48 * 1024, kUnsupported, "make_permutation: ", num_experts,
           " experts exceed the CUDA counting sort's limit of ", 48 * 1024 / 32);
  if (chunks == 0) {  // no tokens: every expert is empty
    MF_CUDA_CHECK(cudaMemsetAsync(p.offsets.raw_data(), 0, p.offsets.nbytes(), current_stream()));
    return;
  }
  Tensor counts = Tensor::empty({chunks, num_experts}, DType::kI32, Device::kCUDA,
                                "make_permutation chunk counts");
  const int32_t* expert_of = topk_index.data<int32_t>();
  expert_count_kernel<<<static_cast<unsigned>(chunks), kChunk, sizeof(int32_t) * experts,
                        current_stream()>>>(expert_of, pairs, experts, counts.data<int32_t>());
  MF_CUDA_CHECK_LAUNCH();
  expert_scan_kernel<<<1, kScanThreads, sizeof(int64_t) * experts, current_stream()>>>(
      counts.data<int32_t>(), chunks, experts, p.source_row.numel(), p.offsets.data<int64_t>());
  MF_CUDA_CHECK_LAUNCH();
  expert_scatter_kernel<<<static_cast<unsigned>(chunks), kChunk, scatter_shared, current_stream()>>>(
      expert_of, pairs, experts, k, counts.data<int32_t>(), p.offsets.data<int64_t>(),
      p.source_row.data<int32_t>(), p.slot_of.data<int32_t>());
  MF_CUDA_CHECK_LAUNCH();
}

void permute(const Tensor& x, const Permutation& p, Tensor& sorted) {
  check_dtype(p.source_row, DType::kI32, "permute", "source_row");
  check_dtype(p.slot_of, DType::kI32, "permute", "slot_of");
  const int64_t rows = sorted.size(0), hidden = sorted.size(1), n = x.size(0);
  if (rows == 0 || hidden == 0) return;
  const FloatRef xr = float_ref(x, "permute", "x"), sr = float_ref(sorted, "permute", "sorted");
  const size_t row_bytes = hidden * x.element_size();
  const bool vec = x.dtype() == sorted.dtype() && row_bytes % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(xr.data) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(sr.data) % 16 == 0;
  if (vec)
    scatter_rows_vec_kernel<<<grid_for(n, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, current_stream()>>>(
        static_cast<const uint4*>(xr.data), p.slot_of.data<int32_t>(), static_cast<uint4*>(sr.data), n,
        static_cast<int>(p.slot_of.size(1)), rows, static_cast<int64_t>(row_bytes / 16));
  else
    gather_rows_kernel<<<grid_for(rows, 1), 256, 0, current_stream()>>>(xr, p.source_row.data<int32_t>(),
                                                                sr, rows, n, hidden);
  MF_CUDA_CHECK_LAUNCH();
}

void unpermute(const Tensor& sorted, const Permutation& p, Tensor& out) {
  check_dtype(p.slot_of, DType::kI32, "unpermute", "slot_of");
  const int64_t n = out.size(0), hidden = out.size(1);
  if (n == 0 || hidden == 0) return;
  auto kernel = bf16_chunks(hidden, {&sorted, &out}) ? unpermute_kernel<8> : unpermute_kernel<1>;
  kernel<<<grid_for(n, 1), 256, 0, current_stream()>>>(float_ref(sorted, "unpermute", "sorted"),
                                             p.slot_of.data<int32_t>(), float_ref(out, "unpermute", "out"),
                                             n, static_cast<int>(p.slot_of.size(1)), sorted.size(0), hidden);
  MF_CUDA_CHECK_LAUNCH();
}

void permute_weights(const Tensor& weight, const Permutation& p, Tensor& sorted) {
  move_weights(weight, p, sorted, /*to_sorted=*/true, "permute_weights");
}

void unpermute_weights(const Tensor& sorted, const Permutation& p, Tensor& weight) {
  move_weights(sorted, p, weight, /*to_sorted=*/false, "unpermute_weights");
}

namespace {

constexpr int kCountThreads = 256;
constexpr int kCountBlocksMax = 1024;  // grid-stride beyond: fewer block flushes of E atomics

// counts[e] += the pairs of valid rows routed to e: a shared int32 histogram per block, then one
// fp32 atomic per non-empty expert (integers below 2^24, so the order of the adds is exact).
__global__ void expert_counts_kernel(const int32_t* expert_of, const float* row_valid,
                                     int64_t pairs, int k, int experts, float* counts) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int e = expert_of[i];
    if (e < 0 || e >= experts) __trap();  // indices come from router_topk
    if (row_valid == nullptr || row_valid[i / k] != 0.0f) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    if (hist[e] != 0) atomicAdd(&counts[e], static_cast<float>(hist[e]));
}

// One thread per token: the ranks of its experts into its row of `rank`, and into a per-block
// histogram of (tokens, slots) per rank that is then added into counts [P, 2].
__global__ void expert_ranks_kernel(const int32_t* expert_of, int64_t tokens, int k, int64_t experts, int ranks,
                                    int32_t* rank, unsigned long long* counts) {
  extern __shared__ unsigned hist2[];  // [P][2]
  for (int i = threadIdx.x; i < 2 * ranks; i += blockDim.x) hist2[i] = 0;
  __syncthreads();
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < tokens; t += int64_t(gridDim.x) * blockDim.x) {
    int32_t* row = rank + t * ranks;
    for (int p = 0; p < ranks; ++p) row[p] = -1;
    for (int j = 0; j < k; ++j) {
      const int e = expert_of[t * k + j];
      if (e < 0 || e >= experts) __trap();  // indices come from the routers
      const int p = static_cast<int>(expert_rank_of(e, experts, ranks));
      bool first = true;  // the token goes to p once, however many of its experts are there
      for (int i = 0; i < j; ++i) first &= expert_rank_of(expert_of[t * k + i], experts, ranks) != p;
      if (first) atomicAdd(&hist2[2 * p], 1u);
      atomicAdd(&hist2[2 * p + 1], 1u);
      row[p] = p;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * ranks; i += blockDim.x)
    if (hist2[i] != 0) atomicAdd(&counts[i], static_cast<unsigned long long>(hist2[i]));
}

// One thread per (token, rank) pair: the token's row sent to that rank, if any, gets its k slots
// as the rank numbers its experts.
__global__ void sent_expert_slots_kernel(const int32_t* expert_of, const int32_t* row_of, int64_t tokens, int k,
                                         int64_t experts, int ranks, int64_t rows, int32_t* slots) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < tokens * ranks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = row_of[i], t = i / ranks;
    const int p = static_cast<int>(i % ranks);
    if (r < -1 || r >= rows) __trap();  // rows come from make_permutation
    if (r < 0) continue;
    for (int j = 0; j < k; ++j) {
      const int e = expert_of[t * k + j];
      if (e < 0 || e >= experts) __trap();
      slots[r * k + j] = expert_rank_of(e, experts, ranks) == p
                             ? static_cast<int32_t>(e - expert_rank_begin(p, experts, ranks))
                             : -1;
    }
  }
}

}  // namespace

void expert_counts(const Tensor& topk_index, const Tensor& row_valid, Tensor& counts) {
  check_dtype(topk_index, DType::kI32, "expert_counts", "topk_index");
  check_dtype(counts, DType::kF32, "expert_counts", "counts");
  if (row_valid.defined()) check_dtype(row_valid, DType::kF32, "expert_counts", "row_valid");
  const int64_t pairs = topk_index.numel();
  const int experts = static_cast<int>(counts.numel());
  const size_t shared = sizeof(int32_t) * static_cast<size_t>(experts);
  MF_CHECK(shared <= 48 * 1024, kUnsupported, "expert_counts: ", experts,
           " experts exceed the CUDA histogram's limit of ", 48 * 1024 / sizeof(int32_t));
  if (pairs == 0) return;
  expert_counts_kernel<<<grid_for(pairs, kCountThreads, kCountBlocksMax), kCountThreads, shared,
                         current_stream()>>>(topk_index.data<int32_t>(),
                                    row_valid.defined() ? row_valid.data<float>() : nullptr, pairs,
                                    static_cast<int>(topk_index.size(1)), experts,
                                    counts.data<float>());
  MF_CUDA_CHECK_LAUNCH();
}

void expert_ranks(const Tensor& topk_index, int64_t num_experts, ExpertRanks& out) {
  check_dtype(topk_index, DType::kI32, "expert_ranks", "topk_index");
  const int64_t tokens = topk_index.size(0);
  const int ranks = static_cast<int>(out.rank.size(1));
  MF_CHECK(2 * ranks * sizeof(unsigned) <= 48 * 1024, kUnsupported, "expert_ranks: ", ranks,
           " ranks exceed the CUDA histogram's limit of ", 48 * 1024 / (2 * sizeof(unsigned)));
  MF_CUDA_CHECK(cudaMemsetAsync(out.counts.raw_data(), 0, out.counts.nbytes(), current_stream()));
  if (tokens == 0) return;
  expert_ranks_kernel<<<grid_for(tokens, kCountThreads, kCountBlocksMax), kCountThreads, 2 * ranks * sizeof(unsigned),
                        current_stream()>>>(topk_index.data<int32_t>(), tokens, static_cast<int>(topk_index.size(1)),
                                            num_experts, ranks, out.rank.data<int32_t>(),
                                            static_cast<unsigned long long*>(out.counts.raw_data()));
  MF_CUDA_CHECK_LAUNCH();
}

void sent_expert_slots(const Tensor& topk_index, const Permutation& send, int64_t num_experts, Tensor& slots) {
  check_dtype(topk_index, DType::kI32, "sent_expert_slots", "topk_index");
  const int64_t tokens = topk_index.size(0), pairs = send.slot_of.numel();
  if (pairs == 0 || slots.numel() == 0) return;
  sent_expert_slots_kernel<<<grid_for(pairs, 256), 256, 0, current_stream()>>>(
      topk_index.data<int32_t>(), send.slot_of.data<int32_t>(), tokens, static_cast<int>(topk_index.size(1)),
      num_experts, static_cast<int>(send.slot_of.size(1)), slots.size(0), slots.data<int32_t>());
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
