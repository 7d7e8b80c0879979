// The ops of the model, each declared once here. Every function dispatches on the device of its
// inputs to a CPU reference (ops/cpu/, float32, exact and simple) or a CUDA implementation
// (ops/cuda/, bf16 storage with fp32 accumulation). CUDA versions are tested against the CPU ones.
//
// Conventions: activations are row-major [tokens, features]; "N" is the number of tokens in the
// (flattened) batch. Outputs are allocated by the op on the input's device unless a parameter is a
// `Tensor&` that the caller owns, in which case the op writes (or, where it says so, adds) into it.
// Gradient buffers of parameters are always accumulated into (`+=`), so that gradient accumulation
// and tied weights need nothing special. Every tensor passed in must be contiguous and on one device;
// on the CPU every floating tensor must be float32. Saved statistics (rstd, lse) are allocated by
// the op when the caller passes an undefined tensor, else overwritten in place.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moeforge::ops {

// ---- dense algebra -------------------------------------------------------------------------
// C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T; 2-D, contiguous. beta = 0 overwrites C
// (C's previous contents, even NaN, are ignored).
void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
          float alpha = 1.0f, float beta = 0.0f);
// y = x @ w^T, x [N, in], w [out, in] (the layout of nn.Linear.weight).
Tensor linear(const Tensor& x, const Tensor& w);
void add_inplace(Tensor& a, const Tensor& b);  // a += b, same shape
void scale_inplace(Tensor& a, float s);        // a *= s
// A copy of a floating tensor in another floating dtype (round to nearest even), on its device.
Tensor cast(const Tensor& x, DType dtype);

// ---- embedding ------------------------------------------------------------------------------
// ids [N] int64 -> rows of weight [V, H]. Ids outside [0, V) are an Error naming the id and V.
Tensor embedding_fwd(const Tensor& weight, const Tensor& ids);
void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight);  // accumulates

// ---- RMSNorm (statistics in fp32, as Transformers) ------------------------------------------
// x [R, D], w [D]: y = w * (x * rsqrt(mean(x^2) + eps)). rstd [R] (fp32) is saved for backward.
Tensor rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor& rstd);
// The residual add before a norm, in one pass: x += residual in place (the new residual stream, in
// x's dtype), then rms_norm_fwd of that.
Tensor add_rms_norm_fwd(Tensor& x, const Tensor& residual, const Tensor& w, float eps, Tensor& rstd);
// Returns dx, plus dx_residual when given (the gradient that reaches x past the norm, by the
// residual connection); adds dw into grad_w.
Tensor rms_norm_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                    Tensor& grad_w, const Tensor& dx_residual = Tensor());

// ---- rotary embedding (rotate_half form) ----------------------------------------------------
// x [N, heads, D]; positions [N] int64; inv_freq [D/2] fp32 (from the architecture's rope type);
// angle = position * inv_freq[i] in fp32; cos/sin multiplied by attention_scaling (1 for default rope).
// y = x * cos + rotate_half(x) * sin with cos/sin repeated over both halves.
Tensor rope_fwd(const Tensor& x, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling = 1.0f);
Tensor rope_bwd(const Tensor& dy, const Tensor& positions, const Tensor& inv_freq,
                float attention_scaling = 1.0f);
// Qwen3's per-head q/k-norm followed by the rotation, in one op (one pass over the heads on CUDA
// where a head of D = 16 .. 256 columns, D % 16 == 0, fits a warp; the two ops in turn elsewhere):
// x [N, heads, D] -> rope(rms_norm(x) * w); rstd [N * heads] as rms_norm_fwd's.
Tensor qk_norm_rope_fwd(const Tensor& x, const Tensor& w, float eps, const Tensor& positions,
                        const Tensor& inv_freq, float attention_scaling, Tensor& rstd);
// Returns dx [N, heads, D]; adds the norm weight's gradient into grad_w.
Tensor qk_norm_rope_bwd(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        const Tensor& positions, const Tensor& inv_freq, float attention_scaling,
                        Tensor& grad_w);

