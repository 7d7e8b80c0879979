// The optimizer's kernels: the squared norm of a flat buffer and a multi-tensor AdamW update.
// Both are bandwidth-bound single passes over the flat parameter/gradient/state buffers.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr int kThreads = 256;

// fp32 partial sums per thread and block (the values are gradients: fp32 keeps 24 bits over a
// block's few thousand terms), fp64 across blocks. kVec elements a load (8: 16-byte bf16 chunks).
template <int kVec>
__global__ void sum_of_squares_kernel(FloatRef x, int64_t n, double* out) {
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    float v[kVec];
    load_chunk<kVec>(x, i, v);
#pragma unroll
    for (int k = 0; k < kVec; ++k) s += v[k] * v[k];
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) atomicAdd(out, static_cast<double>(s));
}

// Eight consecutive elements as floats, from and to bf16 or fp32 storage with 16-byte accesses.
__device__ __forceinline__ void load8(const float* p, float* out) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w; out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* out) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void store8(float* p, const float* in) {
  reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float* in) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// One block per span (the caller cuts long tensors into many spans, so the grid fills the GPU);
// each thread updates eight consecutive elements at a time. P: weight and gradient storage, S:
// moment storage; master (fp32) may be null.
template <class P, class S>
__global__ void adamw_kernel(P* params, const P* grads, float* master, S* m, S* v,
                             const int64_t* spans, AdamWHyper h) {
  const int64_t* span = spans + 3 * int64_t(blockIdx.x);
  const int64_t begin = span[0], end = span[1];
  const float decay = span[2] != 0 ? 1.0f - h.lr * h.weight_decay : 1.0f;
  for (int64_t i = begin + 8 * int64_t(threadIdx.x); i < end; i += 8 * int64_t(blockDim.x)) {
    float g[8], p[8], mi[8], vi[8];
    load8(grads + i, g);
    if (master != nullptr) load8(master + i, p); else load8(params + i, p);
    load8(m + i, mi);
    load8(v + i, vi);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      g[j] *= h.grad_scale;
      p[j] *= decay;
      mi[j] = h.beta1 * mi[j] + (1.0f - h.beta1) * g[j];
      vi[j] = h.beta2 * vi[j] + (1.0f - h.beta2) * g[j] * g[j];
      p[j] -= h.step_size * mi[j] / (sqrtf(vi[j]) / h.bc2_sqrt + h.eps);
    }
    store8(m + i, mi);
    store8(v + i, vi);
    if (master != nullptr) store8(master + i, p);
    store8(params + i, p);
  }
}

template <class P, class S>
void launch_adamw(Tensor& params, const Tensor& grads, Tensor& master, Tensor& m, Tensor& v,
                  const Tensor& spans, const AdamWHyper& h) {
  adamw_kernel<P, S><<<static_cast<unsigned>(spans.size(0)), kThreads, 0, current_stream()>>>(
      params.data<P>(), grads.data<P>(), master.defined() ? master.data<float>() : nullptr,
      m.data<S>(), v.data<S>(), spans.data<int64_t>(), h);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace

double sum_of_squares(const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return 0.0;
  Tensor out = Tensor::zeros({1}, DType::kF64, Device::kCUDA, "sum of squares");
  const FloatRef xr = float_ref(x, "sum_of_squares", "x");
  const unsigned grid = grid_for(n, kThreads * 16, 4096);
  if (bf16_chunks(n, {&x}))
    sum_of_squares_kernel<8><<<grid, kThreads, 0, current_stream()>>>(xr, n, out.data<double>());
  else
    sum_of_squares_kernel<1><<<grid, kThreads, 0, current_stream()>>>(xr, n, out.data<double>());
  MF_CUDA_CHECK_LAUNCH();
  return *out.to(Device::kCPU).data<double>();
}

void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h) {
  const int64_t num_spans = spans.size(0);
  if (num_spans == 0) return;
  MF_CHECK(num_spans < (1ll << 31), kInvalidArgument, "adamw_update: ", num_spans, " spans");
  const char* op = "adamw_update";
  for (const Tensor* t : std::initializer_list<const Tensor*>{&params, &grads, &exp_avg, &exp_avg_sq})
    (void)float_ref(*t, op, "buffer");
  MF_CHECK(grads.dtype() == params.dtype() && exp_avg_sq.dtype() == exp_avg.dtype(), kUnsupported,
           op, ": CUDA takes gradients in the weights' dtype and both moments in one dtype");
  const bool bf16_weights = params.dtype() == DType::kBF16, bf16_state = exp_avg.dtype() == DType::kBF16;
  if (bf16_weights && bf16_state)
    launch_adamw<__nv_bfloat16, __nv_bfloat16>(params, grads, master, exp_avg, exp_avg_sq, spans, h);
  else if (bf16_weights)
    launch_adamw<__nv_bfloat16, float>(params, grads, master, exp_avg, exp_avg_sq, spans, h);
  else if (bf16_state)
    launch_adamw<float, __nv_bfloat16>(params, grads, master, exp_avg, exp_avg_sq, spans, h);
  else
    launch_adamw<float, float>(params, grads, master, exp_avg, exp_avg_sq, spans, h);
}

}  // namespace moeforge::ops::cuda
