// Every CUDA op against the float32 CPU reference (ops.h on CPU tensors), ggml test-backend-ops
// style: random inputs rounded to bf16 first so both sides see the same values, CUDA outputs
// poisoned with NaN (index outputs with -1) before the call so unwritten elements fail, and the
// normalised error ||cuda - cpu|| / ||cpu|| checked per output:
//   bf16 outputs:  kBf16Tol = 1e-2 (bf16 keeps 8 bits: rounding alone gives about 2e-3)
//   fp32 outputs:  kF32Tol = 1e-4 (rstd, lse, probabilities, routing weights, d_weight, loss)
//   indices:       exact (top-k choices, the permutation)
// Every comparison prints "ERR <op>/<output> <error>" so a run records the measured errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/ops.h"
#include "testing.h"

namespace moeforge {
namespace {

constexpr double kBf16Tol = 1e-2;
constexpr double kF32Tol = 1e-4;

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

// Random fp32 CPU values in [-scale, scale], rounded to bf16.
Tensor random_tensor(Shape shape, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(rng);
  return Tensor::from_vector(v, std::move(shape)).to(DType::kBF16).to(DType::kF32);
}

Tensor to_cuda(const Tensor& cpu, DType dtype = DType::kBF16) {
  return cpu.to(dtype).to(Device::kCUDA);
}

Tensor to_cpu_f32(const Tensor& t) { return t.to(Device::kCPU).to(DType::kF32); }

// A CUDA tensor whose every element is NaN (floating dtypes) or all-ones bits (-1 for integers).
Tensor poisoned(Shape shape, DType dtype) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  if (dtype == DType::kF32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
  } else if (dtype == DType::kBF16) {
    uint16_t* p = t.data<uint16_t>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = 0x7fc0;  // bf16 quiet NaN
  } else {
    std::memset(t.raw_data(), 0xff, t.nbytes());
  }
  return t.to(Device::kCUDA);
}

bool has_nan(const std::vector<float>& v) {
  for (float x : v)
    if (std::isnan(x)) return true;
  return false;
}

// Checks a CUDA output against the CPU reference and prints the error.
void expect_close(const std::string& what, const Tensor& cuda_out, const Tensor& cpu_ref,
                  double tol) {
  ASSERT_EQ(shape_str(cuda_out.shape()), shape_str(cpu_ref.shape())) << what;
  const std::vector<float> got = to_cpu_f32(cuda_out).to_float_vector();
  const std::vector<float> want = cpu_ref.to_float_vector();
  EXPECT_FALSE(has_nan(got)) << what << ": NaN in the CUDA output (an unwritten element?)";
  const double err = testing::rel_l2(got, want);
  std::printf("ERR %s %.3e\n", what.c_str(), err);
  EXPECT_LE(err, tol) << what;
}

void expect_equal_ints(const std::string& what, const Tensor& cuda_out, const Tensor& cpu_ref) {
  ASSERT_EQ(shape_str(cuda_out.shape()), shape_str(cpu_ref.shape())) << what;
  const Tensor got = cuda_out.to(Device::kCPU);
  ASSERT_EQ(got.dtype(), cpu_ref.dtype()) << what;
  int64_t mismatches = 0;
  for (int64_t i = 0; i < got.numel(); ++i) mismatches += got.item_float(i) != cpu_ref.item_float(i);
  std::printf("ERR %s %lld mismatches\n", what.c_str(), static_cast<long long>(mismatches));
  EXPECT_EQ(mismatches, 0) << what;
}

// ---- dense ------------------------------------------------------------------------------------

TEST(GpuOps, Gemm) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(1);
  const int64_t m = 77, n = 130, k = 96;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (DType cdt : {DType::kBF16, DType::kF32}) {
        const Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}, rng);
        const Tensor b = random_tensor(tb ? Shape{n, k} : Shape{k, n}, rng);
        const std::string tag = std::string("gemm/ta") + char('0' + ta) + "_tb" + char('0' + tb) +
                                (cdt == DType::kBF16 ? "_bf16" : "_f32");
        // beta = 0 over a poisoned C; then beta = 0.5 accumulating into a known C.
        Tensor ref = Tensor::empty({m, n}, DType::kF32);
        ops::gemm(a, ta, b, tb, ref, 0.5f, 0.0f);
        Tensor c = poisoned({m, n}, cdt);
        ops::cuda::gemm(to_cuda(a), ta, to_cuda(b), tb, c, 0.5f, 0.0f);
        expect_close(tag + "_beta0", c, ref, kBf16Tol);

        const Tensor c0 = random_tensor({m, n}, rng);
        Tensor ref1 = c0.clone();
        ops::gemm(a, ta, b, tb, ref1, 1.0f, 0.5f);
        Tensor c1 = to_cuda(c0, cdt);
        ops::cuda::gemm(to_cuda(a), ta, to_cuda(b), tb, c1, 1.0f, 0.5f);
        expect_close(tag + "_beta0.5", c1, ref1, kBf16Tol);
      }
  // fp32 operands and result (no TF32: near fp32 exactness).
  const Tensor a = random_tensor({m, k}, rng), b = random_tensor({n, k}, rng);
  Tensor ref = Tensor::empty({m, n}, DType::kF32);
  ops::gemm(a, false, b, true, ref);
  Tensor c = poisoned({m, n}, DType::kF32);
  ops::cuda::gemm(to_cuda(a, DType::kF32), false, to_cuda(b, DType::kF32), true, c, 1.0f, 0.0f);
  expect_close("gemm/f32", c, ref, kF32Tol);
}

TEST(GpuOps, AddAndScale) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(2);
  for (int64_t cols : {70, 72}) {  // 33 x 72 elements take the 16-byte path
    const Tensor a = random_tensor({33, cols}, rng), b = random_tensor({33, cols}, rng);
    Tensor ref = a.clone();
    ops::add_inplace(ref, b);
    ops::scale_inplace(ref, 0.75f);
    Tensor x = to_cuda(a);
    ops::cuda::add_inplace(x, to_cuda(b));
    ops::cuda::scale_inplace(x, 0.75f);
    expect_close(str_cat("add_scale/a[33, ", cols, "]"), x, ref, kBf16Tol);
  }
}

// ---- embedding ----------------------------------------------------------------------------------

