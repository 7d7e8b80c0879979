// The experts' first product with the token gather folded into its loads, so that the MoE block's
// permuted input (x_sorted, 512 MiB a Qwen3 layer at 4 x 4096 tokens) is neither written in the forward
// nor kept for the backward:
//   y[r] = x[rows[r]] w_e^T    for expert e's sorted rows r (offsets[e] .. offsets[e+1])
//
// Hopper's TMA cannot gather rows (its row gather is Blackwell's), so one producer warp group loads the
// gathered rows with cp.async, each thread its 16-byte pieces of the rows it owns, and completes each
// pipeline stage with cp.async's mbarrier arrive; the weights, which need no gather, come by TMA into the
// same stage (one more arrival, with the TMA's bytes). Two consumer warp groups run CUTLASS's SM90 wgmma
// mainloop (MainloopSm90CpAsyncGmmaWarpSpecialized) cooperatively on one tile and store the output
// directly. The kernel is persistent: block b takes tiles b, b + grid, ... of one list over all experts'
// tiles, which every block works out from the offsets itself, so nothing synchronises the host.
//
// Measured (bench/RESULTS.md, 2026-12-07, an H100, Qwen3's 8-layer step): with the gathered rows and the
// weights both by cp.async the gate/up product took 74 ms a step against the TMA kernel's 43; with the
// weights by TMA about 50, the TMA kernel's 43 plus the 6.9 ms permute it replaces: even, not faster.
// A weight gradient gathered the same way was slower still (121 ms with cp.async, 135 with dy by TMA,
// against 56), so it reads the rows from a temporary (MoeBlock::backward_rows).
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
  const __nv_bfloat16* x;  // [tokens, K]
  const int32_t* rows;     // [R]: the token row of each sorted row
  const __nv_bfloat16* w;  // [E, N, K]
  const int64_t* offsets;  // [E + 1]
  __nv_bfloat16* y;        // [R, N]
  int experts, n, k;       // the weight's [N, K]
};

// Tile t of the list: its expert, the expert's first sorted row and row count, and the tile's first
// row and column of the expert's output [rows, N].
struct TileCoord {
  int expert;
  int64_t row0;
  int rows, m0, n0;
};

// The weights [E, N, K] seen as (N, K, E) by TMA, in (kBN, kBK) tiles into one stage of `SmemLayout`: rows
// past N of a partial last column tile read as zeros.
template <class SmemLayout, int kBN, int kBK>
auto weights_tma(const GatherArgs& a) {
  const cute::Tensor w = make_tensor(make_gmem_ptr(reinterpret_cast<const BF16*>(a.w)), make_shape(a.n, a.k, a.experts),
                                     make_stride(int64_t(a.k), _1{}, int64_t(a.n) * a.k));
  return make_tma_copy(SM90_TMA_LOAD{}, w, SmemLayout{}(_, _, Int<0>{}), make_shape(Int<kBN>{}, Int<kBK>{}), Int<1>{});
}

// A tiles (the expert's rows, gathered, K contiguous) x B tiles (the weight's rows, K contiguous).
template <class TileShape>
struct GatherGemm {
  static constexpr int kBM = size<0>(TileShape{}), kBN = size<1>(TileShape{}), kBK = size<2>(TileShape{});
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, BF16, cutlass::layout::RowMajor, 8, BF16,
      cutlass::layout::ColumnMajor, 8, float, TileShape, cute::Shape<_1, _1, _1>,
      cutlass::gemm::collective::StageCountAutoCarveout<kMaxExperts * 4 + 128>,
      cutlass::gemm::KernelCpAsyncWarpSpecializedCooperative>::CollectiveOp;
  using Pipeline = typename Mainloop::MainloopPipeline;
  using TiledMma = typename Mainloop::TiledMma;
  static constexpr int kConsumerThreads = size(TiledMma{});  // both warp groups, on one tile
  static constexpr int kThreads = kProducerThreads + kConsumerThreads;
  using Tma = decltype(weights_tma<typename Mainloop::SmemLayoutB, kBN, kBK>(GatherArgs{}));
  static constexpr int kProducerArrivals = kProducerThreads + 1;  // + the TMA's

