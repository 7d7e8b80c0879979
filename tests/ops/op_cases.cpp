// The table of backend op cases (op_cases.h). Shapes come in two sizes: small ones, which the CPU
// differentiates numerically, and ones with the sizes the CUDA kernels branch on (16-byte rows,
// multiples of 8 for CUTLASS, heads of 64 and 128).
#include "op_cases.h"

#include <cctype>
#include <cmath>
#include <numeric>
#include <tuple>

#include "core/error.h"
#include "ops/ops.h"

namespace moeforge::testing {

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& v : values) v = dist(rng);
  return Tensor::from_vector(values, shape);
}

std::vector<Tensor> values(const std::vector<CaseTensor>& tensors) {
  std::vector<Tensor> v;
  for (const CaseTensor& t : tensors) v.push_back(t.value);
  return v;
}

std::string case_identifier(const OpCase& c) {
  std::string name = c.name;
  for (char& ch : name)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
}

namespace {

using ops::Op;

Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }

CaseTensor differentiable(std::string name, Tensor t, InputKind kind = InputKind::kActivation) {
  return {std::move(name), std::move(t), kind, true};
}
CaseTensor constant(std::string name, Tensor t, InputKind kind) {
  return {std::move(name), std::move(t), kind, false};
}

// Integer inputs: int64 as given, or int32.
Tensor ints(const std::vector<int64_t>& v, Shape shape, DType dtype = DType::kI64) {
  const Tensor t = Tensor::from_vector(v, std::move(shape));
  return dtype == DType::kI64 ? t : t.to(dtype);
}

// A host scalar as a [1] float32 tensor (loss sums, sums of squares).
Tensor scalar(double v) { return Tensor::from_vector(std::vector<float>{static_cast<float>(v)}, {1}); }

// Default RoPE frequencies for head size d (theta 10000).
Tensor inv_freq(int64_t d) {
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i)
    f[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * static_cast<double>(i) / d));
  return Tensor::from_vector(f, {d / 2});
}

// Positions of n tokens: two packed sequences, the second starting at 0.
Tensor positions(int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i < n / 2 ? i : i - n / 2;
  return ints(p, {n});
}

const char* dtype_tag(DType d) { return d == DType::kBF16 ? "bf16" : "f32"; }

OpCase linear_case(int64_t n, int64_t in, int64_t out, bool bias, DType dt) {
  OpCase c;
  c.name = str_cat("linear", bias ? "_bias" : "", " x[", n, ", ", in, "] w[", out, ", ", in,
                   "] ", dtype_tag(dt));
  c.op = Op::kLinear;
  c.dtype = dt;
  c.make_inputs = [n, in, out, bias](std::mt19937& rng) {
    std::vector<CaseTensor> v{differentiable("x", random_tensor({n, in}, rng)),
                              differentiable("w", random_tensor({out, in}, rng))};
    if (bias) v.push_back(differentiable("bias", random_tensor({out}, rng)));
    return v;
  };
  c.forward = [bias](const std::vector<Tensor>& a) {
    return std::vector<CaseTensor>{
        differentiable("y", ops::linear(a[0], a[1], bias ? a[2] : Tensor()))};
  };
  c.backward = [bias](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    const Tensor &x = a[0], &w = a[1], &dy = d[0];
    Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
    ops::gemm(dy, false, w, false, dx);
    Tensor dw = zeros_like(w);
    ops::gemm(dy, true, x, false, dw, 1.0f, 1.0f);
    std::vector<Tensor> g{dx, dw};
    if (bias) {
      Tensor db = zeros_like(a[2]);
      ops::linear_bias_bwd(dy, db);
      g.push_back(db);
    }
    return g;
  };
  return c;
}

void add_dense(std::vector<OpCase>& cases) {
  for (const auto& [n, in, out] : {std::tuple{19, 64, 48}, std::tuple{5, 6, 7}, std::tuple{77, 96, 130}})
    for (bool bias : {false, true})
      for (DType dt : {DType::kBF16, DType::kF32}) cases.push_back(linear_case(n, in, out, bias, dt));
}

constexpr float kNormEps = 1e-6f;

OpCase rms_norm_case(int64_t rows, int64_t d) {
  OpCase c;
  c.name = str_cat("rms_norm x[", rows, ", ", d, "]");
  c.op = Op::kRmsNormFwd;
  c.make_inputs = [rows, d](std::mt19937& rng) {
    return std::vector<CaseTensor>{differentiable("x", random_tensor({rows, d}, rng, -2, 2)),
                                   differentiable("w", random_tensor({d}, rng))};
  };
  c.forward = [](const std::vector<Tensor>& a) {
    Tensor rstd;
    Tensor y = ops::rms_norm_fwd(a[0], a[1], kNormEps, rstd);
    return std::vector<CaseTensor>{differentiable("y", y), constant("rstd", rstd, InputKind::kF32)};
  };
  c.backward = [](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    Tensor rstd;
    ops::rms_norm_fwd(a[0], a[1], kNormEps, rstd);
    Tensor dw = zeros_like(a[1]);
    Tensor dx = ops::rms_norm_bwd(d[0], a[0], a[1], rstd, dw);
    return std::vector<Tensor>{dx, dw};
  };
  return c;
}

// The residual add before the norm: y = norm(x + residual), and x + residual.
OpCase add_rms_norm_case(int64_t rows, int64_t d) {
  OpCase r;
  r.name = str_cat("add_rms_norm x[", rows, ", ", d, "]");
  r.op = Op::kAddRmsNormFwd;
  r.make_inputs = [rows, d](std::mt19937& rng) {
    return std::vector<CaseTensor>{differentiable("x", random_tensor({rows, d}, rng)),
                                   differentiable("residual", random_tensor({rows, d}, rng)),
                                   differentiable("w", random_tensor({d}, rng))};
  };
  r.forward = [](const std::vector<Tensor>& a) {
    Tensor h = a[0].clone(), rstd;
    // No rstd: CUDA normalises the sum as stored (bf16), the CPU the exact sum.
    Tensor y = ops::add_rms_norm_fwd(h, a[1], a[2], kNormEps, rstd);
    return std::vector<CaseTensor>{differentiable("y", y), differentiable("sum", h)};
  };
  r.backward = [](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    Tensor h = a[0].clone(), rstd;
    ops::add_rms_norm_fwd(h, a[1], a[2], kNormEps, rstd);
    Tensor dw = zeros_like(a[2]);
    Tensor dx = ops::rms_norm_bwd(d[0], h, a[2], rstd, dw, d[1]);
    return std::vector<Tensor>{dx, dx, dw};
  };
  return r;
}

void add_norm_rope(std::vector<OpCase>& cases) {
  // 128 and 2048 take the CUDA kernels' 16-byte path, 48 and 132 the element path (2688, Nemotron 3
  // Nano's rows, is at the end of the list).
  for (const auto& [rows, d] : {std::tuple{7, 48}, std::tuple{37, 128}, std::tuple{37, 132},
                                std::tuple{300, 2048}}) {
    cases.push_back(rms_norm_case(rows, d));
    cases.push_back(add_rms_norm_case(rows, d));
  }

  // scaling != 1: the attention factor of YaRN-style RoPE.
  for (const auto& [n, heads, d, scaling] : {std::tuple{6, 3, 16, 1.0f}, std::tuple{37, 4, 128, 1.0f},
                                             std::tuple{37, 2, 64, 1.25f}}) {
    auto inputs = [n, heads, d](std::mt19937& rng, bool with_weight) {
      std::vector<CaseTensor> v{differentiable("x", random_tensor({n, heads, d}, rng, -2, 2))};
      if (with_weight) v.push_back(differentiable("w", random_tensor({d}, rng)));
      v.push_back(constant("positions", positions(n), InputKind::kIndex));
      v.push_back(constant("inv_freq", inv_freq(d), InputKind::kF32));
      return v;
    };
    OpCase c;
    c.name = str_cat("rope x[", n, ", ", heads, ", ", d, "] scaling ", scaling);
    c.op = Op::kRopeFwd;
    c.make_inputs = [inputs](std::mt19937& rng) { return inputs(rng, false); };
    c.forward = [scaling](const std::vector<Tensor>& a) {
      return std::vector<CaseTensor>{differentiable("y", ops::rope_fwd(a[0], a[1], a[2], scaling))};
    };
    c.backward = [scaling](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      return std::vector<Tensor>{ops::rope_bwd(d[0], a[1], a[2], scaling)};
    };
    cases.push_back(std::move(c));

    OpCase q;
    q.name = str_cat("qk_norm_rope x[", n, ", ", heads, ", ", d, "] scaling ", scaling);
    q.op = Op::kQkNormRopeFwd;
    q.make_inputs = [inputs](std::mt19937& rng) { return inputs(rng, true); };
    q.forward = [scaling](const std::vector<Tensor>& a) {
      Tensor rstd;
      Tensor y = ops::qk_norm_rope_fwd(a[0], a[1], kNormEps, a[2], a[3], scaling, rstd);
      return std::vector<CaseTensor>{differentiable("y", y), constant("rstd", rstd, InputKind::kF32)};
    };
    q.backward = [scaling](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      Tensor rstd;
      ops::qk_norm_rope_fwd(a[0], a[1], kNormEps, a[2], a[3], scaling, rstd);
      Tensor dw = zeros_like(a[1]);
      Tensor dx = ops::qk_norm_rope_bwd(d[0], a[0], a[1], rstd, a[2], a[3], scaling, dw);
      return std::vector<Tensor>{dx, dw};
    };
    cases.push_back(std::move(q));
  }
}