TEST(GpuOps, Embedding) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  const int64_t vocab = 50, hidden = 72, n = 300;  // many repeated ids
  const Tensor weight = random_tensor({vocab, hidden}, rng);
  std::vector<int64_t> id_values(n);
  for (auto& id : id_values) id = static_cast<int64_t>(rng() % vocab);
  const Tensor ids = Tensor::from_vector(id_values, {n});
  const Tensor ids_cuda = ids.to(Device::kCUDA);

  Tensor out = poisoned({n, hidden}, DType::kBF16);
  ops::cuda::embedding_fwd(to_cuda(weight), ids_cuda, out);
  expect_close("embedding_fwd/out", out, ops::embedding_fwd(weight, ids), kBf16Tol);

  const Tensor grad_out = random_tensor({n, hidden}, rng);
  const Tensor grad0 = random_tensor({vocab, hidden}, rng);
  Tensor ref = grad0.clone();
  ops::embedding_bwd(grad_out, ids, ref);
  for (DType gdt : {DType::kF32, DType::kBF16}) {
    Tensor grad = to_cuda(grad0, gdt);
    ops::cuda::embedding_bwd(to_cuda(grad_out), ids_cuda, grad, -1);
    expect_close(std::string("embedding_bwd/grad_weight_") + (gdt == DType::kF32 ? "f32" : "bf16"),
                 grad, ref, kBf16Tol);
  }
  // A padding_idx row gets nothing from the lookup (the CPU reference is the oracle).
  const int64_t padding_idx = id_values[0];
  Tensor ref_pad = grad0.clone();
  ops::embedding_bwd(grad_out, ids, ref_pad, padding_idx);
  Tensor grad_pad = to_cuda(grad0, DType::kF32);
  ops::cuda::embedding_bwd(to_cuda(grad_out), ids_cuda, grad_pad, padding_idx);
  expect_close("embedding_bwd/padding_idx", grad_pad, ref_pad, kBf16Tol);

  // An id outside the vocabulary is an Error naming it, and leaves the gradient unchanged.
  id_values[7] = vocab + 3;
  const Tensor bad_ids = Tensor::from_vector(id_values, {n}).to(Device::kCUDA);
  Tensor out2 = poisoned({n, hidden}, DType::kBF16);
  EXPECT_THROW(ops::cuda::embedding_fwd(to_cuda(weight), bad_ids, out2), Error);
  Tensor grad = to_cuda(grad0, DType::kF32);
  try {
    ops::cuda::embedding_bwd(to_cuda(grad_out), bad_ids, grad, -1);
    ADD_FAILURE() << "embedding_bwd accepted id " << vocab + 3;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 53 at position 7"), std::string::npos) << e.what();
  }
  EXPECT_EQ(testing::rel_l2(to_cpu_f32(grad), grad0), 0.0);
}

// ---- RMSNorm ------------------------------------------------------------------------------------

// d 128 and 2048 take the 16-byte path (one and eight chunks per lane; 20,000 rows: several rows
// per warp, whose dw partial sums stay in registers), 132 and 4096 the element path.
TEST(GpuOps, RmsNorm) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(4);
  for (const auto& [d, rows] : std::vector<std::pair<int64_t, int64_t>>{
           {128, 37}, {128, 20000}, {2048, 37}, {2048, 3000}, {132, 37}, {4096, 37}}) {
    const std::string tag = str_cat("rms_norm_d", d, "_rows", rows);
    const Tensor x = random_tensor({rows, d}, rng, 2.0f), w = random_tensor({d}, rng);
    Tensor rstd_ref;
    const Tensor y_ref = ops::rms_norm_fwd(x, w, 1e-6f, rstd_ref);
    Tensor y = poisoned({rows, d}, DType::kBF16), rstd = poisoned({rows}, DType::kF32);
    ops::cuda::rms_norm_fwd(to_cuda(x), to_cuda(w), 1e-6f, y, rstd);
    expect_close(tag + "_fwd/y", y, y_ref, kBf16Tol);
    expect_close(tag + "_fwd/rstd", rstd, rstd_ref, kF32Tol);

    const Tensor dy = random_tensor({rows, d}, rng), gw0 = random_tensor({d}, rng);
    Tensor gw_ref = gw0.clone();
    const Tensor dx_ref = ops::rms_norm_bwd(dy, x, w, rstd_ref, gw_ref);
    for (DType gdt : {DType::kF32, DType::kBF16}) {
      Tensor dx = poisoned({rows, d}, DType::kBF16), gw = to_cuda(gw0, gdt);
      ops::cuda::rms_norm_bwd(to_cuda(dy), to_cuda(x), to_cuda(w), rstd_ref.to(Device::kCUDA), Tensor(),
                              dx, gw);
      const std::string g = gdt == DType::kF32 ? "f32" : "bf16";
      expect_close(tag + "_bwd/dx", dx, dx_ref, kBf16Tol);
      expect_close(tag + "_bwd/grad_w_" + g, gw, gw_ref, kBf16Tol);
    }

    // The residual forms: x += residual before the norm (the sum written back to x), and the
    // residual's gradient added to dx.
    const Tensor residual = random_tensor({rows, d}, rng), dx_residual = random_tensor({rows, d}, rng);
    Tensor sum_ref = x.clone(), rstd_sum_ref;
    ops::add_inplace(sum_ref, residual);
    const Tensor y_sum_ref = ops::rms_norm_fwd(sum_ref, w, 1e-6f, rstd_sum_ref);
    Tensor x_cuda = to_cuda(x), y_sum = poisoned({rows, d}, DType::kBF16);
    ops::cuda::add_rms_norm_fwd(x_cuda, to_cuda(residual), to_cuda(w), 1e-6f, y_sum, rstd);
    expect_close(tag + "_add_fwd/x", x_cuda, sum_ref, kBf16Tol);
    expect_close(tag + "_add_fwd/y", y_sum, y_sum_ref, kBf16Tol);
    Tensor gw_sum_ref = gw0.clone();
    Tensor dx_sum_ref = ops::rms_norm_bwd(dy, x, w, rstd_ref, gw_sum_ref);
    ops::add_inplace(dx_sum_ref, dx_residual);
    Tensor dx = poisoned({rows, d}, DType::kBF16), gw = to_cuda(gw0, DType::kF32);
    ops::cuda::rms_norm_bwd(to_cuda(dy), to_cuda(x), to_cuda(w), rstd_ref.to(Device::kCUDA),
                            to_cuda(dx_residual), dx, gw);
    expect_close(tag + "_bwd_residual/dx", dx, dx_sum_ref, kBf16Tol);
  }
}

// ---- RoPE ---------------------------------------------------------------------------------------

