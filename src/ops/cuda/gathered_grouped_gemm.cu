// The experts' first product and its weight gradient with the token gather folded into their loads,
// so that the MoE block's permuted input (x_sorted, 512 MiB a Qwen3 layer at 4 x 4096 tokens) is
// neither written nor kept:
//   forward  y[r] = x[rows[r]] w_e^T                 for expert e's sorted rows r (offsets[e] .. offsets[e+1])
//   dw       gw_e (+)= sum_r dy[r]^T x[rows[r]]      the gathered rows are the product's k
//
// Hopper's TMA cannot gather rows (its row gather is Blackwell's), so one producer warp group loads
// the gathered operand with cp.async, each thread its 16-byte pieces of the rows it owns, and completes
// each pipeline stage with cp.async's mbarrier arrive. The other operand, which needs no gather (the
// forward's weights, the weight gradient's dy), comes by TMA into the same stage: one more arrival, with
// the TMA's bytes. With both operands by cp.async (bench/RESULTS.md, 2026-12-07, an H100), Qwen3's gate/up
// product took 74 ms a step against the TMA kernel's 43 and its weight gradient 121 against 56: the
// bytes a multiprocessor keeps in flight through its L1 are the likely limit. Two consumer warp groups
// run CUTLASS's SM90 wgmma mainloop (MainloopSm90CpAsyncGmmaWarpSpecialized) on one tile and store (or
// add into) the output directly. The kernel is persistent: block b takes tiles b, b + grid, ... of one list over all
// experts' tiles, which every block works out from the offsets itself, so nothing synchronises the host.
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/pipeline/pipeline.hpp>

#include "ops/cuda/common.cuh"
#include "ops/cuda/grouped_gemm_cutlass.h"

