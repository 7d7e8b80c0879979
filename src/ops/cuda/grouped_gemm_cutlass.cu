// Expert (grouped) GEMMs through CUTLASS 3 SM90 pointer-array grouped kernels (TMA, warp-specialised
// wgmma, fp32 accumulation). Per-expert problem sizes, pointers and strides are written on the
// device by a small setup kernel that reads the expert offsets, and CUTLASS is given no host copy
// of the sizes, so nothing synchronises the host.
//
// One fixed list of kernels (compile time matters: each instantiation costs minutes), forward and dx
// in two cluster shapes each (quad_cluster):
//   forward  y_e  = x_e w_e^T    A row-major [m_e, K], B [N, K] (K-major), D bf16 [m_e, N]; with a
//            per-expert bias (GPT-OSS's gate/up) y_e = x_e w_e^T + b_e, added to the fp32 sums
//   dx       dx_e = dy_e w_e     A row-major [m_e, N], B [N, K] (N-major), D bf16 [m_e, K]
//   dw       gw_e += dy_e^T x_e  A [N, m_e] (N-major), B [m_e, K] (K-major as columns), C = D fp32 or
//            bf16; the first micro-batch of a step runs it with beta = 0, which skips the loads of C
//
// A block rewrites its TMA descriptors whenever it moves to another expert. Avoiding that did not pay: kernels of
// our own that read every expert through one descriptor (branch contig-tma, 2026-12-07) were slower in every form
// tried, dw by 13-64%, forward and dx by 8-23%. At Qwen3's shapes this dw runs its L2 at 84.5% of its throughput
// and DRAM at 77.7% (Nsight Compute, bench/RESULTS.md), yet reads its operands from DRAM 1.5-2x over. The
// scheduler's tile order (args.scheduler) stays CUTLASS's default, along M without swizzle: of the eight raster
// and swizzle pairs (2026-12-07, H100), none made dw faster and along N made it 12% slower; along N saved dx about
// 1% (0.1% of Qwen3's step), measured on Qwen3 alone.
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>

#include "ops/cuda/common.cuh"
#include "ops/cuda/grouped_gemm_cutlass.h"

namespace moeforge::ops::cuda {
namespace {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;
using ProblemSize = ProblemShape::UnderlyingProblemShape;
using BF16 = cutlass::bfloat16_t;

// Clusters of two CTAs along N share their A tile by TMA multicast (along M measured 15-25% slower).
// The forward and dx products run the cooperative schedule on 256 x 128 tiles (128 x 256 where the
// selection below says), both consumer warp groups on one tile; the weight gradient, whose k is an
// expert's row count, the ping-pong schedule on 128 x 128 tiles, where one warp group's epilogue (a
// read-modify-write of the gradient) overlaps the other's products. Each measured against the other
// (bench/RESULTS.md, 2026-12-06, H100): cooperative forward / dx 544 -> 580 / 546 -> 555 TFLOP/s for Qwen3,
// 457 -> 597 / 456 -> 572 for Nemotron 3 Nano; cooperative dw 447 -> 400. The dw k steps are 64 deep (128
// measured slower, 2026-12-05).
using CoopTile = cute::Shape<_256, _128, _64>;
using WideCoopTile = cute::Shape<_128, _256, _64>;
using DwTile = cute::Shape<_128, _128, _64>;
using PairCluster = cute::Shape<_1, _2, _1>;
using QuadCluster = cute::Shape<_2, _2, _1>;
using PairClusterM = cute::Shape<_2, _1, _1>;

struct Pingpong {
  using Mainloop = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;
  using Epilogue = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
};
struct Cooperative {
  using Mainloop = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};

// D = the fp32 sums + a bf16 row of the tile's expert (a pointer per group), rounded once to bf16.
template <class TileShape>
using BiasEpilogue = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, BF16, float, cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90AccFetch,
    cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, BF16*, float, cute::Stride<_0, _1, _0>>>;

template <class LayoutA, class LayoutB, class ElementC, class ElementD, class TileShape, class ClusterShape,
          class Schedule, bool kBias_ = false>
struct GroupedGemm {
  static constexpr int kAlignAB = 8;  // 16 bytes of bf16
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  static constexpr int kAlignC = cute::is_void_v<ElementC> ? 1 : kAlignD;
  static constexpr bool kHasC = !cute::is_void_v<ElementC>;  // D = beta C + product, C is D
  static constexpr bool kBias = kBias_;

