// MoE routing and expert products on the CPU: top-k routing (softmax -> top-k -> optional
// renormalisation, as Qwen3MoeTopKRouter), the stable counting sort of (token, slot) pairs by
// expert, the gathers/scatters around the experts, and per-expert sgemm.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace moeforge::ops::cpu {
namespace {

// The expert offsets must partition the rows: offsets[0] = 0, non-decreasing, offsets[E] = rows.
const int64_t* checked_offsets(const Tensor& offsets, int64_t rows, const char* op) {
  const int64_t* off = offsets.data<int64_t>();
  const int64_t experts = offsets.numel() - 1;
  MF_CHECK(off[0] == 0 && off[experts] == rows, kInvalidArgument, op, ": offsets run from ",
           off[0], " to ", off[experts], ", expected 0 to ", rows, " (the rows of the input)");
  for (int64_t e = 0; e < experts; ++e)
    MF_CHECK(off[e] <= off[e + 1], kInvalidArgument, op, ": offsets decrease at expert ", e, " (",
             off[e], " > ", off[e + 1], ")");
  return off;
}

}  // namespace

void router_topk(const Tensor& probs, int64_t k, bool norm_topk_prob, TopK& topk) {
  const int64_t n = probs.size(0), experts = probs.size(1);
  const float* pp = probs.data<float>();
  int32_t* pidx = topk.index.data<int32_t>();
  float* pw = topk.weight.data<float>();
  std::vector<int32_t> order(static_cast<size_t>(experts));
  for (int64_t r = 0; r < n; ++r) {
    const float* p = pp + r * experts;
    std::iota(order.begin(), order.end(), 0);
    // Descending probability; equal probabilities keep the lower expert index first.
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [p](int32_t a, int32_t b) {
      return p[a] > p[b] || (p[a] == p[b] && a < b);
    });
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += p[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      pidx[r * k + j] = order[j];
      pw[r * k + j] = norm_topk_prob ? static_cast<float>(p[order[j]] / sum) : p[order[j]];
    }
  }
}

void router_group_topk(const Tensor& scores, const Tensor& bias, int64_t k, int64_t n_group, int64_t topk_group,
                       bool norm_topk_prob, TopK& topk) {
  const int64_t n = scores.size(0), experts = scores.size(1), group_size = experts / n_group;
  const float* pb = bias.data<float>();
  std::vector<float> choice(static_cast<size_t>(experts)), group_score(static_cast<size_t>(n_group));
  std::vector<int32_t> groups(static_cast<size_t>(n_group)), order;
  // Descending value; equal values keep the lower index first.
  auto by_value = [](const std::vector<float>& v) {
    return [&v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  };
  for (int64_t r = 0; r < n; ++r) {
    const float* s = scores.data<float>() + r * experts;
    for (int64_t e = 0; e < experts; ++e) choice[e] = s[e] + pb[e];
    for (int64_t g = 0; g < n_group; ++g) {
      const float* c = choice.data() + g * group_size;
      const int64_t best = std::max_element(c, c + group_size) - c;  // the first of equal maxima
      float second = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < group_size; ++j)
        if (j != best) second = std::max(second, c[j]);
      group_score[g] = c[best] + second;
    }
    std::iota(groups.begin(), groups.end(), 0);
    std::partial_sort(groups.begin(), groups.begin() + topk_group, groups.end(), by_value(group_score));
    order.clear();
    for (int64_t i = 0; i < topk_group; ++i)
      for (int64_t j = 0; j < group_size; ++j) order.push_back(static_cast<int32_t>(groups[i] * group_size + j));
    std::partial_sort(order.begin(), order.begin() + k, order.end(), by_value(choice));
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += s[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      topk.index.data<int32_t>()[r * k + j] = order[j];
      topk.weight.data<float>()[r * k + j] = norm_topk_prob ? static_cast<float>(s[order[j]] / sum) : s[order[j]];
    }
  }
}

void router_bias_update(Tensor& bias, const Tensor& load, float rate) {
  const int64_t experts = bias.numel();
  const float* l = load.data<float>();
  float* b = bias.data<float>();
  // Compared as load x E against the total, so the mean needs no division.
  double total = 0;
  for (int64_t e = 0; e < experts; ++e) total += l[e];
  for (int64_t e = 0; e < experts; ++e) {
    const double scaled = static_cast<double>(l[e]) * static_cast<double>(experts);
    b[e] += scaled < total ? rate : scaled > total ? -rate : 0.0f;
  }
}

void router_weights_for(const Tensor& probs, const Tensor& index, bool norm_topk_prob,
                        Tensor& weight) {
  const int64_t n = probs.size(0), experts = probs.size(1), k = index.size(1);
  const float* pp = probs.data<float>();
  const int32_t* pidx = index.data<int32_t>();
  float* pw = weight.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = pidx[r * k + j];
      MF_CHECK(e >= 0 && e < experts, kInvalidArgument, "router_weights_for: index[", r, ", ", j,
               "] = ", e, " is outside [0, ", experts, ")");
      sum += pp[r * experts + e];
    }
    for (int64_t j = 0; j < k; ++j) {
      const float p = pp[r * experts + pidx[r * k + j]];
      pw[r * k + j] = norm_topk_prob ? static_cast<float>(p / sum) : p;
    }
  }
}

// Without renormalisation w_j = p_j, so dp_j = dw_j. With it, w_j = p_j / S with S = sum_i p_i
// over the chosen experts, so dp_j = (dw_j - sum_i dw_i w_i) / S.
void router_topk_bwd(const Tensor& d_weight, const Tensor& probs, const TopK& topk,
                     bool norm_topk_prob, Tensor& dprobs) {
  const int64_t n = probs.size(0), experts = probs.size(1), k = topk.index.size(1);
  const float* pp = probs.data<float>();
  const int32_t* pidx = topk.index.data<int32_t>();
  const float* pdw = d_weight.data<float>();
  float* pd = dprobs.data<float>();
  dprobs.fill_zero();
  for (int64_t r = 0; r < n; ++r) {
    const int32_t* idx = pidx + r * k;
    const float* dw = pdw + r * k;
    float* d = pd + r * experts;
    for (int64_t j = 0; j < k; ++j)
      MF_CHECK(idx[j] >= 0 && idx[j] < experts, kInvalidArgument,
               "router_topk_bwd: topk.index[", r, ", ", j, "] = ", idx[j], " is outside [0, ",
               experts, ")");
    if (!norm_topk_prob) {
      for (int64_t j = 0; j < k; ++j) d[idx[j]] += dw[j];
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += pp[r * experts + idx[j]];
    double dot = 0;  // sum_i dw_i w_i
    for (int64_t j = 0; j < k; ++j) dot += dw[j] * (pp[r * experts + idx[j]] / sum);
    for (int64_t j = 0; j < k; ++j) d[idx[j]] += static_cast<float>((dw[j] - dot) / sum);
  }
}

void make_permutation(const Tensor& topk_index, int64_t num_experts, Permutation& p) {
  const int64_t n = topk_index.size(0), k = topk_index.size(1);
  const int32_t* idx = topk_index.data<int32_t>();
  int64_t* off = p.offsets.data<int64_t>();
  std::fill(off, off + num_experts + 1, 0);
  for (int64_t i = 0; i < n * k; ++i) {
    if (idx[i] == -1) continue;  // held elsewhere (moe.h: partial permutations)
    MF_CHECK(idx[i] >= 0 && idx[i] < num_experts, kInvalidArgument, "make_permutation: token ",
             i / k, " slot ", i % k, " routes to expert ", idx[i], ", outside [0, ", num_experts,
             ")");
    ++off[idx[i] + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) off[e + 1] += off[e];
  MF_CHECK(off[num_experts] == p.source_row.numel(), kInvalidArgument, "make_permutation: ", off[num_experts],
           " slots are held, not the ", p.source_row.numel(), " given");
  // Visiting the pairs in (token, slot) order keeps each expert's rows in token order.
  std::vector<int64_t> next(off, off + num_experts);
  int32_t* source_row = p.source_row.data<int32_t>();
  int32_t* slot_of = p.slot_of.data<int32_t>();
  for (int64_t i = 0; i < n * k; ++i) {
    if (idx[i] == -1) {
      slot_of[i] = -1;
      continue;
    }
    const int64_t row = next[idx[i]]++;
    source_row[row] = static_cast<int32_t>(i / k);
    slot_of[i] = static_cast<int32_t>(row);
  }
}

void permute(const Tensor& x, const Permutation& p, Tensor& sorted) {
  const int64_t rows = sorted.size(0), hidden = sorted.size(1), n = x.size(0);
  const int32_t* source_row = p.source_row.data<int32_t>();
  const float* px = x.data<float>();
  float* ps = sorted.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t src = source_row[r];
    MF_CHECK(src >= 0 && src < n, kInvalidArgument, "permute: permutation.source_row[", r,
             "] = ", src, " is outside [0, ", n, ")");
    std::copy(px + src * hidden, px + (src + 1) * hidden, ps + r * hidden);
  }
}

namespace {

// The sorted row of pair i, or -1 for a slot a partial permutation does not hold.
int64_t checked_slot(const int32_t* slot_of, int64_t i, int64_t k, int64_t rows, const char* op) {
  const int64_t row = slot_of[i];
  MF_CHECK(row >= -1 && row < rows, kInvalidArgument, op, ": permutation.slot_of[", i / k, ", ",
           i % k, "] = ", row, " is outside [0, ", rows, ") and not -1");
  return row;
}

}  // namespace

void unpermute(const Tensor& sorted, const Permutation& p, Tensor& out) {
  const int64_t n = out.size(0), hidden = out.size(1), k = p.slot_of.size(1);
  const int64_t rows = sorted.size(0);
  const int32_t* slot_of = p.slot_of.data<int32_t>();
  const float* ps = sorted.data<float>();
  float* po = out.data<float>();
  out.fill_zero();
  for (int64_t t = 0; t < n; ++t) {
    float* o = po + t * hidden;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t row = checked_slot(slot_of, t * k + j, k, rows, "unpermute");
      if (row < 0) continue;
      const float* src = ps + row * hidden;
      for (int64_t c = 0; c < hidden; ++c) o[c] += src[c];
    }
  }
}

