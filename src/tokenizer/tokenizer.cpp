// The Tokenizer: tokenizer.json loading, added tokens, and the encode/decode pipeline of Hugging
// Face tokenizers (tokenizer/mod.rs, tokenizer/added_vocabulary.rs).
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <exception>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "io/json.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace moeforge {
namespace tokenizer_detail {

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  bool operator==(const AddedToken&) const = default;
};

// Leftmost-longest matching of a set of strings (the Aho-Corasick automaton HF builds with
// MatchKind::LeftmostLongest gives the same matches).
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) { first_byte_.fill(false); }
  void insert(std::string_view s, int32_t value) {
    if (s.empty()) return;
    first_byte_[static_cast<unsigned char>(s[0])] = true;
    size_t node = 0;
    for (unsigned char c : s) {
      int32_t child = find_child(node, c);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = static_cast<size_t>(child);
    }
    nodes_[node].value = value;
  }
  bool empty() const { return nodes_.size() == 1; }
  // The leftmost match starting at or after `from`, longest among those at that start.
  bool find(std::string_view text, size_t from, size_t* begin, size_t* end, int32_t* value) const {
    for (size_t start = from; start < text.size(); ++start) {
      if (!first_byte_[static_cast<unsigned char>(text[start])]) continue;
      size_t node = 0;
      int64_t best_end = -1;
      for (size_t i = start; i < text.size(); ++i) {
        const int32_t child = find_child(node, static_cast<unsigned char>(text[i]));
        if (child < 0) break;
        node = static_cast<size_t>(child);
        if (nodes_[node].value >= 0) {
          best_end = static_cast<int64_t>(i + 1);
          *value = nodes_[node].value;
        }
      }
      if (best_end >= 0) {
        *begin = start;
        *end = static_cast<size_t>(best_end);
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t value = -1;
  };
  int32_t find_child(size_t node, unsigned char c) const {
    for (const auto& [byte, child] : nodes_[node].children)
      if (byte == c) return child;
    return -1;
  }
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_;
};

struct TokenizerImpl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;

  // Added tokens, by id and by content; `normalized_form` holds the normalizer's output for the
  // tokens marked normalized where it differs from the content.
  std::map<int32_t, AddedToken> added_by_id;
  StringMap<int32_t> added_by_content;
  std::unordered_map<int32_t, std::string> normalized_form;
  std::set<std::string, std::less<>> special_contents;
  TokenTrie raw_trie;         // tokens matched in the raw input (normalized = false)
  TokenTrie normalized_trie;  // tokens matched after normalization

  void add_tokens(const std::vector<AddedToken>& tokens);
  void split_added(std::vector<Piece>& pieces, const TokenTrie& trie, bool normalize_first) const;
  Encoding encode(std::string_view text, bool add_special_tokens) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  std::optional<int32_t> token_to_id(std::string_view token) const {
    auto it = added_by_content.find(token);
    if (it != added_by_content.end()) return it->second;
    return model->token_to_id(token);
  }
  std::optional<std::string> id_to_token(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) {
      auto n = normalized_form.find(id);
      return n != normalized_form.end() ? n->second : it->second.content;
    }
    if (const std::string* t = model->id_to_token(id)) return *t;
    return std::nullopt;
  }
};

