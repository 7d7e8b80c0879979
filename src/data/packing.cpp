#include "data/packing.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "data/shuffle.h"

namespace moeforge::data {

OverflowRule overflow_rule_from_name(std::string_view name) {
  if (name == "truncate") return OverflowRule::kTruncate;
  if (name == "split") return OverflowRule::kSplit;
  fail(ErrorCode::kInvalidArgument, "unknown overflow rule '", name, "' (expected 'truncate' or 'split')");
}

const char* overflow_rule_name(OverflowRule rule) { return rule == OverflowRule::kTruncate ? "truncate" : "split"; }

SequencePacker::SequencePacker(const TokenCorpus& corpus, std::vector<uint64_t> documents, PackingOptions options)
    : corpus_(corpus), documents_(std::move(documents)), options_(options) {
  MF_CHECK(options_.max_seq_length > 0, kInvalidArgument, "max_seq_length must be positive, got ",
           options_.max_seq_length);
  for (uint64_t d : documents_) {
    MF_CHECK(d < corpus_.num_documents(), kInvalidArgument, "document ", d, " is outside ", corpus_.source_name(),
             " (", corpus_.num_documents(), " documents)");
    total_tokens_ += corpus_.document_length(d);
  }
}

uint64_t SequencePacker::piece_length(uint64_t doc, uint64_t offset) const {
  const auto max_len = static_cast<uint64_t>(options_.max_seq_length);
  const uint64_t len = corpus_.document_length(doc);
  if (options_.overflow == OverflowRule::kTruncate) return std::min(len, max_len);
  return std::min(len - offset, max_len);
}

std::vector<uint64_t> SequencePacker::epoch_order(uint64_t epoch) const {
  return options_.shuffle ? shuffled(documents_, options_.seed, epoch) : documents_;
}

void SequencePacker::load_order(uint64_t epoch) {
  if (order_epoch_ == epoch) return;
  order_ = epoch_order(epoch);
  order_epoch_ = epoch;
}

std::optional<std::vector<Piece>> SequencePacker::next_sequence() {
  MF_CHECK(!options_.repeat || total_tokens_ > 0, kInvalidArgument, corpus_.source_name(),
           ": no document has a token, nothing to train on");
  std::vector<Piece> pieces;
  uint64_t space = static_cast<uint64_t>(options_.max_seq_length);
  while (space > 0) {
    if (cursor_.index == documents_.size()) {
      if (!options_.repeat) break;
      cursor_ = PackCursor{cursor_.epoch + 1, 0, 0};
    }
    load_order(cursor_.epoch);
    const uint64_t doc = order_[cursor_.index];
    const uint64_t length = piece_length(doc, cursor_.offset);
    if (length > space) break;  // the sequence is closed; this document starts the next one
    if (length > 0) {
      pieces.push_back(Piece{doc, cursor_.offset, cursor_.offset + length});
      space = options_.packing ? space - length : 0;
    }
    cursor_.offset += length;
    if (options_.overflow == OverflowRule::kTruncate || cursor_.offset == corpus_.document_length(doc)) {
      ++cursor_.index;
      cursor_.offset = 0;
    }
  }
  if (pieces.empty()) return std::nullopt;
  return pieces;
}

void SequencePacker::set_cursor(const PackCursor& cursor) {
  MF_CHECK(cursor.index <= documents_.size(), kInvalidArgument, "position index ", cursor.index,
           " is past the end of the epoch (", documents_.size(), " documents)");
  if (cursor.offset != 0) {
    MF_CHECK(cursor.index < documents_.size() && options_.overflow == OverflowRule::kSplit, kInvalidArgument,
             "position offset ", cursor.offset, " is only valid inside a document under the split rule");
    const uint64_t doc = epoch_order(cursor.epoch)[cursor.index];
    MF_CHECK(cursor.offset < corpus_.document_length(doc), kInvalidArgument, "position offset ", cursor.offset,
             " is past the end of document ", doc, " (", corpus_.document_length(doc), " tokens)");
  }
  cursor_ = cursor;
}

int64_t SequencePacker::sequences_per_epoch() const {
  PackingOptions one_epoch = options_;
  one_epoch.repeat = false;
  SequencePacker dry_run(corpus_, documents_, one_epoch);
  int64_t n = 0;
  while (dry_run.next_sequence()) ++n;
  return n;
}

int64_t fill_row(const TokenCorpus& corpus, const std::vector<Piece>& pieces, int64_t max_seq_length,
                 int64_t pad_token_id, int64_t* input_ids, int64_t* labels, int64_t* position_ids,
                 int64_t* attention_mask) {
  int64_t t = 0, counted = 0;
  for (const Piece& piece : pieces) {
    const DocumentView doc = corpus.document(piece.document);
    MF_ASSERT(piece.end <= doc.tokens.size() && t + static_cast<int64_t>(piece.end - piece.begin) <= max_seq_length);
    for (uint64_t k = piece.begin; k < piece.end; ++k, ++t) {
      const int64_t token = doc.tokens[k];
      const bool trained = k != piece.begin && corpus.loss_bit(doc.first_token + k);
      input_ids[t] = token;
      labels[t] = trained ? token : kIgnoreIndex;
      position_ids[t] = static_cast<int64_t>(k - piece.begin);
      attention_mask[t] = 1;
      counted += trained;
    }
  }
  for (int64_t tail_start = t; t < max_seq_length; ++t) {
    input_ids[t] = pad_token_id;
    labels[t] = kIgnoreIndex;
    position_ids[t] = t - tail_start;
    attention_mask[t] = 0;
  }
  return counted;
}

}  // namespace moeforge::data