void add_attention(std::vector<OpCase>& cases) {
  enum class Mask { kCausal, kPadding, kPacked };
  // The last three: value heads narrower than query/key heads (multi-head latent attention), on
  // CUDA through the simple kernels (12/6: sizes cuDNN does not take) and through cuDNN (24/16, and
  // DeepSeek's 192/128).
  for (const auto& [b, t, hq, hkv, d, dv] :
       {std::tuple{2, 9, 4, 2, 16, 16}, std::tuple{2, 64, 8, 2, 64, 64}, std::tuple{2, 7, 4, 2, 12, 6},
        std::tuple{2, 9, 4, 4, 24, 16}, std::tuple{1, 33, 2, 2, 192, 128}})
    for (Mask mask : {Mask::kCausal, Mask::kPadding, Mask::kPacked}) {
      OpCase c;
      c.name = str_cat("attention q[", b, ", ", t, ", ", hq, ", ", d, "] kv heads ", hkv,
                       dv != d ? str_cat(" v head ", dv) : "",
                       mask == Mask::kCausal ? " causal" : mask == Mask::kPadding ? " padded" : " packed");
      c.op = Op::kAttentionFwd;
      c.make_inputs = [=](std::mt19937& rng) {
        std::vector<CaseTensor> v{differentiable("q", random_tensor({b, t, hq, d}, rng)),
                                  differentiable("k", random_tensor({b, t, hkv, d}, rng)),
                                  differentiable("v", random_tensor({b, t, hkv, dv}, rng))};
        std::vector<int64_t> m(static_cast<size_t>(b * t), 1);
        if (mask == Mask::kPadding)  // the last row's last third is padding
          for (int64_t s = t - t / 3; s < t; ++s) m[(b - 1) * t + s] = 0;
        if (mask == Mask::kPacked)  // two documents per row
          for (int64_t i = 0; i < b * t; ++i) m[i] = i % t < t / 2 ? 0 : 1;
        if (mask == Mask::kPadding) v.push_back(constant("key_valid", ints(m, {b, t}), InputKind::kIndex));
        if (mask == Mask::kPacked)
          v.push_back(constant("segment", ints(m, {b, t}, DType::kI32), InputKind::kIndex));
        return v;
      };
      auto mask_of = [mask](const std::vector<Tensor>& a) {
        ops::AttentionMask m;
        if (mask == Mask::kPadding) m.key_valid = a[3];
        if (mask == Mask::kPacked) m.segment = a[3];
        return m;
      };
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      c.forward = [mask_of, scale](const std::vector<Tensor>& a) {
        Tensor lse;
        Tensor out = ops::attention_fwd(a[0], a[1], a[2], mask_of(a), scale, lse);
        return std::vector<CaseTensor>{differentiable("out", out), constant("lse", lse, InputKind::kF32)};
      };
      c.backward = [mask_of, scale](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
        Tensor lse;
        const ops::AttentionMask m = mask_of(a);
        const Tensor out = ops::attention_fwd(a[0], a[1], a[2], m, scale, lse);
        const ops::AttentionGrads g = ops::attention_bwd(d[0], a[0], a[1], a[2], out, lse, m, scale);
        return std::vector<Tensor>{g.dq, g.dk, g.dv};
      };
      cases.push_back(std::move(c));
    }
}

// GPT-OSS's attention: a sink logit per query head and a sliding window, with padding or packing
// (the simple CUDA kernels), or neither (cuDNN, the sinks only in its forward). Sinks in [-1, 2]
// against scores of about the same size carry a fair share.
// kDocuments: packed as kPacked, the mask also given as its document blocks (cuDNN's varlen layout on CUDA).
// kPaddedDocuments: documents with padded runs after some of them (the padded queries see their document) and
// a padded pair of a segment of its own (it sees nothing), given as segments, key validity and blocks.
// kIdlePaddedDocuments: the same with padded queries that attend nothing (AttentionMask::padded_queries_attend).
enum class AttentionMaskKind { kPadded, kPacked, kNone, kDocuments, kPaddedDocuments, kIdlePaddedDocuments };
OpCase attention_sinks_window_case(int64_t t, int64_t window, AttentionMaskKind mask, bool with_sinks) {
  using Mask = AttentionMaskKind;
  constexpr int64_t b = 2, hq = 4, hkv = 2, d = 8;
  OpCase c;
  c.name = str_cat("attention ", with_sinks ? "sinks " : "", "q[", b, ", ", t, ", ", hq, ", ", d, "] kv heads ", hkv,
                   " window ", window,
                   mask == Mask::kPacked                ? " packed"
                   : mask == Mask::kDocuments           ? " documents"
                   : mask == Mask::kPaddedDocuments     ? " padded documents"
                   : mask == Mask::kIdlePaddedDocuments ? " padded documents idle queries"
                   : mask == Mask::kPadded              ? " padded"
                                                        : " causal");
  c.op = Op::kAttentionFwd;
  c.make_inputs = [t, window, mask, with_sinks](std::mt19937& rng) {
    std::vector<CaseTensor> v{differentiable("q", random_tensor({b, t, hq, d}, rng)),
                              differentiable("k", random_tensor({b, t, hkv, d}, rng)),
                              differentiable("v", random_tensor({b, t, hkv, d}, rng))};
    if (with_sinks) v.push_back(differentiable("sinks", random_tensor({hq}, rng, -1, 2)));
    std::vector<int64_t> m(static_cast<size_t>(b * t), 1);
    const bool packed = mask == Mask::kPacked || mask == Mask::kDocuments;
    for (int64_t i = 0; i < b * t; ++i)  // padded: the window's worth
      m[i] = packed ? (i % t < t / 2 ? 0 : 1) : (i >= t + t - window ? 0 : 1);
    if (packed) v.push_back(constant("segment", ints(m, {b, t}, DType::kI32), InputKind::kIndex));
    if (mask == Mask::kPadded) v.push_back(constant("key_valid", ints(m, {b, t}), InputKind::kIndex));
    if (mask == Mask::kPaddedDocuments || mask == Mask::kIdlePaddedDocuments) {  // t = 16
      const std::vector<int64_t> segment = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                            0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 7, 7};
      const std::vector<int64_t> valid = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0,
                                          1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
      v.push_back(constant("segment", ints(segment, {b, t}, DType::kI32), InputKind::kIndex));
      v.push_back(constant("key_valid", ints(valid, {b, t}), InputKind::kIndex));
    }
    return v;
  };
  // The inputs after q, k, v: the sinks (if any), then the mask's tensor (if any).
  auto sinks_of = [with_sinks](const std::vector<Tensor>& a) { return with_sinks ? a[3] : Tensor(); };
  auto mask_of = [mask, with_sinks, t](const std::vector<Tensor>& a) {
    ops::AttentionMask m;
    const size_t given = with_sinks ? 4 : 3;
    if (mask == Mask::kPadded) m.key_valid = a[given];
    if (mask != Mask::kPadded && mask != Mask::kNone) m.segment = a[given];
    if (mask == Mask::kPaddedDocuments || mask == Mask::kIdlePaddedDocuments) m.key_valid = a[given + 1];
    m.padded_queries_attend = mask != Mask::kIdlePaddedDocuments;
    if (mask == Mask::kDocuments || mask == Mask::kPaddedDocuments || mask == Mask::kIdlePaddedDocuments) {
      const Tensor segment = m.segment.to(Device::kCPU);
      std::vector<uint8_t> valid;
      if (m.key_valid.defined()) {
        const Tensor host = m.key_valid.to(Device::kCPU);  // int64
        for (int64_t i = 0; i < host.numel(); ++i) valid.push_back(host.data<int64_t>()[i] != 0 ? 1 : 0);
      }
      m.documents = ops::attention_documents(b, t, segment.data<int32_t>(), valid.empty() ? nullptr : valid.data(),
                                             m.segment.device(), m.padded_queries_attend);
    }
    return m;
  };
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  c.forward = [mask_of, sinks_of, scale, window](const std::vector<Tensor>& a) {
    Tensor lse;
    Tensor out = ops::attention_fwd(a[0], a[1], a[2], mask_of(a), scale, lse, sinks_of(a), window);
    return std::vector<CaseTensor>{differentiable("out", out), constant("lse", lse, InputKind::kF32)};
  };
  c.backward = [mask_of, sinks_of, scale, window](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    Tensor lse;
    const ops::AttentionMask m = mask_of(a);
    const Tensor out = ops::attention_fwd(a[0], a[1], a[2], m, scale, lse, sinks_of(a), window);
    const ops::AttentionGrads g = ops::attention_bwd(d[0], a[0], a[1], a[2], out, lse, m, scale, sinks_of(a), window);
    std::vector<Tensor> grads{g.dq, g.dk, g.dv};
    if (g.dsinks.defined()) grads.push_back(g.dsinks);
    return grads;
  };
  return c;
}