  struct SharedStorage {
    typename Mainloop::TensorStorage tensors;
    alignas(16) typename Pipeline::SharedStorage pipeline;
    int tile_start[kMaxExperts + 1];  // tiles of experts before e; [experts] = all
  };
};

// Expert e's tile count at every e, summed into tile_start (one warp).
template <int kBM, int kBN>
__device__ void make_tile_list(const GatherArgs& a, int* tile_start) {
  const int lane = threadIdx.x % 32;
  const int n_tiles = (a.n + kBN - 1) / kBN;
  int before = 0;
  if (lane == 0) tile_start[0] = 0;
  for (int e0 = 0; e0 < a.experts; e0 += 32) {
    const int e = e0 + lane;
    int tiles = 0;
    if (e < a.experts) {
      const int rows = static_cast<int>(a.offsets[e + 1] - a.offsets[e]);
      tiles = (rows + kBM - 1) / kBM * n_tiles;
    }
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, tiles, d);
      if (lane >= d) tiles += up;
    }
    if (e < a.experts) tile_start[e + 1] = before + tiles;
    before += __shfl_sync(0xffffffffu, tiles, 31);
  }
}

template <int kBM, int kBN>
__device__ TileCoord tile_coord(const GatherArgs& a, const int* tile_start, int t) {
  int lo = 0, hi = a.experts - 1;  // the last e with tile_start[e] <= t
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_start[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  const int n_tiles = (a.n + kBN - 1) / kBN;
  const int local = t - tile_start[lo];
  TileCoord c;
  c.expert = lo;
  c.row0 = a.offsets[lo];
  c.rows = static_cast<int>(a.offsets[lo + 1] - c.row0);
  c.m0 = local / n_tiles * kBM;  // column tiles fastest: neighbouring blocks share their A rows
  c.n0 = local % n_tiles * kBN;
  return c;
}

// The producer's copies of one tile, stage by stage: thread 0 starts the TMA of the weights' tile and
// announces its bytes on the stage's full barrier; every thread copies piece p of rows t / 8 + 16 i of the
// gathered rows' tile (64-column k steps, 8 pieces of 16 bytes a row).
template <class G>
struct TileLoader {
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
      constexpr uint32_t kBytes = G::kBN * G::kBK * sizeof(BF16);
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(full, kBytes);
      const cute::Tensor weights = tma.get_tma_tensor(make_shape(a.n, a.k, a.experts));
      const cute::Tensor tiles =
          local_tile(weights, make_shape(Int<G::kBN>{}, Int<G::kBK>{}), make_coord(n_tile, _, expert));
      auto [from, to] = tma_partition(tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sB), group_modes<0, 2>(tiles));
      copy(tma.with(*full), from(_, kt), to(_, stage));
    }
    const int k0 = kt * G::kBK;
    for (int i = 0; i < kRowsA; ++i)
      copy_async16_or_zero(&sA(first_row + kStep * i, piece * 8, stage), src_a[i] + k0, valid_a[i]);
  }
};

// Adjacent accumulator values are adjacent columns of one row (wgmma's C layout): stored in pairs.
template <class Acc, class Coords>
__device__ void store_tile(const GatherArgs& a, const TileCoord& c, const Acc& acc, const Coords& coords) {
  __nv_bfloat16* out = a.y + (c.row0 + c.m0) * a.n + c.n0;
  for (int i = 0; i < size(acc); i += 2) {
    const int m = get<0>(coords(i)), n = get<1>(coords(i));
    if (c.m0 + m < c.rows && c.n0 + n < a.n)
      *reinterpret_cast<__nv_bfloat162*>(out + int64_t(m) * a.n + n) = __floats2bfloat162_rn(acc(i), acc(i + 1));
  }
}

