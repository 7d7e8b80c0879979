// SwiGLU (plain and GPT-OSS's clamped one) and row softmax on the CPU.
#include <algorithm>
#include <cmath>

#include "ops/cpu/cpu_ops.h"
#include "ops/dropout_mask.h"
#include "ops/normal_hash.h"

namespace moeforge::ops::cpu {
namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

namespace {

// A gated activation a(gate, up) over gate_up [M, 2I] (gate columns first): h = row_scale[r] * a
// (row_scale absent: 1).
template <class Activation>
void gated_fwd(const Tensor& gate_up, const Tensor& row_scale, Tensor& h, Activation a) {
  const int64_t rows = h.size(0), inter = h.size(1);
  const float* pgu = gate_up.data<float>();
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  float* ph = h.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = pgu + r * 2 * inter;
    const float* up = gate + inter;
    const float s = scale != nullptr ? scale[r] : 1.0f;
    float* hr = ph + r * inter;
    for (int64_t j = 0; j < inter; ++j) hr[j] = s * a(gate[j], up[j]);
  }
}

// An activation's value and its partial derivatives at (gate, up).
struct GatedDerivatives {
  float a, d_gate, d_up;
};

// The backward of gated_fwd, dh the gradient of s * a:  d scale = dh . a,  d gate = s dh da/dgate,
// d up = s dh da/dup, with `derivatives(gate, up)` giving a and its partials.
template <class Derivatives>
void gated_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale, SwigluGrads& grads,
               Derivatives derivatives) {
  const int64_t rows = dh.size(0), inter = dh.size(1);
  const float* pdh = dh.data<float>();
  const float* pgu = gate_up.data<float>();
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  float* pd = grads.d_gate_up.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = pgu + r * 2 * inter;
    const float* up = gate + inter;
    const float* g = pdh + r * inter;
    const float s = scale != nullptr ? scale[r] : 1.0f;
    float* d_gate = pd + r * 2 * inter;
    float* d_up = d_gate + inter;
    double d_scale = 0;
    for (int64_t j = 0; j < inter; ++j) {
      const GatedDerivatives q = derivatives(gate[j], up[j]);
      d_scale += static_cast<double>(g[j]) * q.a;
      d_gate[j] = s * g[j] * q.d_gate;
      d_up[j] = s * g[j] * q.d_up;
    }
    if (scale != nullptr) grads.d_row_scale.data<float>()[r] = static_cast<float>(d_scale);
  }
}

}  // namespace

// a = silu(gate) * up with silu(g) = g * sigmoid(g).
void swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale, Tensor& h) {
  gated_fwd(gate_up, row_scale, h, [](float g, float u) { return g * sigmoid(g) * u; });
}

// da/dgate = up * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  da/dup = silu(g).
void swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale, SwigluGrads& grads) {
  gated_bwd(dh, gate_up, row_scale, grads, [](float g, float u) {
    const float sg = sigmoid(g), silu = g * sg;
    return GatedDerivatives{silu * u, u * sg * (1.0f + g * (1.0f - sg)), silu};
  });
}

// a = (u + 1) * g * sigmoid(alpha g) with g = min(gate, limit), u = clamp(up, -limit, limit).
void clamped_swiglu_fwd(const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale, Tensor& h) {
  gated_fwd(gate_up, row_scale, h, [&c](float gate, float up) {
    const float g = std::min(gate, c.limit), u = std::clamp(up, -c.limit, c.limit);
    return (u + 1.0f) * (g * sigmoid(c.alpha * g));
  });
}

// With glu = g sigmoid(alpha g): da/dgate = (u + 1) sigmoid(alpha g) (1 + alpha g (1 - sigmoid(alpha g)))
// where gate <= limit, da/dup = glu where -limit <= up <= limit; zero where clamped.
void clamped_swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale,
                        SwigluGrads& grads) {
  gated_bwd(dh, gate_up, row_scale, grads, [&c](float gate, float up) {
    const float g = std::min(gate, c.limit), u = std::clamp(up, -c.limit, c.limit);
    const float sg = sigmoid(c.alpha * g), glu = g * sg;
    return GatedDerivatives{(u + 1.0f) * glu,
                            gate <= c.limit ? (u + 1.0f) * sg * (1.0f + c.alpha * g * (1.0f - sg)) : 0.0f,
                            up >= -c.limit && up <= c.limit ? glu : 0.0f};
  });
}