void add_attention_sinks_window(std::vector<OpCase>& cases) {
  using Mask = AttentionMaskKind;
  for (const auto& [window, mask, with_sinks] :
       {std::tuple{3, Mask::kPadded, true}, std::tuple{0, Mask::kPacked, true}, std::tuple{4, Mask::kPacked, true},
        std::tuple{5, Mask::kNone, true}, std::tuple{0, Mask::kNone, true}, std::tuple{4, Mask::kNone, false}})
    cases.push_back(attention_sinks_window_case(9, window, mask, with_sinks));
}

// Column splits and joins (MLA's and the Mamba mixer's projections), of parts `widths` wide.
OpCase split_columns_case(int64_t rows, std::vector<int64_t> widths) {
  OpCase c;
  const int64_t width = std::accumulate(widths.begin(), widths.end(), int64_t(0));
  c.name = str_cat("split_columns x[", rows, ", ", width, "] into ", shape_str(widths));
  c.op = Op::kSplitColumns;
  c.make_inputs = [rows, width](std::mt19937& rng) {
    return std::vector<CaseTensor>{differentiable("x", random_tensor({rows, width}, rng))};
  };
  c.forward = [widths](const std::vector<Tensor>& a) {
    std::vector<CaseTensor> out;
    for (Tensor& part : ops::split_columns(a[0], widths))
      out.push_back(differentiable(str_cat("part", out.size()), part));
    return out;
  };
  c.backward = [](const std::vector<Tensor>&, const std::vector<Tensor>& d) {
    return std::vector<Tensor>{ops::concat_columns(d)};
  };
  return c;
}

OpCase concat_columns_case(int64_t rows, std::vector<int64_t> widths) {
  OpCase c;
  c.name = str_cat("concat_columns of ", rows, " rows, parts ", shape_str(widths));
  c.op = Op::kConcatColumns;
  c.make_inputs = [rows, widths](std::mt19937& rng) {
    std::vector<CaseTensor> parts;
    for (int64_t w : widths)
      parts.push_back(differentiable(str_cat("part", parts.size()), random_tensor({rows, w}, rng)));
    return parts;
  };
  c.forward = [](const std::vector<Tensor>& a) {
    return std::vector<CaseTensor>{differentiable("y", ops::concat_columns(a))};
  };
  c.backward = [widths](const std::vector<Tensor>&, const std::vector<Tensor>& d) {
    return ops::split_columns(d[0], widths);
  };
  return c;
}

// Multi-head latent attention's pieces and DeepSeek's group-limited router and bias update.
void add_mla_and_group_router(std::vector<OpCase>& cases) {
  cases.push_back(split_columns_case(5, {4, 5}));
  cases.push_back(concat_columns_case(5, {3, 2}));
  // Small heads, then DeepSeek's proportions (rotated part 64, value heads narrower than q/k).
  for (const auto& [n, heads, nope, rotated, v_width, interleaved, scaling] :
       {std::tuple{6, 3, 5, 8, 4, true, 1.0f}, std::tuple{6, 3, 5, 8, 4, false, 1.2f},
        std::tuple{37, 4, 32, 64, 48, true, 1.1f}}) {
    OpCase c;
    c.name = str_cat("mla_heads q[", n, ", ", heads, ", ", nope + rotated, "] v ", v_width,
                     interleaved ? " interleaved" : " rotate_half", " scaling ", scaling);
    c.op = Op::kMlaHeadsFwd;
    c.make_inputs = [=](std::mt19937& rng) {
      return std::vector<CaseTensor>{differentiable("q", random_tensor({n, heads, nope + rotated}, rng, -2, 2)),
                                     differentiable("kv", random_tensor({n, heads, nope + v_width}, rng)),
                                     differentiable("k_pe", random_tensor({n, rotated}, rng, -2, 2)),
                                     constant("positions", positions(n), InputKind::kIndex),
                                     constant("inv_freq", inv_freq(rotated), InputKind::kF32)};
    };
    auto rope_of = [interleaved = interleaved, scaling = scaling](const std::vector<Tensor>& a) {
      return ops::MlaRope{.positions = a[3], .inv_freq = a[4], .attention_scaling = scaling, .interleaved = interleaved};
    };
    c.forward = [rope_of](const std::vector<Tensor>& a) {
      ops::MlaHeads h = ops::mla_heads_fwd(a[0], a[1], a[2], rope_of(a));
      return std::vector<CaseTensor>{differentiable("q", h.q), differentiable("k", h.k), differentiable("v", h.v)};
    };
    c.backward = [rope_of](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      ops::MlaHeadsGrads g = ops::mla_heads_bwd(d[0], d[1], d[2], rope_of(a));
      return std::vector<Tensor>{g.dq, g.dkv, g.dk_pe};
    };
    cases.push_back(std::move(c));
  }
  // Tiny groups, then DeepSeek-V3's routing (256 experts in 8 groups, 4 groups, top-8).
  for (const auto& [rows, experts, n_group, topk_group, k, norm] :
       {std::tuple{9, 8, 4, 2, 3, true}, std::tuple{100, 256, 8, 4, 8, true}, std::tuple{50, 64, 1, 1, 6, false}}) {
    OpCase c;
    c.name = str_cat("router_group_topk scores[", rows, ", ", experts, "] groups ", n_group, " of which ", topk_group,
                     " top-", k, norm ? "" : " unnormalised");
    c.op = Op::kRouterGroupTopk;
    c.grad = GradMode::kForward;
    c.make_inputs = [=](std::mt19937& rng) {
      return std::vector<CaseTensor>{constant("scores", random_tensor({rows, experts}, rng, 0, 1), InputKind::kF32),
                                     constant("bias", random_tensor({experts}, rng, -0.1f, 0.1f), InputKind::kF32)};
    };
    c.forward = [=](const std::vector<Tensor>& a) {
      ops::TopK t = ops::router_group_topk(a[0], a[1], k, n_group, topk_group, norm);
      return std::vector<CaseTensor>{constant("index", t.index, InputKind::kIndex),
                                     constant("weight", t.weight, InputKind::kF32)};
    };
    cases.push_back(std::move(c));
  }
  {
    OpCase c;
    c.name = "router_bias_update bias[64]";
    c.op = Op::kRouterBiasUpdate;
    c.grad = GradMode::kForward;
    c.make_inputs = [](std::mt19937& rng) {
      // Whole-number loads in pairs 100 -+ v, so the mean is 100; the first pair is the mean itself
      // (unchanged), the others below and above it (moved up and down).
      const std::vector<float> v = random_tensor({32}, rng, 0, 100).to_float_vector();
      std::vector<float> l(64);
      for (size_t i = 0; i < 32; ++i) {
        const float delta = i == 0 ? 0.0f : std::floor(v[i]) + 1;
        l[2 * i] = 100 - delta;
        l[2 * i + 1] = 100 + delta;
      }
      return std::vector<CaseTensor>{constant("bias", random_tensor({64}, rng, -0.1f, 0.1f), InputKind::kF32),
                                     constant("load", Tensor::from_vector(l, {64}), InputKind::kF32)};
    };
    c.forward = [](const std::vector<Tensor>& a) {
      Tensor bias = a[0].clone();
      ops::router_bias_update(bias, a[1], 1e-3f);
      return std::vector<CaseTensor>{constant("bias", bias, InputKind::kF32)};
    };
    cases.push_back(std::move(c));
  }
}