namespace moeforge::ops::cuda {
namespace {

using namespace cute;
using BF16 = cutlass::bfloat16_t;

constexpr int kMaxExperts = 1024;  // the tile list's prefix sums live in shared memory
constexpr int kProducerThreads = 128;

struct GatherArgs {
  const __nv_bfloat16* x;   // [tokens, K]
  const int32_t* rows;      // [R]: the token row of each sorted row
  const __nv_bfloat16* w;   // forward: [E, N, K]
  const __nv_bfloat16* dy;  // dw: [R, N]
  const int64_t* offsets;   // [E + 1]
  int64_t sorted_rows;      // R
  void* out;                // forward: y [R, N] bf16; dw: grad_w [E, N, K] bf16 or fp32
  int experts, n, k;        // the weight's [N, K]
  bool accumulate;          // dw: add into grad_w
};

// Tile t of the list: its expert, the expert's first sorted row and row count, and the tile's first
// row and column of the expert's output (forward [rows, N], dw [N, K]).
struct TileCoord {
  int expert;
  int64_t row0;
  int rows, m0, n0;
};

// The TMA of a product's plain operand: (kTileRows, kBK) tiles of `tensor` into one stage of `SmemLayout`.
template <class SmemLayout, int kTileRows, int kBK, class Shape, class Stride>
auto operand_tma(const __nv_bfloat16* data, Shape shape, Stride stride) {
  const cute::Tensor tensor = make_tensor(make_gmem_ptr(reinterpret_cast<const BF16*>(data)), shape, stride);
  return make_tma_copy(SM90_TMA_LOAD{}, tensor, SmemLayout{}(_, _, Int<0>{}), make_shape(Int<kTileRows>{}, Int<kBK>{}),
                       Int<1>{});
}

// A tiles x B tiles of the forward: the expert's rows (gathered, A) against the weight's rows (B, by TMA
// from the weights [E, N, K] seen as (N, K, E), so that rows past N read as zeros).
struct Forward {
  using LayoutA = cutlass::layout::RowMajor;     // x rows, K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // w_e [N, K], K contiguous
  static __device__ int m_extent(const GatherArgs&, int rows) { return rows; }
  static __device__ int n_extent(const GatherArgs& a) { return a.n; }
  template <int kBK>
  static __device__ int k_tiles(const GatherArgs& a, const TileCoord&) { return a.k / kBK; }
  template <class Mainloop, int kBM, int kBN, int kBK>
  static auto tma(const GatherArgs& a) {
    return operand_tma<typename Mainloop::SmemLayoutB, kBN, kBK>(a.w, make_shape(a.n, a.k, a.experts),
                                                                  make_stride(int64_t(a.k), _1{}, int64_t(a.n) * a.k));
  }
};

// The weight gradient: the weight's rows (dy's columns, A, by TMA) against its columns (x's, gathered, B),
// k over the expert's rows.
struct WeightGrad {
  using LayoutA = cutlass::layout::ColumnMajor;  // dy^T: A(i, r) = dy[r][i], i contiguous
  using LayoutB = cutlass::layout::RowMajor;     // B(j, r) = x[rows[r]][j], j contiguous
  static __device__ int m_extent(const GatherArgs& a, int rows) { return rows > 0 ? a.n : 0; }
  static __device__ int n_extent(const GatherArgs& a) { return a.k; }
  template <int kBK>
  static __device__ int k_tiles(const GatherArgs&, const TileCoord& c) { return (c.rows + kBK - 1) / kBK; }
  template <class Mainloop, int kBM, int kBN, int kBK>
  static auto tma(const GatherArgs& a) {
    return operand_tma<typename Mainloop::SmemLayoutA, kBM, kBK>(a.dy, make_shape(a.n, a.sorted_rows),
                                                                  make_stride(_1{}, int64_t(a.n)));
  }
};

// The ping-pong schedule's turns (below); the cooperative one needs none.
struct NoTurns {
  struct SharedStorage {};
  struct Params {
    uint32_t group_id, group_size;
  };
  __device__ NoTurns(SharedStorage&, const Params&) {}
  __device__ void wait() {}
  __device__ void arrive() {}
};

// Cooperative: both consumer warp groups on one tile. Ping-pong: each warp group a whole tile, the two
// taking the block's tiles in turn, so that one's epilogue overlaps the other's products. Their
// mainloops take turns too (Turns): a stage's full barrier is waited on by parity, which tells apart
// only its current and previous phase, so no warp group may wait on a stage before the waits on its
// earlier fills, which the other warp group's tile holds, have passed (without the turns a block of
// several tiles hung on an H100).
template <class Product, class TileShape, class Schedule>
struct GatherGemm {
  static constexpr int kBM = size<0>(TileShape{}), kBN = size<1>(TileShape{}), kBK = size<2>(TileShape{});
  static constexpr bool kPingpong = std::is_same_v<Schedule, cutlass::gemm::KernelCpAsyncWarpSpecializedPingpong>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, BF16, typename Product::LayoutA, 8, BF16,
      typename Product::LayoutB, 8, float, TileShape, cute::Shape<_1, _1, _1>,
      cutlass::gemm::collective::StageCountAutoCarveout<kMaxExperts * 4 + 128>, Schedule>::CollectiveOp;
  using Pipeline = typename Mainloop::MainloopPipeline;
  using TiledMma = typename Mainloop::TiledMma;
  static constexpr int kTileThreads = size(TiledMma{});  // the consumers of one tile (and of a stage)
  static constexpr int kConsumerThreads = kPingpong ? 2 * kTileThreads : kTileThreads;
  static constexpr int kThreads = kProducerThreads + kConsumerThreads;
  using Turns = cute::conditional_t<kPingpong, cutlass::OrderedSequenceBarrier<1, 2>, NoTurns>;
  using Tma = decltype(Product::template tma<Mainloop, kBM, kBN, kBK>(GatherArgs{}));
  static constexpr int kProducerArrivals = kProducerThreads + 1;  // + the TMA's

