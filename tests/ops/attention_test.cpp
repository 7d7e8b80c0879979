// Causal grouped-query attention: forward against an explicit masked softmax in float64,
// backward against central differences, masks (padding, segments, fully masked queries).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops/attention.h"
#include "ops_test_util.h"

namespace moeforge::testing {
namespace {

constexpr double kForwardTol = 1e-5;
// Backward against central differences (step kStep) of the float32 forward: relative L2 bound.
constexpr float kStep = 1e-2f;
constexpr double kGradTol = 1e-3;

struct Reference {
  std::vector<double> out, lse;
};

// For each query, softmax over the keys the mask allows (s <= t, valid, same segment) of
// scale * q.k, applied to v; kv head = query head / (Hq / Hkv).
Reference reference_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                              const std::vector<int64_t>& valid, const std::vector<int32_t>& segment,
                              double scale) {
  const int64_t batch = q.size(0), seq = q.size(1), hq = q.size(2), d = q.size(3), hkv = k.size(2);
  const std::vector<double> qv = to_double(q), kv = to_double(k), vv = to_double(v);
  Reference ref{std::vector<double>(qv.size(), 0.0), std::vector<double>(batch * hq * seq)};
  auto at = [&](const std::vector<double>& t, int64_t heads, int64_t b, int64_t s, int64_t h) {
    return t.data() + ((b * seq + s) * heads + h) * d;
  };
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / (hq / hkv);
      for (int64_t t = 0; t < seq; ++t) {
        std::vector<double> logits(seq, -std::numeric_limits<double>::infinity());
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s <= t; ++s) {
          const bool allowed = (valid.empty() || valid[b * seq + s] != 0) &&
                               (segment.empty() || segment[b * seq + s] == segment[b * seq + t]);
          if (!allowed) continue;
          double dot = 0;
          for (int64_t j = 0; j < d; ++j) dot += at(qv, hq, b, t, h)[j] * at(kv, hkv, b, s, g)[j];
          logits[s] = scale * dot;
          max = std::max(max, logits[s]);
        }
        double& lse = ref.lse[(b * hq + h) * seq + t];
        if (max == -std::numeric_limits<double>::infinity()) {
          lse = max;
          continue;
        }
        double sum = 0;
        for (int64_t s = 0; s <= t; ++s) sum += std::exp(logits[s] - max);
        lse = max + std::log(sum);
        double* o = ref.out.data() + ((b * seq + t) * hq + h) * d;
        for (int64_t s = 0; s <= t; ++s) {
          const double p = std::exp(logits[s] - lse);
          for (int64_t j = 0; j < d; ++j) o[j] += p * at(vv, hkv, b, s, g)[j];
        }
      }
    }
  return ref;
}

struct Case {
  int64_t batch, seq, hq, hkv, d;
  std::vector<int64_t> valid;    // [B*T] or empty
  std::vector<int32_t> segment;  // [B*T] or empty
};

ops::AttentionMask make_mask(const Case& c) {
  ops::AttentionMask mask;
  if (!c.valid.empty()) mask.key_valid = Tensor::from_vector(c.valid, {c.batch, c.seq});
  if (!c.segment.empty()) {
    mask.segment = Tensor::empty({c.batch, c.seq}, DType::kI32);
    std::copy(c.segment.begin(), c.segment.end(), mask.segment.data<int32_t>());
  }
  return mask;
}