void permute_weights(const Tensor& weight, const Permutation& p, Tensor& sorted) {
  const int64_t pairs = weight.numel(), k = weight.size(1), rows = sorted.numel();
  const int32_t* slot_of = p.slot_of.data<int32_t>();
  const float* pw = weight.data<float>();
  float* ps = sorted.data<float>();
  // Rows no (token, slot) points at (only possible for an inconsistent permutation) get zeros.
  sorted.fill_zero();
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t row = checked_slot(slot_of, i, k, rows, "permute_weights");
    if (row >= 0) ps[row] = pw[i];
  }
}

void unpermute_weights(const Tensor& sorted, const Permutation& p, Tensor& weight) {
  const int64_t pairs = weight.numel(), k = weight.size(1), rows = sorted.numel();
  const int32_t* slot_of = p.slot_of.data<int32_t>();
  const float* ps = sorted.data<float>();
  float* pw = weight.data<float>();
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t row = checked_slot(slot_of, i, k, rows, "unpermute_weights");
    pw[i] = row >= 0 ? ps[row] : 0.0f;
  }
}

// Through the permuted rows in a temporary: the reference for the CUDA kernel that never makes them.
void gathered_grouped_linear(const Tensor& x, const Permutation& p, const Tensor& w, Tensor& y) {
  Tensor sorted = Tensor::empty({p.source_row.numel(), x.size(1)}, DType::kF32, Device::kCPU, "gathered rows");
  permute(x, p, sorted);
  grouped_linear(sorted, w, p.offsets, Tensor(), y);
}

// y_e = x_e @ w_e^T for the rows x_e of each expert e.
void grouped_linear(const Tensor& x, const Tensor& w, const Tensor& offsets, const Tensor& bias, Tensor& y) {
  const int64_t experts = w.size(0), out_f = w.size(1), in_f = w.size(2);
  const int64_t* off = checked_offsets(offsets, x.size(0), "grouped_linear");
  for (int64_t e = 0; e < experts; ++e)
    sgemm(false, true, off[e + 1] - off[e], out_f, in_f, 1.0f, x.data<float>() + off[e] * in_f,
          in_f, w.data<float>() + e * out_f * in_f, in_f, 0.0f, y.data<float>() + off[e] * out_f,
          out_f);
  if (bias.defined()) grouped_bias_add(y, bias, offsets, Tensor());
}

// dx_e = dy_e @ w_e.
void grouped_linear_dx(const Tensor& dy, const Tensor& w, const Tensor& offsets, Tensor& dx) {
  const int64_t experts = w.size(0), out_f = w.size(1), in_f = w.size(2);
  const int64_t* off = checked_offsets(offsets, dy.size(0), "grouped_linear_dx");
  for (int64_t e = 0; e < experts; ++e)
    sgemm(false, false, off[e + 1] - off[e], in_f, out_f, 1.0f, dy.data<float>() + off[e] * out_f,
          out_f, w.data<float>() + e * out_f * in_f, in_f, 0.0f, dx.data<float>() + off[e] * in_f,
          in_f);
}

// grad_w[e] (+)= dy_e^T @ x_e; an expert without rows is left as it is when accumulating, else zeroed.
void grouped_linear_dw(const Tensor& dy, const Tensor& x, const Tensor& offsets, Tensor& grad_w, bool accumulate) {
  const int64_t experts = grad_w.size(0), out_f = grad_w.size(1), in_f = grad_w.size(2);
  const int64_t* off = checked_offsets(offsets, x.size(0), "grouped_linear_dw");
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0 && accumulate) continue;
    // sgemm with beta 0 clears the expert's gradient (NaN included) and takes k = 0.
    sgemm(true, false, out_f, in_f, rows, 1.0f, dy.data<float>() + off[e] * out_f, out_f,
          x.data<float>() + off[e] * in_f, in_f, accumulate ? 1.0f : 0.0f, grad_w.data<float>() + e * out_f * in_f,
          in_f);
  }
}

// y[r] += s[r] * bias[e] over expert e's rows.
void grouped_bias_add(Tensor& y, const Tensor& bias, const Tensor& offsets, const Tensor& row_scale) {
  const int64_t experts = bias.size(0), cols = bias.size(1);
  const int64_t* off = checked_offsets(offsets, y.size(0), "grouped_bias_add");
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  for (int64_t e = 0; e < experts; ++e) {
    const float* b = bias.data<float>() + e * cols;
    for (int64_t r = off[e]; r < off[e + 1]; ++r) {
      const float s = scale != nullptr ? scale[r] : 1.0f;
      float* row = y.data<float>() + r * cols;
      for (int64_t j = 0; j < cols; ++j) row[j] += s * b[j];
    }
  }
}