  struct SharedStorage {
    typename Mainloop::TensorStorage tensors;
    alignas(16) typename Pipeline::SharedStorage pipeline;
    alignas(16) typename Turns::SharedStorage turns;
    int tile_start[kMaxExperts + 1];  // tiles of experts before e; [experts] = all
  };
};

// Expert e's tile count at every e, summed into tile_start (one warp).
template <class Product, int kBM, int kBN>
__device__ void make_tile_list(const GatherArgs& a, int* tile_start) {
  const int lane = threadIdx.x % 32;
  const int n_tiles = (Product::n_extent(a) + kBN - 1) / kBN;
  int before = 0;
  if (lane == 0) tile_start[0] = 0;
  for (int e0 = 0; e0 < a.experts; e0 += 32) {
    const int e = e0 + lane;
    int tiles = 0;
    if (e < a.experts) {
      const int rows = static_cast<int>(a.offsets[e + 1] - a.offsets[e]);
      tiles = (Product::m_extent(a, rows) + kBM - 1) / kBM * n_tiles;
    }
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, tiles, d);
      if (lane >= d) tiles += up;
    }
    if (e < a.experts) tile_start[e + 1] = before + tiles;
    before += __shfl_sync(0xffffffffu, tiles, 31);
  }
}

template <class Product, int kBM, int kBN>
__device__ TileCoord tile_coord(const GatherArgs& a, const int* tile_start, int t) {
  int lo = 0, hi = a.experts - 1;  // the last e with tile_start[e] <= t
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_start[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  const int n_tiles = (Product::n_extent(a) + kBN - 1) / kBN;
  const int local = t - tile_start[lo];
  TileCoord c;
  c.expert = lo;
  c.row0 = a.offsets[lo];
  c.rows = static_cast<int>(a.offsets[lo + 1] - c.row0);
  c.m0 = local / n_tiles * kBM;  // column tiles fastest: neighbouring blocks share their A rows
  c.n0 = local % n_tiles * kBN;
  return c;
}

// Thread 0's share of a stage: the plain operand's tile k of `tiles` ((rows, kBK, k) coordinates of the
// TMA's tensor) into `stage` of `smem`, its bytes announced on the stage's full barrier.
template <class Tma, class Tiles, class Smem>
__device__ void start_tma(const Tma& tma, uint64_t* full, const Tiles& tiles, Smem& smem, int kt, int stage) {
  constexpr uint32_t kBytes = size<0>(Tiles{}) * size<1>(Tiles{}) * sizeof(BF16);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(full, kBytes);
  auto [from, to] = tma_partition(tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(smem), group_modes<0, 2>(tiles));
  copy(tma.with(*full), from(_, kt), to(_, stage));
}

// The producer's copies of one tile, stage by stage: thread 0 starts the plain operand's TMA, and every
// thread copies 16-byte pieces of the gathered operand. Forward: piece p of rows t / 8 + 16 i of the
// gathered rows' tile (64-column k steps, 8 pieces a row). Weight gradient: piece p of the 16 pieces
// along N of k rows t / 16 + 8 i.
template <class Product, class G>
struct TileLoader;

template <class G>
struct TileLoader<Forward, G> {
  static constexpr int kPieces = G::kBK / 8, kStep = kProducerThreads / kPieces;
  static constexpr int kRowsA = G::kBM / kStep;
  const __nv_bfloat16* src_a[kRowsA];
  bool valid_a[kRowsA];
  int piece, first_row, expert, n_tile;

  __device__ TileLoader(const GatherArgs& a, const TileCoord& c) {
    piece = threadIdx.x % kPieces;
    first_row = threadIdx.x / kPieces;
    for (int i = 0; i < kRowsA; ++i) {  // rows past the expert's end read as zeros
      const int m = c.m0 + first_row + kStep * i;
      valid_a[i] = m < c.rows;
      src_a[i] = a.x + (valid_a[i] ? int64_t(a.rows[c.row0 + m]) * a.k : 0) + piece * 8;
    }
    expert = c.expert;
    n_tile = c.n0 / G::kBN;
  }

  template <class SA, class SB>
  __device__ void load(const GatherArgs& a, const typename G::Tma& tma, uint64_t* full, int kt, SA& sA, SB& sB,
                       int stage) const {
    if (threadIdx.x == 0) {
      const cute::Tensor weights = tma.get_tma_tensor(make_shape(a.n, a.k, a.experts));
      start_tma(tma, full, local_tile(weights, make_shape(Int<G::kBN>{}, Int<G::kBK>{}), make_coord(n_tile, _, expert)),
                sB, kt, stage);
    }
    const int k0 = kt * G::kBK;
    for (int i = 0; i < kRowsA; ++i)
      copy_async16_or_zero(&sA(first_row + kStep * i, piece * 8, stage), src_a[i] + k0, valid_a[i]);
  }
};

template <class G>
struct TileLoader<WeightGrad, G> {
  static constexpr int kPieces = G::kBN / 8, kStep = kProducerThreads / kPieces, kRows = G::kBK / kStep;
  const int32_t* rows;
  const __nv_bfloat16* x;
  int64_t row0;
  int piece, first_row, rows_left, m_tile;

  __device__ TileLoader(const GatherArgs& a, const TileCoord& c) {
    piece = threadIdx.x % kPieces;
    first_row = threadIdx.x / kPieces;
    x = a.x + c.n0 + piece * 8;
    rows = a.rows + c.row0;
    row0 = c.row0;
    rows_left = c.rows;
    m_tile = c.m0 / G::kBM;
  }

  // k rows past the expert's end read as zeros from x, so that the TMA's dy rows there (the next
  // expert's, or zeros past R) add nothing; N and K are multiples of the tile (can_gather).
  template <class SA, class SB>
  __device__ void load(const GatherArgs& a, const typename G::Tma& tma, uint64_t* full, int kt, SA& sA, SB& sB,
                       int stage) const {
    if (threadIdx.x == 0) {
      const cute::Tensor dy_t = domain_offset(make_coord(0, row0), tma.get_tma_tensor(make_shape(a.n, a.sorted_rows)));
      start_tma(tma, full, local_tile(dy_t, make_shape(Int<G::kBM>{}, Int<G::kBK>{}), make_coord(m_tile, _)), sA, kt,
                stage);
    }
    for (int i = 0; i < kRows; ++i) {
      const int r = kt * G::kBK + first_row + kStep * i;
      const bool valid = r < rows_left;
      copy_async16_or_zero(&sB(piece * 8, first_row + kStep * i, stage), valid ? x + int64_t(rows[r]) * a.k : a.x,
                           valid);
    }
  }
};

// Adjacent accumulator values are adjacent columns of one row (wgmma's C layout): stored in pairs.
template <class Acc, class Coords>
__device__ void store_forward(const GatherArgs& a, const TileCoord& c, const Acc& acc, const Coords& coords) {
  auto* out = static_cast<__nv_bfloat16*>(a.out) + (c.row0 + c.m0) * a.n + c.n0;
  for (int i = 0; i < size(acc); i += 2) {
    const int m = get<0>(coords(i)), n = get<1>(coords(i));
    if (c.m0 + m < c.rows && c.n0 + n < a.n)
      *reinterpret_cast<__nv_bfloat162*>(out + int64_t(m) * a.n + n) = __floats2bfloat162_rn(acc(i), acc(i + 1));
  }
}

template <class GradT, class Acc, class Coords>
__device__ void store_weight_grad(const GatherArgs& a, const TileCoord& c, const Acc& acc, const Coords& coords) {
  GradT* out = static_cast<GradT*>(a.out) + (int64_t(c.expert) * a.n + c.m0) * a.k + c.n0;
  for (int i = 0; i < size(acc); i += 2) {
    const int m = get<0>(coords(i)), n = get<1>(coords(i));
    GradT* at = out + int64_t(m) * a.k + n;
    float2 v = make_float2(acc(i), acc(i + 1));
    if constexpr (std::is_same_v<GradT, float>) {
      if (a.accumulate) {
        const float2 old = *reinterpret_cast<const float2*>(at);
        v.x += old.x;
        v.y += old.y;
      }
      *reinterpret_cast<float2*>(at) = v;
    } else {
      if (a.accumulate) {
        const float2 old = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(at));
        v.x += old.x;
        v.y += old.y;
      }
      *reinterpret_cast<__nv_bfloat162*>(at) = __float22bfloat162_rn(v);
    }
  }
}

