// Packing documents into fixed-length sequences of T = max_seq_length tokens.
//
// Documents are read in the epoch's order (shuffled per epoch, shuffle.h) and placed greedily: a
// document goes into the current sequence when it fits in the space left; otherwise the sequence is
// closed, its tail padded, and the document starts the next one. A document longer than T follows
// the overflow rule:
//   truncate  keep its first T tokens, drop the rest;
//   split     cut it into chunks of T tokens (the last one shorter), each placed like a document.
// Without `packing` (TRL's packing=False) every sequence holds one piece: a document, or under
// split one chunk of it, padded to T.
// Empty documents are skipped. With `repeat`, the stream continues into the next epoch (a sequence
// may hold the last documents of epoch e and the first of epoch e+1); without it, it ends.
//
// Each row of a packed batch (fill_row):
//   input_ids       the tokens; pad_token_id in the padded tail
//   labels          the token where its loss flag is set, else -100; and always -100 on the first
//                   token of every piece. Labels are unshifted (the model predicts labels[t+1] at t),
//                   so this -100 is what keeps the last token of one document from learning to
//                   predict the first token of the next, and it costs nothing in an unpacked
//                   sequence either (labels[0] is never a target).
//   position_ids    0, 1, 2, ... restarting at 0 for every piece and for the padded tail; the model
//                   starts a new attention segment wherever a position does not continue the last
//                   one, so no attention crosses documents.
//   attention_mask  1 on tokens, 0 on the padded tail.
//
// The packer's whole state is a cursor (epoch, index into the epoch's order, tokens of that document
// already emitted): a document that did not fit is read again from the corpus, so there is no token
// buffer to save, and a restored cursor continues the stream exactly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/token_corpus.h"

namespace moeforge::data {

enum class OverflowRule { kTruncate, kSplit };

OverflowRule overflow_rule_from_name(std::string_view name);  // "truncate" | "split"; else kInvalidArgument
const char* overflow_rule_name(OverflowRule rule);

inline constexpr int64_t kIgnoreIndex = -100;

struct PackingOptions {
  int64_t max_seq_length = 2048;
  OverflowRule overflow = OverflowRule::kTruncate;
  bool shuffle = true;
  uint64_t seed = 42;
  bool repeat = true;  // continue into the next epoch instead of ending
  bool packing = true;  // several documents per sequence; false: one
};

// Tokens [begin, end) of a corpus document, placed in a sequence.
struct Piece {
  uint64_t document = 0;
  uint64_t begin = 0, end = 0;
};

struct PackCursor {
  uint64_t epoch = 0;
  uint64_t index = 0;   // into the epoch's document order
  uint64_t offset = 0;  // tokens of that document already emitted (split rule)
  bool operator==(const PackCursor&) const = default;
};

class SequencePacker {
 public:
  // `documents` (indices into `corpus`) in their unshuffled order; the corpus must outlive the packer.
  SequencePacker(const TokenCorpus& corpus, std::vector<uint64_t> documents, PackingOptions options);

  // The pieces of the next sequence (their lengths sum to at most T), or nullopt when the stream has
  // ended (only without `repeat`; with it, an error if no document has a token).
  std::optional<std::vector<Piece>> next_sequence();

  const PackCursor& cursor() const { return cursor_; }
  void set_cursor(const PackCursor& cursor);  // kInvalidArgument when it lies outside the epoch

  // The documents of epoch `epoch` in the order they are packed.
  std::vector<uint64_t> epoch_order(uint64_t epoch) const;
  // Sequences one epoch packs into on its own (epoch 0's order; other epochs differ slightly).
  int64_t sequences_per_epoch() const;

  const PackingOptions& options() const { return options_; }
  const std::vector<uint64_t>& documents() const { return documents_; }
  uint64_t total_tokens() const { return total_tokens_; }  // of `documents`, before truncation

 private:
  // Length of the next piece of `doc` from `offset` under the overflow rule.
  uint64_t piece_length(uint64_t doc, uint64_t offset) const;
  void load_order(uint64_t epoch);

  const TokenCorpus& corpus_;
  std::vector<uint64_t> documents_;
  PackingOptions options_;
  uint64_t total_tokens_ = 0;
  PackCursor cursor_;
  std::vector<uint64_t> order_;  // epoch cursor_.epoch's order
  uint64_t order_epoch_ = UINT64_MAX;
};

// Writes one row of T tokens from `pieces` (see above) into the four int64 arrays; returns the
// number of labels that are not -100.
int64_t fill_row(const TokenCorpus& corpus, const std::vector<Piece>& pieces, int64_t max_seq_length,
                 int64_t pad_token_id, int64_t* input_ids, int64_t* labels, int64_t* position_ids,
                 int64_t* attention_mask);

}  // namespace moeforge::data
