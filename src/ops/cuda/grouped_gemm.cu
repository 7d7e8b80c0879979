// Grouped (per-expert) matrix products on CUDA. The CUTLASS SM90 kernels (grouped_gemm_cutlass.cu)
// take the usual case: bf16 operands, feature sizes multiples of 8, bf16 outputs and an fp32
// or bf16 weight gradient. Everything else runs the simple kernel here: one tiled bf16 tensor-core kernel
// (WMMA 16x16x16, fp32 accumulation) whose blocks find their expert and row tile on the device
// from the offsets. Neither path sends per-expert sizes to the host. The simple kernel takes any
// shape; it is correct but not tuned, so the first call of each shape it takes is logged.
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <tuple>

#include "core/log.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm_cutlass.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kThreads = 128;  // 4 warps, each a 32x32 quarter of the tile
constexpr int kPadA = 8, kPadB = 8, kPadC = 4;  // keep WMMA's 32-byte alignment, spread banks

// C(i, j) (+)= sum_kk A(i, kk) B(kk, j) for each expert. Element strides of A and B are general so
// one kernel serves y = x w^T, dx = dy w and dw = dy^T x.
//   rows_grouped (forward, dx): the output rows offsets[e] .. offsets[e+1] use expert e's B.
//   otherwise (dw): the inner dimension runs over expert e's rows; output e is [n_rows, n_cols].
struct GroupedProblem {
  const __nv_bfloat16* a;
  const __nv_bfloat16* b;
  FloatRef c;
  const int64_t* offsets;
  int experts;
  bool rows_grouped;
  bool accumulate;       // C += product (dw) instead of C = product
  int64_t n_rows;        // dw: rows of each output (N); forward/dx: unused (offsets decide)
  int64_t n_cols;        // columns of the output
  int64_t inner;         // forward/dx: the inner size; dw: unused (offsets decide)
  int64_t a_i, a_k;      // A(i, kk) = a[row(i) * a_i + kk * a_k] (rows_grouped: row = global row)
  int64_t b_k, b_j;      // B(kk, j) = b_expert[kk * b_k + j * b_j]
  int64_t b_expert;      // forward/dx: elements between experts' B
};

// forward/dx: which expert and which of its row tiles block `tile` covers, found by a warp scan
// over the experts' tile counts. Returns false past the last tile.
__device__ bool find_row_tile(const int64_t* offsets, int experts, int64_t tile, int* expert,
                              int64_t* row0, int64_t* row_end) {
  __shared__ int s_expert;
  __shared__ int64_t s_row0, s_row_end;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int64_t before = 0;  // tiles of the experts already scanned
    int found = -1;
    for (int e0 = 0; e0 < experts && found < 0; e0 += 32) {
      const int e = e0 + lane;
      int64_t tiles = 0, start = 0, end = 0;
      if (e < experts) {
        start = offsets[e];
        end = offsets[e + 1];
        tiles = (end - start + kBM - 1) / kBM;
      }
      int64_t inclusive = tiles;
      for (int o = 1; o < 32; o <<= 1) {
        const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += up;
      }
      const bool mine = e < experts && tile >= before + inclusive - tiles && tile < before + inclusive;
      const unsigned hit = __ballot_sync(0xffffffffu, mine);
      if (mine) {
        s_expert = e;
        s_row0 = start + (tile - (before + inclusive - tiles)) * kBM;
        s_row_end = end;
      }
      if (hit != 0) found = 1;
      before += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    if (lane == 0 && found < 0) s_expert = -1;
  }
  __syncthreads();
  *expert = s_expert;
  *row0 = s_row0;
  *row_end = s_row_end;
  return s_expert >= 0;
}

