#include "data/data_loader.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "io/json.h"

namespace moeforge::data {

namespace {

constexpr const char* kPositionFormat = "moeforge.data_position";
constexpr int kPositionVersion = 1;

PackingOptions packing_options(const LoaderOptions& o) {
  return PackingOptions{o.max_seq_length, o.overflow, o.shuffle, o.seed, o.repeat, o.packing};
}

}  // namespace

DataLoader::DataLoader(std::shared_ptr<const TokenCorpus> corpus, std::vector<uint64_t> documents,
                       LoaderOptions options)
    : corpus_(std::move(corpus)), options_(options), packer_(*corpus_, std::move(documents), packing_options(options)) {
  MF_CHECK(options_.batch_size > 0, kInvalidArgument, "batch_size must be positive, got ", options_.batch_size);
  MF_CHECK(options_.world_size > 0 && options_.rank >= 0 && options_.rank < options_.world_size, kInvalidArgument,
           "rank ", options_.rank, " is outside world_size ", options_.world_size);
  MF_CHECK(options_.sequences_per_batch >= 0 && options_.sequences_per_batch <= options_.world_size * options_.batch_size,
           kInvalidArgument, "sequences_per_batch ", options_.sequences_per_batch, " is outside [0, world_size x batch_size = ",
           options_.world_size * options_.batch_size, "]");
  MF_CHECK(options_.pad_token_id >= 0, kInvalidArgument, "pad_token_id must be a token id, got ", options_.pad_token_id);
}

std::optional<PackedBatch> DataLoader::next() {
  const int64_t B = options_.batch_size, T = options_.max_seq_length;
  const int64_t first_row = options_.rank * B, global_rows = options_.world_size * B;
  PackedBatch batch;
  batch.input_ids = Tensor::empty({B, T}, DType::kI64, Device::kCPU, "input_ids");
  batch.labels = Tensor::empty({B, T}, DType::kI64, Device::kCPU, "labels");
  batch.position_ids = Tensor::empty({B, T}, DType::kI64, Device::kCPU, "position_ids");
  batch.attention_mask = Tensor::empty({B, T}, DType::kI64, Device::kCPU, "attention_mask");
  for (int64_t k = 0; k < global_rows; ++k) {
    std::optional<std::vector<Piece>> pieces;
    if (k < sequences_per_batch()) pieces = packer_.next_sequence();
    if (!pieces) {
      if (k == 0) return std::nullopt;
      pieces.emplace();  // past the batch's sequences or a finite stream's end: an empty row keeps the ranks in step
    } else {
      ++sequences_consumed_;
    }
    if (k < first_row || k >= first_row + B) continue;
    const int64_t at = (k - first_row) * T;
    batch.num_label_tokens += fill_row(*corpus_, *pieces, T, options_.pad_token_id, batch.input_ids.data<int64_t>() + at,
                                       batch.labels.data<int64_t>() + at, batch.position_ids.data<int64_t>() + at,
                                       batch.attention_mask.data<int64_t>() + at);
    for (const Piece& p : *pieces) batch.num_tokens += static_cast<int64_t>(p.end - p.begin);
  }
  return batch;
}

nlohmann::json DataLoader::position() const {
  const PackCursor& c = packer_.cursor();
  return nlohmann::json{
      {"format", kPositionFormat},
      {"version", kPositionVersion},
      {"epoch", c.epoch},
      {"index", c.index},
      {"offset", c.offset},
      {"sequences_consumed", sequences_consumed_},
      // What the stream depends on, checked by restore():
      {"documents", packer_.documents().size()},
      {"tokens", packer_.total_tokens()},
      {"seed", options_.seed},
      {"max_seq_length", options_.max_seq_length},
      {"overflow", overflow_rule_name(options_.overflow)},
      {"shuffle", options_.shuffle},
      {"packing", options_.packing},
  };
}

void DataLoader::restore(const nlohmann::json& position) {
  const std::string where = "data position";
  MF_CHECK(require<std::string>(position, "format", where) == kPositionFormat, kInvalidArgument, where,
           ": 'format' is not ", kPositionFormat);
  const int version = require<int>(position, "version", where);
  MF_CHECK(version == kPositionVersion, kInvalidArgument, where, ": version ", version, " (this build reads ",
           kPositionVersion, ")");
  const nlohmann::json mine = this->position();
  for (const char* key : {"documents", "tokens", "seed", "max_seq_length", "overflow", "shuffle", "packing"}) {
    // Positions saved before the packing option existed were packed.
    if (std::string_view(key) == "packing" && !position.contains(key) && options_.packing) continue;
    MF_CHECK(position.contains(key), kInvalidArgument, where, ": missing key '", key, "'");
    MF_CHECK(position[key] == mine[key], kInvalidArgument, where, ": '", key, "' is ", position[key].dump(),
             " but this loader has ", mine[key].dump(), "; a position resumes only the same data and options");
  }
  PackCursor cursor;
  cursor.epoch = require<uint64_t>(position, "epoch", where);
  cursor.index = require<uint64_t>(position, "index", where);
  cursor.offset = require<uint64_t>(position, "offset", where);
  const auto consumed = require<int64_t>(position, "sequences_consumed", where);
  MF_CHECK(consumed >= 0, kInvalidArgument, where, ": 'sequences_consumed' is negative");
  packer_.set_cursor(cursor);
  sequences_consumed_ = consumed;
}

int64_t DataLoader::epoch() const {
  const PackCursor& c = packer_.cursor();
  const bool at_end = c.index == packer_.documents().size();
  return static_cast<int64_t>(c.epoch) + (at_end && options_.repeat ? 1 : 0);
}

double DataLoader::epoch_progress() const {
  const PackCursor& c = packer_.cursor();
  const auto n = static_cast<double>(packer_.documents().size());
  return static_cast<double>(c.epoch) + (n > 0 ? static_cast<double>(c.index) / n : 0.0);
}

int64_t DataLoader::batches_per_epoch() const {
  return (packer_.sequences_per_epoch() + sequences_per_batch() - 1) / sequences_per_batch();
}

int64_t DataLoader::sequences_per_batch() const {
  return options_.sequences_per_batch > 0 ? options_.sequences_per_batch : options_.world_size * options_.batch_size;
}

int64_t longest_document(const TokenCorpus& corpus, const std::vector<uint64_t>& documents, int64_t cap) {
  uint64_t longest = 1;
  for (uint64_t doc : documents) longest = std::max(longest, corpus.document_length(doc));
  return static_cast<int64_t>(std::min<uint64_t>(longest, static_cast<uint64_t>(cap)));
}

int64_t fit_batch_to_epoch(const std::shared_ptr<const TokenCorpus>& corpus, const std::vector<uint64_t>& documents,
                           LoaderOptions& options) {
  LoaderOptions one_row = options;
  one_row.batch_size = 1;
  one_row.rank = 0;
  one_row.world_size = 1;
  one_row.sequences_per_batch = 0;
  const int64_t sequences = DataLoader(corpus, documents, one_row).batches_per_epoch();
  const int64_t rows = (sequences + options.world_size - 1) / options.world_size;
  options.batch_size = std::min(options.batch_size, std::max<int64_t>(1, rows));
  if (sequences > 0 && sequences < options.world_size * options.batch_size) options.sequences_per_batch = sequences;
  return sequences;
}

}  // namespace moeforge::data
