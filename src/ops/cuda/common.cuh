// Helpers shared by the CUDA op kernels: float views of bf16/fp32 tensors, warp and block
// reductions, launch sizes. Included only by .cu files of ops/cuda.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/cuda/check.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops/cuda/stream.h"

namespace moeforge::ops::cuda {

// A contiguous floating tensor's elements, read and written as fp32 whatever their storage
// (bf16 or fp32). The dtype test is uniform across a launch, so it costs a predicted branch.
struct FloatRef {
  void* data;
  bool bf16;

  __device__ __forceinline__ float load(int64_t i) const {
    return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i])
                : static_cast<const float*>(data)[i];
  }
  __device__ __forceinline__ void store(int64_t i, float v) const {
    if (bf16)
      static_cast<__nv_bfloat16*>(data)[i] = __float2bfloat16(v);
    else
      static_cast<float*>(data)[i] = v;
  }
};

inline bool is_float_storage(DType d) { return d == DType::kBF16 || d == DType::kF32; }

// `op` and `name` go into the error for any other dtype.
inline FloatRef float_ref(const Tensor& t, const char* op, const char* name) {
  MF_CHECK(is_float_storage(t.dtype()), kUnsupported, op, ": CUDA tensor ", name, " has dtype ",
           dtype_torch_name(t.dtype()), "; the CUDA ops take bfloat16 or float32");
  MF_ASSERT(t.is_contiguous());
  return {t.raw_data(), t.dtype() == DType::kBF16};
}

inline void check_dtype(const Tensor& t, DType want, const char* op, const char* name) {
  MF_CHECK(t.dtype() == want, kUnsupported, op, ": CUDA tensor ", name, " has dtype ",
           dtype_torch_name(t.dtype()), ", expected ", dtype_torch_name(want));
  MF_ASSERT(t.is_contiguous());
}

// Grid size for `n` independent items of `per_block` each, capped for grid-stride loops.
inline unsigned grid_for(int64_t n, int64_t per_block, int64_t cap = 65535LL * 8) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, cap));
}

// dst[i] += src[i] for n elements (dense.cu): how bf16 gradient buffers take an fp32 partial sum.
void accumulate_f32(const FloatRef& dst, const float* src, int64_t n);

// The fp32 sum a kernel adds a weight gradient into (atomics): grad_w itself when it is fp32,
// else a zeroed fp32 buffer that finish() adds into the bf16 gradient once.
struct WeightGradSum {
  FloatRef grad;
  Tensor buffer;  // bf16 gradients only
  float* sum;

  WeightGradSum(const Tensor& grad_w, const char* op) : grad(float_ref(grad_w, op, "grad_w")) {
    if (grad.bf16) buffer = Tensor::zeros(grad_w.shape(), DType::kF32, Device::kCUDA, "weight gradient sum");
    sum = grad.bf16 ? buffer.data<float>() : static_cast<float*>(grad.data);
  }
  void finish() const {
    if (grad.bf16) accumulate_f32(grad, sum, buffer.numel());
  }
};

// 16 bytes from global to shared memory without passing through registers (cp.async, sm_80 on), and
// the wait for all of this thread's. copy_async16_or_zero writes 16 zero bytes where `valid` is false
// (nothing is read then).
__device__ __forceinline__ void copy_async16(void* shared, const void* global) {
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(global));
}
__device__ __forceinline__ void copy_async16_or_zero(void* shared, const void* global, bool valid) {
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void wait_async_copies() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// kVec consecutive elements: one through FloatRef, or kVec bf16 (4 or 8) in one 8- or 16-byte
// access (Bf16Chunk), which memory-bound kernels over long rows need to run at bandwidth.
template <int kVec>
using Bf16Chunk = std::conditional_t<kVec == 8, uint4, uint2>;

// The 16 bytes (8 bf16) at element `at` of a bf16 tensor, as they are; and the same store.
__device__ __forceinline__ uint4 load_raw(FloatRef t, int64_t at) {
  return *reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(t.data) + at);
}
__device__ __forceinline__ void store_raw(FloatRef t, int64_t at, const uint4& v) {
  *reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(t.data) + at) = v;
}

// The kVec bf16 of a chunk as floats (kVec 4 or 8). The chunk comes by value: read through a reference
// to global memory, its pairs would be loaded 4 bytes at a time.
template <int kVec>
__device__ __forceinline__ void unpack_bf16(const Bf16Chunk<kVec> raw, float (&x)[kVec]) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    const float2 f = __bfloat1622float2(pairs[i]);
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}

template <int kVec>
__device__ __forceinline__ void load_chunk(FloatRef t, int64_t at, float (&x)[kVec]) {
  if constexpr (kVec == 1) {
    x[0] = t.load(at);
  } else {
    static_assert(kVec == 4 || kVec == 8, "bf16 chunks are 8 or 16 bytes");
    const auto raw = *reinterpret_cast<const Bf16Chunk<kVec>*>(static_cast<const __nv_bfloat16*>(t.data) + at);
    unpack_bf16<kVec>(raw, x);
  }
}
// kVec floats rounded to a chunk of bf16 (kVec 4 or 8).
template <int kVec>
__device__ __forceinline__ Bf16Chunk<kVec> pack_bf16(const float (&x)[kVec]) {
  Bf16Chunk<kVec> raw;
  auto* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) pairs[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
  return raw;
}

template <int kVec>
__device__ __forceinline__ void store_chunk(FloatRef t, int64_t at, const float (&x)[kVec]) {
  if constexpr (kVec == 1)
    t.store(at, x[0]);
  else
    *reinterpret_cast<Bf16Chunk<kVec>*>(static_cast<__nv_bfloat16*>(t.data) + at) = pack_bf16<kVec>(x);
}

// dst[i] += v[i] for i < kVec by atomics (shared memory), starting at i = first % kVec and wrapping:
// lanes whose chunks start on one bank, each given another start, hit different banks at every step.
template <int kVec>
__device__ __forceinline__ void atomic_add_rotated(float* dst, const float (&v)[kVec], int first) {
#pragma unroll
  for (int step = 0; step < kVec; ++step) {
    const int i = (step + first) % kVec;
    float part = v[0];  // v[i] without indexing registers at run time
#pragma unroll
    for (int u = 1; u < kVec; ++u) part = i == u ? v[u] : part;
    atomicAdd(dst + i, part);
  }
}

inline bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

// Whether rows of `row_length` elements of these tensors can go 8 bf16 (16 bytes) at a time.
inline bool bf16_chunks(int64_t row_length, std::initializer_list<const Tensor*> tensors) {
  if (row_length % 8 != 0) return false;
  for (const Tensor* t : tensors)
    if (t->dtype() != DType::kBF16 || !aligned16(*t)) return false;
  return true;
}

// An attribute of the current device.
inline int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  MF_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// Multiprocessors of the current device: sizes persistent grids.
inline int sm_count() { return device_attribute(cudaDevAttrMultiProcessorCount); }

// Sets a kernel's dynamic shared memory limit when `bytes` needs more than the default 48 KiB.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    MF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of whole warps (at most 32); every thread gets the result. `scratch` holds 32
// floats of shared memory; the call ends with a barrier so scratch may be reused right after.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  v = warp_sum(v);
  __syncthreads();
  return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  v = warp_max(v);
  __syncthreads();
  return v;
}

}  // namespace moeforge::ops::cuda