__global__ void __launch_bounds__(kThreads) grouped_gemm_kernel(GroupedProblem p) {
  using namespace nvcuda;
  __shared__ __align__(128) __nv_bfloat16 as[kBM][kBK + kPadA];
  __shared__ __align__(128) __nv_bfloat16 bs[kBK][kBN + kPadB];
  __shared__ __align__(128) float cs[kBM][kBN + kPadC];

  // The block's problem: A rows [i0, i_end), inner range [k0, k_end), B of `expert`, C rows.
  int expert;
  int64_t i0, i_end, k0, k_end;
  const int64_t j0 = blockIdx.y * int64_t(kBN);
  if (p.rows_grouped) {
    int64_t row_end;
    if (!find_row_tile(p.offsets, p.experts, blockIdx.x, &expert, &i0, &row_end)) return;
    i_end = min(i0 + kBM, row_end);
    k0 = 0;
    k_end = p.inner;
  } else {
    expert = blockIdx.z;
    k0 = p.offsets[expert];
    k_end = p.offsets[expert + 1];
    if (k0 == k_end) return;  // no rows: grad_w[e] unchanged
    i0 = blockIdx.x * int64_t(kBM);
    i_end = min(i0 + kBM, p.n_rows);
  }
  const __nv_bfloat16* b = p.b + (p.rows_grouped ? expert * p.b_expert : 0);
  const bool a_k_contiguous = p.a_k == 1, b_j_contiguous = p.b_j == 1;
  const __nv_bfloat16 zero = __float2bfloat16(0.0f);

  const int warp = threadIdx.x >> 5, warp_row = (warp >> 1) * 32, warp_col = (warp & 1) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int fj = 0; fj < 2; ++fj) wmma::fill_fragment(acc[fi][fj], 0.0f);

  for (int64_t kt = k0; kt < k_end; kt += kBK) {
    // Stage the A and B tiles, zero-padded, with consecutive threads on the contiguous dimension.
    for (int idx = threadIdx.x; idx < kBM * kBK; idx += kThreads) {
      const int r = a_k_contiguous ? idx / kBK : idx % kBM;
      const int kk = a_k_contiguous ? idx % kBK : idx / kBM;
      const int64_t i = i0 + r, kg = kt + kk;
      as[r][kk] = (i < i_end && kg < k_end) ? p.a[i * p.a_i + kg * p.a_k] : zero;
    }
    for (int idx = threadIdx.x; idx < kBK * kBN; idx += kThreads) {
      const int kk = b_j_contiguous ? idx / kBN : idx % kBK;
      const int c = b_j_contiguous ? idx % kBN : idx / kBK;
      const int64_t j = j0 + c, kg = kt + kk;
      bs[kk][c] = (j < p.n_cols && kg < k_end) ? b[kg * p.b_k + j * p.b_j] : zero;
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        wmma::load_matrix_sync(fa[f], &as[warp_row + 16 * f][ks], kBK + kPadA);
        wmma::load_matrix_sync(fb[f], &bs[ks][warp_col + 16 * f], kBN + kPadB);
      }
#pragma unroll
      for (int fi = 0; fi < 2; ++fi)
#pragma unroll
        for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int fj = 0; fj < 2; ++fj)
      wmma::store_matrix_sync(&cs[warp_row + 16 * fi][warp_col + 16 * fj], acc[fi][fj],
                              kBN + kPadC, wmma::mem_row_major);
  __syncthreads();
  // Output row i of the tile: a global row (forward/dx) or row i of expert e's matrix (dw).
  const int64_t c_base = p.rows_grouped ? 0 : expert * p.n_rows * p.n_cols;
  for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreads) {
    const int r = idx / kBN, c = idx % kBN;
    const int64_t i = i0 + r, j = j0 + c;
    if (i >= i_end || j >= p.n_cols) continue;
    const int64_t at = c_base + i * p.n_cols + j;
    p.c.store(at, p.accumulate ? p.c.load(at) + cs[r][c] : cs[r][c]);
  }
}

// Expert e's [N, K] slice of grad zeroed where e has no rows; blockIdx.y is the expert.
__global__ void zero_experts_without_rows_kernel(FloatRef grad, const int64_t* offsets, int64_t per_expert) {
  const int64_t e = blockIdx.y;
  if (offsets[e + 1] != offsets[e]) return;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < per_expert; i += int64_t(gridDim.x) * blockDim.x)
    grad.store(e * per_expert + i, 0.0f);
}

// The CUTLASS weight gradient skips experts without rows; written without accumulation, their
// gradients must still read zero.
void zero_experts_without_rows(const Tensor& offsets, Tensor& grad_w) {
  const int64_t experts = grad_w.size(0), per_expert = grad_w.numel() / std::max<int64_t>(1, experts);
  if (experts == 0 || per_expert == 0) return;
  constexpr unsigned kBlocksPerExpert = 32;  // a quick exit for experts with rows, the usual case
  const dim3 grid(std::min<unsigned>(kBlocksPerExpert, grid_for(per_expert, 256)), static_cast<unsigned>(experts));
  zero_experts_without_rows_kernel<<<grid, 256, 0, current_stream()>>>(
      float_ref(grad_w, "grouped_linear_dw", "grad_w"), offsets.data<int64_t>(), per_expert);
  MF_CUDA_CHECK_LAUNCH();
}

const __nv_bfloat16* bf16_data(const Tensor& t, const char* op, const char* name) {
  check_dtype(t, DType::kBF16, op, name);
  return static_cast<const __nv_bfloat16*>(t.raw_data());
}

// A model whose sizes miss CUTLASS's constraints would otherwise train several times slower in
// its experts without a word: warn once per op, shape, dtypes and alignment.
void warn_untuned(const char* op, const Tensor& a, const Tensor& b, const Tensor& out,
                  int64_t experts, int64_t n, int64_t k) {
  static std::mutex mutex;
  static std::set<std::tuple<std::string, int64_t, int64_t, int64_t, DType, DType, DType, bool>> seen;
  const bool aligned = aligned16(a) && aligned16(b) && aligned16(out);
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!seen.emplace(op, experts, n, k, a.dtype(), b.dtype(), out.dtype(), aligned).second) return;
  }
  MF_LOG_WARN(op, ": the CUTLASS grouped GEMM does not take ", experts, " experts of [N, K] = [", n,
              ", ", k, "] with operands ", dtype_torch_name(a.dtype()), " and ",
              dtype_torch_name(b.dtype()), ", output ", dtype_torch_name(out.dtype()),
              aligned ? "" : ", not 16-byte aligned",
              " (it needs bfloat16 operands, N and K multiples of 8, 16-byte aligned tensors); "
              "running the untuned kernel, which is slower");
}