  using Fusion = cute::conditional_t<kBias, BiasEpilogue<TileShape>,
                                     cutlass::epilogue::fusion::LinearCombination<ElementD, float, ElementC, float>>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, cutlass::layout::RowMajor*, kAlignC,
      ElementD, cutlass::layout::RowMajor*, kAlignD, typename Schedule::Epilogue, Fusion>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, BF16, LayoutA*, kAlignAB, BF16,
      LayoutB*, kAlignAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      typename Schedule::Mainloop>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideC = typename Kernel::InternalStrideC;
  using StrideD = typename Kernel::InternalStrideD;
  using NonVoidC = cute::conditional_t<cute::is_void_v<ElementC>, ElementD, ElementC>;
};

template <class Tile, class Cluster, bool kBias = false>
using ForwardGemm = GroupedGemm<cutlass::layout::RowMajor, cutlass::layout::ColumnMajor, void, BF16, Tile, Cluster,
                                Cooperative, kBias>;
template <class Tile, class Cluster>
using DxGemm =
    GroupedGemm<cutlass::layout::RowMajor, cutlass::layout::RowMajor, void, BF16, Tile, Cluster, Cooperative>;

// Forward and dx over experts whose weights are wide both ways (GPT-OSS's 2880 x 2880 and 5760 x 2880)
// run in 2 x 2 clusters, each B tile multicast too, on 128 x 256 tiles; narrower ones (Qwen3's
// 1536 x 2048, 2048 x 768) in pairs along N on 256 x 128 tiles. On an H100 (bench/RESULTS.md) 2 x 2
// clusters made GPT-OSS's forward and dx 2-6% faster and Qwen3's forward 6% slower (2026-12-05); 128 x 256
// tiles took GPT-OSS's forward / dx from 187 / 193 to 183 / 184 ms a step and cost Nemotron 3 Nano's 4-5
// ms (2026-12-06).
// The forward also runs 128 x 256 tiles where N is a multiple of 512 (an even count of 256-wide tiles
// for the pairs): 128-row tiles pad less of an expert's rows. On an H100 (2026-12-06), where N was a
// multiple of 256: Qwen3's forward 70.5 -> 67.5 ms a step (its experts get ~1024 rows each), Moonlight's
// 77.3 -> 82.0 (its gate/up N of 2816 is 11 tiles of 256). With N % 512 (same H100 lease, two calls): Qwen3's
// forward 69.7 -> 66.3, Moonlight's unchanged (77.3).
// dx takes the same tiles where its width k is a multiple of 512: the gate/up dx of Qwen3 and Moonlight
// (k = 2048), not their down dx (768, 1408). Both of Qwen3's dx on them were slower (72.5 -> 77.2 ms a step,
// 2026-12-06); the gate/up dx alone is faster (H100, 2026-12-07, two runs each): Qwen3's dx 72.0 -> 69.4 ms a
// step (550 -> 571 TFLOP/s), Moonlight's 82.8 -> 81.3. Unmeasured: the down dx of DeepSeek-V3 (k = 2048)
// and of Qwen3-235B-A22B (k = 1536) take these tiles too; no bench config of ours fits them on one GPU.
// Whether an output `width` wide takes 128 x 256 tiles in pairs along N: an even count of 256-wide tiles.
bool wide_tile_pairs(int64_t width) { return width % 512 == 0; }
constexpr int64_t kQuadClusterMin = 2560;
bool quad_cluster(int64_t n, int64_t k) { return n >= kQuadClusterMin && k >= kQuadClusterMin; }
// The weight gradient over weights at least 1792 wide both ways runs in 2 x 2 clusters too. On an H100
// (2026-12-06), all of a model's dw in quads against all in pairs: GPT-OSS's 208 -> 183 ms a step,
// Nemotron 3 Nano's (1856 x 2688) 56.5 -> 51.7, Qwen3's (1536 x 2048, 2048 x 768) 88 -> 90, so Qwen3 keeps
// pairs. With this threshold Moonlight's gate/up (2816 x 2048) takes quads: its dw 87.5 -> 86.3.
constexpr int64_t kQuadDwMin = 1792;
bool quad_dw(int64_t n, int64_t k) { return n >= kQuadDwMin && k >= kQuadDwMin; }
// Pairs along M where the weight is at least 2048 x 1024 (Moonlight's 2048 x 1408 down projection). On an
// H100 (2026-12-06) every non-quad dw in pairs along M took Moonlight's dw 86.9 -> 83.5 ms a step and Qwen3's
// (1536 x 2048, 2048 x 768) 87.7 -> 97.8; with this threshold Moonlight 86.7 -> 83.6, Qwen3 unchanged.
bool pair_m_dw(int64_t n, int64_t k) { return n >= 2048 && k >= 1024; }
using DwGemm = GroupedGemm<cutlass::layout::ColumnMajor, cutlass::layout::RowMajor, float, float, DwTile,
                           PairCluster, Pingpong>;
// bf16 gradient buffers (every precision mode keeps bf16 gradients): C = D in bf16, the sum in fp32.
template <class Cluster>
using DwBf16Gemm =
    GroupedGemm<cutlass::layout::ColumnMajor, cutlass::layout::RowMajor, BF16, BF16, DwTile, Cluster, Pingpong>;

enum class Product { kForward, kDx, kDw };

// Expert e's problem and pointers from the offsets. n and k are the weight's [N, K]; bias [E, N]
// (forward only; null: none).
template <class G>
__global__ void setup_groups_kernel(Product product, const int64_t* offsets, int experts, int n,
                                    int k, const BF16* a, const BF16* b, void* out, const BF16* bias,
                                    ProblemSize* sizes, const BF16** ptr_a, const BF16** ptr_b,
                                    void** ptr_d, const BF16** ptr_bias, typename G::StrideA stride_a,
                                    typename G::StrideB stride_b, typename G::StrideD stride_d,
                                    typename G::StrideA* strides_a, typename G::StrideB* strides_b,
                                    typename G::StrideD* strides_d) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= experts) return;
  if (bias != nullptr) ptr_bias[e] = bias + int64_t(e) * n;
  const int64_t row0 = offsets[e];
  const int rows = static_cast<int>(offsets[e + 1] - row0);
  const size_t d_bytes = sizeof(typename G::Gemm::ElementD);
  char* out_bytes = static_cast<char*>(out);
  switch (product) {
    case Product::kForward:  // [rows, K] x [N, K]^T -> [rows, N]
      sizes[e] = {rows, n, k};
      ptr_a[e] = a + row0 * k;
      ptr_b[e] = b + int64_t(e) * n * k;
      ptr_d[e] = out_bytes + row0 * n * d_bytes;
      break;
    case Product::kDx:  // [rows, N] x [N, K] -> [rows, K]
      sizes[e] = {rows, k, n};
      ptr_a[e] = a + row0 * n;
      ptr_b[e] = b + int64_t(e) * n * k;
      ptr_d[e] = out_bytes + row0 * k * d_bytes;
      break;
    case Product::kDw:  // [N, rows] x [rows, K] -> [N, K]; an expert without rows is skipped
      sizes[e] = {rows == 0 ? 0 : n, k, rows};
      ptr_a[e] = a + row0 * n;
      ptr_b[e] = b + row0 * k;
      ptr_d[e] = out_bytes + int64_t(e) * n * k * d_bytes;
      break;
  }
  strides_a[e] = stride_a;
  strides_b[e] = stride_b;
  strides_d[e] = stride_d;
}