std::vector<Case> cases() {
  return {
      // GQA ratio 2, odd length, no mask.
      {2, 7, 4, 2, 8, {}, {}},
      // Ratio 1; right padding in sequence 0, left padding in sequence 1 (queries 0-1 there
      // see no key at all).
      {2, 5, 3, 3, 6, {1, 1, 1, 0, 0, 0, 0, 1, 1, 1}, {}},
      // Ratio 2 with packed documents and padding together.
      {2, 9, 4, 2, 4, {1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
       {0, 0, 0, 1, 1, 2, 2, 2, 2, 5, 5, 7, 7, 7, 7, 9, 9, 9}},
  };
}

TEST(Attention, ForwardMatchesMaskedSoftmax) {
  std::mt19937 rng(21);
  for (const Case& c : cases()) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.seq << " Hq=" << c.hq << " Hkv=" << c.hkv);
    const Tensor q = random_tensor({c.batch, c.seq, c.hq, c.d}, rng, -2.0f, 2.0f);
    const Tensor k = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng, -2.0f, 2.0f);
    const Tensor v = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    Tensor lse;
    const Tensor out = ops::attention_fwd(q, k, v, make_mask(c), scale, lse);
    const Reference ref = reference_attention(q, k, v, c.valid, c.segment, scale);
    EXPECT_LT(rel_l2(out.to_float_vector(), to_float(ref.out)), kForwardTol);
    ASSERT_EQ(lse.shape(), (Shape{c.batch, c.hq, c.seq}));
    const std::vector<float> got_lse = lse.to_float_vector();
    for (size_t i = 0; i < got_lse.size(); ++i) {
      if (std::isinf(ref.lse[i])) {
        EXPECT_TRUE(std::isinf(got_lse[i]) && got_lse[i] < 0) << "lse " << i;
      } else {
        EXPECT_NEAR(got_lse[i], ref.lse[i], 1e-5 * std::max(1.0, std::abs(ref.lse[i])));
      }
    }
  }
}

TEST(Attention, FullyMaskedQueryOutputsZerosAndGetsNoGradient) {
  std::mt19937 rng(22);
  const Case c = cases()[1];
  const Tensor q = random_tensor({c.batch, c.seq, c.hq, c.d}, rng);
  const Tensor k = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
  const Tensor v = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
  Tensor lse;
  const ops::AttentionMask mask = make_mask(c);
  const Tensor out = ops::attention_fwd(q, k, v, mask, 0.4f, lse);
  const Tensor dout = random_tensor(out.shape(), rng);
  const ops::AttentionGrads g = ops::attention_bwd(dout, q, k, v, out, lse, mask, 0.4f);
  // Sequence 1, queries 0 and 1: every key up to them is padding.
  for (int64_t t : {0, 1})
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t j = 0; j < c.d; ++j) {
        const int64_t i = ((1 * c.seq + t) * c.hq + h) * c.d + j;
        EXPECT_EQ(out.item_float(i), 0.0f);
        EXPECT_EQ(g.dq.item_float(i), 0.0f);
      }
  // Padded keys receive no gradient.
  for (int64_t s : {0, 1})
    for (int64_t j = 0; j < c.hkv * c.d; ++j) {
      EXPECT_EQ(g.dk.item_float((1 * c.seq + s) * c.hkv * c.d + j), 0.0f);
      EXPECT_EQ(g.dv.item_float((1 * c.seq + s) * c.hkv * c.d + j), 0.0f);
    }
}

TEST(Attention, KeyValidDtypesAgree) {
  std::mt19937 rng(23);
  const Case c = cases()[1];
  const Tensor q = random_tensor({c.batch, c.seq, c.hq, c.d}, rng);
  const Tensor k = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
  const Tensor v = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
  ops::AttentionMask mask = make_mask(c);
  Tensor lse;
  const std::vector<float> expected = ops::attention_fwd(q, k, v, mask, 0.3f, lse).to_float_vector();
  for (DType dt : {DType::kI32, DType::kU8, DType::kBool}) {
    ops::AttentionMask converted = mask;
    converted.key_valid = mask.key_valid.to(dt);
    Tensor lse2;
    EXPECT_EQ(ops::attention_fwd(q, k, v, converted, 0.3f, lse2).to_float_vector(), expected);
  }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(24);
  for (const Case& c : cases()) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.seq << " Hq=" << c.hq << " Hkv=" << c.hkv);
    const Tensor q = random_tensor({c.batch, c.seq, c.hq, c.d}, rng);
    const Tensor k = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
    const Tensor v = random_tensor({c.batch, c.seq, c.hkv, c.d}, rng);
    const Tensor dout = random_tensor({c.batch, c.seq, c.hq, c.d}, rng);
    const ops::AttentionMask mask = make_mask(c);
    const float scale = 0.7f;
    auto objective = [&] {
      Tensor lse;
      return weighted_sum(ops::attention_fwd(q, k, v, mask, scale, lse), dout);
    };
    Tensor lse;
    const Tensor out = ops::attention_fwd(q, k, v, mask, scale, lse);
    const ops::AttentionGrads g = ops::attention_bwd(dout, q, k, v, out, lse, mask, scale);
    EXPECT_LT(rel_l2(g.dq.to_float_vector(), numeric_grad(q, objective, kStep)), kGradTol);
    EXPECT_LT(rel_l2(g.dk.to_float_vector(), numeric_grad(k, objective, kStep)), kGradTol);
    EXPECT_LT(rel_l2(g.dv.to_float_vector(), numeric_grad(v, objective, kStep)), kGradTol);
  }
}

