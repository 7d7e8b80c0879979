// Dense algebra on the CPU: gemm and linear through OpenBLAS, the bias gradient, elementwise
// in-place updates.
#include <cblas.h>

#include <algorithm>

#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {

void sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (beta != 1.0f) {
    // Apply beta here: beta = 0 must clear NaN, and BLAS rejects k = 0 (zero leading dimension).
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      if (beta == 0.0f)
        std::fill(row, row + n, 0.0f);
      else
        std::transform(row, row + n, row, [beta](float v) { return v * beta; });
    }
  }
  if (k == 0) return;
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
              transpose_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda),
              b, static_cast<blasint>(ldb), 1.0f, c, static_cast<blasint>(ldc));
}

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta) {
  const int64_t k = transpose_a ? a.size(0) : a.size(1);
  sgemm(transpose_a, transpose_b, c.size(0), c.size(1), k, alpha, a.data<float>(), a.size(1),
        b.data<float>(), b.size(1), beta, c.data<float>(), c.size(1));
}

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  gemm(x, false, w, true, y, 1.0f, 0.0f);
  const float* pb = bias.data<float>();
  float* py = y.data<float>();
  const int64_t out = y.size(1);
  for (int64_t i = 0, rows = y.size(0); i < rows; ++i)
    for (int64_t j = 0; j < out; ++j) py[i * out + j] += pb[j];
}

void linear_bias_bwd(const Tensor& dy, Tensor& grad_bias) {
  const float* pd = dy.data<float>();
  float* pg = grad_bias.data<float>();
  const int64_t rows = dy.size(0), cols = dy.size(1);
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0;
    for (int64_t i = 0; i < rows; ++i) s += pd[i * cols + j];
    pg[j] += static_cast<float>(s);
  }
}

void add_inplace(Tensor& a, const Tensor& b) {
  float* pa = a.data<float>();
  const float* pb = b.data<float>();
  for (int64_t i = 0, n = a.numel(); i < n; ++i) pa[i] += pb[i];
}

void scale_inplace(Tensor& a, float s) {
  float* pa = a.data<float>();
  for (int64_t i = 0, n = a.numel(); i < n; ++i) pa[i] *= s;
}

}  // namespace moeforge::ops::cpu
