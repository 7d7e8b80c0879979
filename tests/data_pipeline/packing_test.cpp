// Packing: pieces, boundaries, labels, position ids, padding and the two overflow rules.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "data/dataset.h"
#include "data/packing.h"
#include "data_test_util.h"

namespace moeforge::data {
namespace {

using testing::synthetic_corpus;

struct Row {
  std::vector<int64_t> ids, labels, positions, mask;
  int64_t counted = 0;
};

Row make_row(const TokenCorpus& c, const std::vector<Piece>& pieces, int64_t T, int64_t pad = 5) {
  Row r;
  r.ids.resize(T);
  r.labels.resize(T);
  r.positions.resize(T);
  r.mask.resize(T);
  r.counted = fill_row(c, pieces, T, pad, r.ids.data(), r.labels.data(), r.positions.data(), r.mask.data());
  return r;
}

// All sequences of one pass (no repeat).
std::vector<std::vector<Piece>> one_pass(const TokenCorpus& c, PackingOptions o) {
  o.repeat = false;
  SequencePacker packer(c, all_documents(c.num_documents()), o);
  std::vector<std::vector<Piece>> out;
  while (auto s = packer.next_sequence()) out.push_back(*s);
  return out;
}

TEST(Packing, RowLayoutAtDocumentBoundaries) {
  TokenCorpus c = synthetic_corpus({4, 3, 20});
  const int64_t T = 10;
  Row r = make_row(c, {{0, 0, 4}, {1, 0, 3}}, T);
  EXPECT_EQ(r.ids, (std::vector<int64_t>{0, 1, 2, 3, 1000, 1001, 1002, 5, 5, 5}));
  EXPECT_EQ(r.positions, (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(r.mask, (std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 0, 0, 0}));
  // Loss bits of doc 0: k % 3 != 0 -> 0 1 1 0; doc 1: (1 + k) % 3 != 0 -> 1 1 0. The first token of
  // each document is -100 whatever its bit: the model's target at t is labels[t + 1], and doc 0's last
  // token must not learn to predict doc 1's first.
  EXPECT_EQ(r.labels, (std::vector<int64_t>{-100, 1, 2, -100, -100, 1001, -100, -100, -100, -100}));
  EXPECT_EQ(r.counted, 3);
  // What the model counts after shifting left: the same tokens.
  int64_t shifted = 0;
  for (int64_t t = 0; t + 1 < T; ++t) shifted += r.labels[t + 1] != -100;
  EXPECT_EQ(shifted, r.counted);
}

TEST(Packing, NextFitClosesASequenceWhenTheDocumentDoesNotFit) {
  TokenCorpus c = synthetic_corpus({6, 5, 4, 2, 8});
  auto seqs = one_pass(c, {.max_seq_length = 10, .shuffle = false});
  // 6 | 5+4 | 2+8
  ASSERT_EQ(seqs.size(), 3u);
  ASSERT_EQ(seqs[0].size(), 1u);
  EXPECT_EQ(seqs[0][0].document, 0u);
  ASSERT_EQ(seqs[1].size(), 2u);
  EXPECT_EQ(seqs[1][0].document, 1u);
  EXPECT_EQ(seqs[1][1].document, 2u);
  ASSERT_EQ(seqs[2].size(), 2u);
  EXPECT_EQ(seqs[2][1].document, 4u);
  EXPECT_EQ(seqs[2][1].end, 8u);
}

TEST(Packing, TruncateKeepsTheFirstTokens) {
  TokenCorpus c = synthetic_corpus({3, 25, 4});
  auto seqs = one_pass(c, {.max_seq_length = 10, .overflow = OverflowRule::kTruncate, .shuffle = false});
  ASSERT_EQ(seqs.size(), 3u);
  ASSERT_EQ(seqs[1].size(), 1u);
  EXPECT_EQ(seqs[1][0].document, 1u);
  EXPECT_EQ(seqs[1][0].begin, 0u);
  EXPECT_EQ(seqs[1][0].end, 10u);
  EXPECT_EQ(seqs[2][0].document, 2u);
  Row r = make_row(c, seqs[1], 10);
  for (int64_t t = 0; t < 10; ++t) EXPECT_EQ(r.ids[t], 1000 + t);
}

TEST(Packing, SplitCutsIntoChunksEachItsOwnDocument) {
  TokenCorpus c = synthetic_corpus({3, 25, 4});
  auto seqs = one_pass(c, {.max_seq_length = 10, .overflow = OverflowRule::kSplit, .shuffle = false});
  // 3 | 10 | 10 | 5+4
  ASSERT_EQ(seqs.size(), 4u);
  EXPECT_EQ(seqs[1][0].begin, 0u);
  EXPECT_EQ(seqs[2][0].begin, 10u);
  EXPECT_EQ(seqs[2][0].end, 20u);
  ASSERT_EQ(seqs[3].size(), 2u);
  EXPECT_EQ(seqs[3][0].begin, 20u);
  EXPECT_EQ(seqs[3][0].end, 25u);
  EXPECT_EQ(seqs[3][1].document, 2u);
  Row r = make_row(c, seqs[2], 10);
  EXPECT_EQ(r.ids[0], 1010);
  EXPECT_EQ(r.positions[0], 0);  // a chunk restarts its positions
  EXPECT_EQ(r.labels[0], -100);
  EXPECT_EQ(r.labels[1], (1 + 11) % 3 != 0 ? 1011 : -100);
}

// Over one shuffled pass with the split rule, every token of every document appears exactly once,
// and every row satisfies the layout rules.
TEST(Packing, SplitCoversEveryTokenOnceAndRowsAreWellFormed) {
  std::vector<uint64_t> lengths;
  for (int d = 0; d < 200; ++d) lengths.push_back((d * 37) % 53);  // includes empty documents and > T
  TokenCorpus c = synthetic_corpus(lengths);
  const int64_t T = 32;
  std::map<uint64_t, uint64_t> seen;  // token id -> count
  for (const auto& s : one_pass(c, {.max_seq_length = T, .overflow = OverflowRule::kSplit, .seed = 9})) {
    Row r = make_row(c, s, T);
    int64_t used = 0;
    for (const Piece& p : s) {
      for (uint64_t k = p.begin; k < p.end; ++k, ++used) {
        const int64_t token = c.document(p.document).tokens[k];
        ++seen[token];
        ASSERT_EQ(r.ids[used], token);
        ASSERT_EQ(r.positions[used], static_cast<int64_t>(k - p.begin));
        ASSERT_EQ(r.mask[used], 1);
        const bool trained = k != p.begin && c.loss_bit(c.document(p.document).first_token + k);
        ASSERT_EQ(r.labels[used], trained ? token : -100);
      }
    }
    for (int64_t t = used; t < T; ++t) {
      ASSERT_EQ(r.mask[t], 0);
      ASSERT_EQ(r.labels[t], -100);
      ASSERT_EQ(r.positions[t], t - used);
    }
  }
  uint64_t total = 0;
  for (auto [token, count] : seen) {
    ASSERT_EQ(count, 1u) << "token " << token;
    ++total;
  }
  EXPECT_EQ(total, c.num_tokens());
}

TEST(Packing, EpochOrdersAreDeterministicAndDiffer) {
  TokenCorpus c = synthetic_corpus(std::vector<uint64_t>(50, 3));
  PackingOptions o{.max_seq_length = 3, .seed = 11};
  SequencePacker a(c, all_documents(50), o), b(c, all_documents(50), o);
  std::vector<uint64_t> docs_a, docs_b;
  for (int i = 0; i < 100; ++i) {  // two epochs: one document per sequence
    docs_a.push_back((*a.next_sequence())[0].document);
    docs_b.push_back((*b.next_sequence())[0].document);
  }
  EXPECT_EQ(docs_a, docs_b);
  EXPECT_EQ(a.cursor(), (PackCursor{1, 50, 0}));  // epoch 2 starts at the next read
  std::vector<uint64_t> epoch0(docs_a.begin(), docs_a.begin() + 50), epoch1(docs_a.begin() + 50, docs_a.end());
  EXPECT_EQ(epoch0, a.epoch_order(0));
  EXPECT_EQ(epoch1, a.epoch_order(1));
  EXPECT_NE(epoch0, epoch1);
  o.shuffle = false;
  EXPECT_EQ(SequencePacker(c, all_documents(50), o).epoch_order(3), all_documents(50));
}

TEST(Packing, BadOptionsAndEmptyData) {
  TokenCorpus c = synthetic_corpus({0, 0});
  EXPECT_THROW(SequencePacker(c, {0, 1}, {.max_seq_length = 0}), Error);
  EXPECT_THROW(SequencePacker(c, {2}, {}), Error);
  SequencePacker repeating(c, {0, 1}, {.max_seq_length = 4});
  EXPECT_THROW(repeating.next_sequence(), Error);  // would loop forever
  SequencePacker once(c, {0, 1}, {.max_seq_length = 4, .repeat = false});
  EXPECT_FALSE(once.next_sequence().has_value());
  EXPECT_EQ(overflow_rule_from_name("split"), OverflowRule::kSplit);
  EXPECT_THROW(overflow_rule_from_name("wrap"), Error);
}

}  // namespace
}  // namespace moeforge::data

namespace moeforge::data {
namespace {

// TRL's packing=False: one example per sequence, each padded to T; under split one chunk per sequence.
TEST(Packing, WithoutPackingEachSequenceHoldsOnePiece) {
  TokenCorpus c = synthetic_corpus({6, 5, 4, 2, 13});
  auto seqs = one_pass(c, {.max_seq_length = 10, .shuffle = false, .packing = false});
  const std::vector<std::vector<Piece>> want = {{{0, 0, 6}}, {{1, 0, 5}}, {{2, 0, 4}}, {{3, 0, 2}}, {{4, 0, 10}}};
  ASSERT_EQ(seqs.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(seqs[s].size(), 1u) << "sequence " << s;
    EXPECT_EQ(seqs[s][0].document, want[s][0].document);
    EXPECT_EQ(seqs[s][0].end - seqs[s][0].begin, want[s][0].end - want[s][0].begin);
  }
  auto split = one_pass(c, {.max_seq_length = 10, .overflow = OverflowRule::kSplit, .shuffle = false, .packing = false});
  ASSERT_EQ(split.size(), 6u);  // document 4 as 10 + 3
  EXPECT_EQ(split[5][0].begin, 10u);
  EXPECT_EQ(split[5][0].end, 13u);
}

}  // namespace
}  // namespace moeforge::data
