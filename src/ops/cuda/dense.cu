// Dense algebra on CUDA: gemm and linear through cuBLASLt (fp32 compute; linear's bias in its
// epilogue), the bias gradient's column sums, elementwise in-place updates.
//
// cuBLASLt is column-major; a row-major [r, c] matrix is the column-major [c, r] matrix with
// leading dimension c. So the row-major C = op(A) op(B) is computed as the column-major
// C^T = op(B)^T op(A)^T: cuBLAS's first operand is b's memory, its second a's, with the same
// transpose flags.
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;  // what NVIDIA recommends for Hopper

// One cuBLASLt handle per device and one workspace per (device, stream), made on first use and
// kept for the process. The handle is not bound to a stream (cublasLtMatmul takes one per call);
// the workspace is, since two streams running matmuls at once must not share scratch memory. It
// is allocated on its stream, so the caching allocator never hands it to another.
struct DeviceContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

DeviceContext device_context() {
  struct PerDevice {
    cublasLtHandle_t handle = nullptr;
    std::vector<std::pair<cudaStream_t, void*>> workspaces;  // few streams: a linear search
  };
  static std::mutex mutex;
  static std::vector<PerDevice> contexts;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  const cudaStream_t stream = current_stream();
  std::lock_guard<std::mutex> lock(mutex);
  if (contexts.size() <= static_cast<size_t>(device)) contexts.resize(device + 1);
  PerDevice& ctx = contexts[device];
  if (ctx.handle == nullptr) MF_CUBLAS_CHECK(cublasLtCreate(&ctx.handle));
  for (const auto& [s, w] : ctx.workspaces)
    if (s == stream) return {ctx.handle, w};
  void* w = cuda_alloc(kWorkspaceBytes, "cuBLASLt workspace");
  ctx.workspaces.emplace_back(stream, w);
  return {ctx.handle, w};
}

// Largest power of two (at most 256) dividing the address: cuBLASLt picks kernels by alignment.
uint32_t alignment_of(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && addr % align != 0) align /= 2;
  return align;
}

// A finished matmul description: descriptors and the heuristic's algorithm for one problem.
struct MatmulPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t b_layout = nullptr, a_layout = nullptr, c_layout = nullptr;
  cublasLtMatmulAlgo_t algo;
};

using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, bool, bool, bool, bool, uint32_t,
                           uint32_t, uint32_t, bool>;

cudaDataType_t cuda_type(DType d) { return d == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

cublasLtMatrixLayout_t make_layout(DType d, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  MF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, cuda_type(d), static_cast<uint64_t>(rows),
                                             static_cast<uint64_t>(cols), ld));
  return layout;
}

// Plans are cached for the life of the process (training repeats a few dozen shapes). With
// `bias`, the epilogue adds a vector of c's dtype over c's columns (the bias pointer is set per call).
const MatmulPlan& matmul_plan(const DeviceContext& ctx, const Tensor& a, bool ta, const Tensor& b,
                              bool tb, const Tensor& c, bool bias) {
  static std::mutex mutex;
  static std::map<PlanKey, MatmulPlan> plans;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  const int64_t m = c.size(0), n = c.size(1), k = ta ? a.size(0) : a.size(1);
  const uint32_t align_a = alignment_of(a.raw_data()), align_b = alignment_of(b.raw_data()),
                 align_c = alignment_of(c.raw_data());
  const PlanKey key{device, m, n, k, ta, tb, a.dtype() == DType::kBF16, c.dtype() == DType::kBF16,
                    align_a, align_b, align_c, bias};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;

  MatmulPlan plan;
  MF_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  MF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_b,
                                                 sizeof op_b));
  MF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a,
                                                 sizeof op_a));
  if (bias) {
    // cuBLASLt's bias runs along the rows of its column-major D, which are c's columns.
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = cuda_type(c.dtype());
    MF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                   &epilogue, sizeof epilogue));
    MF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                   &bias_type, sizeof bias_type));
  }
  plan.b_layout = make_layout(b.dtype(), b.size(1), b.size(0), b.size(1));
  plan.a_layout = make_layout(a.dtype(), a.size(1), a.size(0), a.size(1));
  plan.c_layout = make_layout(c.dtype(), n, m, n);

  cublasLtMatmulPreference_t pref = nullptr;
  MF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = kWorkspaceBytes;
  MF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace));
  // cuBLASLt's first operand ("A") is b's memory, its second ("B") a's.
  MF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_b, sizeof align_b));
  MF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_a, sizeof align_a));
  MF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c));
  MF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c));
  cublasLtMatmulHeuristicResult_t result;
  std::memset(&result, 0, sizeof result);
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(ctx.handle, plan.desc, plan.b_layout, plan.a_layout,
                                     plan.c_layout, plan.c_layout, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  MF_CUBLAS_CHECK(status);
  MF_CHECK(found > 0, kBackend, "gemm: cuBLASLt has no algorithm for [", m, ", ", k, "] x [", k,
           ", ", n, "] with a ", dtype_torch_name(a.dtype()), ", c ", dtype_torch_name(c.dtype()),
           bias ? " and a bias" : "");
  plan.algo = result.algo;
  return plans.emplace(key, plan).first->second;
}

