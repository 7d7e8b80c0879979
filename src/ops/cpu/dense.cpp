// Dense algebra on the CPU: gemm through OpenBLAS, elementwise in-place updates.
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
