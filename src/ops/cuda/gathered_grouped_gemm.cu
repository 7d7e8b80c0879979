// The experts' first product with the token gather folded into its loads: y[r] = x[rows[r]] w_e^T
// for the sorted rows r of expert e (offsets[e] .. offsets[e+1]). The gathered input (the MoE
// block's x_sorted, 512 MiB a Qwen3 layer at 4 x 4096 tokens) is neither written nor kept.
//
// Hopper's TMA cannot gather rows (its row gather is Blackwell's), so one producer warp group loads
// both operands with cp.async, each thread its 16-byte pieces of the rows it owns, and completes
// each pipeline stage with cp.async's mbarrier arrive. Two consumer warp groups run CUTLASS's SM90
// wgmma mainloop (MainloopSm90CpAsyncGmmaWarpSpecialized) on one tile and store bf16 directly.
// The kernel is persistent: block b takes tiles b, b + grid, ... of one list over all experts'
// (row tile, column tile) pairs, which every block works out from the offsets itself, so nothing
// synchronises the host.
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
  static constexpr int kProducerThreads = 128;
  static constexpr int kConsumerThreads = size(TiledMma{});
  static constexpr int kThreads = kProducerThreads + kConsumerThreads;

  struct SharedStorage {
    typename Mainloop::TensorStorage tensors;
    alignas(16) typename Pipeline::SharedStorage pipeline;
    int tile_start[kMaxExperts + 1];  // tiles of experts before e; [experts] = all
  };

  // A thread's 16-byte pieces: piece p of every row it owns (rows t / kPieces + kRowStep * i).
  static constexpr int kPieces = kBK / 8;
  static constexpr int kRowStep = kProducerThreads / kPieces;
  static_assert(kBM % kRowStep == 0 && kBN % kRowStep == 0, "rows per thread must divide the tile");
};

struct GatherArgs {
  const __nv_bfloat16* x;  // [tokens, K]
  const int32_t* rows;     // [R]: the token row of each sorted row
  const __nv_bfloat16* w;  // [E, N, K]
  const int64_t* offsets;  // [E + 1]
  __nv_bfloat16* y;        // [R, N]
  int experts, n, k;
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
    if (e < a.experts) tiles = static_cast<int>((a.offsets[e + 1] - a.offsets[e] + kBM - 1) / kBM) * n_tiles;
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, tiles, d);
      if (lane >= d) tiles += up;
    }
    if (e < a.experts) tile_start[e + 1] = before + tiles;
    before += __shfl_sync(0xffffffffu, tiles, 31);
  }
}

// Tile t of the list: its expert, the expert's first row, its row count, and the tile's first row
// (within the expert) and column.
struct TileCoord {
  int expert;
  int64_t row0;
  int rows, m0, n0;
};

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
  c.m0 = local / n_tiles * kBM;  // column tiles fastest: neighbouring blocks share the gathered rows
  c.n0 = local % n_tiles * kBN;
  return c;
}