// Qwen3's inverse frequencies (theta 1e6) for heads of d columns.
Tensor default_inv_freq(int64_t d) {
  std::vector<float> freq(d / 2);
  for (int64_t i = 0; i < d / 2; ++i)
    freq[i] = static_cast<float>(std::pow(1e6, -2.0 * static_cast<double>(i) / d));
  return Tensor::from_vector(freq, {d / 2});
}

void check_rope(int64_t d, std::mt19937& rng) {
  const int64_t n = 40, heads = 3;
  const Tensor x = random_tensor({n, heads, d}, rng);
  std::vector<int64_t> pos(n);
  for (auto& p : pos) p = static_cast<int64_t>(rng() % 4096);
  const Tensor positions = Tensor::from_vector(pos, {n});
  const Tensor inv_freq = default_inv_freq(d);
  const float scaling = 1.25f;
  for (float sign : {1.0f, -1.0f}) {
    const Tensor ref = sign > 0 ? ops::rope_fwd(x, positions, inv_freq, scaling)
                                : ops::rope_bwd(x, positions, inv_freq, scaling);
    Tensor y = poisoned({n, heads, d}, DType::kBF16);
    ops::cuda::rope_apply(to_cuda(x), positions.to(Device::kCUDA), inv_freq.to(Device::kCUDA),
                          scaling, sign, y);
    expect_close(str_cat(sign > 0 ? "rope_fwd/y_d" : "rope_bwd/dx_d", d), y, ref, kBf16Tol);
  }
}

// Head size 64 takes the 16-byte path, 12 the element path.
TEST(GpuOps, Rope) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  for (const int64_t d : {64, 12}) check_rope(d, rng);
}

// Heads of 128 and 64 take the one-pass kernels (16 and 8 lanes a row: 2 and 4 rows a warp; 1001
// tokens leave a warp part-filled), 12 the two ops in turn; 3000 tokens of 128: several rows per
// warp in the backward's register sums. bf16 and fp32 weight gradients.
TEST(GpuOps, QkNormRope) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(6);
  for (const auto& [n, heads, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1001, 3, 128}, {3000, 4, 128}, {37, 5, 64}, {37, 3, 12}}) {
    const std::string tag = str_cat("qk_norm_rope_n", n, "_d", d);
    const Tensor x = random_tensor({n, heads, d}, rng, 2.0f), w = random_tensor({d}, rng);
    std::vector<int64_t> pos(n);
    for (auto& p : pos) p = static_cast<int64_t>(rng() % 4096);
    const Tensor positions = Tensor::from_vector(pos, {n});
    const Tensor inv_freq = default_inv_freq(d);
    Tensor rstd_ref;
    const Tensor y_ref = ops::qk_norm_rope_fwd(x, w, 1e-6f, positions, inv_freq, 1.25f, rstd_ref);
    Tensor y = poisoned({n, heads, d}, DType::kBF16), rstd = poisoned({n * heads}, DType::kF32);
    const Tensor pos_cuda = positions.to(Device::kCUDA), freq_cuda = inv_freq.to(Device::kCUDA);
    ops::cuda::qk_norm_rope_fwd(to_cuda(x), to_cuda(w), 1e-6f, pos_cuda, freq_cuda, 1.25f, y, rstd);
    expect_close(tag + "_fwd/y", y, y_ref, kBf16Tol);
    expect_close(tag + "_fwd/rstd", rstd, rstd_ref, kF32Tol);

    const Tensor dy = random_tensor({n, heads, d}, rng), gw0 = random_tensor({d}, rng);
    Tensor gw_ref = gw0.clone();
    const Tensor dx_ref = ops::qk_norm_rope_bwd(dy, x, w, rstd_ref, positions, inv_freq, 1.25f, gw_ref);
    for (DType gdt : {DType::kF32, DType::kBF16}) {
      Tensor dx = poisoned({n, heads, d}, DType::kBF16), gw = to_cuda(gw0, gdt);
      ops::cuda::qk_norm_rope_bwd(to_cuda(dy), to_cuda(x), to_cuda(w), rstd_ref.to(Device::kCUDA),
                                  pos_cuda, freq_cuda, 1.25f, dx, gw);
      const std::string g = gdt == DType::kF32 ? "f32" : "bf16";
      expect_close(tag + "_bwd/dx", dx, dx_ref, kBf16Tol);
      expect_close(tag + "_bwd/grad_w_" + g, gw, gw_ref, kBf16Tol);
    }
  }
}

// ---- attention ----------------------------------------------------------------------------------

// lse may hold -inf (queries with no allowed key): those positions must agree exactly, the rest
// by normalised error.
void expect_close_lse(const std::string& what, const Tensor& cuda_lse, const Tensor& ref) {
  std::vector<float> got = to_cpu_f32(cuda_lse).to_float_vector(), want = ref.to_float_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      EXPECT_EQ(got[i], want[i]) << what << " at " << i;
      got[i] = want[i] = 0.0f;
    }
  }
  EXPECT_FALSE(has_nan(got)) << what;
  const double err = testing::rel_l2(got, want);
  std::printf("ERR %s %.3e\n", what.c_str(), err);
  EXPECT_LE(err, kF32Tol) << what;
}

// One attention case on both backends: forward (out, lse) and backward (dq, dk, dv). valid and
// segment are host rows ([b, t]; empty = absent). `path` says which CUDA path the mask must take:
// cuDNN's plain causal graph, its variable-length graphs through the mask's block tables, or the
// exact fallback kernel (masks without blocks).
enum class Path { kCausal, kBlocks, kFallback };