// ---- attention ------------------------------------------------------------------------------
// Causal grouped-query attention over B sequences of length T.
// q [B, T, Hq, D], k and v [B, T, Hkv, D] with Hq % Hkv == 0; scale multiplies q.k.
// Query t may attend key s iff s <= t, key_valid[b, s] != 0 (padding; undefined tensor = all valid),
// and segment[b, s] == segment[b, t] (packed documents; undefined tensor = one segment).
// A query with no allowed key outputs zeros (its lse is -inf and it gets no gradient).
// lse [B, Hq, T] (fp32 log-sum-exp of the scaled scores) is saved for backward.
//
// The same mask may also come as blocks of the flat token axis (optional, see attention_documents):
// documents, inside which each query attends the keys from the document's first token up to itself,
// and padded queries after a document, which attend that whole document (HF's padding mask does
// the same). A token in no block attends nothing. Variable-length kernels (cuDNN on CUDA) run this
// form; the CPU and the fallback kernels read key_valid and segment, which must describe the same mask.
struct AttentionBlocks {
  Tensor table;             // [4, capacity] int32: first query row (flat index b*T + t), queries,
                            // first key row, keys; rows past `count` are empty (first B*T, length 0)
  int64_t count = 0;        // blocks
  int64_t max_queries = 0;  // the longest block's rows
  int64_t max_keys = 0;
};
struct AttentionDocuments {
  AttentionBlocks causal;  // documents: queries and keys are the same rows
  AttentionBlocks full;    // padded queries after a document, keys = the document
  bool covers_all_tokens = true;  // every token is in a document (else: padding is present)
  bool defined() const { return causal.table.defined(); }
};
struct AttentionMask {
  Tensor key_valid;  // [B, T] int64/int32/uint8, optional
  Tensor segment;    // [B, T] int32, optional
  AttentionDocuments documents;
};
// The blocks of a [B, T] mask given on the host (segment ids and key validity, row-major; either
// may be null) as tables on `device`, or nothing (no tables) when the mask has no such form (a
// padding hole inside a document, a segment split in two). Capacities are the counts rounded up
// to a power of two, so that kernels compiled per shape see few shapes.
AttentionDocuments attention_documents(int64_t batch, int64_t seq, const int32_t* segment,
                                       const uint8_t* valid, Device device);
Tensor attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                     float scale, Tensor& lse);
struct AttentionGrads {
  Tensor dq, dk, dv;
};
AttentionGrads attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                             float scale);

// ---- activations ----------------------------------------------------------------------------
// gate_up [M, 2I] (gate columns first): h = silu(gate) * up, [M, I], each row times
// row_scale[r] when row_scale [M] fp32 is given (the MoE layers' routing weights, applied before
// the down projection so the experts' outputs need not be kept for the weights' gradient).
Tensor swiglu_fwd(const Tensor& gate_up, const Tensor& row_scale = Tensor());
struct SwigluGrads {
  Tensor d_gate_up;    // [M, 2I]
  Tensor d_row_scale;  // [M] fp32: dh[r] . (silu(gate) * up)[r]; only when row_scale was given
};
SwigluGrads swiglu_bwd(const Tensor& dh, const Tensor& gate_up, const Tensor& row_scale = Tensor());
// Row softmax in fp32: probs [R, C].
Tensor softmax_fwd(const Tensor& logits);
Tensor softmax_bwd(const Tensor& dprobs, const Tensor& probs);

// ---- MoE routing ----------------------------------------------------------------------------
// probs [N, E] (softmax of the router logits, fp32). Top-k per row, ties broken by lower expert
// index, in descending order of probability; weights renormalised to sum 1 when norm_topk_prob.
struct TopK {
  Tensor index;   // [N, k] int32
  Tensor weight;  // [N, k] fp32
};
TopK router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob);
// The routing weights of given expert choices index [N, k] int32 (the same renormalisation): how a
// run reuses another run's top-k choices (a test hook: near-ties flip top-k between precisions).
TopK router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob);
// Gradient of the top-k weights back to probs [N, E] (zero outside the chosen experts); with
// renormalisation this includes the gradient through the normalising sum.
Tensor router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                       bool norm_topk_prob);