template <class G>
void run_grouped(Product product, const Tensor& a, const Tensor& b, const Tensor& offsets,
                 Tensor& out, int n, int k, float beta = 0.0f, const Tensor& bias = Tensor()) {
  using Gemm = typename G::Gemm;
  const int experts = static_cast<int>(offsets.numel() - 1);
  // CUTLASS's (M, N, K) of each product, for the constant strides.
  const int m_any = 1;
  typename G::StrideA stride_a;
  typename G::StrideB stride_b;
  typename G::StrideD stride_d;
  switch (product) {
    case Product::kForward:
      stride_a = cutlass::make_cute_packed_stride(typename G::StrideA{}, {m_any, k, 1});
      stride_b = cutlass::make_cute_packed_stride(typename G::StrideB{}, {n, k, 1});
      stride_d = cutlass::make_cute_packed_stride(typename G::StrideD{}, {m_any, n, 1});
      break;
    case Product::kDx:
      stride_a = cutlass::make_cute_packed_stride(typename G::StrideA{}, {m_any, n, 1});
      stride_b = cutlass::make_cute_packed_stride(typename G::StrideB{}, {k, n, 1});
      stride_d = cutlass::make_cute_packed_stride(typename G::StrideD{}, {m_any, k, 1});
      break;
    case Product::kDw:
      stride_a = cutlass::make_cute_packed_stride(typename G::StrideA{}, {n, m_any, 1});
      stride_b = cutlass::make_cute_packed_stride(typename G::StrideB{}, {k, m_any, 1});
      stride_d = cutlass::make_cute_packed_stride(typename G::StrideD{}, {n, k, 1});
      break;
  }

  // One device block for the per-expert arrays, 16-byte aligned pieces.
  auto round16 = [](size_t bytes) { return (bytes + 15) / 16 * 16; };
  const size_t e = static_cast<size_t>(experts);
  const size_t sizes_bytes = round16(e * sizeof(ProblemSize)), ptr_bytes = round16(e * sizeof(void*)),
               sa_bytes = round16(e * sizeof(stride_a)), sb_bytes = round16(e * sizeof(stride_b)),
               sd_bytes = round16(e * sizeof(stride_d));
  Tensor arrays = Tensor::empty(
      {static_cast<int64_t>(sizes_bytes + 4 * ptr_bytes + sa_bytes + sb_bytes + sd_bytes)},
      DType::kU8, Device::kCUDA, "grouped GEMM problem arrays");
  char* base = static_cast<char*>(arrays.raw_data());
  auto* sizes = reinterpret_cast<ProblemSize*>(base);
  auto* ptr_a = reinterpret_cast<const BF16**>(base + sizes_bytes);
  auto* ptr_b = reinterpret_cast<const BF16**>(base + sizes_bytes + ptr_bytes);
  auto* ptr_d = reinterpret_cast<void**>(base + sizes_bytes + 2 * ptr_bytes);
  auto* strides_a = reinterpret_cast<typename G::StrideA*>(base + sizes_bytes + 3 * ptr_bytes);
  auto* strides_b =
      reinterpret_cast<typename G::StrideB*>(base + sizes_bytes + 3 * ptr_bytes + sa_bytes);
  auto* strides_d = reinterpret_cast<typename G::StrideD*>(base + sizes_bytes + 3 * ptr_bytes +
                                                            sa_bytes + sb_bytes);
  auto* ptr_bias = reinterpret_cast<const BF16**>(base + sizes_bytes + 3 * ptr_bytes + sa_bytes + sb_bytes +
                                                   sd_bytes);
  setup_groups_kernel<G><<<(experts + 127) / 128, 128, 0, current_stream()>>>(
      product, offsets.data<int64_t>(), experts, n, k, static_cast<const BF16*>(a.raw_data()),
      static_cast<const BF16*>(b.raw_data()), out.raw_data(),
      G::kBias ? static_cast<const BF16*>(bias.raw_data()) : nullptr, sizes, ptr_a, ptr_b, ptr_d, ptr_bias,
      stride_a, stride_b, stride_d, strides_a, strides_b, strides_d);
  MF_CUDA_CHECK_LAUNCH();

  cutlass::KernelHardwareInfo hw;
  MF_CUDA_CHECK(cudaGetDevice(&hw.device_id));
  hw.sm_count = sm_count();
  typename Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {experts, sizes, nullptr};  // sizes live on the device only
  args.mainloop = {ptr_a, strides_a, ptr_b, strides_b};
  // The epilogue's pointer arrays: D always, C (= D) when accumulating.
  using ElementD = typename Gemm::ElementD;
  using NonVoidC = typename G::NonVoidC;
  if constexpr (!G::kHasC) {
    args.epilogue = {{}, nullptr, nullptr, reinterpret_cast<ElementD**>(ptr_d), strides_d};
  } else {
    args.epilogue = {{}, static_cast<const NonVoidC**>(static_cast<void*>(ptr_d)), strides_d,
                     reinterpret_cast<ElementD**>(ptr_d), strides_d};
  }
  if constexpr (G::kBias)  // the EVT's arguments: the sums' (none), the bias rows', the sum's (none)
    args.epilogue.thread = {{}, {ptr_bias}, {}};
  else {
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = beta;
  }
  args.hw_info = hw;

  Gemm gemm;
  cutlass::Status status = gemm.can_implement(args);
  MF_CHECK(status == cutlass::Status::kSuccess, kBackend, "grouped GEMM: CUTLASS cannot run this ",
           "problem (", cutlassGetStatusString(status), ")");
  Tensor workspace = Tensor::empty({static_cast<int64_t>(Gemm::get_workspace_size(args)) + 1},
                                   DType::kU8, Device::kCUDA, "grouped GEMM workspace");
  status = gemm.initialize(args, workspace.raw_data(), current_stream());
  MF_CHECK(status == cutlass::Status::kSuccess, kBackend, "grouped GEMM: CUTLASS initialize failed (",
           cutlassGetStatusString(status), ")");
  status = gemm.run(current_stream());
  MF_CHECK(status == cutlass::Status::kSuccess, kBackend, "grouped GEMM: CUTLASS run failed (",
           cutlassGetStatusString(status), ")");
  MF_CUDA_CHECK_LAUNCH();
}