// AddedVocabulary::add_tokens: an added token takes the id its content already has (added or
// model vocabulary), else the next free id after the model's vocabulary. The "id" written in the
// file is not used, as in HF.
void TokenizerImpl::add_tokens(const std::vector<AddedToken>& tokens) {
  auto next_id = static_cast<int32_t>(model->vocab_size());
  for (const auto& token : tokens) {
    if (token.content.empty()) continue;
    auto existing = added_by_content.find(token.content);
    if (existing != added_by_content.end() && added_by_id.count(existing->second) &&
        added_by_id.at(existing->second) == token)
      continue;
    int32_t id;
    if (auto known = token_to_id(token.content)) id = *known;
    else id = next_id++;
    if (token.normalized && normalizer) {
      NormalizedString s;
      s.text = token.content;
      s.align.assign(s.text.size(), Span{0, 0});
      normalizer->normalize(s);
      if (s.text != token.content) normalized_form[id] = s.text;
    }
    added_by_content[token.content] = id;
    if (token.special) special_contents.insert(token.content);
    added_by_id[id] = token;
  }
  for (const auto& [id, token] : added_by_id) {
    if (token.normalized) {
      auto n = normalized_form.find(id);
      normalized_trie.insert(n != normalized_form.end() ? n->second : token.content, id);
    } else {
      raw_trie.insert(token.content, id);
    }
  }
}

namespace {

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  size_t len;
  return is_word_char(utf8_decode(s, start, &len));
}

bool starts_with_word(std::string_view s) {
  size_t len;
  return !s.empty() && is_word_char(utf8_decode(s, 0, &len));
}

// Start of the whitespace run that ends `s`.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t len;
    if (!is_whitespace(utf8_decode(s, start, &len))) break;
    end = start;
  }
  return end;
}

// Length of the whitespace run that starts `s`.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    if (!is_whitespace(utf8_decode(s, i, &len))) break;
    i += len;
  }
  return i;
}

}  // namespace

// AddedVocabulary::find_matches + split_with_indices on every piece still to tokenize;
// `normalize_first` applies the normalizer to a piece before matching (extract_and_normalize).
void TokenizerImpl::split_added(std::vector<Piece>& pieces, const TokenTrie& trie, bool normalize_first) const {
  std::vector<Piece> result;
  result.reserve(pieces.size());
  for (auto& piece : pieces) {
    if (piece.added_id >= 0) {
      result.push_back(std::move(piece));
      continue;
    }
    NormalizedString& s = piece.str;
    if (normalize_first && normalizer) normalizer->normalize(s);
    if (trie.empty()) {
      if (!s.text.empty()) result.push_back(std::move(piece));
      continue;
    }
    const std::string_view text = s.text;
    size_t start_offset = 0, from = 0, begin = 0, end = 0;
    int32_t id = -1;
    while (trie.find(text, from, &begin, &end, &id)) {
      from = end;
      const AddedToken& token = added_by_id.at(id);
      if (token.single_word) {
        const bool space_before = begin == 0 || !ends_with_word(text.substr(0, begin));
        const bool space_after = end == text.size() || !starts_with_word(text.substr(end));
        if (!space_before || !space_after) continue;
      }
      if (token.lstrip) begin = std::max(trailing_space_start(text.substr(0, begin)), start_offset);
      if (token.rstrip) end += leading_space_length(text.substr(end));
      if (start_offset < begin) result.push_back(Piece{s.slice(start_offset, begin), -1});
      result.push_back(Piece{s.slice(begin, end), id});
      start_offset = end;
    }
    if (start_offset < text.size()) result.push_back(Piece{s.slice(start_offset, text.size()), -1});
  }
  pieces = std::move(result);
}