template <class G>
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
  pipeline_params.consumer_arv_count = G::kConsumerThreads;
  Pipeline pipeline(shared.pipeline, pipeline_params);
  if (threadIdx.x < 32) make_tile_list<kBM, kBN>(a, shared.tile_start);
  __syncthreads();

  const int tiles = shared.tile_start[a.experts], k_tiles = a.k / kBK;
  if (producer) {
    cute::Tensor sA = make_tensor(make_smem_ptr(shared.tensors.smem_A.data()), typename Mainloop::SmemLayoutA{});
    cute::Tensor sB = make_tensor(make_smem_ptr(shared.tensors.smem_B.data()), typename Mainloop::SmemLayoutB{});
    auto write = cutlass::make_producer_start_state<Pipeline>();
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      const TileLoader<G> loader(a, tile_coord<kBM, kBN>(a, shared.tile_start, t));
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
    const int mma_thread = threadIdx.x - kProducerThreads;
    typename G::TiledMma tiled_mma;
    auto thread_mma = tiled_mma.get_slice(mma_thread);
    cute::Tensor coords = thread_mma.partition_C(make_identity_tensor(cute::Shape<Int<kBM>, Int<kBN>>{}));
    Mainloop mainloop;
    typename Mainloop::PipelineState read;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      const TileCoord c = tile_coord<kBM, kBN>(a, shared.tile_start, t);
      cute::Tensor acc = partition_fragment_C(tiled_mma, cute::Shape<Int<kBM>, Int<kBN>>{});
      mainloop.mma(pipeline, read, acc, k_tiles, mma_thread, shared.tensors, typename Mainloop::Params{});
      mainloop.mma_tail(pipeline, read, k_tiles);
      read.advance(k_tiles);
      store_tile(a, c, acc, coords);
    }
  }
}

// 128 x 256 tiles, as the TMA forward's for Qwen3's widths.
using Gemm = GatherGemm<cute::Shape<_128, _256, _64>>;

}  // namespace

bool cutlass_gathered_grouped_linear(const Tensor& x, const Tensor& rows, const Tensor& w, const Tensor& offsets,
                                     Tensor& y) {
  const int64_t experts = w.size(0), n = w.size(1), k = w.size(2);
  if (x.dtype() != DType::kBF16 || w.dtype() != DType::kBF16 || y.dtype() != DType::kBF16 ||
      rows.dtype() != DType::kI32 || experts > kMaxExperts || n <= 0 || k <= 0 || n % 8 != 0 || k % Gemm::kBK != 0 ||
      n > INT32_MAX || k > INT32_MAX || !aligned16(x) || !aligned16(w) || !aligned16(y))
    return false;
  if (y.numel() == 0) return true;
  const GatherArgs args{.x = static_cast<const __nv_bfloat16*>(x.raw_data()),
                        .rows = rows.data<int32_t>(),
                        .w = static_cast<const __nv_bfloat16*>(w.raw_data()),
                        .offsets = offsets.data<int64_t>(),
                        .y = static_cast<__nv_bfloat16*>(y.raw_data()),
                        .experts = static_cast<int>(experts),
                        .n = static_cast<int>(n),
                        .k = static_cast<int>(k)};
  const auto tma = weights_tma<typename Gemm::Mainloop::SmemLayoutB, Gemm::kBN, Gemm::kBK>(args);
  const size_t smem = sizeof(Gemm::SharedStorage);
  static const bool allowed = [smem] {
    allow_shared(gathered_grouped_gemm_kernel<Gemm>, smem);
    return true;
  }();
  (void)allowed;
  gathered_grouped_gemm_kernel<Gemm><<<sm_count(), Gemm::kThreads, smem, current_stream()>>>(args, tma);
  MF_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace moeforge::ops::cuda
