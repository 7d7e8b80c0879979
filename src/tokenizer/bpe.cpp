#include "tokenizer/bpe.h"

#include <cstdio>
#include <algorithm>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace moeforge::tokenizer_detail {

namespace {

constexpr const char* kWhere = "model BPE";

std::optional<std::string> optional_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  MF_CHECK(it->is_string(), kFormat, kWhere, ": \"", key, "\" must be a string or null");
  return it->get<std::string>();
}

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

void MergeTable::reserve(size_t n) {
  size_t capacity = 16;
  while (capacity < 2 * n) capacity *= 2;
  slots_.assign(capacity, Slot{kEmpty, {0, 0}});
  size_ = 0;
}

size_t MergeTable::slot_of(uint64_t key) const {
  // Fibonacci hashing spreads the (left, right) id pairs over the power-of-two table.
  return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & (slots_.size() - 1);
}

void MergeTable::insert(uint64_t key, std::pair<uint32_t, int32_t> value) {
  if (2 * (size_ + 1) > slots_.size()) {
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(size_ + 1, old.size()));
    for (const auto& s : old)
      if (s.key != kEmpty) insert(s.key, s.value);
  }
  for (size_t i = slot_of(key);; i = (i + 1) & (slots_.size() - 1)) {
    if (slots_[i].key == key) {  // a repeated merge: the later rank wins, as in HF's map
      slots_[i].value = value;
      return;
    }
    if (slots_[i].key == kEmpty) {
      slots_[i] = {key, value};
      ++size_;
      return;
    }
  }
}

const std::pair<uint32_t, int32_t>* MergeTable::find(uint64_t key) const {
  if (slots_.empty()) return nullptr;
  for (size_t i = slot_of(key);; i = (i + 1) & (slots_.size() - 1)) {
    if (slots_[i].key == key) return &slots_[i].value;
    if (slots_[i].key == kEmpty) return nullptr;
  }
}

BpeModel::BpeModel(const json& model, const BpeEntries& entries) {
  MF_CHECK(model.is_object(), kFormat, "\"model\" must be a JSON object");
  const std::string type = model.contains("type") ? string_member(model, "type", "model") : "BPE";
  MF_CHECK(type == "BPE", kUnsupported, "unsupported model type \"", type, "\"");
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null()) {
    MF_CHECK(dropout->is_number(), kFormat, kWhere, ": \"dropout\" must be a number or null");
    // HF treats 0.0 like null (no dropout); any other value makes encoding random.
    MF_CHECK(dropout->get<double>() == 0.0, kUnsupported, kWhere, ": unsupported dropout ", dropout->dump(),
             " (only null is supported)");
  }
  unk_token_ = optional_string(model, "unk_token");
  continuing_subword_prefix_ = optional_string(model, "continuing_subword_prefix");
  end_of_word_suffix_ = optional_string(model, "end_of_word_suffix");
  byte_fallback_ = bool_member(model, "byte_fallback", false, kWhere);
  fuse_unk_ = bool_member(model, "fuse_unk", false, kWhere);
  ignore_merges_ = bool_member(model, "ignore_merges", false, kWhere);

  const json& vocab = member(model, "vocab", kWhere);
  MF_CHECK(vocab.is_object(), kFormat, kWhere, ": \"vocab\" must be an object of token: id");
  MF_CHECK(!entries.non_integer_id, kFormat, kWhere, ": vocab id of \"", entries.non_integer_id.value_or(""),
           "\" must be a non-negative 32-bit integer");
  vocab_.reserve(entries.vocab.size());
  for (const auto& [token, id] : entries.vocab) {
    MF_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX, kFormat, kWhere,
             ": vocab id of \"", token, "\" must be a non-negative 32-bit integer");
    const auto i = id.get<int32_t>();
    vocab_[token] = i;
    if (static_cast<size_t>(i) >= vocab_r_.size()) {
      vocab_r_.resize(static_cast<size_t>(i) + 1);
      has_id_.resize(static_cast<size_t>(i) + 1);
    }
    vocab_r_[i] = token;
    has_id_[i] = true;
  }
  byte_token_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (auto id = lookup(name)) byte_token_ids_[b] = *id;
  }

  const json& merges = member(model, "merges", kWhere);
  MF_CHECK(merges.is_array(), kFormat, kWhere, ": \"merges\" must be a list");
  const size_t prefix_len = continuing_subword_prefix_ ? continuing_subword_prefix_->size() : 0;
  merges_.reserve(entries.merges.size());
  uint32_t rank = 0;
  std::string merged;
  for (const auto& m : entries.merges) {
    std::string_view a, b;
    if (m.is_string()) {  // "a b"
      const std::string& line = m.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      MF_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos, kFormat, kWhere,
               ": merge ", rank + 1, " \"", line, "\" must be two tokens separated by one space");
      a = std::string_view(line).substr(0, space);
      b = std::string_view(line).substr(space + 1);
    } else {  // ["a", "b"]
      MF_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), kFormat, kWhere, ": merge ",
               rank + 1, " must be \"a b\" or [\"a\", \"b\"]");
      a = m[0].get_ref<const std::string&>();
      b = m[1].get_ref<const std::string&>();
    }
    const auto a_id = lookup(a), b_id = lookup(b);
    MF_CHECK(a_id.has_value(), kFormat, kWhere, ": merge token \"", a, "\" is not in the vocabulary");
    MF_CHECK(b_id.has_value(), kFormat, kWhere, ": merge token \"", b, "\" is not in the vocabulary");
    MF_CHECK(b.size() >= prefix_len, kFormat, kWhere, ": merge token \"", b, "\" is shorter than the subword prefix");
    merged.assign(a);
    merged.append(b.substr(prefix_len));
    const auto merged_id = lookup(merged);
    MF_CHECK(merged_id.has_value(), kFormat, kWhere, ": merged token \"", merged, "\" is not in the vocabulary");
    merges_.insert(pair_key(*a_id, *b_id), {rank, *merged_id});
    ++rank;
  }
  if (unk_token_) {
    // HF fails only when the unknown token is needed; failing at load names the problem sooner.
    MF_CHECK(lookup(*unk_token_).has_value(), kFormat, kWhere, ": unk_token \"", *unk_token_,
             "\" is not in the vocabulary");
  }
}