Encoding TokenizerImpl::encode(std::string_view input, bool add_special_tokens) const {
  MF_CHECK(input.size() < UINT32_MAX, kInvalidArgument, "tokenizer: text of ", input.size(),
           " bytes is too long (at most 4 GiB)");
  std::vector<Piece> pieces(1);
  NormalizedString& root = pieces[0].str;
  if (utf8_is_valid(input)) {
    root.text.assign(input);
    root.align.resize(input.size());
    for (size_t i = 0; i < input.size();) {
      const size_t len = utf8_length(static_cast<unsigned char>(input[i]));
      const Span span{static_cast<uint32_t>(i), static_cast<uint32_t>(i + len)};
      for (size_t k = 0; k < len; ++k) root.align[i + k] = span;
      i += len;
    }
  } else {
    std::vector<uint32_t> begin, end;
    root.text = utf8_repair(input, &begin, &end);
    root.align.resize(root.text.size());
    for (size_t i = 0; i < root.text.size(); ++i) root.align[i] = {begin[i], end[i]};
  }

  split_added(pieces, raw_trie, /*normalize_first=*/false);
  split_added(pieces, normalized_trie, /*normalize_first=*/true);
  if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);

  std::vector<Token> tokens;
  tokens.reserve(input.size() / 3 + 4);
  thread_local std::vector<WordToken> word;
  for (const auto& piece : pieces) {
    if (piece.added_id >= 0) {
      tokens.push_back({piece.added_id, piece.str.span_of(0, piece.str.text.size()), piece.str.text});
      continue;
    }
    word.clear();
    model->tokenize(piece.str.text, word);
    size_t pos = 0;
    for (const auto& t : word) {
      const size_t end = std::min(pos + t.length, piece.str.text.size());
      tokens.push_back({t.id, piece.str.span_of(pos, end), *model->id_to_token(t.id)});
      pos = end;
    }
  }
  if (post_processor) post_processor->process(tokens, add_special_tokens);

  Encoding encoding;
  encoding.ids.reserve(tokens.size());
  encoding.offsets.reserve(tokens.size());
  for (const auto& t : tokens) {
    encoding.ids.push_back(t.id);
    encoding.offsets.emplace_back(t.offsets.begin, t.offsets.end);
  }
  return encoding;
}

std::string TokenizerImpl::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto token = id_to_token(id);
    if (!token) continue;  // unknown ids are skipped, as in HF
    if (skip_special_tokens && special_contents.count(*token)) continue;
    tokens.push_back(std::move(*token));
  }
  if (!decoder) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
    return joined;
  }
  decoder->decode_chain(tokens);
  std::string joined;
  for (const auto& t : tokens) joined += t;
  return joined;
}

namespace {

// Parses tokenizer.json with model.vocab and model.merges kept out of the document: they hold
// hundreds of thousands of entries that the document's std::map would build only to be copied.
json parse_tokenizer_json(std::string_view text, const std::string& source_name, BpeEntries& entries) {
  std::vector<std::string> path;  // the keys leading to the current value
  std::string vocab_token;
  bool in_vocab = false, in_merges = false;  // inside model.vocab (an object) / model.merges (a list)
  auto at = [&](const char* key) { return path.size() >= 2 && path[0] == "model" && path[1] == key; };
  using Event = json::parse_event_t;
  return parse_json_text<json>(text, source_name, [&](int depth, Event event, json& parsed) {
    if (event == Event::key) {
      path.resize(static_cast<size_t>(depth));
      path[depth - 1] = parsed.get<std::string>();
      if (in_vocab && depth == 3) {
        vocab_token = path[2];
        return false;  // the pair goes to entries.vocab, not the document
      }
      return true;
    }
    if (depth == 2 && (event == Event::object_start || event == Event::array_start)) {
      in_vocab = event == Event::object_start && path.size() == 2 && at("vocab");
      in_merges = event == Event::array_start && path.size() == 2 && at("merges");
      return true;
    }
    if (depth == 2 && (event == Event::object_end || event == Event::array_end)) {
      in_vocab = in_merges = false;
      return true;
    }
    if (depth == 3 && in_vocab && (event == Event::object_start || event == Event::array_start)) {
      entries.non_integer_id = vocab_token;  // the parser drops it without a callback at its end
      return true;
    }
    const bool element_done = event == Event::value || event == Event::object_end || event == Event::array_end;
    if (depth == 3 && element_done && in_vocab) {
      entries.vocab.emplace_back(vocab_token, std::move(parsed));
      return false;
    }
    if (depth == 3 && element_done && in_merges) {
      entries.merges.push_back(std::move(parsed));
      return false;
    }
    return true;
  });
}

std::unique_ptr<TokenizerImpl> build(const json& root, const BpeEntries& entries) {
  MF_CHECK(root.is_object(), kFormat, "the top level must be a JSON object");
  if (root.contains("version")) {
    MF_CHECK(root["version"].is_string() && root["version"] == "1.0", kUnsupported, "unknown tokenizer version ",
             root["version"].dump());
  }
  for (const char* key : {"truncation", "padding"}) {
    MF_CHECK(!root.contains(key) || root[key].is_null(), kUnsupported, "unsupported \"", key,
             "\" (set it to null; truncation and padding belong to the caller)");
  }
  auto impl = std::make_unique<TokenizerImpl>();
  impl->model = std::make_unique<BpeModel>(member(root, "model", "tokenizer.json"), entries);
  if (root.contains("normalizer")) impl->normalizer = make_normalizer(root["normalizer"]);
  if (root.contains("pre_tokenizer")) impl->pre_tokenizer = make_pre_tokenizer(root["pre_tokenizer"]);
  if (root.contains("post_processor")) impl->post_processor = make_post_processor(root["post_processor"]);
  if (root.contains("decoder")) impl->decoder = make_decoder(root["decoder"]);

  std::vector<AddedToken> added;
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    const json& list = root["added_tokens"];
    MF_CHECK(list.is_array(), kFormat, "\"added_tokens\" must be a list");
    for (const auto& t : list) {
      const std::string where = "added token";
      AddedToken token;
      token.content = string_member(t, "content", where);
      token.single_word = bool_member(t, "single_word", false, where);
      token.lstrip = bool_member(t, "lstrip", false, where);
      token.rstrip = bool_member(t, "rstrip", false, where);
      token.special = bool_member(t, "special", false, where);
      token.normalized = bool_member(t, "normalized", !token.special, where);
      MF_CHECK(utf8_is_valid(token.content), kFormat, "added token content is not valid UTF-8");
      added.push_back(std::move(token));
    }
  }
  impl->add_tokens(added);
  return impl;
}

}  // namespace
}  // namespace tokenizer_detail