// a += b and a *= s, kVec elements a thread (8: 16-byte chunks, where every tensor is bf16, 16-byte
// aligned and n % 8 == 0).
template <int kVec>
__global__ void add_kernel(FloatRef a, FloatRef b, int64_t n) {
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    float x[kVec], y[kVec];
    load_chunk<kVec>(a, i, x);
    load_chunk<kVec>(b, i, y);
#pragma unroll
    for (int v = 0; v < kVec; ++v) x[v] += y[v];
    store_chunk<kVec>(a, i, x);
  }
}

template <int kVec>
__global__ void scale_kernel(FloatRef a, float s, int64_t n) {
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    float x[kVec];
    load_chunk<kVec>(a, i, x);
#pragma unroll
    for (int v = 0; v < kVec; ++v) x[v] *= s;
    store_chunk<kVec>(a, i, x);
  }
}

// a *= s over a's n elements.
void scale(Tensor& a, float s, const char* op) {
  const int64_t n = a.numel();
  const FloatRef ar = float_ref(a, op, "a");
  if (bf16_chunks(n, {&a}))
    scale_kernel<8><<<grid_for(n, 256 * 8), 256, 0, current_stream()>>>(ar, s, n);
  else
    scale_kernel<1><<<grid_for(n, 256), 256, 0, current_stream()>>>(ar, s, n);
  MF_CUDA_CHECK_LAUNCH();
}

__global__ void accumulate_f32_kernel(FloatRef dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst.store(i, dst.load(i) + src[i]);
}

// beta = 0 must clear C even where it holds NaN, so it is a fill, not a multiply.
__global__ void fill_kernel(FloatRef a, float value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a.store(i, value);
}

__global__ void cast_kernel(FloatRef x, FloatRef y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y.store(i, x.load(i));
}

// Column sums of src [rows, cols] over chunks of kSumRows rows: block (x, y) owns kSumCols
// consecutive columns (one coalesced row segment per warp-row of threads) of chunk y, read by
// kSumRowGroups interleaved sets of rows, and writes out[y, j] = its sum (plus out[y, j] when
// accumulating).
constexpr int kSumCols = 32, kSumRowGroups = 8;
constexpr int64_t kSumRows = 512;
__global__ void column_sum_kernel(FloatRef src, int64_t rows, int64_t cols, FloatRef out, bool accumulate) {
  __shared__ float partial[kSumRowGroups][kSumCols];
  const int64_t j = blockIdx.x * int64_t(kSumCols) + threadIdx.x;
  const int64_t first = blockIdx.y * kSumRows, end = min(first + kSumRows, rows);
  float s = 0.0f;
  if (j < cols)
    for (int64_t i = first + threadIdx.y; i < end; i += kSumRowGroups) s += src.load(i * cols + j);
  partial[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || j >= cols) return;
  for (int g = 1; g < kSumRowGroups; ++g) s += partial[g][threadIdx.x];
  const int64_t at = blockIdx.y * cols + j;
  out.store(at, accumulate ? out.load(at) + s : s);
}