template <class Product, class G, class GradT>
__global__ void __launch_bounds__(G::kThreads, 1)
    gathered_grouped_gemm_kernel(GatherArgs a, const __grid_constant__ typename G::Tma tma) {
  using Mainloop = typename G::Mainloop;
  using Pipeline = typename G::Pipeline;
  constexpr int kBM = G::kBM, kBN = G::kBN, kBK = G::kBK;
  extern __shared__ __align__(128) char smem[];
  auto& shared = *reinterpret_cast<typename G::SharedStorage*>(smem);

  const bool producer = threadIdx.x < kProducerThreads;
  typename Pipeline::Params pipeline_params;
  pipeline_params.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipeline_params.producer_arv_count = G::kProducerArrivals;
  pipeline_params.consumer_arv_count = G::kTileThreads;
  Pipeline pipeline(shared.pipeline, pipeline_params);
  const int consumer = threadIdx.x - kProducerThreads;  // negative in the producer
  const int group = producer ? 0 : consumer / G::kTileThreads;
  typename G::Turns turns(shared.turns, {static_cast<uint32_t>(group), static_cast<uint32_t>(G::kTileThreads)});
  if (threadIdx.x < 32) make_tile_list<Product, kBM, kBN>(a, shared.tile_start);
  __syncthreads();

  const int tiles = shared.tile_start[a.experts];
  if (producer) {
    cute::Tensor sA = make_tensor(make_smem_ptr(shared.tensors.smem_A.data()), typename Mainloop::SmemLayoutA{});
    cute::Tensor sB = make_tensor(make_smem_ptr(shared.tensors.smem_B.data()), typename Mainloop::SmemLayoutB{});
    auto write = cutlass::make_producer_start_state<Pipeline>();
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      const TileCoord c = tile_coord<Product, kBM, kBN>(a, shared.tile_start, t);
      const TileLoader<Product, G> loader(a, c);
      const int k_tiles = Product::template k_tiles<kBK>(a, c);
      for (int kt = 0; kt < k_tiles; ++kt) {
        pipeline.producer_acquire(write);
        auto* full = reinterpret_cast<uint64_t*>(pipeline.producer_get_barrier(write));
        loader.load(a, tma, full, kt, sA, sB, write.index());
        pipeline.producer_commit(write, cutlass::arch::cpasync_barrier_arrive);
        ++write;
      }
    }
    pipeline.producer_tail(write);  // no block leaves while its copies may still land
  } else {
    const int mma_thread = consumer % G::kTileThreads;
    typename G::TiledMma tiled_mma;
    auto thread_mma = tiled_mma.get_slice(mma_thread);
    cute::Tensor coords = thread_mma.partition_C(make_identity_tensor(cute::Shape<Int<kBM>, Int<kBN>>{}));
    Mainloop mainloop;
    typename Mainloop::PipelineState read;
    for (int t = blockIdx.x, j = 0; t < tiles; t += gridDim.x, ++j) {
      const TileCoord c = tile_coord<Product, kBM, kBN>(a, shared.tile_start, t);
      const int k_tiles = Product::template k_tiles<kBK>(a, c);
      if (G::kPingpong && j % 2 != group) {  // the other warp group's tile: its stages are not ours
        read.advance(k_tiles);
        continue;
      }
      cute::Tensor acc = partition_fragment_C(tiled_mma, cute::Shape<Int<kBM>, Int<kBN>>{});
      turns.wait();
      mainloop.mma(pipeline, read, acc, k_tiles, mma_thread, shared.tensors, typename Mainloop::Params{});
      turns.arrive();  // every stage of this tile has been waited on
      mainloop.mma_tail(pipeline, read, k_tiles);
      read.advance(k_tiles);
      if constexpr (std::is_same_v<Product, Forward>) store_forward(a, c, acc, coords);
      else store_weight_grad<GradT>(a, c, acc, coords);
    }
  }
}