void check_attention(const std::string& name, int64_t b, int64_t t, int64_t hq, int64_t hkv, int64_t d,
                     const std::vector<uint8_t>& valid, const std::vector<int32_t>& segment, Path path,
                     std::mt19937& rng) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const Tensor q = random_tensor({b, t, hq, d}, rng, 2.0f), k = random_tensor({b, t, hkv, d}, rng, 2.0f),
               v = random_tensor({b, t, hkv, d}, rng), dout = random_tensor({b, t, hq, d}, rng);
  ops::AttentionMask mask, cuda_mask;
  if (!valid.empty()) {
    mask.key_valid = Tensor::from_vector(std::vector<int64_t>(valid.begin(), valid.end()), {b, t});
    cuda_mask.key_valid = mask.key_valid.to(Device::kCUDA);
  }
  if (!segment.empty()) {
    mask.segment = Tensor::from_vector(std::vector<int64_t>(segment.begin(), segment.end()), {b, t})
                       .to(DType::kI32);
    cuda_mask.segment = mask.segment.to(Device::kCUDA);
  }
  if (path != Path::kCausal)
    cuda_mask.documents = ops::attention_documents(b, t, segment.empty() ? nullptr : segment.data(),
                                                   valid.empty() ? nullptr : valid.data(), Device::kCUDA);
  ASSERT_EQ(cuda_mask.documents.defined(), path == Path::kBlocks) << name;

  const std::string tag = "attention_" + name;
  Tensor lse_ref;
  const Tensor out_ref = ops::attention_fwd(q, k, v, mask, scale, lse_ref);
  Tensor out = poisoned({b, t, hq, d}, DType::kBF16), lse = poisoned({b, hq, t}, DType::kF32);
  ops::cuda::attention_fwd(to_cuda(q), to_cuda(k), to_cuda(v), cuda_mask, scale, Tensor(), 0, out, lse);
  expect_close(tag + "_fwd/out", out, out_ref, kBf16Tol);
  expect_close_lse(tag + "_fwd/lse", lse, lse_ref);

  // The backward takes the same saved values on both sides: out rounded to bf16, lse in fp32.
  const Tensor out_bf16 = out_ref.to(DType::kBF16).to(DType::kF32);
  const ops::AttentionGrads ref = ops::attention_bwd(dout, q, k, v, out_bf16, lse_ref, mask, scale);
  ops::AttentionGrads grads{poisoned({b, t, hq, d}, DType::kBF16), poisoned({b, t, hkv, d}, DType::kBF16),
                            poisoned({b, t, hkv, d}, DType::kBF16)};
  ops::cuda::attention_bwd(to_cuda(dout), to_cuda(q), to_cuda(k), to_cuda(v), to_cuda(out_bf16),
                           lse_ref.to(Device::kCUDA), cuda_mask, scale, Tensor(), 0, grads);
  expect_close(tag + "_bwd/dq", grads.dq, ref.dq, kBf16Tol);
  expect_close(tag + "_bwd/dk", grads.dk, ref.dk, kBf16Tol);
  expect_close(tag + "_bwd/dv", grads.dv, ref.dv, kBf16Tol);
}

TEST(GpuOps, Attention) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(6);
  const int64_t b = 2, t = 45;
  // Left padding: sequence 1 starts with 3 padding keys (its first queries see no key); packing:
  // segments of 10, 20 and 15 tokens in both sequences; right padding: the last 4 tokens of
  // sequence 0 (their queries see the whole sequence before them); a hole: 2 padding tokens
  // inside sequence 1 (no blocks describe it).
  std::vector<uint8_t> left(b * t, 1), right(b * t, 1), hole(b * t, 1);
  for (int64_t s = 0; s < 3; ++s) left[t + s] = 0;
  for (int64_t s = t - 4; s < t; ++s) right[s] = 0;
  hole[t + 20] = hole[t + 21] = 0;
  std::vector<int32_t> seg(b * t);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < t; ++s) seg[i * t + s] = s < 10 ? 0 : s < 30 ? 1 : 2;
  check_attention("causal", b, t, 4, 2, 64, {}, {}, Path::kCausal, rng);
  check_attention("padding", b, t, 4, 2, 64, left, {}, Path::kBlocks, rng);
  check_attention("packed", b, t, 4, 2, 64, {}, seg, Path::kBlocks, rng);
  check_attention("padding_packed", b, t, 4, 2, 64, left, seg, Path::kBlocks, rng);
  check_attention("right_padding", b, t, 4, 2, 64, right, {}, Path::kBlocks, rng);
  check_attention("right_padding_packed", b, t, 4, 2, 64, right, seg, Path::kBlocks, rng);
  check_attention("hole", b, t, 4, 2, 64, hole, {}, Path::kFallback, rng);
}

// Documents longer than cuDNN's 128-row tiles, lengths off the tile grid, Qwen3's head size and
// grouping, a one-token document and a padded tail, as the trainer packs them.
TEST(GpuOps, AttentionLongDocuments) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(16);
  const int64_t b = 2, t = 300;
  const std::vector<int64_t> lengths[] = {{7, 130, 163}, {1, 256, 20, 23}};  // row 1: 23 padding
  std::vector<int32_t> seg(b * t);
  std::vector<uint8_t> valid(b * t, 1);
  for (int64_t i = 0; i < b; ++i) {
    int64_t s = 0;
    for (size_t d = 0; d < lengths[i].size(); ++d)
      for (int64_t n = 0; n < lengths[i][d]; ++n, ++s) seg[i * t + s] = static_cast<int32_t>(d);
  }
  for (int64_t s = t - 23; s < t; ++s) valid[t + s] = 0;
  check_attention("long_documents", b, t, 8, 2, 128, valid, seg, Path::kBlocks, rng);
  // Right padding after long documents: 150 padded queries see a 150-token sequence.
  std::vector<uint8_t> right(b * t, 1);
  for (int64_t s = 150; s < t; ++s) right[s] = 0;
  check_attention("long_right_padding", b, t, 8, 2, 128, right, {}, Path::kBlocks, rng);
}

// ---- activations --------------------------------------------------------------------------------

// A width that is a multiple of 8 takes the 16-byte bf16 path, the other the element path; each
// without and with a row scale (the MoE layers' routing weights).
TEST(GpuOps, SwiGLU) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  for (const int64_t inter : {96, 92}) {
    const int64_t rows = 53;
    const Tensor gu = random_tensor({rows, 2 * inter}, rng, 4.0f), dh = random_tensor({rows, inter}, rng);
    const Tensor scale = random_tensor({rows}, rng);
    for (const bool scaled : {false, true}) {
      const std::string tag = "_" + std::to_string(inter) + (scaled ? "_scaled" : "");
      const Tensor scale_ref = scaled ? scale : Tensor();
      const Tensor scale_cuda = scaled ? to_cuda(scale, DType::kF32) : Tensor();
      Tensor h = poisoned({rows, inter}, DType::kBF16);
      ops::cuda::swiglu_fwd(to_cuda(gu), scale_cuda, h);
      expect_close("swiglu_fwd/h" + tag, h, ops::swiglu_fwd(gu, scale_ref), kBf16Tol);
      const ops::SwigluGrads ref = ops::swiglu_bwd(dh, gu, scale_ref);
      ops::SwigluGrads got{poisoned({rows, 2 * inter}, DType::kBF16),
                           scaled ? poisoned({rows}, DType::kF32) : Tensor()};
      ops::cuda::swiglu_bwd(to_cuda(dh), to_cuda(gu), scale_cuda, got);
      expect_close("swiglu_bwd/d_gate_up" + tag, got.d_gate_up, ref.d_gate_up, kBf16Tol);
      // fp32 output of bf16 inputs: the inputs' rounding bounds it, as for a bf16 output.
      if (scaled) expect_close("swiglu_bwd/d_row_scale" + tag, got.d_row_scale, ref.d_row_scale, kBf16Tol);
    }
  }
}