TEST(Attention, RejectsIndivisibleHeadsAndWrongMask) {
  std::mt19937 rng(25);
  const Tensor q = random_tensor({1, 4, 3, 8}, rng), k = random_tensor({1, 4, 2, 8}, rng);
  Tensor lse;
  expect_error([&] { ops::attention_fwd(q, k, k, {}, 1.0f, lse); }, {"3 query heads", "2 key/value"});
  const Tensor q2 = random_tensor({1, 4, 4, 8}, rng);
  ops::AttentionMask mask;
  mask.segment = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 0}, {1, 4});
  expect_error([&] { ops::attention_fwd(q2, k, k, mask, 1.0f, lse); },
               {"mask.segment", "int64", "int32"});
}

// attention_documents: the blocks must describe exactly the mask's allowed (query, key) pairs, or
// be absent when no blocks can.
struct MaskRows {
  int64_t batch, seq;
  std::vector<int32_t> segment;  // empty: one segment
  std::vector<uint8_t> valid;    // empty: all valid
};

bool allowed_by_mask(const MaskRows& m, int64_t b, int64_t t, int64_t s) {
  const int64_t i = b * m.seq + t, j = b * m.seq + s;
  return s <= t && (m.valid.empty() || m.valid[j]) && (m.segment.empty() || m.segment[i] == m.segment[j]);
}

ops::AttentionDocuments documents_of(const MaskRows& m) {
  return ops::attention_documents(m.batch, m.seq, m.segment.empty() ? nullptr : m.segment.data(),
                                  m.valid.empty() ? nullptr : m.valid.data(), Device::kCPU);
}

struct Block {
  int64_t q_first, q_len, kv_first, kv_len;
};

// The blocks of a table, checking its padding rows and maxima.
std::vector<Block> read_blocks(const ops::AttentionBlocks& blocks, int64_t tokens) {
  std::vector<Block> out;
  if (!blocks.table.defined()) return out;
  const int64_t capacity = blocks.table.size(1);
  EXPECT_GE(capacity, blocks.count);
  EXPECT_EQ(capacity & (capacity - 1), 0) << "capacity is a power of two";
  const Tensor table = blocks.table.to(DType::kI64);
  const int64_t* t = table.data<int64_t>();
  int64_t max_q = 0, max_kv = 0;
  for (int64_t i = 0; i < capacity; ++i) {
    const Block b{t[i], t[capacity + i], t[2 * capacity + i], t[3 * capacity + i]};
    if (i >= blocks.count) {
      EXPECT_EQ(b.q_first, tokens);
      EXPECT_EQ(b.kv_first, tokens);
      EXPECT_EQ(b.q_len + b.kv_len, 0);
      continue;
    }
    EXPECT_GT(b.q_len, 0);
    EXPECT_GT(b.kv_len, 0);
    max_q = std::max(max_q, b.q_len);
    max_kv = std::max(max_kv, b.kv_len);
    out.push_back(b);
  }
  EXPECT_EQ(blocks.max_queries, max_q);
  EXPECT_EQ(blocks.max_keys, max_kv);
  return out;
}