template <class Product, class G, class GradT = void>
void launch(const GatherArgs& args) {
  const auto tma = Product::template tma<typename G::Mainloop, G::kBM, G::kBN, G::kBK>(args);
  const size_t smem = sizeof(typename G::SharedStorage);
  static const bool allowed = [smem] {
    allow_shared(gathered_grouped_gemm_kernel<Product, G, GradT>, smem);
    return true;
  }();
  (void)allowed;
  gathered_grouped_gemm_kernel<Product, G, GradT><<<sm_count(), G::kThreads, smem, current_stream()>>>(args, tma);
  MF_CUDA_CHECK_LAUNCH();
}

// The forward on 128 x 256 tiles, cooperative (the TMA forward's for Qwen3's widths); the weight
// gradient on 128 x 128, ping-pong: its k is an expert's rows, so the
// epilogue's read-modify-write weighs about as much as the products, as in the TMA kernel.
using ForwardGemm =
    GatherGemm<Forward, cute::Shape<_128, _256, _64>, cutlass::gemm::KernelCpAsyncWarpSpecializedCooperative>;
using WeightGradGemm =
    GatherGemm<WeightGrad, cute::Shape<_128, _128, _64>, cutlass::gemm::KernelCpAsyncWarpSpecializedPingpong>;

bool can_gather(const Tensor& x, const Tensor& rows, const Tensor& w_or_grad, int64_t n_multiple,
                int64_t k_multiple) {
  const int64_t experts = w_or_grad.size(0), n = w_or_grad.size(1), k = w_or_grad.size(2);
  return x.dtype() == DType::kBF16 && rows.dtype() == DType::kI32 && experts <= kMaxExperts && n > 0 && k > 0 &&
         n % n_multiple == 0 && k % k_multiple == 0 && aligned16(x) && aligned16(w_or_grad) && n <= INT32_MAX &&
         k <= INT32_MAX;
}

}  // namespace