// Token permutation: the N*k (token, slot) pairs sorted by expert, stable in token order inside
// each expert. offsets [E+1] int64 stays on the device (no host sync on CUDA).
struct Permutation {
  Tensor source_row;  // [N*k] int32: token row of each sorted row
  Tensor slot_of;     // [N, k] int32: sorted row of each (token, slot)
  Tensor offsets;     // [E+1] int64: expert e owns sorted rows offsets[e] .. offsets[e+1]
};
Permutation make_permutation(const Tensor& topk_index, int64_t num_experts);
// Each of a pair is the other's backward.
// sorted[r] = x[source_row[r]]: [N, H] -> [N*k, H].
Tensor permute(const Tensor& x, const Permutation& p);
// out[n] = sum_j sorted[slot_of[n, j]], accumulated in fp32: [N*k, H] -> [N, H].
Tensor unpermute(const Tensor& sorted, const Permutation& p, int64_t n_tokens);
// The routing weight of each sorted row: [N, k] fp32 -> [N*k] fp32, row slot_of[n, j] gets
// weight[n, j].
Tensor permute_weights(const Tensor& weight, const Permutation& p);
// [N*k] fp32 -> [N, k] fp32: out[n, j] = sorted[slot_of[n, j]].
Tensor unpermute_weights(const Tensor& sorted, const Permutation& p);

// ---- grouped (per-expert) matrix products ---------------------------------------------------
// Rows offsets[e] .. offsets[e+1] of x belong to expert e. w [E, N, K] stacked expert weights.
Tensor grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets);       // x [M,K] -> [M,N]
Tensor grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets);   // dy [M,N] -> [M,K]
// grad_w[e] += dy_e^T @ x_e; experts with no rows get no change.
void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w);

// ---- loss -----------------------------------------------------------------------------------
// logits [N, V] (any float dtype; computed in fp32), targets [N] int64 with -100 ignored.
// Returns the sum of the per-token losses and the number of counted tokens; when dlogits is
// defined it receives (softmax - onehot) * grad_scale for counted rows and 0 for ignored rows;
// it may be the logits tensor itself (the gradient then replaces the logits in place).
struct CrossEntropyResult {
  double loss_sum = 0;
  int64_t count = 0;
};
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                 Tensor* dlogits);
// The same over a batch's rows in chunks, read back once: add() computes a chunk (the rows after
// the previous chunks') without returning anything, total() returns the sums of every chunk. On
// CUDA that is one host synchronisation for the batch instead of one per chunk; a bad target in
// any chunk throws from total(), naming its row in the whole batch (on the CPU, from add()).
class CrossEntropySum {
 public:
  void add(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor* dlogits);
  CrossEntropyResult total() const;

 private:
  CrossEntropyResult host_;  // chunks on the CPU
  Tensor device_totals_;     // chunks on CUDA: the running sums, on the device
  int64_t rows_ = 0;
};

// ---- optimizer ------------------------------------------------------------------------------
// sum(x^2) over all elements of a floating tensor, accumulated in fp32 per block and fp64 across
// blocks (CPU: fp64). Returns to the host: one device-to-host copy on CUDA.
double sum_of_squares(const Tensor& x);

// One AdamW update with torch.optim.AdamW's semantics over flat 1-D buffers: for each element i of
// the ranges in `spans` ([S, 3] int64 on the buffers' device: begin, end, apply weight decay 0/1;
// begin and end multiples of 8, so CUDA moves eight elements per access; on CUDA the gradients
// share the weights' dtype and the two moments one dtype):
//   p *= 1 - lr*wd (decay ranges); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)     with step_size = lr / bc1
// computed in fp32 from any mix of bf16/fp32 storage. When `master` is defined (fp32) it is the
// weight that is updated and `params` receives its rounded copy; otherwise `params` is updated in
// place. Elements outside the spans are untouched.
struct AdamWHyper {
  float lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt;
};
void adamw_update(Tensor& params, const Tensor& grads, Tensor& master, Tensor& exp_avg,
                  Tensor& exp_avg_sq, const Tensor& spans, const AdamWHyper& h);

}  // namespace moeforge::ops