void add_activations(std::vector<OpCase>& cases) {
  for (const auto& [m, inter] : {std::tuple{6, 10}, std::tuple{77, 96}})
    for (bool scaled : {false, true}) {
      OpCase c;
      c.name = str_cat("swiglu gate_up[", m, ", ", 2 * inter, "]", scaled ? " row_scale" : "");
      c.op = Op::kSwigluFwd;
      c.make_inputs = [m, inter, scaled](std::mt19937& rng) {
        std::vector<CaseTensor> v{differentiable("gate_up", random_tensor({m, 2 * inter}, rng, -3, 3))};
        if (scaled) v.push_back(differentiable("row_scale", random_tensor({m}, rng, 0, 1), InputKind::kF32));
        return v;
      };
      c.forward = [scaled](const std::vector<Tensor>& a) {
        return std::vector<CaseTensor>{differentiable("h", ops::swiglu_fwd(a[0], scaled ? a[1] : Tensor()))};
      };
      c.backward = [scaled](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
        const ops::SwigluGrads g = ops::swiglu_bwd(d[0], a[0], scaled ? a[1] : Tensor());
        return scaled ? std::vector<Tensor>{g.d_gate_up, g.d_row_scale} : std::vector<Tensor>{g.d_gate_up};
      };
      cases.push_back(std::move(c));
    }

  // GPT-OSS's clamped SwiGLU: inputs in [-10, 10] cross both limits (+-7); none
  // within 0.05 of one, where central differences would straddle the kink.
  for (bool scaled : {false, true}) {
    constexpr int64_t m = 7, inter = 6;
    OpCase c;
    c.name = str_cat("clamped_swiglu gate_up[", m, ", ", 2 * inter, "]", scaled ? " row_scale" : "");
    c.op = Op::kClampedSwigluFwd;
    c.make_inputs = [scaled](std::mt19937& rng) {
      Tensor gate_up = random_tensor({m, 2 * inter}, rng, -10, 10);
      for (int64_t i = 0; i < gate_up.numel(); ++i) {
        float& v = gate_up.data<float>()[i];
        if (std::fabs(std::fabs(v) - 7.0f) < 0.05f) v += 0.2f;
      }
      std::vector<CaseTensor> v{differentiable("gate_up", gate_up)};
      if (scaled) v.push_back(differentiable("row_scale", random_tensor({m}, rng, 0, 1), InputKind::kF32));
      return v;
    };
    c.forward = [scaled](const std::vector<Tensor>& a) {
      return std::vector<CaseTensor>{
          differentiable("h", ops::clamped_swiglu_fwd(a[0], ops::ClampedSwiglu{}, scaled ? a[1] : Tensor()))};
    };
    c.backward = [scaled](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      const ops::SwigluGrads g = ops::clamped_swiglu_bwd(d[0], a[0], ops::ClampedSwiglu{}, scaled ? a[1] : Tensor());
      return scaled ? std::vector<Tensor>{g.d_gate_up, g.d_row_scale} : std::vector<Tensor>{g.d_gate_up};
    };
    cases.push_back(std::move(c));
  }

  for (const auto& [rows, cols] : {std::tuple{5, 8}, std::tuple{300, 128}}) {
    OpCase c;
    c.name = str_cat("softmax logits[", rows, ", ", cols, "]");
    c.op = Op::kSoftmaxFwd;
    c.make_inputs = [rows, cols](std::mt19937& rng) {
      return std::vector<CaseTensor>{differentiable("logits", random_tensor({rows, cols}, rng, -3, 3))};
    };
    c.forward = [](const std::vector<Tensor>& a) {
      return std::vector<CaseTensor>{differentiable("probs", ops::softmax_fwd(a[0]))};
    };
    c.backward = [](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      return std::vector<Tensor>{ops::softmax_bwd(d[0], ops::softmax_fwd(a[0]))};
    };
    cases.push_back(std::move(c));
  }

  // The shared-expert gate's [N, 1] shape, and a 3-D one; |x| up to 12 takes both branches of
  // the stable form and the saturated tails.
  for (const Shape& shape : {Shape{7, 1}, Shape{300, 1}, Shape{4, 6, 33}})
    for (DType dt : {DType::kBF16, DType::kF32}) {
      OpCase c;
      c.name = str_cat("sigmoid x", shape_str(shape), " ", dtype_tag(dt));
      c.op = Op::kSigmoidFwd;
      c.dtype = dt;
      c.make_inputs = [shape](std::mt19937& rng) {
        return std::vector<CaseTensor>{differentiable("x", random_tensor(shape, rng, -12, 12))};
      };
      c.forward = [](const std::vector<Tensor>& a) {
        return std::vector<CaseTensor>{differentiable("y", ops::sigmoid_fwd(a[0]))};
      };
      c.backward = [](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
        return std::vector<Tensor>{ops::sigmoid_bwd(d[0], ops::sigmoid_fwd(a[0]))};
      };
      cases.push_back(std::move(c));
    }
  // Dropout (LoRA's input dropout): the same mask on both backends, from the seed alone; its
  // backward is itself with the same seed.
  for (const auto& [shape, p] : {std::pair{Shape{7, 33}, 0.1f}, std::pair{Shape{300, 64}, 0.5f}})
    for (DType dt : {DType::kBF16, DType::kF32}) {
      OpCase c;
      c.name = str_cat("dropout p ", p, " x", shape_str(shape), " ", dtype_tag(dt));
      c.op = Op::kDropout;
      c.dtype = dt;
      c.make_inputs = [shape](std::mt19937& rng) {
        return std::vector<CaseTensor>{differentiable("x", random_tensor(shape, rng, -2, 2))};
      };
      c.forward = [p](const std::vector<Tensor>& a) {
        return std::vector<CaseTensor>{differentiable("y", ops::dropout(a[0], p, 1234))};
      };
      c.backward = [p](const std::vector<Tensor>&, const std::vector<Tensor>& d) {
        return std::vector<Tensor>{ops::dropout(d[0], p, 1234)};
      };
      cases.push_back(std::move(c));
    }
  // Random weights: the same normal draws on both backends. The input only gives the shape.
  for (DType dt : {DType::kBF16, DType::kF32}) {
    OpCase c;
    c.name = str_cat("init_normal x[300, 64] ", dtype_tag(dt));
    c.op = Op::kInitNormal;
    c.dtype = dt;
    c.grad = GradMode::kForward;
    c.make_inputs = [](std::mt19937& rng) {
      return std::vector<CaseTensor>{constant("like", random_tensor({300, 64}, rng), InputKind::kActivation)};
    };
    c.forward = [](const std::vector<Tensor>& a) {
      Tensor y = Tensor::empty(a[0].shape(), a[0].dtype(), a[0].device());
      ops::init_normal(y, 99, 3, 0.02f);
      return std::vector<CaseTensor>{constant("y", y, InputKind::kActivation)};
    };
    cases.push_back(std::move(c));
  }
}

// Expert choices of n tokens, k each among e experts (distinct per token), as int32.
Tensor expert_choices(int64_t n, int64_t k, int64_t e, std::mt19937& rng) {
  std::vector<int64_t> idx(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t first = static_cast<int64_t>(rng() % e);
    for (int64_t j = 0; j < k; ++j) idx[i * k + j] = (first + j * 3) % e;
  }
  return ints(idx, {n, k}, DType::kI32);
}

// The partial permutation an expert-parallel rank makes of `topk_index` (moe.h): the slots of the
// middle half of the e experts are held here (numbered from 0), the others go elsewhere (-1). Made
// on the host, as the expert-parallel plan is, and moved to the index's device.
ops::Permutation partial_permutation(const Tensor& topk_index, int64_t e) {
  Tensor held = topk_index.to(Device::kCPU).clone();
  int32_t* index = held.data<int32_t>();
  for (int64_t i = 0; i < held.numel(); ++i)
    index[i] = index[i] >= e / 4 && index[i] < 3 * e / 4 ? index[i] - static_cast<int32_t>(e / 4) : -1;
  const ops::Permutation p = ops::make_permutation(held, 3 * e / 4 - e / 4);
  const Device device = topk_index.device();
  return {p.source_row.to(device), p.slot_of.to(device), p.offsets.to(device)};
}