TEST(GpuOps, Softmax) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(8);
  const int64_t rows = 41, cols = 128;
  const Tensor logits = random_tensor({rows, cols}, rng, 5.0f), dp = random_tensor({rows, cols}, rng);
  const Tensor probs_ref = ops::softmax_fwd(logits);
  Tensor probs = poisoned({rows, cols}, DType::kF32);
  ops::cuda::softmax_fwd(to_cuda(logits), probs);
  expect_close("softmax_fwd/probs", probs, probs_ref, kF32Tol);
  Tensor dl = poisoned({rows, cols}, DType::kF32);
  ops::cuda::softmax_bwd(to_cuda(dp, DType::kF32), probs_ref.to(Device::kCUDA), dl);
  expect_close("softmax_bwd/dlogits", dl, ops::softmax_bwd(dp, probs_ref), kF32Tol);
}

// ---- MoE routing --------------------------------------------------------------------------------

// Router probabilities with exact ties in some rows (to check the lower-index tie break).
Tensor router_probs(int64_t n, int64_t experts, std::mt19937& rng) {
  Tensor logits = random_tensor({n, experts}, rng, 3.0f);
  float* p = logits.data<float>();
  for (int64_t r = 0; r < n; r += 5) p[r * experts + 3] = p[r * experts + 9] = 4.0f;
  return ops::softmax_fwd(logits);
}

TEST(GpuOps, RouterTopK) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  const int64_t n = 150, experts = 40, k = 6;
  const Tensor probs = router_probs(n, experts, rng);
  const Tensor dw = random_tensor({n, k}, rng);
  for (bool norm : {false, true}) {
    const std::string tag = std::string("router_topk_norm") + (norm ? "1" : "0");
    const ops::TopK ref = ops::router_topk(probs, k, norm);
    ops::TopK got{poisoned({n, k}, DType::kI32), poisoned({n, k}, DType::kF32)};
    ops::cuda::router_topk(probs.to(Device::kCUDA), k, norm, got);
    expect_equal_ints(tag + "/index", got.index, ref.index);
    expect_close(tag + "/weight", got.weight, ref.weight, kF32Tol);

    const Tensor dprobs_ref = ops::router_topk_bwd(dw, probs, ref, norm);
    Tensor dprobs = poisoned({n, experts}, DType::kF32);
    const ops::TopK ref_cuda{ref.index.to(Device::kCUDA), ref.weight.to(Device::kCUDA)};
    ops::cuda::router_topk_bwd(dw.to(Device::kCUDA), probs.to(Device::kCUDA), ref_cuda, norm, dprobs);
    expect_close(tag + "_bwd/dprobs", dprobs, dprobs_ref, kF32Tol);
  }
}

// A routing with uneven experts, one of them empty, over several counting-sort chunks.
ops::TopK test_routing(int64_t n, int64_t experts, int64_t k, std::mt19937& rng) {
  Tensor logits = random_tensor({n, experts}, rng, 3.0f);
  float* p = logits.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    p[r * experts + 2] = -50.0f;                           // expert 2 never chosen
    if (r % 3 == 0) p[r * experts + 5] = 20.0f;            // expert 5 popular
  }
  return ops::router_topk(ops::softmax_fwd(logits), k, true);
}

ops::Permutation to_cuda(const ops::Permutation& p) {
  return {p.source_row.to(Device::kCUDA), p.slot_of.to(Device::kCUDA), p.offsets.to(Device::kCUDA)};
}

TEST(GpuOps, Permutation) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(10);
  const int64_t n = 700, experts = 24, k = 4, hidden = 136;  // 2800 pairs: 11 chunks of 256
  const ops::TopK topk = test_routing(n, experts, k, rng);
  const ops::Permutation ref = ops::make_permutation(topk.index, experts);
  ops::Permutation got{poisoned({n * k}, DType::kI32), poisoned({n, k}, DType::kI32),
                       poisoned({experts + 1}, DType::kI64)};
  ops::cuda::make_permutation(topk.index.to(Device::kCUDA), experts, got);
  expect_equal_ints("make_permutation/source_row", got.source_row, ref.source_row);
  expect_equal_ints("make_permutation/slot_of", got.slot_of, ref.slot_of);
  expect_equal_ints("make_permutation/offsets", got.offsets, ref.offsets);

  const ops::Permutation pc = to_cuda(ref);
  const Tensor x = random_tensor({n, hidden}, rng);
  Tensor sorted = poisoned({n * k, hidden}, DType::kBF16);
  ops::cuda::permute(to_cuda(x), pc, sorted);
  expect_close("permute/sorted", sorted, ops::permute(x, ref), kBf16Tol);
  Tensor sorted_f32 = poisoned({n * k, hidden}, DType::kF32);  // the element-wise path
  ops::cuda::permute(to_cuda(x), pc, sorted_f32);
  expect_close("permute/sorted_f32", sorted_f32, ops::permute(x, ref), kBf16Tol);

  // The sum over slots: hidden 136 takes the 16-byte bf16 path, 132 the element path.
  for (const int64_t width : {hidden, hidden - 4}) {
    const std::string tag = "_" + std::to_string(width);
    const Tensor ds = random_tensor({n * k, width}, rng);
    Tensor dx = poisoned({n, width}, DType::kBF16);
    ops::cuda::unpermute(to_cuda(ds), pc, dx);
    expect_close("unpermute/out" + tag, dx, ops::unpermute(ds, ref, n), kBf16Tol);
  }

  // Routing weights to sorted order and back: fp32 moves, exact.
  Tensor w_sorted = poisoned({n * k}, DType::kF32);
  ops::cuda::permute_weights(topk.weight.to(Device::kCUDA), pc, w_sorted);
  expect_close("permute_weights/sorted", w_sorted, ops::permute_weights(topk.weight, ref), 0.0);
  Tensor w_back = poisoned({n, k}, DType::kF32);
  ops::cuda::unpermute_weights(w_sorted, pc, w_back);
  expect_close("unpermute_weights/weight", w_back, topk.weight, 0.0);
}

// ---- grouped linear -----------------------------------------------------------------------------