bool cutlass_gathered_grouped_linear(const Tensor& x, const Tensor& rows, const Tensor& w, const Tensor& offsets,
                                     Tensor& y) {
  if (!can_gather(x, rows, w, 8, ForwardGemm::kBK) || w.dtype() != DType::kBF16 || y.dtype() != DType::kBF16 ||
      !aligned16(y))
    return false;
  if (y.numel() == 0) return true;
  const GatherArgs args{.x = static_cast<const __nv_bfloat16*>(x.raw_data()),
                        .rows = rows.data<int32_t>(),
                        .w = static_cast<const __nv_bfloat16*>(w.raw_data()),
                        .dy = nullptr,
                        .offsets = offsets.data<int64_t>(),
                        .sorted_rows = rows.numel(),
                        .out = y.raw_data(),
                        .experts = static_cast<int>(w.size(0)),
                        .n = static_cast<int>(w.size(1)),
                        .k = static_cast<int>(w.size(2)),
                        .accumulate = false};
  launch<Forward, ForwardGemm>(args);
  return true;
}

bool cutlass_gathered_grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& rows, const Tensor& offsets,
                                        Tensor& grad_w, bool accumulate) {
  const bool bf16 = grad_w.dtype() == DType::kBF16;
  if (!can_gather(x, rows, grad_w, WeightGradGemm::kBM, WeightGradGemm::kBN) || dy.dtype() != DType::kBF16 ||
      !aligned16(dy) || (!bf16 && grad_w.dtype() != DType::kF32))
    return false;
  if (dy.size(0) == 0 || grad_w.numel() == 0) return true;
  const GatherArgs args{.x = static_cast<const __nv_bfloat16*>(x.raw_data()),
                        .rows = rows.data<int32_t>(),
                        .w = nullptr,
                        .dy = static_cast<const __nv_bfloat16*>(dy.raw_data()),
                        .offsets = offsets.data<int64_t>(),
                        .sorted_rows = dy.size(0),
                        .out = grad_w.raw_data(),
                        .experts = static_cast<int>(grad_w.size(0)),
                        .n = static_cast<int>(grad_w.size(1)),
                        .k = static_cast<int>(grad_w.size(2)),
                        .accumulate = accumulate};
  if (bf16) launch<WeightGrad, WeightGradGemm, __nv_bfloat16>(args);
  else launch<WeightGrad, WeightGradGemm, float>(args);
  return true;
}

}  // namespace moeforge::ops::cuda
