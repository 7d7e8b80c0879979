// The Mamba-2 mixer's ops on the CPU (mamba.h): direct loops over time, sums in double.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {
namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Sequence b of the mask: which rows are padding and where each row's document begins.
class SequenceRows {
 public:
  SequenceRows(const AttentionMask& mask, int64_t b, int64_t seq) : valid_(seq, 1.0f), first_(seq, 0) {
    if (mask.key_valid.defined()) valid_ = mask.key_valid.select(0, b).to_float_vector();
    const int32_t* seg = mask.segment.defined() ? mask.segment.data<int32_t>() + b * seq : nullptr;
    for (int64_t t = 1; t < seq; ++t) first_[t] = seg != nullptr && seg[t] != seg[t - 1] ? t : first_[t - 1];
  }
  bool valid(int64_t t) const { return valid_[t] != 0.0f; }
  // The first row of t's document.
  int64_t first(int64_t t) const { return first_[t]; }

 private:
  std::vector<float> valid_;
  std::vector<int64_t> first_;
};

// Transformers' F.softplus (threshold 20: the identity above it) and its derivative.
double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }
double softplus_grad(double v) { return v > 20.0 ? 1.0 : sigmoid(v); }

// The convolution of sequence b's channel c at row t, before the SiLU: the rows it reads are those
// of t's document that are not padding.
struct Conv {
  const float *x, *w, *bias;  // bias null: none
  int64_t T, C, K;
  // Row s of the window ending at t (j = 0 .. K-1 oldest first), or -1 where it reads zero.
  int64_t source(const SequenceRows& rows, int64_t t, int64_t j) const {
    const int64_t s = t - K + 1 + j;
    return s >= rows.first(t) && rows.valid(s) ? s : -1;
  }
  double pre(const SequenceRows& rows, int64_t b, int64_t t, int64_t c) const {
    double v = bias != nullptr ? bias[c] : 0.0;
    for (int64_t j = 0; j < K; ++j)
      if (const int64_t s = source(rows, t, j); s >= 0) v += static_cast<double>(w[c * K + j]) * x[(b * T + s) * C + c];
    return v;
  }
};

Conv conv_of(const Tensor& x, const Tensor& w, const Tensor& bias) {
  return Conv{x.data<float>(), w.data<float>(), bias.defined() ? bias.data<float>() : nullptr, x.size(1), x.size(2),
              w.size(1)};
}

}  // namespace

void causal_conv1d_silu_fwd(const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask,
                            Tensor& y) {
  const Conv conv = conv_of(x, w, bias);
  const int64_t T = conv.T, C = conv.C;
  float* py = y.data<float>();
  for (int64_t b = 0; b < x.size(0); ++b) {
    const SequenceRows rows(mask, b, T);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        const double pre = conv.pre(rows, b, t, c);
        py[(b * T + t) * C + c] = rows.valid(t) ? static_cast<float>(pre * sigmoid(pre)) : 0.0f;
      }
  }
}

// silu'(v) = sigmoid(v) (1 + v (1 - sigmoid(v))).
void causal_conv1d_silu_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                            const AttentionMask& mask, Tensor& dx, Tensor& grad_w, Tensor& grad_bias) {
  const Conv conv = conv_of(x, w, bias);
  const int64_t T = conv.T, C = conv.C, K = conv.K;
  const float* pdy = dy.data<float>();
  std::vector<double> dxs(static_cast<size_t>(x.numel()), 0.0), gw(static_cast<size_t>(w.numel()), 0.0), gb(C, 0.0);
  for (int64_t b = 0; b < x.size(0); ++b) {
    const SequenceRows rows(mask, b, T);
    for (int64_t t = 0; t < T; ++t) {
      if (!rows.valid(t)) continue;
      for (int64_t c = 0; c < C; ++c) {
        const double pre = conv.pre(rows, b, t, c), sg = sigmoid(pre);
        const double dpre = pdy[(b * T + t) * C + c] * sg * (1.0 + pre * (1.0 - sg));
        gb[c] += dpre;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = conv.source(rows, t, j);
          if (s < 0) continue;
          gw[c * K + j] += dpre * conv.x[(b * T + s) * C + c];
          dxs[(b * T + s) * C + c] += dpre * conv.w[c * K + j];
        }
      }
    }
  }
  float* pdx = dx.data<float>();
  for (size_t i = 0; i < dxs.size(); ++i) pdx[i] = static_cast<float>(dxs[i]);
  float* pgw = grad_w.data<float>();
  for (size_t i = 0; i < gw.size(); ++i) pgw[i] += static_cast<float>(gw[i]);
  if (conv.bias != nullptr) {
    float* pgb = grad_bias.data<float>();
    for (int64_t c = 0; c < C; ++c) pgb[c] += static_cast<float>(gb[c]);
  }
}

namespace {

// One head of one sequence: where its x, B and C columns are, its time steps and decay.
struct HeadScan {
  int64_t conv_dim, x_col, b_col, c_col;  // row width and the first column of x, B and C
  double A, d;                            // -exp(a_log[h]) and the skip weight
  std::vector<double> dt, decay;          // per row: the clamped time step and exp(A dt)
  std::vector<bool> clamped;              // dt below dt_min: its gradient stops

  HeadScan(const SsdShape& shape, int64_t h, const float* dt_raw, const SequenceRows& rows, int64_t T,
           const Tensor& dt_bias, const Tensor& a_log, const Tensor& dskip)
      : conv_dim(shape.heads * shape.head_dim + 2 * shape.groups * shape.state),
        x_col(h * shape.head_dim),
        b_col(shape.heads * shape.head_dim + h / (shape.heads / shape.groups) * shape.state),
        c_col(b_col + shape.groups * shape.state),
        A(-std::exp(static_cast<double>(a_log.data<float>()[h]))),
        d(dskip.data<float>()[h]),
        dt(T),
        decay(T),
        clamped(T) {
    const float bias = dt_bias.data<float>()[h];
    for (int64_t t = 0; t < T; ++t) {
      // In float as Transformers: the sum, softplus and clamp; the decay in double.
      const float raw = rows.valid(t) ? dt_raw[t * shape.heads + h] : 0.0f;
      const float sp = static_cast<float>(softplus(raw + bias));
      clamped[t] = sp < shape.dt_min;
      dt[t] = clamped[t] ? shape.dt_min : sp;
      decay[t] = std::exp(A * dt[t]);
    }
  }
};

}  // namespace

void ssd_scan_fwd(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                  const SsdShape& s, const AttentionMask& mask, Tensor& y) {
  const int64_t B = xbc.size(0), T = xbc.size(1), P = s.head_dim, S = s.state, width = s.heads * P;
  std::vector<double> state(static_cast<size_t>(P * S));
  for (int64_t b = 0; b < B; ++b) {
    const SequenceRows rows(mask, b, T);
    for (int64_t h = 0; h < s.heads; ++h) {
      const HeadScan head(s, h, dt.data<float>() + b * T * s.heads, rows, T, dt_bias, a_log, d);
      for (int64_t t = 0; t < T; ++t) {
        const float* r = xbc.data<float>() + (b * T + t) * head.conv_dim;
        const float *x = r + head.x_col, *Bt = r + head.b_col, *Ct = r + head.c_col;
        const double a = rows.first(t) == t ? 0.0 : head.decay[t];
        float* yr = y.data<float>() + (b * T + t) * width + head.x_col;
        for (int64_t p = 0; p < P; ++p) {
          double* hp = state.data() + p * S;
          const double input = head.dt[t] * x[p];
          double out = head.d * x[p];
          for (int64_t n = 0; n < S; ++n) {
            hp[n] = a * hp[n] + input * Bt[n];
            out += hp[n] * Ct[n];
          }
          yr[p] = static_cast<float>(out);
        }
      }
    }
  }
}

// Backward through time with g_t = dL/dh_t: g_t = dy_t C_t^T + exp(A dt_{t+1}) g_{t+1} (none across a
// document's start); the states h_t are rebuilt by a forward pass first.
void ssd_scan_bwd(const Tensor& dy, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log,
                  const Tensor& d, const SsdShape& s, const AttentionMask& mask, SsdScanGrads& grads,
                  Tensor& grad_dt_bias, Tensor& grad_a_log, Tensor& grad_d) {
  const int64_t B = xbc.size(0), T = xbc.size(1), P = s.head_dim, S = s.state, width = s.heads * P;
  std::vector<double> d_xbc(static_cast<size_t>(xbc.numel()), 0.0);
  std::vector<double> states(static_cast<size_t>(T * P * S)), g(static_cast<size_t>(P * S));
  // The per-head parameters' gradients, summed over every row before one rounding.
  std::vector<double> g_bias(s.heads, 0.0), g_a_log(s.heads, 0.0), g_d(s.heads, 0.0);
  float* d_dt = grads.d_dt.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    const SequenceRows rows(mask, b, T);
    for (int64_t h = 0; h < s.heads; ++h) {
      const HeadScan head(s, h, dt.data<float>() + b * T * s.heads, rows, T, dt_bias, a_log, d);
      auto row = [&](int64_t t) { return xbc.data<float>() + (b * T + t) * head.conv_dim; };
      for (int64_t t = 0; t < T; ++t) {
        const float* r = row(t);
        const double a = rows.first(t) == t ? 0.0 : head.decay[t];
        double* ht = states.data() + t * P * S;
        const double* prev = t > 0 ? ht - P * S : nullptr;
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < S; ++n)
            ht[p * S + n] = (a != 0.0 ? a * prev[p * S + n] : 0.0) + head.dt[t] * r[head.x_col + p] * r[head.b_col + n];
      }
      std::fill(g.begin(), g.end(), 0.0);
      double dA = 0, dD = 0, d_bias = 0;
      for (int64_t t = T - 1; t >= 0; --t) {
        const float* r = row(t);
        const float *x = r + head.x_col, *Bt = r + head.b_col, *Ct = r + head.c_col;
        const float* dyr = dy.data<float>() + (b * T + t) * width + head.x_col;
        double* dr = d_xbc.data() + (b * T + t) * head.conv_dim;
        const double* ht = states.data() + t * P * S;
        const bool starts = rows.first(t) == t;
        double d_dt_t = 0, d_decay = 0;
        for (int64_t p = 0; p < P; ++p) {
          double* gp = g.data() + p * S;
          double dx = head.d * dyr[p];
          dD += static_cast<double>(dyr[p]) * x[p];
          for (int64_t n = 0; n < S; ++n) {
            gp[n] += static_cast<double>(dyr[p]) * Ct[n];
            dr[head.c_col + n] += static_cast<double>(dyr[p]) * ht[p * S + n];
            dx += head.dt[t] * gp[n] * Bt[n];
            dr[head.b_col + n] += head.dt[t] * gp[n] * x[p];
            d_dt_t += gp[n] * x[p] * Bt[n];
            if (!starts) d_decay += gp[n] * ht[p * S + n - P * S];
          }
          dr[head.x_col + p] += dx;
        }
        // decay = exp(A dt): its share of d dt and of dA.
        const double d_exponent = d_decay * head.decay[t];
        if (!starts) {
          d_dt_t += d_exponent * head.A;
          dA += d_exponent * head.dt[t];
        }
        const float raw = rows.valid(t) ? dt.data<float>()[(b * T + t) * s.heads + h] : 0.0f;
        const double d_raw = head.clamped[t] ? 0.0 : d_dt_t * softplus_grad(raw + dt_bias.data<float>()[h]);
        d_dt[(b * T + t) * s.heads + h] = rows.valid(t) ? static_cast<float>(d_raw) : 0.0f;
        d_bias += d_raw;
        const double carry = starts ? 0.0 : head.decay[t];
        for (double& v : g) v *= carry;
      }
      g_bias[h] += d_bias;
      g_a_log[h] += dA * head.A;  // dA/da_log = A
      g_d[h] += dD;
    }
  }
  for (int64_t h = 0; h < s.heads; ++h) {
    grad_dt_bias.data<float>()[h] += static_cast<float>(g_bias[h]);
    grad_a_log.data<float>()[h] += static_cast<float>(g_a_log[h]);
    grad_d.data<float>()[h] += static_cast<float>(g_d[h]);
  }
  float* out = grads.d_xbc.data<float>();
  for (size_t i = 0; i < d_xbc.size(); ++i) out[i] = static_cast<float>(d_xbc[i]);
}

void gated_rms_norm_fwd(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size, float eps,
                        Tensor& out, Tensor& rstd) {
  const int64_t R = y.size(0), D = y.size(1), G = D / group_size;
  std::vector<double> gated(static_cast<size_t>(group_size));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < G; ++k) {
      const int64_t base = r * D + k * group_size;
      double sum = 0;
      for (int64_t j = 0; j < group_size; ++j) {
        const double zj = z.data<float>()[base + j];
        // g in float, as Transformers' fp32 product.
        gated[j] = static_cast<float>(y.data<float>()[base + j] * static_cast<float>(zj * sigmoid(zj)));
        sum += gated[j] * gated[j];
      }
      const float rs = static_cast<float>(1.0 / std::sqrt(sum / group_size + eps));
      rstd.data<float>()[r * G + k] = rs;
      for (int64_t j = 0; j < group_size; ++j)
        out.data<float>()[base + j] = w.data<float>()[k * group_size + j] * static_cast<float>(gated[j] * rs);
    }
}

// With n = g * rstd and dn = dout * w: dg = rstd (dn - n mean(dn n)) per group; dy = dg silu(z),
// dz = dg y silu'(z).
void gated_rms_norm_bwd(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size,
                        const Tensor& rstd, GatedRmsNormGrads& grads, Tensor& grad_w) {
  const int64_t R = y.size(0), D = y.size(1), G = D / group_size;
  std::vector<double> gw(static_cast<size_t>(D), 0.0), normed(static_cast<size_t>(group_size));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < G; ++k) {
      const int64_t base = r * D + k * group_size;
      const double rs = rstd.data<float>()[r * G + k];
      double dot = 0;
      for (int64_t j = 0; j < group_size; ++j) {
        const double zj = z.data<float>()[base + j];
        normed[j] = y.data<float>()[base + j] * zj * sigmoid(zj) * rs;
        const double dn = static_cast<double>(dout.data<float>()[base + j]) * w.data<float>()[k * group_size + j];
        gw[k * group_size + j] += static_cast<double>(dout.data<float>()[base + j]) * normed[j];
        dot += dn * normed[j];
      }
      const double mean = dot / group_size;
      for (int64_t j = 0; j < group_size; ++j) {
        const double zj = z.data<float>()[base + j], sg = sigmoid(zj);
        const double dn = static_cast<double>(dout.data<float>()[base + j]) * w.data<float>()[k * group_size + j];
        const double dg = rs * (dn - normed[j] * mean);
        grads.dy.data<float>()[base + j] = static_cast<float>(dg * zj * sg);
        grads.dz.data<float>()[base + j] = static_cast<float>(dg * y.data<float>()[base + j] * sg * (1.0 + zj * (1.0 - sg)));
      }
    }
  float* pgw = grad_w.data<float>();
  for (int64_t i = 0; i < D; ++i) pgw[i] += static_cast<float>(gw[i]);
}

}  // namespace moeforge::ops::cpu