// An expert product: x [m, k] over e experts' w [e, n, k], expert 1 without rows; with_bias adds a
// bias [e, n] (GPT-OSS's gate/up, in the epilogue of CUDA's 2 x 2-cluster kernel).
OpCase grouped_linear_case(int64_t m, int64_t e, int64_t n, int64_t k, bool with_bias = false) {
  OpCase c;
  c.name = str_cat("grouped_linear x[", m, ", ", k, "] w[", e, ", ", n, ", ", k, "]", with_bias ? " bias" : "");
  c.op = Op::kGroupedLinear;
  c.make_inputs = [m, e, n, k, with_bias](std::mt19937& rng) {
    std::vector<int64_t> offsets{0, m / 3, m / 3};
    for (int64_t i = 3; i < e; ++i) offsets.push_back(m / 3 + (m - m / 3) * (i - 2) / (e - 2));
    offsets.push_back(m);
    std::vector<CaseTensor> v{differentiable("x", random_tensor({m, k}, rng)),
                              differentiable("w", random_tensor({e, n, k}, rng)),
                              constant("offsets", ints(offsets, {e + 1}), InputKind::kIndex)};
    if (with_bias) v.push_back(differentiable("bias", random_tensor({e, n}, rng)));
    return v;
  };
  c.forward = [with_bias](const std::vector<Tensor>& a) {
    return std::vector<CaseTensor>{
        differentiable("y", ops::grouped_linear(a[0], a[1], a[2], with_bias ? a[3] : Tensor()))};
  };
  c.backward = [with_bias](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    Tensor dw = zeros_like(a[1]);
    ops::grouped_linear_dw(d[0], a[0], a[2], dw);
    std::vector<Tensor> grads{ops::grouped_linear_dx(d[0], a[1], a[2]), dw};
    if (with_bias) {
      grads.push_back(zeros_like(a[3]));
      ops::grouped_bias_bwd(d[0], a[3], a[2], grads.back());
    }
    return grads;
  };
  return c;
}

// The first expert product on permuted rows without them in memory: n tokens' top k of e experts,
// x [n, k_in], w [e, n_out, k_in]; its gradients are the permuted product's (the MoE block's backward).
OpCase gathered_grouped_linear_case(int64_t n, int k, int64_t e, int64_t n_out, int64_t k_in) {
  OpCase c;
  c.name = str_cat("gathered_grouped_linear tokens ", n, " top ", k, " of ", e, " w[", e, ", ", n_out, ", ", k_in, "]");
  c.op = Op::kGatheredGroupedLinear;
  c.make_inputs = [=](std::mt19937& rng) {
    return std::vector<CaseTensor>{differentiable("x", random_tensor({n, k_in}, rng)),
                                   differentiable("w", random_tensor({e, n_out, k_in}, rng)),
                                   constant("topk_index", expert_choices(n, k, e, rng), InputKind::kIndex)};
  };
  c.forward = [=](const std::vector<Tensor>& a) {
    const ops::Permutation p = ops::make_permutation(a[2], e);
    return std::vector<CaseTensor>{differentiable("y", ops::gathered_grouped_linear(a[0], p, a[1])),
                                   constant("offsets", p.offsets, InputKind::kIndex)};
  };
  c.backward = [=](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    const ops::Permutation p = ops::make_permutation(a[2], e);
    Tensor dw = zeros_like(a[1]);
    ops::grouped_linear_dw(d[0], ops::permute(a[0], p), p.offsets, dw);
    return std::vector<Tensor>{ops::unpermute(ops::grouped_linear_dx(d[0], a[1], p.offsets), p, n), dw};
  };
  return c;
}

// permute (forward_permute) or unpermute of n tokens' top k of e experts, h columns; each is the
// other's backward.
OpCase permute_case(int64_t n, int k, int64_t e, int64_t h, bool forward_permute) {
  OpCase c;
  c.name = str_cat(forward_permute ? "permute" : "unpermute", " tokens ", n, " top ", k, " of ", e, " hidden ", h);
  c.op = forward_permute ? Op::kPermute : Op::kUnpermute;
  c.make_inputs = [=](std::mt19937& rng) {
    return std::vector<CaseTensor>{differentiable("x", random_tensor({forward_permute ? n : n * k, h}, rng)),
                                   constant("topk_index", expert_choices(n, k, e, rng), InputKind::kIndex)};
  };
  c.forward = [=](const std::vector<Tensor>& a) {
    const ops::Permutation p = ops::make_permutation(a[1], e);
    const Tensor y = forward_permute ? ops::permute(a[0], p) : ops::unpermute(a[0], p, n);
    return std::vector<CaseTensor>{differentiable("y", y), constant("offsets", p.offsets, InputKind::kIndex)};
  };
  c.backward = [=](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    const ops::Permutation p = ops::make_permutation(a[1], e);
    return std::vector<Tensor>{forward_permute ? ops::unpermute(d[0], p, n) : ops::permute(d[0], p)};
  };
  return c;
}