// h = s relu(x)^2; dx = s dh 2 relu(x), d scale = dh . relu(x)^2.
void relu2_fwd(const Tensor& x, const Tensor& row_scale, Tensor& h) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const float s = scale != nullptr ? scale[r] : 1.0f;
    for (int64_t j = 0; j < cols; ++j) {
      const float v = std::max(x.data<float>()[r * cols + j], 0.0f);
      h.data<float>()[r * cols + j] = s * (v * v);
    }
  }
}

void relu2_bwd(const Tensor& dh, const Tensor& x, const Tensor& row_scale, SwigluGrads& grads) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const float s = scale != nullptr ? scale[r] : 1.0f;
    double d_scale = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const float v = std::max(x.data<float>()[r * cols + j], 0.0f), g = dh.data<float>()[r * cols + j];
      d_scale += static_cast<double>(g) * v * v;
      grads.d_gate_up.data<float>()[r * cols + j] = s * g * 2.0f * v;
    }
    if (scale != nullptr) grads.d_row_scale.data<float>()[r] = static_cast<float>(d_scale);
  }
}

void softmax_fwd(const Tensor& logits, Tensor& probs) {
  const int64_t rows = logits.size(0), cols = logits.size(1);
  const float* px = logits.data<float>();
  float* pp = probs.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = px + r * cols;
    float* p = pp + r * cols;
    const float max = cols > 0 ? *std::max_element(x, x + cols) : 0.0f;
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) {
      p[j] = std::exp(x[j] - max);
      sum += p[j];
    }
    const double inv = 1.0 / sum;
    for (int64_t j = 0; j < cols; ++j) p[j] = static_cast<float>(p[j] * inv);
  }
}

// dx = p * (dp - sum(dp * p)).
void softmax_bwd(const Tensor& dprobs, const Tensor& probs, Tensor& dlogits) {
  const int64_t rows = probs.size(0), cols = probs.size(1);
  const float* pdp = dprobs.data<float>();
  const float* pp = probs.data<float>();
  float* pdx = dlogits.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* dp = pdp + r * cols;
    const float* p = pp + r * cols;
    double dot = 0;
    for (int64_t j = 0; j < cols; ++j) dot += static_cast<double>(dp[j]) * p[j];
    float* dx = pdx + r * cols;
    for (int64_t j = 0; j < cols; ++j) dx[j] = static_cast<float>(p[j] * (dp[j] - dot));
  }
}

// y = 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) for x < 0: exp never overflows.
void sigmoid_fwd(const Tensor& x, Tensor& y) {
  const float* px = x.data<float>();
  float* py = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = px[i];
    if (v >= 0.0f) {
      py[i] = 1.0f / (1.0f + std::exp(-v));
    } else {
      const float e = std::exp(v);
      py[i] = e / (1.0f + e);
    }
  }
}

// dx = dy * y * (1 - y).
void sigmoid_bwd(const Tensor& dy, const Tensor& y, Tensor& dx) {
  const float* pdy = dy.data<float>();
  const float* py = y.data<float>();
  float* pdx = dx.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) pdx[i] = pdy[i] * py[i] * (1.0f - py[i]);
}

void dropout(const Tensor& x, float p, uint64_t seed, Tensor& y) {
  const uint32_t threshold = dropout_threshold(p);
  const float scale = 1.0f / (1.0f - p);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    py[i] = dropout_keeps(seed, static_cast<uint64_t>(i), threshold) ? px[i] * scale : 0.0f;
}

void init_normal(Tensor& x, uint64_t seed, uint64_t stream, float std_dev) {
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = normal_at(seed, stream, static_cast<uint64_t>(i), std_dev);
}

}  // namespace moeforge::ops::cpu