using tokenizer_detail::TokenizerImpl;

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(std::string_view json_text, std::string_view source_name) {
  tokenizer_detail::BpeEntries entries;
  const tokenizer_detail::json root =
      tokenizer_detail::parse_tokenizer_json(json_text, std::string(source_name), entries);
  try {
    return Tokenizer(tokenizer_detail::build(root, entries));
  } catch (const Error& e) {
    throw Error(e.code(), str_cat(source_name, ": ", e.what()));
  } catch (const tokenizer_detail::json::exception& e) {
    fail(ErrorCode::kFormat, source_name, ": ", e.what());
  }
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  if (std::filesystem::is_directory(file)) file /= "tokenizer.json";
  std::ifstream in(file, std::ios::binary);
  MF_CHECK(in.good(), kNotFound, "cannot open tokenizer file ", file.string(),
           std::filesystem::is_directory(path) ? " (the folder must hold a tokenizer.json)" : "");
  std::ostringstream text;
  text << in.rdbuf();
  MF_CHECK(!in.bad(), kIo, "cannot read ", file.string());
  return from_json(text.str(), file.string());
}

Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens) const {
  std::vector<Encoding> out(texts.size());
  const size_t threads = std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), texts.size());
  if (threads <= 1) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], add_special_tokens);
    return out;
  }
  std::vector<std::exception_ptr> errors(threads);
  std::vector<std::thread> workers;
  for (size_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      try {
        for (size_t i = t; i < texts.size(); i += threads) out[i] = encode(texts[i], add_special_tokens);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& w : workers) w.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const { return impl_->token_to_id(token); }

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const { return impl_->id_to_token(id); }

size_t Tokenizer::vocab_size() const {
  size_t n = impl_->model->vocab_size();
  for (const auto& [content, id] : impl_->added_by_content)
    if (!impl_->model->token_to_id(content)) ++n;
  return n;
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second.special;
}

}  // namespace moeforge