void expect_blocks_match(const MaskRows& m, int64_t want_documents, int64_t want_padded,
                         bool want_covers_all) {
  const ops::AttentionDocuments docs = documents_of(m);
  ASSERT_TRUE(docs.defined());
  const int64_t tokens = m.batch * m.seq;
  const std::vector<Block> causal = read_blocks(docs.causal, tokens), full = read_blocks(docs.full, tokens);
  EXPECT_EQ(static_cast<int64_t>(causal.size()), want_documents);
  EXPECT_EQ(static_cast<int64_t>(full.size()), want_padded);
  EXPECT_EQ(docs.covers_all_tokens, want_covers_all);
  // Each query row is in at most one block; a block stays inside its row.
  std::vector<int> blocks_of(tokens, 0);
  for (const auto* list : {&causal, &full})
    for (const Block& b : *list) {
      EXPECT_EQ(b.q_first / m.seq, (b.q_first + b.q_len - 1) / m.seq);
      EXPECT_EQ(b.kv_first / m.seq, (b.kv_first + b.kv_len - 1) / m.seq);
      for (int64_t n = b.q_first; n < b.q_first + b.q_len; ++n) ++blocks_of[n];
    }
  for (int64_t n = 0; n < tokens; ++n) EXPECT_LE(blocks_of[n], 1) << "token " << n;
  int64_t in_documents = 0;
  for (const Block& b : causal) in_documents += b.q_len;
  EXPECT_EQ(in_documents == tokens, docs.covers_all_tokens);
  for (int64_t b = 0; b < m.batch; ++b)
    for (int64_t t = 0; t < m.seq; ++t)
      for (int64_t s = 0; s < m.seq; ++s) {
        const int64_t qi = b * m.seq + t, ki = b * m.seq + s;
        bool by_blocks = false;
        for (const Block& d : causal)
          by_blocks |= d.q_first == d.kv_first && d.q_len == d.kv_len && qi >= d.q_first &&
                       qi < d.q_first + d.q_len && ki >= d.kv_first && ki <= qi;
        for (const Block& d : full)
          by_blocks |= qi >= d.q_first && qi < d.q_first + d.q_len && ki >= d.kv_first &&
                       ki < d.kv_first + d.kv_len;
        EXPECT_EQ(by_blocks, allowed_by_mask(m, b, t, s)) << "row " << b << " query " << t << " key " << s;
      }
}

TEST(Attention, DocumentsDescribeTheMask) {
  // Packed documents of 3, 4 and 5 tokens in two rows; a padded tail in its own segment (as the
  // packer writes it: positions restart, so the model gives it a new segment).
  expect_blocks_match({2, 12, {0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2},
                       {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}},
                      5, 0, false);
  // Left padding (its queries see no key) and no padding at all.
  expect_blocks_match({2, 6, {}, {0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}}, 2, 0, false);
  expect_blocks_match({3, 5, {}, {}}, 3, 0, true);
  // Right padding: the padded queries see the whole sequence before them (Transformers' padding
  // mask does the same); one block of padded queries per row that has them.
  expect_blocks_match({2, 5, {}, {1, 1, 1, 0, 0, 1, 1, 1, 1, 1}}, 2, 1, false);
  // Packed documents whose last one is followed by padding in the same segment, and left padding
  // in another row.
  expect_blocks_match({2, 8, {0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0},
                       {1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0}},
                      3, 2, false);
}

TEST(Attention, NoDocumentsForOtherMasks) {
  EXPECT_FALSE(documents_of({1, 5, {}, {1, 1, 0, 1, 1}}).defined()) << "a hole inside a sequence";
  EXPECT_FALSE(documents_of({1, 6, {0, 0, 1, 1, 0, 0}, {}}).defined()) << "a segment split in two";
  EXPECT_FALSE(documents_of({1, 3, {}, {0, 0, 0}}).defined()) << "no valid token";
}

}  // namespace
}  // namespace moeforge::testing