void add_moe(std::vector<OpCase>& cases) {
  // Router top-k: the choices are discrete, so forward only (moe_test.cpp differentiates the weights).
  for (bool renormalise : {false, true}) {
    OpCase c;
    c.name = str_cat("router_topk probs[300, 64] k 8", renormalise ? " renormalised" : "");
    c.op = Op::kRouterTopk;
    c.grad = GradMode::kForward;
    c.make_inputs = [](std::mt19937& rng) {
      return std::vector<CaseTensor>{
          constant("probs", ops::softmax_fwd(random_tensor({300, 64}, rng, -4, 4)), InputKind::kF32)};
    };
    c.forward = [renormalise](const std::vector<Tensor>& a) {
      const ops::TopK t = ops::router_topk(a[0], 8, renormalise);
      return std::vector<CaseTensor>{constant("index", t.index, InputKind::kIndex),
                                     constant("weight", t.weight, InputKind::kF32)};
    };
    cases.push_back(std::move(c));
  }

  // Expert counts: integers, forward only. Counts start from e (they are added into); with
  // row_valid, the last quarter of the rows and every seventh are padding. 40000 x 8 pairs take
  // the CUDA kernel's grid-stride loop.
  for (const auto& [n, k, e] : {std::tuple{7, 2, 4}, std::tuple{300, 8, 64}, std::tuple{40000, 8, 128}})
    for (bool masked : {false, true}) {
      OpCase c;
      c.name = str_cat("expert_counts tokens ", n, " top ", k, " of ", e, masked ? " row_valid" : "");
      c.op = Op::kExpertCounts;
      c.grad = GradMode::kForward;
      c.make_inputs = [=](std::mt19937& rng) {
        std::vector<CaseTensor> v{constant("topk_index", expert_choices(n, k, e, rng), InputKind::kIndex)};
        if (masked) {
          std::vector<float> valid(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i) valid[i] = i >= n - n / 4 || i % 7 == 3 ? 0.0f : 1.0f;
          v.push_back(constant("row_valid", Tensor::from_vector(valid, {n}), InputKind::kF32));
        }
        return v;
      };
      c.forward = [=](const std::vector<Tensor>& a) {
        std::vector<float> start(static_cast<size_t>(e));
        for (int64_t i = 0; i < e; ++i) start[i] = static_cast<float>(i);
        Tensor counts = Tensor::from_vector(start, {e}).to(a[0].device());
        ops::expert_counts(a[0], masked ? a[1] : Tensor(), counts);
        return std::vector<CaseTensor>{constant("counts", counts, InputKind::kF32)};
      };
      cases.push_back(std::move(c));
    }

  // permute and unpermute, each the other's backward.
  for (const auto& [n, k, e, h] : {std::tuple{7, 2, 4, 5}, std::tuple{300, 8, 64, 128}})
    for (bool forward_permute : {true, false}) cases.push_back(permute_case(n, k, e, h, forward_permute));

  // The same pairs over a partial permutation (expert parallelism: half the experts are held), and
  // the routing weights' pair, each the other's backward.
  for (const auto& [n, k, e, h] : {std::tuple{7, 2, 4, 5}, std::tuple{300, 8, 64, 128}})
    for (bool forward_permute : {true, false}) {
      OpCase c;
      c.name = str_cat(forward_permute ? "permute" : "unpermute", " partial tokens ", n, " top ", k, " of ", e,
                       " hidden ", h);
      c.op = forward_permute ? Op::kPermute : Op::kUnpermute;
      c.make_inputs = [=](std::mt19937& rng) {
        const Tensor index = expert_choices(n, k, e, rng);
        const int64_t rows = partial_permutation(index, e).source_row.numel();
        return std::vector<CaseTensor>{differentiable("x", random_tensor({forward_permute ? n : rows, h}, rng)),
                                       constant("topk_index", index, InputKind::kIndex)};
      };
      c.forward = [=](const std::vector<Tensor>& a) {
        const ops::Permutation p = partial_permutation(a[1], e);
        const Tensor y = forward_permute ? ops::permute(a[0], p) : ops::unpermute(a[0], p, n);
        return std::vector<CaseTensor>{differentiable("y", y)};
      };
      c.backward = [=](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
        const ops::Permutation p = partial_permutation(a[1], e);
        return std::vector<Tensor>{forward_permute ? ops::unpermute(d[0], p, n) : ops::permute(d[0], p)};
      };
      cases.push_back(std::move(c));
      OpCase w;
      w.name = str_cat(forward_permute ? "permute_weights" : "unpermute_weights", " partial tokens ", n, " top ", k,
                       " of ", e);
      w.op = forward_permute ? Op::kPermuteWeights : Op::kUnpermuteWeights;
      w.make_inputs = [=](std::mt19937& rng) {
        const Tensor index = expert_choices(n, k, e, rng);
        const int64_t rows = partial_permutation(index, e).source_row.numel();
        return std::vector<CaseTensor>{
            differentiable("weight", random_tensor(forward_permute ? Shape{n, k} : Shape{rows}, rng), InputKind::kF32),
            constant("topk_index", index, InputKind::kIndex)};
      };
      w.forward = [=](const std::vector<Tensor>& a) {
        const ops::Permutation p = partial_permutation(a[1], e);
        const Tensor y = forward_permute ? ops::permute_weights(a[0], p) : ops::unpermute_weights(a[0], p);
        return std::vector<CaseTensor>{differentiable("y", y, InputKind::kF32)};
      };
      w.backward = [=](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
        const ops::Permutation p = partial_permutation(a[1], e);
        return std::vector<Tensor>{forward_permute ? ops::unpermute_weights(d[0], p) : ops::permute_weights(d[0], p)};
      };
      cases.push_back(std::move(w));
    }

  // Expert parallelism's plan where the routing is, at P = 2, 4 and 8 virtual ranks (integers: CUDA must
  // equal the CPU bit for bit). 60 experts split unevenly over 8 ranks (7 or 8 each); 40000 tokens take
  // the CUDA kernels' several blocks. The receive side is the partial permutation of every sent row's
  // slots, as one rank of the most experts a rank holds would number them.
  for (const auto& [n, k, e] : {std::tuple{300, 8, 64}, std::tuple{40000, 8, 60}})
    for (int64_t ranks : {2, 4, 8}) {
      OpCase c;
      c.name = str_cat("expert_ranks tokens ", n, " top ", k, " of ", e, " over ", ranks, " ranks");
      c.op = Op::kExpertRanks;
      c.grad = GradMode::kForward;
      c.make_inputs = [=](std::mt19937& rng) {
        return std::vector<CaseTensor>{constant("topk_index", expert_choices(n, k, e, rng), InputKind::kIndex)};
      };
      c.forward = [=](const std::vector<Tensor>& a) {
        const ops::ExpertRanks to = ops::expert_ranks(a[0], e, ranks);
        const Tensor counts = to.counts.to(Device::kCPU);
        int64_t sent = 0, held = 0;
        for (int64_t p = 0; p < ranks; ++p) {
          sent += counts.data<int64_t>()[2 * p];
          held += counts.data<int64_t>()[2 * p + 1];
        }
        const ops::Permutation send = ops::make_permutation(to.rank, ranks, sent);
        const Tensor slots = ops::sent_expert_slots(a[0], send, e);
        const ops::Permutation received = ops::make_permutation(slots, (e + ranks - 1) / ranks, held);
        return std::vector<CaseTensor>{
            constant("rank", to.rank, InputKind::kIndex), constant("counts", to.counts, InputKind::kIndex),
            constant("send.source_row", send.source_row, InputKind::kIndex),
            constant("send.slot_of", send.slot_of, InputKind::kIndex),
            constant("send.offsets", send.offsets, InputKind::kIndex), constant("slots", slots, InputKind::kIndex),
            constant("received.source_row", received.source_row, InputKind::kIndex),
            constant("received.slot_of", received.slot_of, InputKind::kIndex),
            constant("received.offsets", received.offsets, InputKind::kIndex)};
      };
      cases.push_back(std::move(c));
    }

  // Grouped products: feature sizes that are multiples of 8 go to CUTLASS on CUDA, the others
  // to the untuned kernel. Expert 1 has no rows.
  for (const auto& [m, e, n, k] : {std::tuple{40, 4, 24, 16}, std::tuple{37, 3, 20, 12},
                                   std::tuple{1000, 8, 256, 128}})
    cases.push_back(grouped_linear_case(m, e, n, k));

  // GPT-OSS's expert biases; an expert without rows in the middle. 24 columns take CUDA's 16-byte
  // accesses, 5 its element-wise ones.
  struct BiasShape {
    int64_t m, e, n;
    std::vector<int64_t> offsets;
  };
  for (const BiasShape& shape : {BiasShape{9, 4, 5, {0, 3, 3, 7, 9}}, BiasShape{37, 5, 24, {0, 10, 10, 20, 31, 37}}}) {
    for (bool scaled : {false, true}) {
      const int64_t m = shape.m, e = shape.e, n = shape.n;
      OpCase c;
      c.name = str_cat("grouped_bias_add y[", m, ", ", n, "] bias[", e, ", ", n, "]", scaled ? " row_scale" : "");
      c.op = Op::kGroupedBiasAdd;
      c.make_inputs = [scaled, m, e, n, offsets = shape.offsets](std::mt19937& rng) {
        std::vector<CaseTensor> v{differentiable("y", random_tensor({m, n}, rng)),
                                  differentiable("bias", random_tensor({e, n}, rng)),
                                  constant("offsets", ints(offsets, {e + 1}), InputKind::kIndex)};
        if (scaled) v.push_back(differentiable("row_scale", random_tensor({m}, rng, 0, 1), InputKind::kF32));
        return v;
      };
      c.forward = [scaled](const std::vector<Tensor>& a) {
        Tensor y = a[0].clone();
        ops::grouped_bias_add(y, a[1], a[2], scaled ? a[3] : Tensor());
        return std::vector<CaseTensor>{differentiable("y", y)};
      };
      c.backward = [scaled](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
        Tensor d_bias = zeros_like(a[1]);
        const Tensor d_scale = ops::grouped_bias_bwd(d[0], a[1], a[2], d_bias, scaled ? a[3] : Tensor());
        return scaled ? std::vector<Tensor>{d[0].clone(), d_bias, d_scale} : std::vector<Tensor>{d[0].clone(), d_bias};
      };
      cases.push_back(std::move(c));
    }
  }
}

void add_embedding_loss(std::vector<OpCase>& cases) {
  for (const auto& [vocab, hidden, n] : {std::tuple{10, 6, 5}, std::tuple{50, 72, 300}}) {
    OpCase c;
    c.name = str_cat("embedding weight[", vocab, ", ", hidden, "] ids ", n);
    c.op = Op::kEmbeddingFwd;
    c.make_inputs = [vocab, hidden, n](std::mt19937& rng) {
      std::vector<int64_t> ids(static_cast<size_t>(n));
      for (int64_t& id : ids) id = static_cast<int64_t>(rng() % vocab);  // repeats among them
      return std::vector<CaseTensor>{differentiable("weight", random_tensor({vocab, hidden}, rng)),
                                     constant("ids", ints(ids, {n}), InputKind::kIndex)};
    };
    c.forward = [](const std::vector<Tensor>& a) {
      return std::vector<CaseTensor>{differentiable("out", ops::embedding_fwd(a[0], a[1]))};
    };
    c.backward = [](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      Tensor dw = zeros_like(a[0]);
      ops::embedding_bwd(d[0], a[1], dw);
      return std::vector<Tensor>{dw};
    };
    cases.push_back(std::move(c));
  }

  for (const auto& [n, vocab] : {std::tuple{6, 11}, std::tuple{64, 1000}}) {
    OpCase c;
    c.name = str_cat("cross_entropy logits[", n, ", ", vocab, "]");
    c.op = Op::kCrossEntropy;
    c.make_inputs = [n, vocab](std::mt19937& rng) {
      std::vector<int64_t> targets(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) targets[i] = i % 4 == 1 ? -100 : static_cast<int64_t>(rng() % vocab);
      return std::vector<CaseTensor>{differentiable("logits", random_tensor({n, vocab}, rng, -3, 3)),
                                     constant("targets", ints(targets, {n}), InputKind::kIndex)};
    };
    c.forward = [](const std::vector<Tensor>& a) {
      const ops::CrossEntropyResult r = ops::cross_entropy(a[0], a[1], 1.0f, nullptr);
      return std::vector<CaseTensor>{differentiable("loss_sum", scalar(r.loss_sum), InputKind::kF32),
                                     constant("count", ints({r.count}, {1}), InputKind::kIndex)};
    };
    c.backward = [](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      Tensor dlogits = Tensor::empty(a[0].shape(), a[0].dtype(), a[0].device());
      ops::cross_entropy(a[0], a[1], d[0].to(Device::kCPU).item_float(), &dlogits);
      return std::vector<Tensor>{dlogits};
    };
    cases.push_back(std::move(c));
  }

  OpCase s;
  s.name = "sum_of_squares x[300, 2048]";
  s.op = Op::kSumOfSquares;
  s.grad = GradMode::kForward;
  s.make_inputs = [](std::mt19937& rng) {
    return std::vector<CaseTensor>{constant("x", random_tensor({300, 2048}, rng), InputKind::kActivation)};
  };
  s.forward = [](const std::vector<Tensor>& a) {
    return std::vector<CaseTensor>{constant("sum", scalar(ops::sum_of_squares(a[0])), InputKind::kF32)};
  };
  cases.push_back(std::move(s));
}

