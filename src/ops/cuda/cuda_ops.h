// The CUDA implementations behind ops.h, with the signatures of ops/cpu/cpu_ops.h: ops.cpp checks
// devices, shapes and contiguity and allocates the outputs, then calls in here. Internal to src/ops
// and its tests; only built with MOEFORGE_WITH_CUDA.
//
// Dtypes: every floating tensor may be bf16 or fp32 (storage); all arithmetic is fp32, sums over
// long dimensions included. Outputs are written in their own dtype, so the caller chooses: ops.h's
// fp32 outputs (rstd, lse, router probs and weights) are fp32, activations normally bf16, and
// parameter gradient buffers (accumulated into, `+=`) may be fp32 or bf16. Index tensors are as in
// ops.h (ids, positions, targets int64; expert indices, permutation rows int32; offsets int64).
// Exceptions, each stated at its function: gemm and the grouped linears take bf16 (or, for gemm,
// fp32) operands of one dtype.
//
// Work is queued on the legacy default stream and nothing here synchronises the host, except where
// a function says so (embedding ids and cross-entropy targets are validated on the host, and the
// loss sum is returned to it). Device-side indices made by other ops (expert indices, offsets,
// permutation rows) are trusted: an out-of-range one traps the kernel, which surfaces as a CUDA
// error at the next checked call.
#pragma once

#include <cstdint>

#include "ops/ops.h"

namespace moeforge::ops::cuda {

// dense.cu. gemm: a and b both bf16 or both fp32, c bf16 or fp32; cuBLASLt with fp32 compute (no
// TF32). Handles, workspaces and algorithm choices are cached per device.
void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha, float beta);
// linear: gemm's operands with the bias (bf16 or fp32) added in cuBLASLt's epilogue; x needs at
// least one feature. linear_bias_bwd: one pass of column sums in fp32.
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
void linear_bias_bwd(const Tensor& dy, Tensor& grad_bias);
void add_inplace(Tensor& a, const Tensor& b);
void scale_inplace(Tensor& a, float s);
void cast(const Tensor& x, Tensor& y);  // bf16 <-> fp32

// embedding.cu. Both validate the ids on the host first (one device-to-host copy of a flag).
// The backward adds with fp32 atomics: into grad_weight directly when it is fp32, otherwise into
// an fp32 scratch table that is then added to the bf16 buffer.
void embedding_fwd(const Tensor& weight, const Tensor& ids, Tensor& out);
void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx);

// norm.cu
void rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& y,
                      Tensor& rstd);
// dx_residual: undefined, or added into dx.
void rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                  const Tensor& dx_residual, Tensor& dx, Tensor& grad_w);

// rope.cu. sin_sign = +1 applies the rotation (forward), -1 its transpose (backward).
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling, float sin_sign, Tensor& y);
// Per-head RMSNorm then rotation (ops::qk_norm_rope_fwd/bwd); x, dy [N, heads, D], rstd [N*heads].
void qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                      const Tensor& inv_freq, float attention_scaling, Tensor& y, Tensor& rstd);
void qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                      Tensor& dx, Tensor& grad_w);

// attention.cu. Sinks (undefined: none) and windows (0: none) run the simple kernels, not cuDNN.
void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                   float scale, const Tensor& sinks, int64_t window, Tensor& out, Tensor& lse);
void attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& out, const Tensor& lse, const AttentionMask& mask, float scale,
                   const Tensor& sinks, int64_t window, AttentionGrads& grads);

// mamba.cu. The scan holds a head's [head_dim, state] state, a chunk of its rows and their
// gradients in shared memory: head_dim * state is at most 128 * 128. Its backward keeps every
// chunk's starting state in an fp32 workspace (B * heads * chunks * head_dim * state floats).
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

// mla.cu. The rotated part is at most 256 columns.
void split_columns(const Tensor& x, std::vector<Tensor>& parts);
void concat_columns(const std::vector<Tensor>& parts, Tensor& out);
void mla_heads_fwd(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const MlaRope& rope, MlaHeads& out);
void mla_heads_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const MlaRope& rope, MlaHeadsGrads& grads);

// activation.cu
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
void sigmoid_fwd(const Tensor& x, Tensor& y);  // x bf16 or fp32, y fp32
void sigmoid_bwd(const Tensor& dy, const Tensor& y, Tensor& dx);
void dropout(const Tensor& x, float p, uint64_t seed, Tensor& y);  // x, y bf16 or fp32
void init_normal(Tensor& x, uint64_t seed, uint64_t stream, float std_dev);  // x bf16 or fp32

// moe.cu. make_permutation is a stable counting sort on the device; offsets never reach the host.
void router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob, TopK& topk);
// router_group_topk: n_group <= 32 and k <= 32 (one warp per row).
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
// row_valid: fp32 [N], or undefined for every row. A shared-memory histogram per block, added
// into counts with fp32 atomics (exact for integer counts below 2^24); no host sync.
void expert_counts(const Tensor& topk_index, const Tensor& row_valid, Tensor& counts);
void expert_ranks(const Tensor& topk_index, int64_t num_experts, ExpertRanks& out);
void sent_expert_slots(const Tensor& topk_index, const Permutation& send, int64_t num_experts, Tensor& slots);

// grouped_gemm.cu. x, w, dy bf16; y, dx bf16 or fp32; grad_w fp32 or bf16. The expert of each
// row block is found on the device from offsets: no host synchronisation.
void grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias, Tensor& y);
void gathered_grouped_linear(const Tensor& x, const Permutation& p, const Tensor& w, Tensor& y);
void grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dx);
void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w, bool accumulate);
// moe.cu. Per-expert biases: each row's expert found from offsets on the device; grad_bias summed
// per expert by one thread per column (no atomics).
void grouped_bias_add(Tensor& y, const Tensor& bias, const Tensor& offsets, const Tensor& row_scale);
void grouped_bias_bwd(const Tensor& dy, const Tensor& bias, const Tensor& offsets, Tensor& grad_bias,
                      const Tensor& row_scale, Tensor& d_row_scale);

// loss.cu. One block per row with an online max/sum over the vocabulary; dlogits may alias logits
// (each element is read before it is overwritten); dlogits may be null. cross_entropy_add adds
// the chunk's loss sum, counted rows and first bad target (rows numbered from first_row) into
// `totals`, made by cross_entropy_totals(), without a host synchronisation;
// read_cross_entropy_totals reads them (one synchronisation) and throws for a bad target.
Tensor cross_entropy_totals();
void cross_entropy_add(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor* dlogits,
                       int64_t first_row, Tensor& totals);
CrossEntropyResult read_cross_entropy_totals(const Tensor& totals);

// optim.cu. sum_of_squares synchronises the host once (the result is returned). adamw_update is
// one launch over every span (a multi-tensor update of the whole flat buffer), nothing returned.
double sum_of_squares(const Tensor& x);
void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h);

}  // namespace moeforge::ops::cuda