// grad_bias[e] += sum_r s[r] dy[r] (in double); d_row_scale[r] = dy[r] . bias[e].
void grouped_bias_bwd(const Tensor& dy, const Tensor& bias, const Tensor& offsets, Tensor& grad_bias,
                      const Tensor& row_scale, Tensor& d_row_scale) {
  const int64_t experts = bias.size(0), cols = bias.size(1);
  const int64_t* off = checked_offsets(offsets, dy.size(0), "grouped_bias_bwd");
  const float* scale = row_scale.defined() ? row_scale.data<float>() : nullptr;
  std::vector<double> sum(static_cast<size_t>(cols));
  for (int64_t e = 0; e < experts; ++e) {
    const float* b = bias.data<float>() + e * cols;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t r = off[e]; r < off[e + 1]; ++r) {
      const float* row = dy.data<float>() + r * cols;
      const double s = scale != nullptr ? scale[r] : 1.0;
      double dot = 0;
      for (int64_t j = 0; j < cols; ++j) {
        sum[j] += s * row[j];
        dot += static_cast<double>(row[j]) * b[j];
      }
      if (scale != nullptr) d_row_scale.data<float>()[r] = static_cast<float>(dot);
    }
    if (!grad_bias.defined()) continue;
    float* g = grad_bias.data<float>() + e * cols;
    for (int64_t j = 0; j < cols; ++j) g[j] += static_cast<float>(sum[j]);
  }
}

// Every index is checked before counts changes, so an error leaves counts as it was.
void expert_counts(const Tensor& topk_index, const Tensor& row_valid, Tensor& counts) {
  const int64_t n = topk_index.size(0), k = topk_index.size(1), experts = counts.numel();
  const int32_t* idx = topk_index.data<int32_t>();
  const float* valid = row_valid.defined() ? row_valid.data<float>() : nullptr;
  std::vector<int64_t> tally(static_cast<size_t>(experts), 0);
  for (int64_t i = 0; i < n * k; ++i) {
    MF_CHECK(idx[i] >= 0 && idx[i] < experts, kInvalidArgument, "expert_counts: token ", i / k,
             " slot ", i % k, " routes to expert ", idx[i], ", outside [0, ", experts, ")");
    if (valid == nullptr || valid[i / k] != 0.0f) ++tally[idx[i]];
  }
  float* pc = counts.data<float>();
  for (int64_t e = 0; e < experts; ++e) pc[e] += static_cast<float>(tally[e]);
}

void expert_ranks(const Tensor& topk_index, int64_t num_experts, ExpertRanks& out) {
  const int64_t n = topk_index.size(0), k = topk_index.size(1), ranks = out.rank.size(1);
  const int32_t* idx = topk_index.data<int32_t>();
  int32_t* rank = out.rank.data<int32_t>();
  int64_t* counts = out.counts.data<int64_t>();
  std::fill(rank, rank + n * ranks, -1);
  std::fill(counts, counts + 2 * ranks, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = idx[t * k + j];
      MF_CHECK(e >= 0 && e < num_experts, kInvalidArgument, "expert_ranks: token ", t, " slot ", j,
               " routes to expert ", e, ", outside [0, ", num_experts, ")");
      const int64_t p = expert_rank_of(e, num_experts, ranks);
      if (rank[t * ranks + p] == -1) ++counts[2 * p];  // the token goes to p once
      rank[t * ranks + p] = static_cast<int32_t>(p);
      ++counts[2 * p + 1];
    }
}

void sent_expert_slots(const Tensor& topk_index, const Permutation& send, int64_t num_experts, Tensor& slots) {
  const int64_t n = topk_index.size(0), k = topk_index.size(1), ranks = send.slot_of.size(1);
  const int64_t rows = slots.size(0);
  const int32_t* idx = topk_index.data<int32_t>();
  const int32_t* row_of = send.slot_of.data<int32_t>();
  int32_t* out = slots.data<int32_t>();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t p = 0; p < ranks; ++p) {
      const int64_t r = checked_slot(row_of, t * ranks + p, ranks, rows, "sent_expert_slots");
      if (r < 0) continue;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = idx[t * k + j];
        MF_CHECK(e >= 0 && e < num_experts, kInvalidArgument, "sent_expert_slots: token ", t, " slot ", j,
                 " routes to expert ", e, ", outside [0, ", num_experts, ")");
        out[r * k + j] = expert_rank_of(e, num_experts, ranks) == p
                             ? static_cast<int32_t>(e - expert_rank_begin(p, num_experts, ranks))
                             : -1;
      }
    }
}

}  // namespace moeforge::ops::cpu
