// The float32 CPU reference implementations behind ops.h. Internal to src/ops: ops.cpp checks
// devices, dtypes, shapes and contiguity before calling in here, so these functions assume
// contiguous float32 CPU tensors of fitting shapes and only check values that need reading the
// data (ids, targets, expert indices, offsets). Each follows the math of Hugging Face Transformers
// in float32; sums over long dimensions are accumulated in double.
#pragma once

#include <cstdint>

#include "ops/ops.h"

namespace moeforge::ops::cpu {

// dense.cpp
// Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C on raw pointers with leading dimensions,
// through cblas_sgemm. Handles empty sizes; beta = 0 ignores C's previous contents (even NaN).
void sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);
void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta);
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
void linear_bias_bwd(const Tensor& dy, Tensor& grad_bias);
void add_inplace(Tensor& a, const Tensor& b);
void scale_inplace(Tensor& a, float s);

// embedding.cpp
void embedding_fwd(const Tensor& weight, const Tensor& ids, Tensor& out);
void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx);

// norm.cpp
void rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& y,
                      Tensor& rstd);
// dx_residual: undefined, or added into dx.
void rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                  const Tensor& dx_residual, Tensor& dx, Tensor& grad_w);

// rope.cpp. sin_sign = +1 applies the rotation (forward), -1 its transpose (backward).
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling, float sin_sign, Tensor& y);
// Per-head RMSNorm then rotation (ops::qk_norm_rope_fwd/bwd); x, dy [N, heads, D], rstd [N*heads].
void qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                      const Tensor& inv_freq, float attention_scaling, Tensor& y, Tensor& rstd);
void qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                      Tensor& dx, Tensor& grad_w);

// attention.cpp. sinks: [Hq] or undefined; window: 0 for none.
void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                   float scale, const Tensor& sinks, int64_t window, Tensor& out, Tensor& lse);
void attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& out, const Tensor& lse, const AttentionMask& mask, float scale,
                   const Tensor& sinks, int64_t window, AttentionGrads& grads);
// Without sinks and window (the signature CUDA's shares).
inline void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                          float scale, Tensor& out, Tensor& lse) {
  attention_fwd(q, k, v, mask, scale, Tensor(), 0, out, lse);
}
inline void attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const AttentionMask& mask, float scale,
                          AttentionGrads& grads) {
  attention_bwd(dout, q, k, v, out, lse, mask, scale, Tensor(), 0, grads);
}

// mla.cpp
void split_columns(const Tensor& x, std::vector<Tensor>& parts);
void concat_columns(const std::vector<Tensor>& parts, Tensor& out);
void mla_heads_fwd(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const MlaRope& rope, MlaHeads& out);
void mla_heads_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const MlaRope& rope, MlaHeadsGrads& grads);

// activation.cpp
// row_scale, d_row_scale: fp32, or undefined for no scaling.
void swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale, Tensor& h);
void swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale, SwigluGrads& grads);
void clamped_swiglu_fwd(const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale, Tensor& h);
void clamped_swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const ClampedSwiglu& c, const Tensor& row_scale,
                        SwigluGrads& grads);
void relu2_fwd(const Tensor& x, const Tensor& row_scale, Tensor& h);
void relu2_bwd(const Tensor& dh, const Tensor& x, const Tensor& row_scale, SwigluGrads& grads);
void softmax_fwd(const Tensor& logits, Tensor& probs);
void softmax_bwd(const Tensor& dprobs, const Tensor& probs, Tensor& dlogits);
void sigmoid_fwd(const Tensor& x, Tensor& y);
void sigmoid_bwd(const Tensor& dy, const Tensor& y, Tensor& dx);
void dropout(const Tensor& x, float p, uint64_t seed, Tensor& y);
void init_normal(Tensor& x, uint64_t seed, uint64_t stream, float std_dev);

// mamba.cpp
void causal_conv1d_silu_fwd(const Tensor& x, const Tensor& w, const Tensor& bias, const AttentionMask& mask,
                            Tensor& y);
void causal_conv1d_silu_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                            const AttentionMask& mask, Tensor& dx, Tensor& grad_w, Tensor& grad_bias);
void ssd_scan_fwd(const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log, const Tensor& d,
                  const SsdShape& shape, const AttentionMask& mask, Tensor& y);
void ssd_scan_bwd(const Tensor& dy, const Tensor& xbc, const Tensor& dt, const Tensor& dt_bias, const Tensor& a_log,
                  const Tensor& d, const SsdShape& shape, const AttentionMask& mask, SsdScanGrads& grads,
                  Tensor& grad_dt_bias, Tensor& grad_a_log, Tensor& grad_d);
void gated_rms_norm_fwd(const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size, float eps,
                        Tensor& out, Tensor& rstd);
void gated_rms_norm_bwd(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& w, int64_t group_size,
                        const Tensor& rstd, GatedRmsNormGrads& grads, Tensor& grad_w);

// moe.cpp
void router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob, TopK& topk);
void router_group_topk(const Tensor& scores, const Tensor& bias, int64_t k, int64_t n_group, int64_t topk_group,
                       bool norm_topk_prob, TopK& topk);
void router_bias_update(Tensor& bias, const Tensor& load, float rate);
void router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob,
                        Tensor& weight);
void router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                     bool norm_topk_prob, Tensor& dprobs);
void make_permutation(const Tensor& topk_index, int64_t num_experts, Permutation& p);
void permute(const Tensor& x, const Permutation& p, Tensor& sorted);
void unpermute(const Tensor& sorted, const Permutation& p, Tensor& out);
void permute_weights(const Tensor& weight, const Permutation& p, Tensor& sorted);
void unpermute_weights(const Tensor& sorted, const Permutation& p, Tensor& weight);
// row_valid: fp32 [N], or undefined for every row.
void expert_counts(const Tensor& topk_index, const Tensor& row_valid, Tensor& counts);
void expert_ranks(const Tensor& topk_index, int64_t num_experts, ExpertRanks& out);
void sent_expert_slots(const Tensor& topk_index, const Permutation& send, int64_t num_experts, Tensor& slots);
void grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias, Tensor& y);
void gathered_grouped_linear(const Tensor& x, const Permutation& p, const Tensor& w, Tensor& y);
void grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dx);
void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w, bool accumulate);
// row_scale, d_row_scale: fp32, or undefined for no scaling.
void grouped_bias_add(Tensor& y, const Tensor& bias, const Tensor& offsets, const Tensor& row_scale);
void grouped_bias_bwd(const Tensor& dy, const Tensor& bias, const Tensor& offsets, Tensor& grad_bias,
                      const Tensor& row_scale, Tensor& d_row_scale);

// loss.cpp. dlogits may be null; first_row numbers the rows in a bad-target error.
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                 Tensor* dlogits, int64_t first_row);

// optim.cpp. The spans are read on the host and checked against the buffer size.
double sum_of_squares(const Tensor& x);
void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h);

}  // namespace moeforge::ops::cpu
