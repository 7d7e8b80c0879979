// The data pipeline's DataLoader as the Trainer's resumable BatchStream (shared by the CLI session
// and the C++/Python API).
#pragma once

#include <optional>

#include "core/error.h"
#include "data/data_loader.h"
#include "train/trainer.h"

namespace moeforge {

inline Batch to_model_batch(const data::PackedBatch& p) {
  return Batch{p.input_ids, p.labels, p.attention_mask, p.position_ids};
}

class LoaderStream : public BatchStream {
 public:
  explicit LoaderStream(data::DataLoader loader) : loader_(std::move(loader)) {}
  Batch next() override {
    std::optional<data::PackedBatch> b = loader_.next();
    MF_ASSERT(b.has_value());  // a training loader repeats
    return to_model_batch(*b);
  }
  nlohmann::json position() const override { return loader_.position(); }
  void restore(const nlohmann::json& position) override { loader_.restore(position); }
  int64_t batches_per_epoch() const override { return loader_.batches_per_epoch(); }
  int64_t sequences_per_batch() const override { return loader_.sequences_per_batch(); }

 private:
  data::DataLoader loader_;
};

}  // namespace moeforge
