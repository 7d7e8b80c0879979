// Dense algebra on CUDA: gemm through cuBLASLt (fp32 compute), elementwise in-place updates.
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

// One cuBLASLt handle and workspace per device, made on first use and kept for the process.
struct DeviceContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

DeviceContext& device_context() {
  static std::mutex mutex;
  static std::vector<DeviceContext> contexts;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (contexts.size() <= static_cast<size_t>(device)) contexts.resize(device + 1);
  DeviceContext& ctx = contexts[device];
  if (ctx.handle == nullptr) {
    MF_CUBLAS_CHECK(cublasLtCreate(&ctx.handle));
    ctx.workspace = cuda_alloc(kWorkspaceBytes, "cuBLASLt workspace");
  }
  return ctx;
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
                           uint32_t, uint32_t>;

cudaDataType_t cuda_type(DType d) { return d == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

cublasLtMatrixLayout_t make_layout(DType d, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  MF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, cuda_type(d), static_cast<uint64_t>(rows),
                                             static_cast<uint64_t>(cols), ld));
  return layout;
}

// Plans are cached for the life of the process (training repeats a few dozen shapes).
const MatmulPlan& matmul_plan(const DeviceContext& ctx, const Tensor& a, bool ta, const Tensor& b,
                              bool tb, const Tensor& c) {
  static std::mutex mutex;
  static std::map<PlanKey, MatmulPlan> plans;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  const int64_t m = c.size(0), n = c.size(1), k = ta ? a.size(0) : a.size(1);
  const uint32_t align_a = alignment_of(a.raw_data()), align_b = alignment_of(b.raw_data()),
                 align_c = alignment_of(c.raw_data());
  const PlanKey key{device, m, n, k, ta, tb, a.dtype() == DType::kBF16, c.dtype() == DType::kBF16,
                    align_a, align_b, align_c};
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
           ", ", n, "] with a ", dtype_torch_name(a.dtype()), ", c ", dtype_torch_name(c.dtype()));
  plan.algo = result.algo;
  return plans.emplace(key, plan).first->second;
}

__global__ void add_kernel(FloatRef a, FloatRef b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a.store(i, a.load(i) + b.load(i));
}

__global__ void scale_kernel(FloatRef a, float s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a.store(i, a.load(i) * s);
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

}  // namespace

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta) {
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
      fill_kernel<<<grid_for(c.numel(), 256), 256, 0, kStream>>>(cref, 0.0f, c.numel());
    else
      scale_kernel<<<grid_for(c.numel(), 256), 256, 0, kStream>>>(cref, beta, c.numel());
    MF_CUDA_CHECK_LAUNCH();
    return;
  }
  const DeviceContext& ctx = device_context();
  const MatmulPlan& plan = matmul_plan(ctx, a, transpose_a, b, transpose_b, c);
  MF_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, plan.desc, &alpha, b.raw_data(), plan.b_layout,
                                 a.raw_data(), plan.a_layout, &beta, c.raw_data(), plan.c_layout,
                                 c.raw_data(), plan.c_layout, &plan.algo, ctx.workspace,
                                 kWorkspaceBytes, kStream));
}

void accumulate_f32(const FloatRef& dst, const float* src, int64_t n) {
  if (n == 0) return;
  accumulate_f32_kernel<<<grid_for(n, 256), 256, 0, kStream>>>(dst, src, n);
  MF_CUDA_CHECK_LAUNCH();
}

void add_inplace(Tensor& a, const Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, kStream>>>(float_ref(a, "add_inplace", "a"),
                                                     float_ref(b, "add_inplace", "b"), n);
  MF_CUDA_CHECK_LAUNCH();
}

void scale_inplace(Tensor& a, float s) {
  const int64_t n = a.numel();
  if (n == 0) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, kStream>>>(float_ref(a, "scale_inplace", "a"), s, n);
  MF_CUDA_CHECK_LAUNCH();
}

void cast(const Tensor& x, Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  cast_kernel<<<grid_for(n, 256), 256, 0, kStream>>>(float_ref(x, "cast", "x"),
                                                      float_ref(y, "cast", "y"), n);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
