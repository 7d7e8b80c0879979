// The CUTLASS SM90 grouped GEMMs behind the grouped linears (grouped_gemm_cutlass.cu and
// gathered_grouped_gemm.cu, their own translation units so that nothing else compiles CUTLASS).
// Each returns false, doing nothing, when the call is outside what its fixed kernel takes;
// grouped_gemm.cu then uses the simple kernel (the gathered one: a permuted temporary).
#pragma once

#include "core/tensor.h"

namespace moeforge::ops::cuda {

// x, w, dy bf16; y, dx bf16; grad_w fp32 or bf16 (accumulated in fp32); feature sizes multiples of 8 (16-byte rows for TMA).
// bias [E, N] bf16 or undefined: y = x w^T + bias[e] with the sum rounded once (only where the weight
// takes 2 x 2 clusters: quad_cluster in the .cu).
bool cutlass_grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias, Tensor& y);
bool cutlass_grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dx);
// Without accumulate, grad_w is written without being read, and an expert without rows is left as
// it is (grouped_linear_dw zeroes those).
bool cutlass_grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w,
                               bool accumulate);
// y[r] = x[rows[r]] w_e^T for expert e's rows r: x [tokens, K], rows [R] int32, y [R, N], all bf16 but
// rows; K a multiple of 64, N of 8, at most 1024 experts.
bool cutlass_gathered_grouped_linear(const Tensor& x, const Tensor& rows, const Tensor& w, const Tensor& offsets,
                                     Tensor& y);

}  // namespace moeforge::ops::cuda
