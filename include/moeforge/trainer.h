// Training from in-memory datasets, under Hugging Face Trainer's names.
//
//   moeforge::TokenizedDataset train(&tokenizer);
//   train.add_example(R"({"messages": [...]})"_json);           // or {"text"}, {"prompt", "completion"}
//   train.add_tokens(input_ids, labels);                          // pre-tokenized (labels: ids or -100)
//   moeforge::DatasetTrainer trainer(model, args, /*max_seq_length=*/2048, train, &eval, &tokenizer);
//   trainer.train();  trainer.evaluate();  trainer.save_model("out/");
//
// Examples are tokenized and loss-masked as the data pipeline does (data/example_encoder.h) and
// packed into max_seq_length sequences without cross-document attention (data/packing.h): the
// Trainer and TrainingArguments underneath are moeforge::Trainer and moeforge::TrainingArguments
// (train/trainer.h, train/training_arguments.h), re-exported here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/example_encoder.h"
#include "moeforge/model.h"
#include "moeforge/tokenizer.h"
#include "train/trainer.h"
#include "train/training_arguments.h"

namespace moeforge {

class TokenizedDataset {
 public:
  // `tokenizer` (may be null: then only add_tokens works) must outlive the dataset. `options`: TRL
  // SFTConfig's dataset_text_field, assistant_only_loss and completion_only_loss.
  explicit TokenizedDataset(const PreTrainedTokenizer* tokenizer, data::EncoderOptions options = {});
  TokenizedDataset(TokenizedDataset&&) noexcept;
  ~TokenizedDataset();

  // One example of the forms of data/example_encoder.h; `where` names it in errors ("train_dataset[3]").
  void add_example(const nlohmann::ordered_json& example, const std::string& where);
  // Pre-tokenized: `labels` empty (train on every token) or as long as input_ids, each label equal to
  // its input id (trained on) or -100 (not), as Transformers' causal-LM labels before the shift.
  void add_tokens(const std::vector<int64_t>& input_ids, const std::vector<int64_t>& labels, const std::string& where);
  uint64_t size() const;

  struct Impl;

 private:
  friend class DatasetTrainer;
  std::unique_ptr<Impl> impl_;
};

class DatasetTrainer {
 public:
  // `model`, `tokenizer` (may be null) must outlive the trainer. The datasets are sealed (they take
  // no more examples) and shared with the trainer, which keeps what it needs.
  // `packing` false: one example per sequence (TRL's packing=False). max_seq_length 0: the longest
  // training example, at most 2048. A batch holds at most the rows one epoch of the training data
  // fills (per process), as a Transformers DataLoader's batch holds at most the dataset.
  DatasetTrainer(ModelForCausalLM& model, TrainingArguments args, int64_t max_seq_length,
                 TokenizedDataset& train_dataset, TokenizedDataset* eval_dataset,
                 const PreTrainedTokenizer* tokenizer, bool packing = true);
  ~DatasetTrainer();

  TrainResult train();
  double evaluate();  // token-weighted mean loss over the eval dataset; kInvalidArgument without one
  void save_model(const std::string& folder) const;  // empty: args.output_dir
  // Replaces args.resume_from_checkpoint for the next train(): a checkpoint folder, or "latest"
  // (Transformers: trainer.train(resume_from_checkpoint=...)).
  void set_resume_from_checkpoint(const std::string& checkpoint);
  int64_t global_step() const;  // steps taken, a resumed checkpoint's included

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeforge
