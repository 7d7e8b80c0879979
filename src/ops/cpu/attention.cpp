// Causal grouped-query attention on the CPU (the value head size may differ from the query/key one):
// for each (sequence, query head) the full score matrix
// S = scale * Q K^T is formed with one sgemm, masked and softmaxed row by row (sums in double), and
// multiplied into V. The backward recomputes P = exp(S - lse) from the saved log-sum-exp. A head's
// sink logit is one more term of each row's softmax, with no value.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {
namespace {

// The mask rules of ops.h for one sequence: query t may attend key s iff s <= t, key s is valid,
// both lie in the same segment, with a window s > t - window, and query t is valid where padded
// queries attend nothing.
class SequenceMask {
 public:
  SequenceMask(const AttentionMask& mask, int64_t b, int64_t seq, int64_t window)
      : valid_(seq, 1), segment_(seq, 0), window_(window), padded_queries_attend_(mask.padded_queries_attend) {
    if (mask.key_valid.defined()) {
      const std::vector<float> row = mask.key_valid.select(0, b).to_float_vector();
      for (int64_t s = 0; s < seq; ++s) valid_[s] = row[s] != 0.0f;
    }
    if (mask.segment.defined()) {
      const int32_t* seg = mask.segment.data<int32_t>() + b * seq;
      segment_.assign(seg, seg + seq);
    }
  }
  bool allowed(int64_t t, int64_t s) const {
    return s <= t && valid_[s] && segment_[s] == segment_[t] && (window_ == 0 || t - s < window_) &&
           (padded_queries_attend_ || valid_[t]);
  }

 private:
  std::vector<uint8_t> valid_;
  std::vector<int32_t> segment_;
  int64_t window_;
  bool padded_queries_attend_;
};

// Head h's sink logit, or -inf (no sink: exp(-inf) adds nothing).
float sink_of(const Tensor& sinks, int64_t h) {
  return sinks.defined() ? sinks.data<float>()[h] : -std::numeric_limits<float>::infinity();
}

// Strided views of one head inside a [B, T, H, D] tensor: row t of head h of sequence b.
struct HeadView {
  int64_t seq_stride, row_stride, head_dim;
  float* head(const Tensor& t, int64_t b, int64_t h) const {
    return t.data<float>() + b * seq_stride + h * head_dim;
  }
};

HeadView head_view(const Tensor& t) {
  return {t.size(1) * t.size(2) * t.size(3), t.size(2) * t.size(3), t.size(3)};
}

// scores[T, T] = scale * Q_h K_g^T.
void head_scores(const float* qh, const HeadView& qv, const float* kg, const HeadView& kv,
                 int64_t seq, float scale, float* scores) {
  sgemm(false, true, seq, seq, qv.head_dim, scale, qh, qv.row_stride, kg, kv.row_stride, 0.0f,
        scores, seq);
}

}  // namespace

void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                   float scale, const Tensor& sinks, int64_t window, Tensor& out, Tensor& lse) {
  const int64_t batch = q.size(0), seq = q.size(1), hq = q.size(2), hkv = k.size(2), dv = v.size(3);
  const int64_t group = hq / hkv;
  if (batch * seq * hq == 0) return;  // head_dim >= 1 is checked in ops.cpp
  const HeadView qv = head_view(q), kv = head_view(k), vv = head_view(v), ov = head_view(out);
  std::vector<float> probs(static_cast<size_t>(seq * seq));
  float* pl = lse.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const SequenceMask allow(mask, b, seq, window);
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / group;
      const float sink = sink_of(sinks, h);
      head_scores(qv.head(q, b, h), qv, kv.head(k, b, g), kv, seq, scale, probs.data());
      for (int64_t t = 0; t < seq; ++t) {
        float* row = probs.data() + t * seq;
        float max = sink;
        bool any_allowed = false, nan_score = false;
        for (int64_t s = 0; s <= t; ++s) {
          if (!allow.allowed(t, s)) continue;
          any_allowed = true;
          nan_score |= std::isnan(row[s]);
          if (row[s] > max) max = row[s];
        }
        float& row_lse = pl[(b * hq + h) * seq + t];
        if (!any_allowed) {  // a fully masked query (padding): output zeros (the sink takes it all)
          std::fill(row, row + seq, 0.0f);
          row_lse = sink;
          continue;
        }
        // As PyTorch's softmax: a NaN score, or only -inf ones, make the whole row NaN rather than hide it.
        if (nan_score || max == -std::numeric_limits<float>::infinity()) max = std::numeric_limits<float>::quiet_NaN();
        double sum = std::exp(static_cast<double>(sink) - max);
        for (int64_t s = 0; s < seq; ++s) {
          row[s] = allow.allowed(t, s) ? std::exp(row[s] - max) : 0.0f;
          sum += row[s];
        }
        const double inv = 1.0 / sum;
        for (int64_t s = 0; s <= t; ++s) row[s] = static_cast<float>(row[s] * inv);
        row_lse = static_cast<float>(max + std::log(sum));
      }
      sgemm(false, false, seq, dv, seq, 1.0f, probs.data(), seq, vv.head(v, b, g), vv.row_stride,
            0.0f, ov.head(out, b, h), ov.row_stride);
    }
  }
}

// With P the attention probabilities and O = P V:
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = scale dS K,  dK = scale dS^T Q.
// Query heads of one group accumulate into the shared dK and dV. The sink's column has no value, so
// its dP is 0 and d sink = -sum over rows of p_sink * rowsum(dO * O), p_sink = exp(sink - lse).
void attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& out, const Tensor& lse, const AttentionMask& mask, float scale,
                   const Tensor& sinks, int64_t window, AttentionGrads& grads) {
  const int64_t batch = q.size(0), seq = q.size(1), hq = q.size(2), d = q.size(3), hkv = k.size(2);
  const int64_t dv = v.size(3), group = hq / hkv;
  grads.dq.fill_zero();  // covers empty shapes; every dq row is overwritten otherwise
  grads.dk.fill_zero();
  grads.dv.fill_zero();
  if (sinks.defined()) grads.dsinks.fill_zero();
  if (batch * seq * hq * d == 0) return;
  std::vector<double> dsinks(static_cast<size_t>(hq), 0.0);
  const HeadView qv = head_view(q), kv = head_view(k), vv = head_view(v), ov = head_view(out);
  std::vector<float> probs(static_cast<size_t>(seq * seq)), dscores(static_cast<size_t>(seq * seq));
  std::vector<double> row_dot(static_cast<size_t>(seq));
  const float* pl = lse.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const SequenceMask allow(mask, b, seq, window);
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / group;
      const float sink = sink_of(sinks, h);
      const float* qh = qv.head(q, b, h);
      const float* kg = kv.head(k, b, g);
      const float* vg = vv.head(v, b, g);
      const float* doh = ov.head(dout, b, h);
      const float* oh = ov.head(out, b, h);
      head_scores(qh, qv, kg, kv, seq, scale, probs.data());
      for (int64_t t = 0; t < seq; ++t) {
        float* row = probs.data() + t * seq;
        const float row_lse = pl[(b * hq + h) * seq + t];
        for (int64_t s = 0; s < seq; ++s)
          row[s] = allow.allowed(t, s) ? std::exp(row[s] - row_lse) : 0.0f;
        double dot = 0;
        for (int64_t j = 0; j < dv; ++j)
          dot += static_cast<double>(doh[t * ov.row_stride + j]) * oh[t * ov.row_stride + j];
        row_dot[t] = dot;
        if (sinks.defined()) dsinks[h] -= std::exp(static_cast<double>(sink) - row_lse) * dot;
      }
      // dV_g += P^T dO_h
      sgemm(true, false, seq, dv, seq, 1.0f, probs.data(), seq, doh, ov.row_stride, 1.0f,
            vv.head(grads.dv, b, g), vv.row_stride);
      // dP = dO_h V_g^T, then dS in place.
      sgemm(false, true, seq, seq, dv, 1.0f, doh, ov.row_stride, vg, vv.row_stride, 0.0f,
            dscores.data(), seq);
      for (int64_t t = 0; t < seq; ++t) {
        float* ds = dscores.data() + t * seq;
        const float* p = probs.data() + t * seq;
        for (int64_t s = 0; s < seq; ++s)
          ds[s] = static_cast<float>(p[s] * (ds[s] - row_dot[t]));
      }
      // dQ_h = scale dS K_g;  dK_g += scale dS^T Q_h
      sgemm(false, false, seq, d, seq, scale, dscores.data(), seq, kg, kv.row_stride, 0.0f,
            qv.head(grads.dq, b, h), qv.row_stride);
      sgemm(true, false, seq, d, seq, scale, dscores.data(), seq, qh, qv.row_stride, 1.0f,
            kv.head(grads.dk, b, g), kv.row_stride);
    }
  }
  for (int64_t h = 0; h < hq && sinks.defined(); ++h) grads.dsinks.data<float>()[h] = static_cast<float>(dsinks[h]);
}

}  // namespace moeforge::ops::cpu