std::optional<int32_t> BpeModel::lookup(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const { return lookup(token); }

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_r_.size() || !has_id_[id]) return nullptr;
  return &vocab_r_[id];
}

void BpeModel::tokenize(std::string_view word, std::vector<WordToken>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = lookup(word)) {
      out.push_back({*id, static_cast<uint32_t>(word.size())});
      return;
    }
  }
  if (word.size() >= kCacheMaxWordBytes) {
    merge_word(word, out);
    return;
  }
  CacheShard& shard = cache_[StringHash{}(word) % kCacheShards];
  {
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.words.size() < kCacheCapacityPerShard) {
    shard.words.emplace(std::string(word), std::vector<WordToken>(out.begin() + static_cast<ptrdiff_t>(first), out.end()));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<WordToken>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t length;  // 0: merged into its left neighbour
  };
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  auto add = [&](int32_t id, uint32_t length) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, length});
    if (n > 0) symbols[n - 1].next = n;
  };

  // Initial symbols: one per character (word.rs Word::add via merge_word in model.rs).
  bool has_unk = false;  // a pending unknown token, maybe fused with the next ones
  WordToken unk{0, 0};
  std::string piece;
  for (size_t i = 0; i < w.size();) {
    const size_t len = utf8_length(static_cast<unsigned char>(w[i]));
    const bool is_first = i == 0, is_last = i + len >= w.size();
    piece.clear();
    if (!is_first && continuing_subword_prefix_) piece += *continuing_subword_prefix_;
    piece.append(w.substr(i, len));
    if (is_last && end_of_word_suffix_) piece += *end_of_word_suffix_;
    i += len;

    if (auto id = lookup(piece)) {
      if (has_unk) {
        add(unk.id, unk.length);
        has_unk = false;
      }
      add(*id, static_cast<uint32_t>(len));
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (unsigned char b : piece) all_bytes = all_bytes && byte_token_ids_[b] >= 0;
      if (all_bytes) {
        for (unsigned char b : piece) add(byte_token_ids_[b], 1);
        continue;
      }
    }
    if (unk_token_) {
      const int32_t unk_id = *lookup(*unk_token_);
      if (has_unk && fuse_unk_) {
        unk.length += static_cast<uint32_t>(len);
      } else {
        if (has_unk) add(unk.id, unk.length);
        unk = WordToken{unk_id, static_cast<uint32_t>(len)};
        has_unk = true;
      }
    }
  }
  if (has_unk) add(unk.id, unk.length);

  // Merges, lowest rank first and leftmost first among equal ranks (word.rs merge_all).
  struct Merge {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  // A min-heap on (rank, pos), kept in a per-thread buffer.
  thread_local std::vector<Merge> queue;
  queue.clear();
  auto push = [&](Merge m) {
    queue.push_back(m);
    std::push_heap(queue.begin(), queue.end());
  };
  auto find_merge = [&](int32_t a, int32_t b) { return merges_.find(pair_key(a, b)); };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (auto m = find_merge(symbols[i].id, symbols[i + 1].id))
      push({m->first, static_cast<int32_t>(i), m->second});
  }
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const Merge top = queue.back();
    queue.pop_back();
    Symbol& current = symbols[top.pos];
    if (current.length == 0 || current.next == -1) continue;
    const Symbol right = symbols[current.next];
    auto m = find_merge(current.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;  // an expired entry

    current.id = top.new_id;
    current.length += right.length;
    symbols[current.next].length = 0;
    current.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;

    if (current.prev >= 0) {
      if (auto pm = find_merge(symbols[current.prev].id, current.id)) push({pm->first, current.prev, pm->second});
    }
    if (current.next >= 0) {
      if (auto nm = find_merge(current.id, symbols[current.next].id)) push({nm->first, top.pos, nm->second});
    }
  }
  for (const auto& s : symbols) {
    if (s.length != 0) out.push_back({s.id, s.length});
  }
}

}  // namespace moeforge::tokenizer_detail