// Expert row counts: empty, single, partial and several tiles (the simple kernel's tiles are 64
// rows, CUTLASS's 128). Feature sizes that are multiples of 8 take the CUTLASS kernels for bf16
// outputs and fp32 weight gradients; the others, and bf16 weight gradients, the simple kernel.
void check_grouped_linear(int64_t n, int64_t k, std::mt19937& rng) {
  const std::vector<int64_t> rows_per_expert = {0, 1, 70, 130, 5, 64, 0, 200, 129};
  const int64_t experts = static_cast<int64_t>(rows_per_expert.size());
  std::vector<int64_t> off(experts + 1, 0);
  for (int64_t e = 0; e < experts; ++e) off[e + 1] = off[e] + rows_per_expert[e];
  const int64_t m = off[experts];
  const Tensor offsets = Tensor::from_vector(off, {experts + 1});
  const Tensor offsets_cuda = offsets.to(Device::kCUDA);
  const Tensor x = random_tensor({m, k}, rng), w = random_tensor({experts, n, k}, rng);
  const std::string tag = "grouped_linear_n" + std::to_string(n) + "_k" + std::to_string(k);

  Tensor y = poisoned({m, n}, DType::kBF16);
  ops::cuda::grouped_linear(to_cuda(x), to_cuda(w), offsets_cuda, Tensor(), y);
  expect_close(tag + "/y", y, ops::grouped_linear(x, w, offsets), kBf16Tol);

  const Tensor dy = random_tensor({m, n}, rng);
  Tensor dx = poisoned({m, k}, DType::kBF16);
  ops::cuda::grouped_linear_dx(to_cuda(dy), to_cuda(w), offsets_cuda, dx);
  expect_close(tag + "_dx/dx", dx, ops::grouped_linear_dx(dy, w, offsets), kBf16Tol);

  const Tensor gw0 = random_tensor({experts, n, k}, rng);
  Tensor gw_ref = gw0.clone();
  ops::grouped_linear_dw(dy, x, offsets, gw_ref);
  // Written without accumulating (a step's first micro-batch): NaN before, experts 0 and 6 without rows.
  Tensor gw_written = Tensor::from_vector(std::vector<float>(experts * n * k, std::nanf("")), {experts, n, k});
  ops::grouped_linear_dw(dy, x, offsets, gw_written, /*accumulate=*/false);
  for (DType gdt : {DType::kF32, DType::kBF16}) {
    const std::string dtype_tag = gdt == DType::kF32 ? "f32" : "bf16";
    Tensor gw = to_cuda(gw0, gdt);
    ops::cuda::grouped_linear_dw(to_cuda(dy), to_cuda(x), offsets_cuda, gw, /*accumulate=*/true);
    expect_close(tag + "_dw/grad_w_" + dtype_tag, gw, gw_ref, kBf16Tol);
    Tensor written = poisoned({experts, n, k}, gdt);
    ops::cuda::grouped_linear_dw(to_cuda(dy), to_cuda(x), offsets_cuda, written, /*accumulate=*/false);
    expect_close(tag + "_dw_written/grad_w_" + dtype_tag, written, gw_written, kBf16Tol);
  }
}

TEST(GpuOps, GroupedLinear) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  check_grouped_linear(96, 80, rng);    // CUTLASS (bf16 grad_w: simple)
  check_grouped_linear(256, 136, rng);  // CUTLASS, several N tiles
  check_grouped_linear(90, 70, rng);    // simple kernel
}

// ---- loss ---------------------------------------------------------------------------------------

// One chunk through the CUDA functions behind ops::CrossEntropySum.
ops::CrossEntropyResult cuda_cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                           Tensor* dlogits) {
  Tensor totals = ops::cuda::cross_entropy_totals();
  ops::cuda::cross_entropy_add(logits, targets, grad_scale, dlogits, 0, totals);
  return ops::cuda::read_cross_entropy_totals(totals);
}

// A vocabulary that is a multiple of 8 takes the 16-byte bf16 path, the other the element path.
class GpuCrossEntropy : public ::testing::TestWithParam<int64_t> {};

TEST_P(GpuCrossEntropy, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  const int64_t rows = 37, vocab = GetParam();
  const Tensor logits = random_tensor({rows, vocab}, rng, 8.0f);
  std::vector<int64_t> tv(rows);
  for (int64_t r = 0; r < rows; ++r) tv[r] = r % 6 == 0 ? -100 : static_cast<int64_t>(rng() % vocab);
  const Tensor targets = Tensor::from_vector(tv, {rows});
  const Tensor targets_cuda = targets.to(Device::kCUDA);
  const float grad_scale = 1.0f / 31.0f;
  Tensor dref = Tensor::empty({rows, vocab}, DType::kF32);
  const ops::CrossEntropyResult ref = ops::cross_entropy(logits, targets, grad_scale, &dref);

  for (DType ddt : {DType::kBF16, DType::kF32}) {
    Tensor dl = poisoned({rows, vocab}, ddt);
    const ops::CrossEntropyResult got =
        cuda_cross_entropy(to_cuda(logits), targets_cuda, grad_scale, &dl);
    const double loss_err = std::abs(got.loss_sum - ref.loss_sum) / std::abs(ref.loss_sum);
    std::printf("ERR cross_entropy_%lld/loss_sum %.3e\n", static_cast<long long>(vocab), loss_err);
    EXPECT_LE(loss_err, kF32Tol);
    EXPECT_EQ(got.count, ref.count);
    expect_close(std::string("cross_entropy/dlogits_") + (ddt == DType::kF32 ? "f32" : "bf16"), dl,
                 dref, kBf16Tol);
  }
  // In place: the gradient overwrites the logits.
  Tensor inplace = to_cuda(logits);
  const ops::CrossEntropyResult got = cuda_cross_entropy(inplace, targets_cuda, grad_scale, &inplace);
  EXPECT_NEAR(got.loss_sum, ref.loss_sum, kF32Tol * std::abs(ref.loss_sum));
  expect_close("cross_entropy/dlogits_inplace", inplace, dref, kBf16Tol);
  // Without a gradient.
  const ops::CrossEntropyResult loss_only =
      cuda_cross_entropy(to_cuda(logits), targets_cuda, grad_scale, nullptr);
  EXPECT_NEAR(loss_only.loss_sum, ref.loss_sum, kF32Tol * std::abs(ref.loss_sum));

  tv[4] = vocab;
  try {
    cuda_cross_entropy(to_cuda(logits), Tensor::from_vector(tv, {rows}).to(Device::kCUDA), grad_scale,
                       nullptr);
    ADD_FAILURE() << "cross_entropy accepted target " << vocab;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(str_cat("target ", vocab, " at row 4")), std::string::npos)
        << e.what();
  }
  // In chunks through ops::CrossEntropySum (one read at the end): the same sums; a bad target in
  // the second chunk is reported at its row in the whole batch.
  ops::CrossEntropySum sum;
  const Tensor logits_cuda = to_cuda(logits);
  for (const auto& [r0, r1] : {std::pair<int64_t, int64_t>{0, 10}, {10, 11}, {11, rows}})
    sum.add(logits_cuda.slice(0, r0, r1), targets_cuda.slice(0, r0, r1), grad_scale, nullptr);
  EXPECT_NEAR(sum.total().loss_sum, ref.loss_sum, kF32Tol * std::abs(ref.loss_sum));
  EXPECT_EQ(sum.total().count, ref.count);
  ops::CrossEntropySum bad;
  const Tensor bad_targets = Tensor::from_vector(tv, {rows}).to(Device::kCUDA);
  bad.add(logits_cuda.slice(0, 0, 2), bad_targets.slice(0, 0, 2), grad_scale, nullptr);
  bad.add(logits_cuda.slice(0, 2, rows), bad_targets.slice(0, 2, rows), grad_scale, nullptr);
  try {
    bad.total();
    ADD_FAILURE() << "CrossEntropySum accepted target " << vocab;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(str_cat("target ", vocab, " at row 4")), std::string::npos)
        << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Vocab, GpuCrossEntropy, ::testing::Values(5003, 5008));

