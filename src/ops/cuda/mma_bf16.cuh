// Warp-level products on the bf16 tensor cores (mma.sync m16n8k16, fp32 sums) from shared memory,
// for kernels whose small products sit between elementwise steps (the SSD scan's chunks).
//
// Operands live in shared memory as bf16 rows [rows][stride] and are read with ldmatrix, either way
// round: "rows along m (or n)" or transposed (.trans), so one stored array serves as a product's
// left operand and as another's right one. A value that is not a bf16 (an fp32 state, a decay
// weighted product) is stored split, v ~ hi + lo with hi = bf16(v) and lo = bf16(v - hi), which keeps
// 16 of fp32's 24 bits (a relative error of at most 2^-17); a product then takes the three partial
// products hi.hi + lo.hi + hi.lo, skipping those of a part that is absent (lo of an exact operand).
// Rows are padded by 8 elements (16 bytes), so the 8 rows an ldmatrix reads fall in different banks.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moeforge::ops::cuda::mma {

constexpr int kPad = 8;  // elements after each stored row

// A shared bf16 array [rows][stride]: hi, and lo where the values are not bf16 (nullptr otherwise).
struct Split {
  __nv_bfloat16* hi;
  __nv_bfloat16* lo;
  int stride;
};

__device__ __forceinline__ void store_split(const Split& s, int row, int col, float v) {
  const __nv_bfloat16 hi = __float2bfloat16_rn(v);
  s.hi[row * s.stride + col] = hi;
  if (s.lo != nullptr) s.lo[row * s.stride + col] = __float2bfloat16_rn(v - __bfloat162float(hi));
}
__device__ __forceinline__ float load_split(const Split& s, int row, int col) {
  float v = __bfloat162float(s.hi[row * s.stride + col]);
  if (s.lo != nullptr) v += __bfloat162float(s.lo[row * s.stride + col]);
  return v;
}

// The values at (row, col) and (row, col + 1), col even: one 4-byte access a part. Same roundings as
// store_split / load_split of each.
__device__ __forceinline__ void store_split2(const Split& s, int row, int col, float v0, float v1) {
  const __nv_bfloat162 hi = __floats2bfloat162_rn(v0, v1);
  *reinterpret_cast<__nv_bfloat162*>(s.hi + row * s.stride + col) = hi;
  if (s.lo != nullptr) {
    const float2 h = __bfloat1622float2(hi);
    *reinterpret_cast<__nv_bfloat162*>(s.lo + row * s.stride + col) = __floats2bfloat162_rn(v0 - h.x, v1 - h.y);
  }
}
__device__ __forceinline__ float2 load_split2(const Split& s, int row, int col) {
  float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s.hi + row * s.stride + col));
  if (s.lo != nullptr) {
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s.lo + row * s.stride + col));
    v.x += lo.x, v.y += lo.y;
  }
  return v;
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

// d += a b over one 16 x 8 x 16 block (the PTX ISA's m16n8k16 bf16 fragment layouts).
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The left operand's 16 x 16 block at (m0, k0). kTrans: the array holds it transposed, [k][m].
template <bool kTrans>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const __nv_bfloat16* base, int stride, int m0, int k0) {
  const int lane = threadIdx.x & 31;
  if constexpr (kTrans)  // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
    ldmatrix_x4<true>(a, base + (k0 + (lane >> 4) * 8 + (lane & 7)) * stride + m0 + ((lane >> 3) & 1) * 8);
  else
    ldmatrix_x4<false>(a, base + (m0 + (lane & 15)) * stride + k0 + (lane >> 4) * 8);
}

// The right operand's 16 x 16 block at (k0, n0), as two 16 x 8 halves: b[0], b[1] for columns
// n0..n0+7 and b[2], b[3] for n0+8..n0+15. kTrans: the array holds it [k][n]; else [n][k].
template <bool kTrans>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const __nv_bfloat16* base, int stride, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  if constexpr (kTrans)
    ldmatrix_x4<true>(b, base + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * stride + n0 + (lane >> 4) * 8);
  else
    ldmatrix_x4<false>(b, base + (n0 + (lane >> 4) * 8 + (lane & 7)) * stride + k0 + ((lane >> 3) & 1) * 8);
}

// A warp's 16 x 32 output tile: acc[n][i] holds row row0 + g + 8 (i >> 1), column col0 + 8 n + 2 q + (i & 1),
// with g = lane / 4 and q = lane % 4 (entry()).
using Acc = float[4][4];

struct Entry {
  int row, col;
};
__device__ __forceinline__ Entry entry(int row0, int col0, int n, int i) {
  const int lane = threadIdx.x & 31;
  return {row0 + (lane >> 2) + 8 * (i >> 1), col0 + 8 * n + 2 * (lane & 3) + (i & 1)};
}

// Calls f(n, i, e) for each of the lane's 16 entries of the warp tile at (row0, col0): acc[n][i] is at e.
template <class F>
__device__ __forceinline__ void for_each_entry(int row0, int col0, F f) {
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) f(n, i, entry(row0, col0, n, i));
}

// Calls f(n, i, e) for i = 0 and 2: the lane's entries i and i + 1 of acc[n] are at (e.row, e.col) and
// (e.row, e.col + 1), e.col even.
template <class F>
__device__ __forceinline__ void for_each_entry_pair(int row0, int col0, F f) {
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int i = 0; i < 4; i += 2) f(n, i, entry(row0, col0, n, i));
}

// acc += A[row0 .. row0 + 16, 0 .. inner) B[0 .. inner, col0 .. col0 + 32), inner a multiple of 16.
// kTransA / kTransB as load_a / load_b. Missing lo parts drop their partial products.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void product(Acc& acc, const Split& a, const Split& b, int row0, int col0, int inner) {
  // Two steps a pass: the second step's ldmatrix then issue while the first step's mma run.
#pragma unroll 2
  for (int k0 = 0; k0 < inner; k0 += 16) {
    uint32_t a_hi[4], a_lo[4];
    load_a<kTransA>(a_hi, a.hi, a.stride, row0, k0);
    if (a.lo != nullptr) load_a<kTransA>(a_lo, a.lo, a.stride, row0, k0);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t b_hi[4], b_lo[4];
      load_b<kTransB>(b_hi, b.hi, b.stride, k0, col0 + 16 * half);
      if (b.lo != nullptr) load_b<kTransB>(b_lo, b.lo, b.stride, k0, col0 + 16 * half);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        float(&d)[4] = acc[2 * half + n];
        if (a.lo != nullptr) mma_m16n8k16(d, a_lo, b_hi[2 * n], b_hi[2 * n + 1]);
        if (b.lo != nullptr) mma_m16n8k16(d, a_hi, b_lo[2 * n], b_lo[2 * n + 1]);
        mma_m16n8k16(d, a_hi, b_hi[2 * n], b_hi[2 * n + 1]);
      }
    }
  }
}

}  // namespace moeforge::ops::cuda::mma
