// The BPE model of Hugging Face tokenizers (models/bpe): vocabulary, ranked merges applied lowest
// rank first (ties: leftmost first), byte fallback, unknown token, subword prefix and suffix, and
// ignore_merges. Words already merged are cached.
#pragma once

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pipeline.h"

namespace moeforge::tokenizer_detail {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// One token of a word: its id and its byte length in the word.
struct WordToken {
  int32_t id;
  uint32_t length;
};

// (left id, right id) -> (rank, merged id), an open-addressing table: merges are looked up for
// every pair of neighbouring symbols.
class MergeTable {
 public:
  void reserve(size_t n);
  void insert(uint64_t key, std::pair<uint32_t, int32_t> value);
  const std::pair<uint32_t, int32_t>* find(uint64_t key) const;

 private:
  static constexpr uint64_t kEmpty = ~0ull;  // ids are below 2^31, so no key has all bits set
  struct Slot {
    uint64_t key;
    std::pair<uint32_t, int32_t> value;
  };
  size_t slot_of(uint64_t key) const;
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

// model.vocab and model.merges of tokenizer.json, read outside the JSON document (see
// parse_tokenizer_json in tokenizer.cpp): (token, id) pairs and "a b" / ["a", "b"] entries.
struct BpeEntries {
  std::vector<std::pair<std::string, json>> vocab;
  std::vector<json> merges;
  std::optional<std::string> non_integer_id;  // a vocab token whose id is an object or a list
};

class BpeModel {
 public:
  // `model` is the "model" object of tokenizer.json, with its vocab and merges in `entries`.
  BpeModel(const json& model, const BpeEntries& entries);

  // Appends the tokens of one pre-tokenized word, each with its byte length in `word`.
  void tokenize(std::string_view word, std::vector<WordToken>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  size_t vocab_size() const { return vocab_.size(); }

 private:
  void merge_word(std::string_view word, std::vector<WordToken>& out) const;
  std::optional<int32_t> lookup(std::string_view token) const;

  StringMap<int32_t> vocab_;
  std::vector<std::string> vocab_r_;  // by id; ids without a token hold an empty string
  std::vector<bool> has_id_;
  MergeTable merges_;
  std::optional<std::string> unk_token_, continuing_subword_prefix_, end_of_word_suffix_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::array<int32_t, 256> byte_token_ids_{};  // <0xXX> ids for byte_fallback, -1 when absent

  // A bounded cache of merged words, sharded so that threads rarely wait on one another.
  static constexpr size_t kCacheShards = 16, kCacheCapacityPerShard = 8192, kCacheMaxWordBytes = 256;
  struct CacheShard {
    std::mutex mutex;
    StringMap<std::vector<WordToken>> words;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace moeforge::tokenizer_detail