void launch(const GroupedProblem& p, int64_t total_rows) {
  dim3 grid;
  if (p.rows_grouped) {
    // Upper bound on the row tiles: each expert wastes at most one partial tile.
    const int64_t tiles = (total_rows + kBM - 1) / kBM + p.experts;
    grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>((p.n_cols + kBN - 1) / kBN));
  } else {
    grid = dim3(static_cast<unsigned>((p.n_rows + kBM - 1) / kBM),
                static_cast<unsigned>((p.n_cols + kBN - 1) / kBN), static_cast<unsigned>(p.experts));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  grouped_gemm_kernel<<<grid, kThreads, 0, current_stream()>>>(p);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace

// y_e = x_e w_e^T (+ bias[e]): A = x [M, K], B(kk, j) = w[e][j][kk].
void grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias, Tensor& y) {
  check_dtype(offsets, DType::kI64, "grouped_linear", "offsets");
  if (cutlass_grouped_linear(x, w, offsets, bias, y)) return;
  if (bias.defined()) {  // the product, then the bias as a pass of its own
    grouped_linear(x, w, offsets, Tensor(), y);
    return grouped_bias_add(y, bias, offsets, Tensor());
  }
  const int64_t experts = w.size(0), n = w.size(1), k = w.size(2);
  warn_untuned("grouped_linear", x, w, y, experts, n, k);
  GroupedProblem p{bf16_data(x, "grouped_linear", "x"), bf16_data(w, "grouped_linear", "w"),
                   float_ref(y, "grouped_linear", "y"), offsets.data<int64_t>(),
                   static_cast<int>(experts), true, false, 0, n, k, k, 1, 1, k, n * k};
  launch(p, x.size(0));
}

// The gather in the product's loads where the CUTLASS kernel takes the shape, else a permuted temporary.
void gathered_grouped_linear(const Tensor& x, const Permutation& p, const Tensor& w, Tensor& y) {
  check_dtype(p.offsets, DType::kI64, "gathered_grouped_linear", "offsets");
  if (cutlass_gathered_grouped_linear(x, p.source_row, w, p.offsets, y)) return;
  Tensor sorted = Tensor::empty({p.source_row.numel(), x.size(1)}, x.dtype(), Device::kCUDA, "gathered rows");
  permute(x, p, sorted);
  grouped_linear(sorted, w, p.offsets, Tensor(), y);
}

// dx_e = dy_e w_e: A = dy [M, N], B(kk, j) = w[e][kk][j].
void grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dx) {
  check_dtype(offsets, DType::kI64, "grouped_linear_dx", "offsets");
  if (cutlass_grouped_linear_dx(dy, w, offsets, dx)) return;
  const int64_t experts = w.size(0), n = w.size(1), k = w.size(2);
  warn_untuned("grouped_linear_dx", dy, w, dx, experts, n, k);
  GroupedProblem p{bf16_data(dy, "grouped_linear_dx", "dy"), bf16_data(w, "grouped_linear_dx", "w"),
                   float_ref(dx, "grouped_linear_dx", "dx"), offsets.data<int64_t>(),
                   static_cast<int>(experts), true, false, 0, k, n, n, 1, k, 1, n * k};
  launch(p, dy.size(0));
}

// grad_w[e] (+)= dy_e^T x_e: A(i, kk) = dy[kk][i] over expert e's rows kk, B(kk, j) = x[kk][j].
void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w, bool accumulate) {
  check_dtype(offsets, DType::kI64, "grouped_linear_dw", "offsets");
  if (cutlass_grouped_linear_dw(dy, x, offsets, grad_w, accumulate)) {
    if (!accumulate) zero_experts_without_rows(offsets, grad_w);
    return;
  }
  if (!accumulate) grad_w.fill_zero();  // the simple kernel adds, and leaves experts without rows alone
  const int64_t experts = grad_w.size(0), n = grad_w.size(1), k = grad_w.size(2);
  warn_untuned("grouped_linear_dw", dy, x, grad_w, experts, n, k);
  GroupedProblem p{bf16_data(dy, "grouped_linear_dw", "dy"), bf16_data(x, "grouped_linear_dw", "x"),
                   float_ref(grad_w, "grouped_linear_dw", "grad_w"), offsets.data<int64_t>(),
                   static_cast<int>(experts), false, true, n, k, 0, 1, n, k, 1, 0};
  launch(p, dy.size(0));
}

}  // namespace moeforge::ops::cuda
