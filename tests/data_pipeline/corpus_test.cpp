// TokenCorpus in memory and as .mfbin; deterministic shuffling; the held-out split.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "core/error.h"
#include "data/dataset.h"
#include "data/shuffle.h"
#include "data/token_corpus.h"
#include "data_test_util.h"

namespace moeforge::data {
namespace {

using testing::ScratchDir;
using testing::synthetic_corpus;

void expect_same_corpus(const TokenCorpus& a, const TokenCorpus& b) {
  ASSERT_EQ(a.num_documents(), b.num_documents());
  ASSERT_EQ(a.num_tokens(), b.num_tokens());
  for (uint64_t d = 0; d < a.num_documents(); ++d) {
    DocumentView da = a.document(d), db = b.document(d);
    ASSERT_EQ(std::vector<uint32_t>(da.tokens.begin(), da.tokens.end()),
              std::vector<uint32_t>(db.tokens.begin(), db.tokens.end()))
        << "document " << d;
  }
  for (uint64_t t = 0; t < a.num_tokens(); ++t) ASSERT_EQ(a.loss_bit(t), b.loss_bit(t)) << "token " << t;
}

TEST(TokenCorpus, BuilderKeepsDocumentsAndLossBits) {
  TokenCorpus c = synthetic_corpus({3, 0, 9, 1});
  ASSERT_EQ(c.num_documents(), 4u);
  EXPECT_EQ(c.num_tokens(), 13u);
  EXPECT_EQ(c.document_length(1), 0u);
  DocumentView d2 = c.document(2);
  ASSERT_EQ(d2.tokens.size(), 9u);
  EXPECT_EQ(d2.first_token, 3u);
  for (uint64_t k = 0; k < 9; ++k) {
    EXPECT_EQ(d2.tokens[k], 2000 + k);
    EXPECT_EQ(c.loss_bit(d2.first_token + k), (2 + k) % 3 != 0);
  }
}

TEST(TokenCorpus, MfbinRoundTrip) {
  ScratchDir dir;
  CorpusBuilder builder;
  TokenCorpus original = synthetic_corpus({5, 17, 0, 64, 1, 33});
  original.write_mfbin(dir.path() / "a.mfbin");
  TokenCorpus read = TokenCorpus::open_mfbin(dir.path() / "a.mfbin");
  expect_same_corpus(original, read);
  EXPECT_EQ(read.metadata(), nlohmann::json::object());

  std::vector<uint32_t> ids = {7, 8, 9};
  std::vector<uint8_t> mask = {0, 1, 1};
  builder.add_document(ids, mask);
  TokenCorpus with_meta = builder.finish("x", 512, {{"source", "x.jsonl"}});
  with_meta.write_mfbin(dir.path() / "b.mfbin");
  TokenCorpus b = TokenCorpus::open_mfbin(dir.path() / "b.mfbin");
  EXPECT_EQ(b.vocab_size(), 512u);
  EXPECT_EQ(b.metadata()["source"], "x.jsonl");
  expect_same_corpus(with_meta, b);
  EXPECT_NO_THROW(b.check_vocabulary(512));
  try {
    b.check_vocabulary(600);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("made with a tokenizer of 512 tokens, but the tokenizer in use has 600"),
              std::string::npos)
        << e.what();
  }
}

TEST(TokenCorpus, MfbinRejectsDamagedFiles) {
  ScratchDir dir;
  synthetic_corpus({5, 17, 64}).write_mfbin(dir.path() / "ok.mfbin");
  std::ifstream in(dir.path() / "ok.mfbin", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  auto expect_format_error = [&](const std::string& name, const std::string& contents, const std::string& needle) {
    auto path = dir.write(name, contents);
    try {
      TokenCorpus::open_mfbin(path);
      FAIL() << name << " opened";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
      EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_format_error("short.mfbin", bytes.substr(0, 100), "too short");
  expect_format_error("truncated.mfbin", bytes.substr(0, bytes.size() / 2), "does not fit");
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  expect_format_error("magic.mfbin", bad_magic, "not a .mfbin file");
  std::string bad_version = bytes;
  bad_version[8] = 9;
  expect_format_error("version.mfbin", bad_version, "version 9");
  std::string bad_offsets = bytes;
  bad_offsets[128 + 8] = 100;  // doc_offsets[1] = 100 > doc_offsets[2]
  expect_format_error("offsets.mfbin", bad_offsets, "decrease at document 1");

  try {
    TokenCorpus::open_mfbin(dir.path() / "missing.mfbin");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  }
}

// Every header byte and every doc_offsets byte set to 0xff in turn: the file either opens and reads
// within its bounds, or is an Error; never a crash (the ASan build checks the reads).
TEST(TokenCorpus, MfbinCorruptionIsCaught) {
  ScratchDir dir;
  synthetic_corpus({5, 17, 0, 64}).write_mfbin(dir.path() / "ok.mfbin");
  std::ifstream in(dir.path() / "ok.mfbin", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t at = 0; at < kMfbinHeaderBytes + 5 * 8; ++at) {
    std::string damaged = bytes;
    damaged[at] = static_cast<char>(0xff);
    auto path = dir.write("damaged.mfbin", damaged);
    try {
      TokenCorpus c = TokenCorpus::open_mfbin(path);
      uint64_t sum = 0;
      for (uint64_t d = 0; d < c.num_documents(); ++d)
        for (uint32_t token : c.document(d).tokens) sum += token;
      for (uint64_t t = 0; t < c.num_tokens(); ++t) sum += c.loss_bit(t);
      EXPECT_GT(sum, 0u) << "byte " << at;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << "byte " << at << ": " << e.what();
    }
  }
}

TEST(TokenCorpus, CheckVocabularyNamesTheDocument) {
  TokenCorpus c = synthetic_corpus({4, 4});  // ids up to 1003
  try {
    c.check_vocabulary(1002);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("document 1 holds token id 1002"), std::string::npos) << e.what();
  }
}

TEST(Shuffle, DeterministicPermutationPerSeedAndEpoch) {
  std::vector<uint64_t> items = all_documents(1000);
  std::vector<uint64_t> e0 = shuffled(items, 7, 0), e0_again = shuffled(items, 7, 0);
  std::vector<uint64_t> e1 = shuffled(items, 7, 1), other_seed = shuffled(items, 8, 0);
  EXPECT_EQ(e0, e0_again);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, other_seed);
  EXPECT_NE(e0, items);
  std::vector<uint64_t> sorted = e1;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, items);
}

TEST(Shuffle, BelowIsInRangeAndCoversIt) {
  SplitMix64 rng(123);
  std::vector<int> seen(7, 0);
  for (int i = 0; i < 7000; ++i) {
    uint64_t v = rng.below(7);
    ASSERT_LT(v, 7u);
    ++seen[v];
  }
  for (int count : seen) EXPECT_GT(count, 800);  // 1000 expected each
}

TEST(EvalSplit, DisjointCoveringAndStable) {
  DocumentSplit s = split_for_eval(1000, 0.1, 3);
  EXPECT_EQ(s.eval.size(), 100u);
  EXPECT_EQ(s.train.size(), 900u);
  std::set<uint64_t> all(s.train.begin(), s.train.end());
  for (uint64_t d : s.eval) EXPECT_TRUE(all.insert(d).second) << "document " << d << " in both parts";
  EXPECT_EQ(all.size(), 1000u);
  EXPECT_TRUE(std::is_sorted(s.eval.begin(), s.eval.end()));
  DocumentSplit again = split_for_eval(1000, 0.1, 3), other = split_for_eval(1000, 0.1, 4);
  EXPECT_EQ(s.eval, again.eval);
  EXPECT_NE(s.eval, other.eval);

  EXPECT_EQ(split_for_eval(10, 0.01, 1).eval.size(), 1u);   // at least one held out
  EXPECT_EQ(split_for_eval(2, 0.9, 1).train.size(), 1u);    // at least one left to train
  EXPECT_TRUE(split_for_eval(10, 0.0, 1).eval.empty());
  EXPECT_THROW(split_for_eval(10, 1.0, 1), Error);
  EXPECT_THROW(split_for_eval(1, 0.5, 1), Error);
}

}  // namespace
}  // namespace moeforge::data