// ---- dispatch -----------------------------------------------------------------------------------

// The public ops route CUDA tensors to the CUDA backend (and allocate their outputs there).
TEST(GpuOps, DispatchThroughOps) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  const Tensor x = random_tensor({19, 64}, rng), w = random_tensor({48, 64}, rng);
  const Tensor y = ops::linear(to_cuda(x), to_cuda(w));
  EXPECT_EQ(y.device(), Device::kCUDA);
  expect_close("dispatch/linear", y, ops::linear(x, w), kBf16Tol);
  Tensor rstd;
  const Tensor n = ops::rms_norm_fwd(to_cuda(x), to_cuda(random_tensor({64}, rng)), 1e-6f, rstd);
  EXPECT_EQ(rstd.device(), Device::kCUDA);
  EXPECT_EQ(rstd.dtype(), DType::kF32);
  EXPECT_FALSE(has_nan(to_cpu_f32(n).to_float_vector()));
}

// ---- sanity timing (not a benchmark: bench/ measures the model) ---------------------------------

// Times `fn` with CUDA events after a warm-up; returns milliseconds per call.
template <typename Fn>
double time_ms(Fn&& fn, int iterations = 10) {
  fn();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, 0);
  for (int i = 0; i < iterations; ++i) fn();
  cudaEventRecord(stop, 0);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iterations;
}

Tensor cuda_random_bf16(Shape shape, std::mt19937& rng) {
  return random_tensor(std::move(shape), rng, 0.5f).to(DType::kBF16).to(Device::kCUDA);
}

