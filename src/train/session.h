// TrainingSession: what `moeforge train` and the demo share — a model folder and a dataset file in,
// a trained Hugging Face folder out. It loads the tokenizer and chat template from the model folder,
// encodes and packs the dataset (data/), holds out an eval split, runs the Trainer, saves the final
// model (or, under LoRA, its adapter) and checks that the saved folder reloads to the trained
// weights as saved.
#pragma once

#include <memory>
#include <string>

#include "data/example_encoder.h"
#include "model/causal_lm.h"
#include "train/trainer.h"
#include "train/training_arguments.h"

namespace moeforge {

namespace chat {
class ChatTemplate;
}

// The longest sequence a run packs when max_seq_length is left to the data.
constexpr int64_t kDefaultMaxSeqLength = 2048;

struct DataArguments {
  std::string train_file;        // JSONL (data/example_encoder.h's forms), .txt (one example a line) or .mfbin
  std::string eval_file;         // optional; else eval_ratio of train_file is held out
  std::string chat_template;     // optional Jinja file replacing the model folder's chat template
  double eval_ratio = 0.0;
  // 0: the longest training example, at most kDefaultMaxSeqLength, so short data is not padded to it.
  int64_t max_seq_length = 0;
  // per_device_train_batch_size is the most rows a batch takes: fewer when one epoch of the data
  // fills fewer sequences per process (set when the user left the batch size at its default).
  bool fit_batch_to_data = false;
  std::string overflow = "truncate";  // documents longer than max_seq_length: truncate | split
  bool packing = true;                // TRL's packing; false: one example per sequence
  bool skip_bad_lines = false;
  int64_t max_eval_batches = 32;
  data::EncoderOptions encoder;       // dataset_text_field, assistant_only_loss, completion_only_loss
};

struct SessionOptions {
  std::string model;  // folder or cached model id
  // With model_options.lora set the base is frozen and LoRA adapters train; `adapter` (optional) is
  // a PEFT adapter folder whose weights they start from (its config is model_options.lora).
  ModelOptions model_options;
  std::string adapter;
  TrainingArguments args;
  DataArguments data;
  std::string config_record;  // written to output_dir/moeforge_config.yaml once training starts
};

class TrainingSession {
 public:
  explicit TrainingSession(SessionOptions options);
  ~TrainingSession();

  // Trains, then (unless interrupted) saves the final model to output_dir and verifies the reload.
  TrainResult run();

  CausalLM& model();
  const Tokenizer& tokenizer() const;
  const chat::ChatTemplate* chat_template() const;  // null when the folder has none
  const std::string& model_dir() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeforge
