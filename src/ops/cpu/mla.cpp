// Multi-head latent attention's head assembly on the CPU (ops/mla.h).
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {
namespace {

// Copies `rows` rows of `width` floats between row-major buffers of different row lengths.
void copy_block(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, static_cast<size_t>(width) * sizeof(float));
}

// The rotation of one token: cos and sin of each frequency's angle (position * inv_freq, rounded to
// fp32 as Transformers does), times the attention scaling.
class TokenRotation {
 public:
  explicit TokenRotation(const MlaRope& rope) : rope_(rope), half_(rope.inv_freq.size(0)), cos_(half_), sin_(half_) {}
  void at(int64_t token) {
    const float pos = static_cast<float>(rope_.positions.data<int64_t>()[token]);
    const float* inv_freq = rope_.inv_freq.data<float>();
    for (int64_t i = 0; i < half_; ++i) {
      const double angle = static_cast<double>(pos * inv_freq[i]);
      cos_[i] = static_cast<float>(std::cos(angle)) * rope_.attention_scaling;
      sin_[i] = static_cast<float>(std::sin(angle)) * rope_.attention_scaling;
    }
  }
  // The input columns of pair i: (2i, 2i+1) interleaved, else (i, i + Dr/2).
  int64_t lo(int64_t i) const { return rope_.interleaved ? 2 * i : i; }
  int64_t hi(int64_t i) const { return rope_.interleaved ? 2 * i + 1 : i + half_; }
  // y[i], y[i + Dr/2] = the pair rotated: (lo cos - hi sin, hi cos + lo sin).
  void rotate(const float* x, float* y) const {
    for (int64_t i = 0; i < half_; ++i) {
      const float l = x[lo(i)], h = x[hi(i)];
      y[i] = l * cos_[i] - h * sin_[i];
      y[i + half_] = h * cos_[i] + l * sin_[i];
    }
  }
  // The transpose: dx[lo], dx[hi] from dy[i], dy[i + Dr/2]; adds into dx when `accumulate`.
  void rotate_back(const float* dy, float* dx, bool accumulate) const {
    for (int64_t i = 0; i < half_; ++i) {
      const float a = dy[i], b = dy[i + half_];
      const float dl = a * cos_[i] + b * sin_[i], dh = b * cos_[i] - a * sin_[i];
      dx[lo(i)] = accumulate ? dx[lo(i)] + dl : dl;
      dx[hi(i)] = accumulate ? dx[hi(i)] + dh : dh;
    }
  }

 private:
  const MlaRope& rope_;
  int64_t half_;
  std::vector<float> cos_, sin_;
};

}  // namespace

void split_columns(const Tensor& x, std::vector<Tensor>& parts) {
  const int64_t rows = x.size(0), columns = x.size(1);
  int64_t first = 0;
  for (Tensor& part : parts) {
    const int64_t width = part.size(1);
    copy_block(x.data<float>() + first, columns, part.data<float>(), width, rows, width);
    first += width;
  }
}

void concat_columns(const std::vector<Tensor>& parts, Tensor& out) {
  const int64_t rows = out.size(0), columns = out.size(1);
  int64_t first = 0;
  for (const Tensor& part : parts) {
    const int64_t width = part.size(1);
    copy_block(part.data<float>(), width, out.data<float>() + first, columns, rows, width);
    first += width;
  }
}

void mla_heads_fwd(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const MlaRope& rope, MlaHeads& out) {
  const int64_t n = q.size(0), heads = q.size(1), qk = q.size(2), rotated = k_pe.size(1);
  const int64_t nope = qk - rotated, kv_width = kv.size(2), v_width = kv_width - nope;
  TokenRotation rotation(rope);
  std::vector<float> k_rot(static_cast<size_t>(rotated));
  for (int64_t t = 0; t < n; ++t) {
    rotation.at(t);
    rotation.rotate(k_pe.data<float>() + t * rotated, k_rot.data());
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q.data<float>() + (t * heads + h) * qk;
      const float* kvh = kv.data<float>() + (t * heads + h) * kv_width;
      float* q_out = out.q.data<float>() + (t * heads + h) * qk;
      float* k_out = out.k.data<float>() + (t * heads + h) * qk;
      std::memcpy(q_out, qh, static_cast<size_t>(nope) * sizeof(float));
      rotation.rotate(qh + nope, q_out + nope);
      std::memcpy(k_out, kvh, static_cast<size_t>(nope) * sizeof(float));
      std::memcpy(k_out + nope, k_rot.data(), static_cast<size_t>(rotated) * sizeof(float));
      std::memcpy(out.v.data<float>() + (t * heads + h) * v_width, kvh + nope, static_cast<size_t>(v_width) * sizeof(float));
    }
  }
}

void mla_heads_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const MlaRope& rope, MlaHeadsGrads& grads) {
  const int64_t n = dq.size(0), heads = dq.size(1), qk = dq.size(2), rotated = grads.dk_pe.size(1);
  const int64_t nope = qk - rotated, v_width = dv.size(2), kv_width = nope + v_width;
  TokenRotation rotation(rope);
  // The shared key part's gradient: the heads' shares summed (in double) before the rotation back.
  std::vector<double> sum(static_cast<size_t>(rotated));
  std::vector<float> dk_rot(static_cast<size_t>(rotated));
  for (int64_t t = 0; t < n; ++t) {
    rotation.at(t);
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t h = 0; h < heads; ++h) {
      const float* dqh = dq.data<float>() + (t * heads + h) * qk;
      const float* dkh = dk.data<float>() + (t * heads + h) * qk;
      float* dq_in = grads.dq.data<float>() + (t * heads + h) * qk;
      float* dkv = grads.dkv.data<float>() + (t * heads + h) * kv_width;
      std::memcpy(dq_in, dqh, static_cast<size_t>(nope) * sizeof(float));
      rotation.rotate_back(dqh + nope, dq_in + nope, /*accumulate=*/false);
      std::memcpy(dkv, dkh, static_cast<size_t>(nope) * sizeof(float));
      std::memcpy(dkv + nope, dv.data<float>() + (t * heads + h) * v_width, static_cast<size_t>(v_width) * sizeof(float));
      for (int64_t j = 0; j < rotated; ++j) sum[j] += dkh[nope + j];
    }
    for (int64_t j = 0; j < rotated; ++j) dk_rot[j] = static_cast<float>(sum[j]);
    rotation.rotate_back(dk_rot.data(), grads.dk_pe.data<float>() + t * rotated, /*accumulate=*/false);
  }
}

}  // namespace moeforge::ops::cpu