bool takes(const Tensor& a, const Tensor& b, const Tensor& out, DType out_dtype, int64_t n,
           int64_t k) {
  return a.dtype() == DType::kBF16 && b.dtype() == DType::kBF16 && out.dtype() == out_dtype &&
         n % 8 == 0 && k % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(out) &&
         n <= INT32_MAX && k <= INT32_MAX;
}

}  // namespace

bool cutlass_grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias, Tensor& y) {
  const int64_t n = w.size(1), k = w.size(2);
  if (!takes(x, w, y, DType::kBF16, n, k)) return false;
  if (bias.defined() && (bias.dtype() != DType::kBF16 || !aligned16(bias) || !quad_cluster(n, k))) return false;
  if (y.numel() == 0) return true;
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  // The bias in the epilogue: GPT-OSS's gate/up (5760 x 2880), whose 2 x 2 clusters are the only ones
  // instantiated with it; its grouped_bias_add read and wrote the product's output again.
  if (bias.defined())
    run_grouped<ForwardGemm<WideCoopTile, QuadCluster, true>>(Product::kForward, x, w, offsets, y, ni, ki, 0.0f,
                                                              bias);
  else if (quad_cluster(n, k))
    run_grouped<ForwardGemm<WideCoopTile, QuadCluster>>(Product::kForward, x, w, offsets, y, ni, ki);
  else if (wide_tile_pairs(n))
    run_grouped<ForwardGemm<WideCoopTile, PairCluster>>(Product::kForward, x, w, offsets, y, ni, ki);
  else
    run_grouped<ForwardGemm<CoopTile, PairCluster>>(Product::kForward, x, w, offsets, y, ni, ki);
  return true;
}

