// DataLoader: packed batches for the trainer, sharded over data-parallel ranks, resumable exactly.
//
//   Tokenizer tokenizer = Tokenizer::from_file(model_dir);
//   chat::ChatTemplate chat = chat::ChatTemplate::from_folder(model_dir);
//   ExampleEncoder encoder(tokenizer, &chat, eos_token_id_from_config(model_dir, tokenizer));
//   auto corpus = std::make_shared<const TokenCorpus>(load_dataset("train.jsonl", encoder, {}));
//   DocumentSplit split = split_for_eval(corpus->num_documents(), /*eval_ratio=*/0.05, seed);
//   DataLoader train(corpus, split.train, {.max_seq_length = 4096, .batch_size = 2, .seed = seed,
//                                         .rank = rank, .world_size = world});
//   DataLoader eval(corpus, split.eval, {..., .shuffle = false, .repeat = false});
//   PackedBatch batch = *train.next();
//   checkpoint["data_position"] = train.position();   ...   train.restore(checkpoint["data_position"]);
//
// Sharding: all ranks pack the same global stream of sequences (packing.h); global batch g is
// sequences [g*W*B, (g+1)*W*B) and rank r takes the B consecutive ones starting at g*W*B + r*B. So
// ranks see disjoint sequences that together cover the stream, every rank makes the same number of
// batches, and the position is the same on every rank. A rank only copies the tokens of its own rows.
//
// Position: the packer cursor (epoch, index into the epoch's order, offset into that document) plus
// the number of sequences consumed, as JSON. Since a document that did not fit in the last sequence
// is simply read again, there is no partially filled buffer to save. restore() checks that the
// dataset and the options that shape the stream (seed, max_seq_length, overflow, shuffle) match;
// batch_size and world_size may differ (the stream is the same, cut differently).
//
// Without `repeat` (evaluation), the stream ends after one pass: the last global batch is completed
// with empty rows (attention_mask and labels all off) so every rank still takes the same number of
// batches, and next() then returns nullopt. With sequences_per_batch, every global batch ends in
// such rows.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "data/packing.h"
#include "data/token_corpus.h"

namespace moeforge::data {

struct LoaderOptions {
  int64_t max_seq_length = 2048;
  int64_t batch_size = 1;  // sequences per rank per batch
  // Sequences a global batch takes (0: world_size x batch_size); fewer leaves the last rows of each
  // global batch empty (attention mask and labels off), as fit_batch_to_epoch does for a small dataset.
  int64_t sequences_per_batch = 0;
  uint64_t seed = 42;
  int64_t rank = 0;
  int64_t world_size = 1;
  OverflowRule overflow = OverflowRule::kTruncate;
  bool shuffle = true;
  bool repeat = true;
  bool packing = true;  // see PackingOptions
  int64_t pad_token_id = 0;  // input id of padded positions (masked out; must be inside the vocabulary)
};

struct PackedBatch {
  // [batch_size, max_seq_length] int64 on the CPU (see packing.h for what each holds).
  Tensor input_ids, labels, position_ids, attention_mask;
  int64_t num_label_tokens = 0;  // labels that are not -100 (what the loss is averaged over)
  int64_t num_tokens = 0;        // positions with attention_mask 1
};

class DataLoader {
 public:
  // `documents`: indices into the corpus (e.g. DocumentSplit::train).
  DataLoader(std::shared_ptr<const TokenCorpus> corpus, std::vector<uint64_t> documents, LoaderOptions options);

  // This rank's next batch; nullopt only at the end of a loader without `repeat`.
  std::optional<PackedBatch> next();

  nlohmann::json position() const;
  // Continues from a position() (of this rank or any other: they are equal). Error(kInvalidArgument)
  // naming the key when the position belongs to other data or options.
  void restore(const nlohmann::json& position);

  // The epoch of the next document to be packed, and that plus the fraction of it already read.
  int64_t epoch() const;
  double epoch_progress() const;
  // Global batches one epoch makes (epoch 0's packing, rounded up).
  int64_t batches_per_epoch() const;
  // The sequences of one global batch (the rest of its rows are empty).
  int64_t sequences_per_batch() const;

  const LoaderOptions& options() const { return options_; }
  const TokenCorpus& corpus() const { return *corpus_; }

 private:
  std::shared_ptr<const TokenCorpus> corpus_;
  LoaderOptions options_;
  SequencePacker packer_;
  int64_t sequences_consumed_ = 0;  // of the global stream
};

// What a run leaves to the data: the longest of `documents` (at most `cap` tokens).
int64_t longest_document(const TokenCorpus& corpus, const std::vector<uint64_t>& documents, int64_t cap);
// Limits options.batch_size to the rows per process that one epoch of `documents` fills, packed as
// `options` pack, as a Transformers DataLoader's batch holds at most the dataset. A global batch then
// holds the epoch's sequences at every process count, as one process's batch does: where they do
// not fill the processes' rows evenly, the last rows stay empty (sequences_per_batch) rather than
// taking the next epoch's. Returns the sequences one epoch packs.
int64_t fit_batch_to_epoch(const std::shared_ptr<const TokenCorpus>& corpus, const std::vector<uint64_t>& documents,
                           LoaderOptions& options);

}  // namespace moeforge::data