// c = alpha * op(a) op(b) + beta * c (+ bias over c's columns when `bias` is not null, of c's
// dtype and 16-byte aligned).
void matmul(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
            float alpha, float beta, const void* bias) {
  const FloatRef cref = float_ref(c, "gemm", "c");
  float_ref(a, "gemm", "a");
  float_ref(b, "gemm", "b");
  MF_CHECK(a.dtype() == b.dtype(), kUnsupported, "gemm: CUDA operands a (",
           dtype_torch_name(a.dtype()), ") and b (", dtype_torch_name(b.dtype()),
           ") must have one dtype");
  MF_CHECK(!(a.dtype() == DType::kF32 && c.dtype() == DType::kBF16), kUnsupported,
           "gemm: float32 operands with a bfloat16 result are not supported on CUDA");
  const int64_t m = c.size(0), n = c.size(1), k = transpose_a ? a.size(0) : a.size(1);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C; cuBLASLt rejects empty inner dimensions
    if (beta == 0.0f)
      fill_kernel<<<grid_for(c.numel(), 256), 256, 0, current_stream()>>>(cref, 0.0f, c.numel());
    else
      scale(c, beta, "gemm");
    MF_CUDA_CHECK_LAUNCH();
    return;
  }
  const DeviceContext ctx = device_context();
  const MatmulPlan& plan = matmul_plan(ctx, a, transpose_a, b, transpose_b, c, bias != nullptr);
  if (bias != nullptr)
    MF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                   &bias, sizeof bias));
  MF_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, plan.desc, &alpha, b.raw_data(), plan.b_layout,
                                 a.raw_data(), plan.a_layout, &beta, c.raw_data(), plan.c_layout,
                                 c.raw_data(), plan.c_layout, &plan.algo, ctx.workspace,
                                 kWorkspaceBytes, current_stream()));
}

}  // namespace

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta) {
  matmul(a, transpose_a, b, transpose_b, c, alpha, beta, nullptr);
}

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  float_ref(bias, "linear", "bias");
  MF_CHECK(x.size(1) > 0, kUnsupported, "linear: x ", shape_str(x.shape()),
           " has no features; CUDA adds the bias in the product's epilogue, which needs one");
  // The epilogue reads a bias of y's dtype at a 16-byte aligned address; a bias sliced from a flat
  // buffer or of another dtype is copied first (a vector: negligible next to the product).
  const bool usable = bias.dtype() == y.dtype() && aligned16(bias);
  Tensor staged;
  if (!usable) {
    staged = Tensor::empty(bias.shape(), y.dtype(), Device::kCUDA, "linear bias");
    cast(bias, staged);
  }
  matmul(x, false, w, true, y, 1.0f, 0.0f, usable ? bias.raw_data() : staged.raw_data());
}

void linear_bias_bwd(const Tensor& dy, Tensor& grad_bias) {
  const int64_t cols = dy.size(1);
  int64_t rows = dy.size(0);
  if (rows == 0 || cols == 0) return;
  const dim3 block(kSumCols, kSumRowGroups);
  const unsigned col_blocks = grid_for(cols, kSumCols, INT32_MAX);
  // Chunks of rows summed into rows of fp32 partial sums, those again, until one row is left, which
  // is added into grad_bias: the whole GPU works on long columns, in the same order every run.
  FloatRef src = float_ref(dy, "linear_bias_bwd", "dy");
  Tensor partial;
  while (rows > kSumRows) {
    const int64_t chunks = (rows + kSumRows - 1) / kSumRows;
    MF_ASSERT(chunks <= 65535);
    Tensor sums = Tensor::empty({chunks, cols}, DType::kF32, Device::kCUDA, "linear_bias_bwd partial sums");
    column_sum_kernel<<<dim3(col_blocks, static_cast<unsigned>(chunks)), block, 0, current_stream()>>>(
        src, rows, cols, FloatRef{sums.raw_data(), false}, false);
    MF_CUDA_CHECK_LAUNCH();
    partial = std::move(sums);
    src = FloatRef{partial.raw_data(), false};
    rows = chunks;
  }
  column_sum_kernel<<<dim3(col_blocks, 1), block, 0, current_stream()>>>(
      src, rows, cols, float_ref(grad_bias, "linear_bias_bwd", "grad_bias"), true);
  MF_CUDA_CHECK_LAUNCH();
}

void accumulate_f32(const FloatRef& dst, const float* src, int64_t n) {
  if (n == 0) return;
  accumulate_f32_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(dst, src, n);
  MF_CUDA_CHECK_LAUNCH();
}

void add_inplace(Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  const FloatRef ar = float_ref(a, "add_inplace", "a"), br = float_ref(b, "add_inplace", "b");
  if (bf16_chunks(n, {&a, &b}))
    add_kernel<8><<<grid_for(n, 256 * 8), 256, 0, current_stream()>>>(ar, br, n);
  else
    add_kernel<1><<<grid_for(n, 256), 256, 0, current_stream()>>>(ar, br, n);
  MF_CUDA_CHECK_LAUNCH();
}

void scale_inplace(Tensor& a, float s) {
  const int64_t n = a.numel();
  if (n == 0) return;
  scale(a, s, "scale_inplace");
}

void cast(const Tensor& x, Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  cast_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(float_ref(x, "cast", "x"),
                                                      float_ref(y, "cast", "y"), n);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
