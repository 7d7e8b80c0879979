// DataLoader: batches, exact resume, sharding, the end of a finite pass.
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "data/data_loader.h"
#include "data/dataset.h"
#include "data_test_util.h"

namespace moeforge::data {
namespace {

using testing::synthetic_corpus;

std::shared_ptr<const TokenCorpus> corpus_of_mixed_lengths(int n = 120) {
  std::vector<uint64_t> lengths;
  for (int d = 0; d < n; ++d) lengths.push_back(1 + (d * 29) % 41);  // 1 .. 41, some longer than T
  return std::make_shared<const TokenCorpus>(synthetic_corpus(lengths));
}

std::vector<int64_t> values(const Tensor& t) {
  const int64_t* p = t.data<int64_t>();
  return {p, p + t.numel()};
}

void expect_same_batch(const PackedBatch& a, const PackedBatch& b, const std::string& what) {
  EXPECT_EQ(values(a.input_ids), values(b.input_ids)) << what;
  EXPECT_EQ(values(a.labels), values(b.labels)) << what;
  EXPECT_EQ(values(a.position_ids), values(b.position_ids)) << what;
  EXPECT_EQ(values(a.attention_mask), values(b.attention_mask)) << what;
  EXPECT_EQ(a.num_label_tokens, b.num_label_tokens) << what;
}

TEST(DataLoader, BatchShapesAndCounts) {
  auto c = corpus_of_mixed_lengths();
  DataLoader loader(c, all_documents(c->num_documents()), {.max_seq_length = 16, .batch_size = 3});
  PackedBatch b = *loader.next();
  EXPECT_EQ(b.input_ids.shape(), (Shape{3, 16}));
  EXPECT_EQ(b.labels.dtype(), DType::kI64);
  int64_t labels = 0, tokens = 0;
  for (int64_t v : values(b.labels)) labels += v != -100;
  for (int64_t v : values(b.attention_mask)) tokens += v;
  EXPECT_EQ(b.num_label_tokens, labels);
  EXPECT_EQ(b.num_tokens, tokens);
  EXPECT_GT(labels, 0);
}

// Consume k batches, save the position as JSON text, restore it in a fresh loader: the next m batches
// equal those of an uninterrupted loader. Checked at many k, across epoch ends, under both rules.
TEST(DataLoader, ResumeIsExact) {
  auto c = corpus_of_mixed_lengths();
  for (OverflowRule rule : {OverflowRule::kTruncate, OverflowRule::kSplit}) {
    LoaderOptions o{.max_seq_length = 24, .batch_size = 2, .seed = 5, .overflow = rule};
    DataLoader uninterrupted(c, all_documents(c->num_documents()), o);
    std::vector<PackedBatch> reference;
    for (int i = 0; i < 200; ++i) reference.push_back(*uninterrupted.next());  // over 2 epochs
    ASSERT_GE(uninterrupted.epoch(), 2);

    for (int k : {0, 1, 7, 33, 34, 35, 59, 80, 101, 150, 185}) {
      DataLoader first(c, all_documents(c->num_documents()), o);
      for (int i = 0; i < k; ++i) first.next();
      const std::string saved = first.position().dump();
      DataLoader resumed(c, all_documents(c->num_documents()), o);
      resumed.restore(nlohmann::json::parse(saved));
      EXPECT_EQ(resumed.position(), first.position());
      for (int i = k; i < std::min(k + 15, 200); ++i)
        expect_same_batch(*resumed.next(), reference[i], str_cat(overflow_rule_name(rule), " k=", k, " batch ", i));
    }
  }
}

TEST(DataLoader, ResumeMidDocumentUnderSplit) {
  auto c = std::make_shared<const TokenCorpus>(synthetic_corpus({100, 3, 77, 5}));
  LoaderOptions o{.max_seq_length = 8, .batch_size = 1, .seed = 1, .overflow = OverflowRule::kSplit};
  DataLoader a(c, all_documents(4), o), b(c, all_documents(4), o);
  bool saw_offset = false;
  for (int i = 0; i < 40; ++i) {
    a.next();
    if (a.position()["offset"] != 0) {
      saw_offset = true;
      DataLoader resumed(c, all_documents(4), o);
      resumed.restore(a.position());
      DataLoader copy(c, all_documents(4), o);
      copy.restore(a.position());
      expect_same_batch(*resumed.next(), *copy.next(), "mid-document");
    }
  }
  EXPECT_TRUE(saw_offset);
}

TEST(DataLoader, RestoreRejectsOtherDataOrOptions) {
  auto c = corpus_of_mixed_lengths();
  DataLoader loader(c, all_documents(c->num_documents()), {.max_seq_length = 16, .seed = 5});
  loader.next();
  const nlohmann::json pos = loader.position();
  auto expect_rejected = [&](DataLoader other, const std::string& key) {
    try {
      other.restore(pos);
      FAIL() << key;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("'" + key + "'"), std::string::npos) << e.what();
    }
  };
  expect_rejected(DataLoader(c, all_documents(c->num_documents()), {.max_seq_length = 16, .seed = 6}), "seed");
  expect_rejected(DataLoader(c, all_documents(c->num_documents()), {.max_seq_length = 32, .seed = 5}), "max_seq_length");
  expect_rejected(DataLoader(c, all_documents(50), {.max_seq_length = 16, .seed = 5}), "documents");
  expect_rejected(
      DataLoader(c, all_documents(c->num_documents()), {.max_seq_length = 16, .seed = 5, .overflow = OverflowRule::kSplit}),
      "overflow");
  // batch_size and world_size may change: the stream is the same.
  DataLoader bigger(c, all_documents(c->num_documents()), {.max_seq_length = 16, .batch_size = 4, .seed = 5});
  EXPECT_NO_THROW(bigger.restore(pos));
  nlohmann::json broken = pos;
  broken["index"] = 100000;
  EXPECT_THROW(loader.restore(broken), Error);
}

// World w, batch b: rank r's rows are rows [r*b, (r+1)*b) of the single-rank loader with batch w*b,
// so the ranks' sequences are disjoint and together cover the stream.
TEST(DataLoader, ShardingSplitsTheGlobalBatch) {
  auto c = corpus_of_mixed_lengths();
  const int64_t W = 3, B = 2, T = 20;
  DataLoader global(c, all_documents(c->num_documents()), {.max_seq_length = T, .batch_size = W * B, .seed = 2});
  std::vector<DataLoader> ranks;
  for (int64_t r = 0; r < W; ++r)
    ranks.emplace_back(c, all_documents(c->num_documents()),
                       LoaderOptions{.max_seq_length = T, .batch_size = B, .seed = 2, .rank = r, .world_size = W});
  std::set<std::vector<int64_t>> rows_seen;
  for (int step = 0; step < 30; ++step) {
    PackedBatch g = *global.next();
    std::vector<int64_t> all_ids = values(g.input_ids);
    for (int64_t r = 0; r < W; ++r) {
      PackedBatch mine = *ranks[r].next();
      std::vector<int64_t> expected(all_ids.begin() + r * B * T, all_ids.begin() + (r + 1) * B * T);
      ASSERT_EQ(values(mine.input_ids), expected) << "step " << step << " rank " << r;
      EXPECT_EQ(ranks[r].position(), global.position());
      if (global.epoch() > 0) continue;  // a later epoch may repeat a row (a document alone in it)
      for (int64_t row = 0; row < B; ++row) {
        std::vector<int64_t> ids(expected.begin() + row * T, expected.begin() + (row + 1) * T);
        EXPECT_TRUE(rows_seen.insert(ids).second) << "a row appears twice in epoch 0, step " << step;
      }
    }
  }
  EXPECT_GT(rows_seen.size(), 50u);
}

TEST(DataLoader, FinitePassEndsWithEmptyRowsThenNothing) {
  auto c = std::make_shared<const TokenCorpus>(synthetic_corpus({10, 10, 10, 10, 10}));
  // T = 10: five sequences; world 2 x batch 2 = 4 per global batch: two batches, the second with
  // one real row (rank 0's first) and three empty ones.
  std::vector<std::vector<int64_t>> tokens_per_rank(2);
  for (int64_t r = 0; r < 2; ++r) {
    DataLoader eval(c, all_documents(5),
                    {.max_seq_length = 10, .batch_size = 2, .rank = r, .world_size = 2, .shuffle = false, .repeat = false});
    EXPECT_EQ(eval.batches_per_epoch(), 2);
    int batches = 0;
    while (auto b = eval.next()) {
      ++batches;
      tokens_per_rank[r].push_back(b->num_tokens);
    }
    EXPECT_EQ(batches, 2);
    EXPECT_FALSE(eval.next().has_value());
  }
  EXPECT_EQ(tokens_per_rank[0], (std::vector<int64_t>{20, 10}));
  EXPECT_EQ(tokens_per_rank[1], (std::vector<int64_t>{20, 0}));
}

// A batch sized to a small dataset (fit_batch_to_epoch): one process takes the epoch's three
// sequences in each batch; two processes take the same sequences in the same rows, then an empty
// row, in as many batches per epoch.
TEST(DataLoader, FittedBatchHoldsTheSameSequencesAtEveryProcessCount) {
  auto c = std::make_shared<const TokenCorpus>(synthetic_corpus({10, 10, 10}));
  const std::vector<uint64_t> docs = all_documents(3);
  LoaderOptions single{.max_seq_length = 10, .batch_size = 8, .seed = 3};
  const int64_t sequences = fit_batch_to_epoch(c, docs, single);
  EXPECT_EQ(single.batch_size, sequences);
  DataLoader whole(c, docs, single);
  std::vector<DataLoader> ranks;
  for (int64_t r = 0; r < 2; ++r) {
    LoaderOptions o{.max_seq_length = 10, .batch_size = 8, .seed = 3, .rank = r, .world_size = 2};
    EXPECT_EQ(fit_batch_to_epoch(c, docs, o), sequences);
    EXPECT_EQ(o.batch_size, (sequences + 1) / 2);
    ranks.emplace_back(c, docs, o);
    EXPECT_EQ(ranks.back().batches_per_epoch(), whole.batches_per_epoch());
  }
  for (int step = 0; step < 4; ++step) {  // across epochs
    const PackedBatch want = *whole.next();
    std::vector<int64_t> ids, mask;
    for (DataLoader& rank : ranks) {
      const PackedBatch b = *rank.next();
      for (int64_t v : values(b.input_ids)) ids.push_back(v);
      for (int64_t v : values(b.attention_mask)) mask.push_back(v);
      EXPECT_EQ(rank.position(), whole.position()) << "step " << step;
    }
    const std::vector<int64_t> want_ids = values(want.input_ids), want_mask = values(want.attention_mask);
    EXPECT_EQ(std::vector<int64_t>(ids.begin(), ids.begin() + want_ids.size()), want_ids) << "step " << step;
    EXPECT_EQ(std::vector<int64_t>(mask.begin(), mask.begin() + want_mask.size()), want_mask) << "step " << step;
    EXPECT_EQ(std::vector<int64_t>(mask.begin() + want_mask.size(), mask.end()),
              std::vector<int64_t>(mask.size() - want_mask.size(), 0))
        << "step " << step << ": the rows past the sequences are empty";
  }
}

TEST(DataLoader, EpochCountsAndSeeds) {
  auto c = std::make_shared<const TokenCorpus>(synthetic_corpus(std::vector<uint64_t>(10, 8)));
  DataLoader loader(c, all_documents(10), {.max_seq_length = 8, .batch_size = 5, .seed = 3});
  EXPECT_EQ(loader.batches_per_epoch(), 2);
  EXPECT_EQ(loader.epoch(), 0);
  loader.next();
  EXPECT_DOUBLE_EQ(loader.epoch_progress(), 0.5);
  loader.next();
  EXPECT_EQ(loader.epoch(), 1);
  DataLoader same(c, all_documents(10), {.max_seq_length = 8, .batch_size = 5, .seed = 3});
  DataLoader other(c, all_documents(10), {.max_seq_length = 8, .batch_size = 5, .seed = 4});
  PackedBatch a = *same.next(), b = *other.next();
  DataLoader again(c, all_documents(10), {.max_seq_length = 8, .batch_size = 5, .seed = 3});
  expect_same_batch(a, *again.next(), "same seed");
  EXPECT_NE(values(a.input_ids), values(b.input_ids));
  EXPECT_THROW(DataLoader(c, all_documents(10), {.rank = 2, .world_size = 2}), Error);
}

}  // namespace
}  // namespace moeforge::data