// Run with --gtest_also_run_disabled_tests on the GPU machine: the Qwen3-30B-A3B shapes.
TEST(GpuOps, DISABLED_SanityTiming) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(14);
  auto report = [](const char* what, double flop, double ms) {
    std::printf("TIME %-40s %8.3f ms  %7.1f TFLOP/s\n", what, ms, flop / ms / 1e9);
  };
  auto report_bytes = [](const char* what, double bytes, double ms) {
    std::printf("TIME %-40s %8.3f ms  %7.0f GB/s (bytes the op must move)\n", what, ms, bytes / ms / 1e6);
  };
  {  // memory-bound glue at the 8-layer benchmark's micro-batch (16384 tokens)
    const int64_t tokens = 16384, hidden = 2048, heads = 32, head_dim = 128, vocab = 151936;
    Tensor logits = cuda_random_bf16({4096, vocab}, rng);
    std::vector<int64_t> tv(4096);
    for (int64_t& t : tv) t = static_cast<int64_t>(rng() % vocab);
    const Tensor targets = Tensor::from_vector(tv, {4096}).to(Device::kCUDA);
    report_bytes("cross_entropy 4096 x 151936 in place", 2.0 * logits.nbytes(),
                 time_ms([&] { cuda_cross_entropy(logits, targets, 1e-4f, &logits); }));
    for (const auto& [rows, d, what] : {std::tuple{tokens, hidden, "hidden"},
                                        std::tuple{tokens * heads, head_dim, "q heads"}}) {
      Tensor x = cuda_random_bf16({rows, d}, rng), w = cuda_random_bf16({d}, rng);
      Tensor y = Tensor::empty({rows, d}, DType::kBF16, Device::kCUDA);
      Tensor dx = Tensor::empty({rows, d}, DType::kBF16, Device::kCUDA);
      Tensor rstd = Tensor::empty({rows}, DType::kF32, Device::kCUDA);
      Tensor gw = Tensor::zeros({d}, DType::kF32, Device::kCUDA);
      report_bytes(str_cat("rms_norm fwd ", what, " ", rows, " x ", d).c_str(), 2.0 * x.nbytes(),
                   time_ms([&] { ops::cuda::rms_norm_fwd(x, w, 1e-6f, y, rstd); }));
      report_bytes(str_cat("rms_norm bwd ", what, " ", rows, " x ", d).c_str(), 3.0 * x.nbytes(),
                   time_ms([&] { ops::cuda::rms_norm_bwd(y, x, w, rstd, Tensor(), dx, gw); }));
    }
    Tensor q = cuda_random_bf16({tokens, heads, head_dim}, rng);
    Tensor qr = Tensor::empty({tokens, heads, head_dim}, DType::kBF16, Device::kCUDA);
    std::vector<int64_t> pos(tokens);
    for (int64_t i = 0; i < tokens; ++i) pos[i] = i % 4096;
    const Tensor positions = Tensor::from_vector(pos, {tokens}).to(Device::kCUDA);
    const Tensor inv_freq = random_tensor({head_dim / 2}, rng, 0.5f).to(Device::kCUDA);
    report_bytes("rope q 16384 x 32 x 128", 2.0 * q.nbytes(),
                 time_ms([&] { ops::cuda::rope_apply(q, positions, inv_freq, 1.0f, 1.0f, qr); }));
    const Tensor wq = cuda_random_bf16({head_dim}, rng);
    Tensor rstd = Tensor::empty({tokens * heads}, DType::kF32, Device::kCUDA);
    Tensor dq = Tensor::empty({tokens, heads, head_dim}, DType::kBF16, Device::kCUDA);
    Tensor gw = Tensor::zeros({head_dim}, DType::kF32, Device::kCUDA);
    report_bytes("q-norm + rope fwd q 16384 x 32 x 128", 2.0 * q.nbytes(), time_ms([&] {
                   ops::cuda::qk_norm_rope_fwd(q, wq, 1e-6f, positions, inv_freq, 1.0f, qr, rstd);
                 }));
    report_bytes("q-norm + rope bwd q 16384 x 32 x 128", 3.0 * q.nbytes(), time_ms([&] {
                   ops::cuda::qk_norm_rope_bwd(qr, q, wq, rstd, positions, inv_freq, 1.0f, dq, gw);
                 }));
  }
  {  // dense GEMM through cuBLASLt
    const int64_t m = 8192, n = 8192, k = 8192;
    Tensor a = cuda_random_bf16({m, k}, rng), b = cuda_random_bf16({n, k}, rng);
    Tensor c = Tensor::empty({m, n}, DType::kBF16, Device::kCUDA);
    report("gemm 8192^3 bf16", 2.0 * m * n * k,
           time_ms([&] { ops::cuda::gemm(a, false, b, true, c, 1.0f, 0.0f); }));
  }
  // experts: 4096 tokens x top-8 over 128 experts, hidden 2048, expert intermediate 768. The weight
  // gradients' products have an inner size of only 256 rows here, so reading and writing the
  // accumulated gradient (fp32: 1.6 GB each way) weighs on them as much as the products.
  {
    const int64_t tokens = 4096, k_top = 8, experts = 128, hidden = 2048, inter = 768;
    const int64_t rows = tokens * k_top;
    std::vector<int64_t> off(experts + 1);
    for (int64_t e = 0; e <= experts; ++e) off[e] = rows * e / experts;
    const Tensor offsets = Tensor::from_vector(off, {experts + 1}).to(Device::kCUDA);
    Tensor x = cuda_random_bf16({rows, hidden}, rng), w_up = cuda_random_bf16({experts, 2 * inter, hidden}, rng);
    Tensor h = Tensor::empty({rows, 2 * inter}, DType::kBF16, Device::kCUDA);
    const double up_flop = 2.0 * rows * 2 * inter * hidden;
    report("grouped up fwd (CUTLASS)", up_flop,
           time_ms([&] { ops::cuda::grouped_linear(x, w_up, offsets, Tensor(), h); }));
    Tensor dx = Tensor::empty({rows, hidden}, DType::kBF16, Device::kCUDA);
    report("grouped up dx (CUTLASS)", up_flop, time_ms([&] { ops::cuda::grouped_linear_dx(h, w_up, offsets, dx); }));
    Tensor gw = Tensor::zeros({experts, 2 * inter, hidden}, DType::kF32, Device::kCUDA);
    report("grouped up dw fp32 (CUTLASS)", up_flop,
           time_ms([&] { ops::cuda::grouped_linear_dw(h, x, offsets, gw, true); }));
    Tensor gw16 = Tensor::zeros({experts, 2 * inter, hidden}, DType::kBF16, Device::kCUDA);
    report("grouped up dw bf16 (CUTLASS)", up_flop,
           time_ms([&] { ops::cuda::grouped_linear_dw(h, x, offsets, gw16, true); }, 2));
    Tensor h32 = Tensor::empty({rows, 2 * inter}, DType::kF32, Device::kCUDA);
    report("grouped up fwd fp32 out (simple)", up_flop,
           time_ms([&] { ops::cuda::grouped_linear(x, w_up, offsets, Tensor(), h32); }, 2));
  }
  {  // attention: one sequence of 4096, 32 query / 4 key-value heads of 128
    const int64_t b = 1, t = 4096, hq = 32, hkv = 4, d = 128;
    Tensor q = cuda_random_bf16({b, t, hq, d}, rng), k = cuda_random_bf16({b, t, hkv, d}, rng),
           v = cuda_random_bf16({b, t, hkv, d}, rng), dout = cuda_random_bf16({b, t, hq, d}, rng);
    Tensor out = Tensor::empty({b, t, hq, d}, DType::kBF16, Device::kCUDA);
    Tensor lse = Tensor::empty({b, hq, t}, DType::kF32, Device::kCUDA);
    const double fwd_flop = 2.0 * 2.0 * b * hq * t * t * d / 2;  // causal: half the scores
    const float scale = 0.088f;
    report("attention fwd causal (cuDNN)", fwd_flop,
           time_ms([&] { ops::cuda::attention_fwd(q, k, v, {}, scale, Tensor(), 0, out, lse); }));
    ops::AttentionGrads g{Tensor::empty({b, t, hq, d}, DType::kBF16, Device::kCUDA),
                          Tensor::empty({b, t, hkv, d}, DType::kBF16, Device::kCUDA),
                          Tensor::empty({b, t, hkv, d}, DType::kBF16, Device::kCUDA)};
    report("attention bwd causal (cuDNN)", 2.5 * fwd_flop,
           time_ms([&] { ops::cuda::attention_bwd(dout, q, k, v, out, lse, {}, scale, Tensor(), 0, g); }));
    // Packed: four documents of 1024 tokens, through the document table (cuDNN) and without it
    // (the exact fallback kernel).
    std::vector<int32_t> seg(t);
    for (int64_t s = 0; s < t; ++s) seg[s] = static_cast<int32_t>(s / 1024);
    ops::AttentionMask packed;
    packed.segment = Tensor::from_vector(std::vector<int64_t>(seg.begin(), seg.end()), {b, t})
                         .to(DType::kI32).to(Device::kCUDA);
    const double packed_flop = fwd_flop / 4;
    report("attention fwd packed (simple)", packed_flop,
           time_ms([&] { ops::cuda::attention_fwd(q, k, v, packed, scale, Tensor(), 0, out, lse); }, 1));
    packed.documents = ops::attention_documents(b, t, seg.data(), nullptr, Device::kCUDA);
    report("attention fwd packed (cuDNN documents)", packed_flop,
           time_ms([&] { ops::cuda::attention_fwd(q, k, v, packed, scale, Tensor(), 0, out, lse); }));
    report("attention bwd packed (cuDNN documents)", 2.5 * packed_flop,
           time_ms([&] { ops::cuda::attention_bwd(dout, q, k, v, out, lse, packed, scale, Tensor(), 0, g); }));
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace moeforge