bool cutlass_grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dx) {
  const int64_t n = w.size(1), k = w.size(2);
  if (!takes(dy, w, dx, DType::kBF16, n, k)) return false;
  if (dx.numel() == 0) return true;
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (quad_cluster(n, k))
    run_grouped<DxGemm<WideCoopTile, QuadCluster>>(Product::kDx, dy, w, offsets, dx, ni, ki);
  else if (wide_tile_pairs(k))
    run_grouped<DxGemm<WideCoopTile, PairCluster>>(Product::kDx, dy, w, offsets, dx, ni, ki);
  else
    run_grouped<DxGemm<CoopTile, PairCluster>>(Product::kDx, dy, w, offsets, dx, ni, ki);
  return true;
}

bool cutlass_grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w,
                               bool accumulate) {
  const int64_t n = grad_w.size(1), k = grad_w.size(2);
  const bool bf16 = grad_w.dtype() == DType::kBF16;
  if (!takes(dy, x, grad_w, bf16 ? DType::kBF16 : DType::kF32, n, k)) return false;
  if (dy.size(0) == 0 || grad_w.numel() == 0) return true;
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  const float beta = accumulate ? 1.0f : 0.0f;
  if (bf16 && quad_dw(n, k))
    run_grouped<DwBf16Gemm<QuadCluster>>(Product::kDw, dy, x, offsets, grad_w, ni, ki, beta);
  else if (bf16 && pair_m_dw(n, k))
    run_grouped<DwBf16Gemm<PairClusterM>>(Product::kDw, dy, x, offsets, grad_w, ni, ki, beta);
  else if (bf16)
    run_grouped<DwBf16Gemm<PairCluster>>(Product::kDw, dy, x, offsets, grad_w, ni, ki, beta);
  else
    run_grouped<DwGemm>(Product::kDw, dy, x, offsets, grad_w, ni, ki, beta);
  return true;
}

}  // namespace moeforge::ops::cuda
