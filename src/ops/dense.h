// Dense algebra: matrix products, the linear layer with its optional bias, whole-tensor updates
// and casts.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include "core/tensor.h"

namespace moeforge::ops {

// C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T; 2-D, contiguous. beta = 0 overwrites C
// (C's previous contents, even NaN, are ignored).
void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha = 1.0f, float beta = 0.0f);
// y = x @ w^T + bias, x [N, in], w [out, in] (the layout of nn.Linear.weight), bias [out] or
// undefined for none. The bias is added in fp32 before y is rounded to its dtype (x's); on CUDA
// in the matrix product's epilogue.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());
// The bias's share of linear's backward: grad_bias [out] += the column sums of dy [N, out],
// accumulated in fp32. (dx and dw are gemm's: dx = dy @ w, dw += dy^T @ x.)
void linear_bias_bwd(const Tensor& dy, Tensor& grad_bias);
void add_inplace(Tensor& a, const Tensor& b);  // a += b, same shape
void scale_inplace(Tensor& a, float s);        // a *= s
// A copy of a floating tensor in another floating dtype (round to nearest even), on its device.
Tensor cast(const Tensor& x, DType dtype);

}  // namespace moeforge::ops