template <class G>
__global__ void __launch_bounds__(G::kThreads, 1) gathered_grouped_gemm_kernel(GatherArgs a) {
  using Mainloop = typename G::Mainloop;
  using Pipeline = typename G::Pipeline;
  constexpr int kBM = G::kBM, kBN = G::kBN, kBK = G::kBK;
  extern __shared__ __align__(128) char smem[];
  auto& shared = *reinterpret_cast<typename G::SharedStorage*>(smem);

  const bool producer = threadIdx.x < G::kProducerThreads;
  typename Pipeline::Params pipeline_params;
  pipeline_params.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipeline_params.producer_arv_count = G::kProducerThreads;
  pipeline_params.consumer_arv_count = G::kConsumerThreads;
  Pipeline pipeline(shared.pipeline, pipeline_params);
  if (threadIdx.x < 32) make_tile_list<kBM, kBN>(a, shared.tile_start);
  __syncthreads();

  const int tiles = shared.tile_start[a.experts];
  const int k_tiles = a.k / kBK;
  if (producer) {
    cute::Tensor sA = make_tensor(make_smem_ptr(shared.tensors.smem_A.data()), typename Mainloop::SmemLayoutA{});
    cute::Tensor sB = make_tensor(make_smem_ptr(shared.tensors.smem_B.data()), typename Mainloop::SmemLayoutB{});
    const int piece = threadIdx.x % G::kPieces, first_row = threadIdx.x / G::kPieces;
    constexpr int kRowsA = kBM / G::kRowStep, kRowsB = kBN / G::kRowStep;
    auto write = cutlass::make_producer_start_state<Pipeline>();
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      const TileCoord c = tile_coord<kBM, kBN>(a, shared.tile_start, t);
      // The gathered rows' sources; rows past the expert's end (and columns past N) read as zeros.
      const __nv_bfloat16* src_a[kRowsA];
      bool valid_a[kRowsA];
      for (int i = 0; i < kRowsA; ++i) {
        const int m = c.m0 + first_row + G::kRowStep * i;
        valid_a[i] = m < c.rows;
        src_a[i] = a.x + (valid_a[i] ? int64_t(a.rows[c.row0 + m]) * a.k : 0) + piece * 8;
      }
      const __nv_bfloat16* src_b = a.w + (int64_t(c.expert) * a.n + c.n0 + first_row) * a.k + piece * 8;
      for (int kt = 0; kt < k_tiles; ++kt) {
        pipeline.producer_acquire(write);
        const int stage = write.index();
        const int k0 = kt * kBK;
        for (int i = 0; i < kRowsA; ++i)
          copy_async16_or_zero(&sA(first_row + G::kRowStep * i, piece * 8, stage), src_a[i] + k0, valid_a[i]);
        for (int j = 0; j < kRowsB; ++j) {
          const int n = first_row + G::kRowStep * j;
          const bool valid = c.n0 + n < a.n;
          copy_async16_or_zero(&sB(n, piece * 8, stage), valid ? src_b + int64_t(G::kRowStep) * j * a.k + k0 : a.w,
                               valid);
        }
        pipeline.producer_commit(write, cutlass::arch::cpasync_barrier_arrive);
        ++write;
      }
    }
    pipeline.producer_tail(write);  // no block leaves while its copies may still land
  } else {
    const int mma_thread = threadIdx.x - G::kProducerThreads;
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
      // Adjacent accumulator values are adjacent columns of one row (wgmma's C layout): stored in pairs.
      __nv_bfloat16* out = a.y + (c.row0 + c.m0) * a.n + c.n0;
      for (int i = 0; i < size(acc); i += 2) {
        const int m = get<0>(coords(i)), n = get<1>(coords(i));
        if (c.m0 + m < c.rows && c.n0 + n < a.n)
          *reinterpret_cast<__nv_bfloat162*>(out + int64_t(m) * a.n + n) = __floats2bfloat162_rn(acc(i), acc(i + 1));
      }
    }
  }
}

template <class G>
void launch(const GatherArgs& args) {
  const size_t smem = sizeof(typename G::SharedStorage);
  static const bool allowed = [smem] {
    allow_shared(gathered_grouped_gemm_kernel<G>, smem);
    return true;
  }();
  (void)allowed;
  gathered_grouped_gemm_kernel<G><<<sm_count(), G::kThreads, smem, current_stream()>>>(args);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool cutlass_gathered_grouped_linear(const Tensor& x, const Tensor& rows, const Tensor& w, const Tensor& offsets,
                                     Tensor& y) {
  using Tile = cute::Shape<_128, _256, _64>;
  const int64_t experts = w.size(0), n = w.size(1), k = w.size(2);
  if (x.dtype() != DType::kBF16 || w.dtype() != DType::kBF16 || y.dtype() != DType::kBF16 ||
      rows.dtype() != DType::kI32 || experts > kMaxExperts || n % 8 != 0 || k % GatherGemm<Tile>::kBK != 0 ||
      !aligned16(x) || !aligned16(w) || !aligned16(y) || n > INT32_MAX || k > INT32_MAX)
    return false;
  if (y.numel() == 0) return true;
  launch<GatherGemm<Tile>>({static_cast<const __nv_bfloat16*>(x.raw_data()), rows.data<int32_t>(),
                            static_cast<const __nv_bfloat16*>(w.raw_data()), offsets.data<int64_t>(),
                            static_cast<__nv_bfloat16*>(y.raw_data()), static_cast<int>(experts),
                            static_cast<int>(n), static_cast<int>(k)});
  return true;
}

}  // namespace moeforge::ops::cuda