// Mamba-2's gated group RMSNorm over rows of `width` in groups of `group`.
OpCase gated_rms_norm_case(int64_t rows, int64_t width, int64_t group) {
  OpCase c;
  c.name = str_cat("gated_rms_norm y[", rows, ", ", width, "] group ", group);
  c.op = Op::kGatedRmsNormFwd;
  c.make_inputs = [rows, width](std::mt19937& rng) {
    return std::vector<CaseTensor>{differentiable("y", random_tensor({rows, width}, rng, -2, 2)),
                                   differentiable("z", random_tensor({rows, width}, rng, -3, 3)),
                                   differentiable("w", random_tensor({width}, rng, 0.5f, 1.5f))};
  };
  c.forward = [group](const std::vector<Tensor>& a) {
    Tensor rstd;
    return std::vector<CaseTensor>{
        differentiable("out", ops::gated_rms_norm_fwd(a[0], a[1], a[2], group, 1e-5f, rstd))};
  };
  c.backward = [group](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    Tensor rstd, grad_w = zeros_like(a[2]);
    ops::gated_rms_norm_fwd(a[0], a[1], a[2], group, 1e-5f, rstd);
    ops::GatedRmsNormGrads g = ops::gated_rms_norm_bwd(d[0], a[0], a[1], a[2], group, rstd, grad_w);
    return std::vector<Tensor>{g.dy, g.dz, grad_w};
  };
  return c;
}

// Nemotron-H's Mamba-2 pieces run on b = 2 rows, each sequence op once on a packed batch (documents
// reset the convolution and the state) and once with padding on both sides.
constexpr int64_t kMambaRows = 2;
enum class Mask { kPacked, kPadding };

ops::AttentionMask mask_of(Mask mask, const Tensor& m) {
  ops::AttentionMask am;
  (mask == Mask::kPacked ? am.segment : am.key_valid) = m;
  return am;
}

// Long enough for CUDA's chunks (64 rows) and convolution tiles (64 rows): packed documents
// starting inside a chunk, at a chunk's first row and across a tile's edge; padding at both ends.
constexpr int64_t kLongSeq = 300;
CaseTensor long_mask(Mask mask) {
  constexpr int64_t b = kMambaRows, long_seq = kLongSeq;
  std::vector<int64_t> m(b * long_seq);
  for (int64_t s = 0; s < long_seq; ++s) {
    m[s] = mask == Mask::kPacked ? (s >= 50) + (s >= 130) + (s >= 255) : s >= 5;
    m[long_seq + s] = mask == Mask::kPacked ? (s >= 64) + (s >= 258) : s < long_seq - 20;
  }
  return mask == Mask::kPacked ? constant("segment", ints(m, {b, long_seq}, DType::kI32), InputKind::kIndex)
                               : constant("key_valid", ints(m, {b, long_seq}), InputKind::kIndex);
}

// The SSD scan on kMambaRows rows of `seq`, masked by `mask_tensor` (a segment or key_valid input).
// No time step lies within 0.03 of dt_min, where central differences would straddle the clamp's kink.
OpCase ssd_scan_case(int64_t seq, ops::SsdShape shape, Mask mask, CaseTensor mask_tensor) {
  static constexpr int64_t b = kMambaRows;
  const int64_t conv_dim = shape.heads * shape.head_dim + 2 * shape.groups * shape.state;
  OpCase c;
  c.name = str_cat("ssd_scan xbc[", b, ", ", seq, ", ", conv_dim, "] heads ", shape.heads, " of ", shape.head_dim,
                   " groups ", shape.groups, " state ", shape.state, mask == Mask::kPacked ? " packed" : " padded");
  c.op = Op::kSsdScanFwd;
  c.make_inputs = [seq, shape, conv_dim, mask_tensor](std::mt19937& rng) {
    Tensor dt = random_tensor({b, seq, shape.heads}, rng, -3, 1);
    Tensor dt_bias = random_tensor({shape.heads}, rng, -0.5f, 0.5f);
    for (int64_t i = 0; i < dt.numel(); ++i) {
      float& v = dt.data<float>()[i];
      const float step = std::log1p(std::exp(v + dt_bias.data<float>()[i % shape.heads]));
      if (std::fabs(step - shape.dt_min) < 0.03f) v += 0.2f;
    }
    return std::vector<CaseTensor>{differentiable("xbc", random_tensor({b, seq, conv_dim}, rng)),
                                   differentiable("dt", dt), differentiable("dt_bias", dt_bias, InputKind::kF32),
                                   differentiable("a_log", random_tensor({shape.heads}, rng, -1, 1), InputKind::kF32),
                                   differentiable("d", random_tensor({shape.heads}, rng), InputKind::kF32),
                                   mask_tensor};
  };
  c.forward = [shape, mask](const std::vector<Tensor>& a) {
    return std::vector<CaseTensor>{
        differentiable("y", ops::ssd_scan_fwd(a[0], a[1], a[2], a[3], a[4], shape, mask_of(mask, a[5])))};
  };
  c.backward = [shape, mask](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
    Tensor g_bias = zeros_like(a[2]), g_a_log = zeros_like(a[3]), g_d = zeros_like(a[4]);
    ops::SsdScanGrads g =
        ops::ssd_scan_bwd(d[0], a[0], a[1], a[2], a[3], a[4], shape, mask_of(mask, a[5]), g_bias, g_a_log, g_d);
    return std::vector<Tensor>{g.d_xbc, g.d_dt, g_bias, g_a_log, g_d};
  };
  return c;
}

}  // namespace

void add_mamba(std::vector<OpCase>& cases) {
  static constexpr int64_t b = kMambaRows, t = 7;  // static: the case lambdas read them without a capture
  // Row 0 holds three documents; row 1 is padded left then right (key_valid) or two documents.
  auto mask_input = [](Mask mask) {
    return mask == Mask::kPacked
               ? constant("segment", ints({0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1, 1}, {b, t}, DType::kI32),
                          InputKind::kIndex)
               : constant("key_valid", ints({1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0}, {b, t}), InputKind::kIndex);
  };
  // The sequence ops on b rows of `seq`, masked by `mask_tensor` (a segment or key_valid input).
  auto add_conv = [&cases](int64_t seq, int64_t channels, Mask mask, CaseTensor mask_tensor) {
    constexpr int64_t kernel = 4;
    OpCase c;
    c.name = str_cat("causal_conv1d_silu x[", b, ", ", seq, ", ", channels, "] kernel ", kernel,
                     mask == Mask::kPacked ? " packed" : " padded");
    c.op = Op::kCausalConv1dSiluFwd;
    c.make_inputs = [seq, channels, mask_tensor](std::mt19937& rng) {
      return std::vector<CaseTensor>{differentiable("x", random_tensor({b, seq, channels}, rng, -2, 2)),
                                     differentiable("w", random_tensor({channels, kernel}, rng)),
                                     differentiable("bias", random_tensor({channels}, rng)), mask_tensor};
    };
    c.forward = [mask](const std::vector<Tensor>& a) {
      return std::vector<CaseTensor>{
          differentiable("y", ops::causal_conv1d_silu_fwd(a[0], a[1], a[2], mask_of(mask, a[3])))};
    };
    c.backward = [mask](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      Tensor grad_w = zeros_like(a[1]), grad_bias = zeros_like(a[2]);
      Tensor dx = ops::causal_conv1d_silu_bwd(d[0], a[0], a[1], a[2], mask_of(mask, a[3]), grad_w, grad_bias);
      return std::vector<Tensor>{dx, grad_w, grad_bias};
    };
    cases.push_back(std::move(c));
  };
  // dt_min 0.3 clamps some steps.
  const ops::SsdShape small{.heads = 4, .head_dim = 3, .groups = 2, .state = 2, .dt_min = 0.3f};
  for (Mask mask : {Mask::kPacked, Mask::kPadding}) {
    add_conv(t, 5, mask, mask_input(mask));
    cases.push_back(ssd_scan_case(t, small, mask, mask_input(mask)));
  }
  constexpr int64_t long_seq = kLongSeq;
  const ops::SsdShape wide{.heads = 4, .head_dim = 32, .groups = 2, .state = 16, .dt_min = 0.01f};
  for (Mask mask : {Mask::kPacked, Mask::kPadding}) {
    add_conv(long_seq, 48, mask, long_mask(mask));
    cases.push_back(ssd_scan_case(long_seq, wide, mask, long_mask(mask)));
  }
  cases.push_back(gated_rms_norm_case(5, 12, 4));
  // Squared ReLU; no input within 0.05 of the kink at 0.
  for (bool scaled : {false, true}) {
    constexpr int64_t m = 6, inter = 7;
    OpCase c;
    c.name = str_cat("relu2 x[", m, ", ", inter, "]", scaled ? " row_scale" : "");
    c.op = Op::kRelu2Fwd;
    c.make_inputs = [scaled](std::mt19937& rng) {
      Tensor x = random_tensor({m, inter}, rng, -2, 2);
      for (int64_t i = 0; i < x.numel(); ++i)
        if (std::fabs(x.data<float>()[i]) < 0.05f) x.data<float>()[i] += 0.1f;
      std::vector<CaseTensor> v{differentiable("x", x)};
      if (scaled) v.push_back(differentiable("row_scale", random_tensor({m}, rng, 0, 1), InputKind::kF32));
      return v;
    };
    c.forward = [scaled](const std::vector<Tensor>& a) {
      return std::vector<CaseTensor>{differentiable("h", ops::relu2_fwd(a[0], scaled ? a[1] : Tensor()))};
    };
    c.backward = [scaled](const std::vector<Tensor>& a, const std::vector<Tensor>& d) {
      const ops::SwigluGrads g = ops::relu2_bwd(d[0], a[0], scaled ? a[1] : Tensor());
      return scaled ? std::vector<Tensor>{g.d_gate_up, g.d_row_scale} : std::vector<Tensor>{g.d_gate_up};
    };
    cases.push_back(std::move(c));
  }
  // Nemotron 3 Nano's head (64 channels, a state of 128), CUDA's chunks of 64 rows both ways. Last: a
  // case's random inputs follow from its place in the list (op_table_test.cpp), so the cases before it
  // keep theirs.
  const ops::SsdShape nemotron_head{.heads = 2, .head_dim = 64, .groups = 1, .state = 128, .dt_min = 0.01f};
  for (Mask mask : {Mask::kPacked, Mask::kPadding})
    cases.push_back(ssd_scan_case(long_seq, nemotron_head, mask, long_mask(mask)));
}

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> v;
    add_dense(v);
    add_norm_rope(v);
    add_attention(v);
    add_attention_sinks_window(v);
    add_mla_and_group_router(v);
    add_activations(v);
    add_mamba(v);
    add_moe(v);
    add_embedding_loss(v);
    // Last, so that the cases before them keep their inputs (a case's follow from its place):
    // column copies at widths CUDA copies 16 bytes at a time, and RMSNorm on Nemotron 3 Nano's rows.
    v.push_back(split_columns_case(6, {16, 24}));
    v.push_back(concat_columns_case(6, {16, 24}));
    v.push_back(rms_norm_case(300, 2688));
    v.push_back(add_rms_norm_case(300, 2688));
    // A bias gradient over more rows than CUDA sums in one chunk (512).
    v.push_back(linear_case(1300, 64, 48, /*bias=*/true, DType::kBF16));
    // Experts wide enough for CUDA's 2 x 2 clusters (GPT-OSS's width is 2880).
    v.push_back(grouped_linear_case(300, 3, 2560, 2560));
    // Nemotron 3 Nano's groups of 512, which CUDA keeps in registers.
    v.push_back(gated_rms_norm_case(300, 1024, 512));
    // Rows CUDA's RMSNorm forward holds in registers at 2 and 4 chunks a lane (2048 and 2688 above take 8 and 12).
    v.push_back(rms_norm_case(40, 512));
    v.push_back(add_rms_norm_case(40, 1024));
    // Experts whose N is a multiple of 512, whose forward CUDA runs on 128 x 256 tiles.
    v.push_back(grouped_linear_case(600, 3, 512, 256));
    // Rows of 360 16-byte words (GPT-OSS's 2880 columns): CUDA's gather takes 256 a warp, then the rest.
    for (bool forward_permute : {true, false}) v.push_back(permute_case(40, 4, 8, 2880, forward_permute));
    // Rows too wide for CUDA's RMSNorm backward to stage in shared memory (DeepSeek-V3's 7168 columns).
    v.push_back(rms_norm_case(20, 7168));
    // Three parts in one op, as the Mamba mixer's projection (gate, convolution channels, dt).
    v.push_back(split_columns_case(6, {16, 24, 8}));
    v.push_back(concat_columns_case(6, {16, 5, 8}));
    // An expert weight of 2048 x 1024, whose dw CUDA runs in pairs along M.
    v.push_back(grouped_linear_case(300, 3, 2048, 1024));
    v.push_back(grouped_linear_case(300, 3, 2560, 2560, /*with_bias=*/true));
    // Packed documents given as blocks, with sinks and a window (cuDNN's varlen graphs on CUDA).
    v.push_back(attention_sinks_window_case(16, 4, AttentionMaskKind::kDocuments, true));
    v.push_back(attention_sinks_window_case(16, 0, AttentionMaskKind::kDocuments, true));
    v.push_back(attention_sinks_window_case(16, 3, AttentionMaskKind::kDocuments, false));
    // Padded runs after documents (a sliding window over them: the simple kernels beside cuDNN on CUDA;
    // rows that see nothing, which a window of 1 makes of every padded query, have finite lse with sinks only).
    v.push_back(attention_sinks_window_case(16, 4, AttentionMaskKind::kPaddedDocuments, true));
    v.push_back(attention_sinks_window_case(16, 0, AttentionMaskKind::kPaddedDocuments, true));
    v.push_back(attention_sinks_window_case(16, 1, AttentionMaskKind::kPaddedDocuments, true));
    // Padded queries that attend nothing (a model's padded rows without labels): no padded blocks.
    v.push_back(attention_sinks_window_case(16, 4, AttentionMaskKind::kIdlePaddedDocuments, true));
    v.push_back(attention_sinks_window_case(16, 0, AttentionMaskKind::kIdlePaddedDocuments, true));
    // A head of 80 channels (Nemotron-H's 8B and Nano 2 shapes): CUDA's forward pads it to 96 and holds the
    // state's 24 tiles three a warp (its backward, two).
    const ops::SsdShape head_80{.heads = 1, .head_dim = 80, .groups = 1, .state = 128, .dt_min = 0.01f};
    v.push_back(ssd_scan_case(kLongSeq, head_80, Mask::kPacked, long_mask(Mask::kPacked)));
    // Nemotron 3 Nano's head in float32: x, B and C then take two bf16 parts each in CUDA's products.
    OpCase f32 = ssd_scan_case(kLongSeq, {.heads = 2, .head_dim = 64, .groups = 1, .state = 128, .dt_min = 0.01f},
                               Mask::kPadding, long_mask(Mask::kPadding));
    f32.name += " float32";
    f32.dtype = DType::kF32;
    v.push_back(std::move(f32));
    // The gather in the expert product's loads (CUDA: where K is a multiple of 64): rows and a column tile
    // (384 of 256) past the ends, then Qwen3's widths on more experts; 24 input features take the permuted
    // temporary.
    v.push_back(gathered_grouped_linear_case(300, 4, 8, 384, 256));
    v.push_back(gathered_grouped_linear_case(1000, 8, 16, 1536, 2048));
    v.push_back(gathered_grouped_linear_case(37, 2, 4, 16, 24));
    // The regimes the cases above mix, apart (CUDA, 132 blocks): one tile a block with 32 k steps, eight
    // times its 4 pipeline stages; two tiles a block (160 tiles) of 2 k steps.
    v.push_back(gathered_grouped_linear_case(300, 4, 8, 384, 2048));
    v.push_back(gathered_grouped_linear_case(1000, 4, 4, 1280, 128));
    return v;
  }();
  return cases;
}

}  // namespace moeforge::testing
