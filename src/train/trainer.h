// Trainer: the training loop. Batches from a BatchStream -> gradient accumulation with the loss
// normalised by the label tokens of the whole accumulation window (as the Hugging Face Trainer) ->
// clipping -> AdamW with the schedule -> logging (terminal, metrics.jsonl, HTML report) ->
// evaluation -> checkpoints (HF folder + trainer state, written to a temporary folder and renamed)
// -> resume, bit-exact on the CPU backend. SIGINT/SIGTERM finish the step, save and return.
// A model with LoRA adapters (CausalLM::lora_config()) trains only them: checkpoints and save_model
// hold the PEFT adapter folder instead of the model (train/adapter_folder.h), and the optimizer
// state covers the adapters alone.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/causal_lm.h"
#include "train/output_folder.h"
#include "train/training_arguments.h"

namespace moeforge {

class Tokenizer;

// A source of packed batches with a position that checkpoints save and resume restores.
class BatchStream {
 public:
  virtual ~BatchStream() = default;
  virtual Batch next() = 0;
  virtual nlohmann::json position() const = 0;
  virtual void restore(const nlohmann::json& position) = 0;
  // Batches per epoch, if known (for num_train_epochs); 0 when unknown.
  virtual int64_t batches_per_epoch() const { return 0; }
  // The sequences of one global batch, if known; 0: per_device_train_batch_size on every process.
  virtual int64_t sequences_per_batch() const { return 0; }
};

// The losses carry Transformers' meanings, under the names metrics.jsonl gives them: `loss` is what
// is optimised, lm_loss + router_aux_loss_coef x aux_loss (as Transformers' MoE models return it),
// and `eval_loss` the same loss on the held-out batches.
struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;     // the last step's loss
  double training_loss = 0;  // the mean loss of the steps this train() took, skipped ones aside (TrainOutput.training_loss)
  double final_eval_loss = -1;
  bool interrupted = false;
};

class Trainer {
 public:
  // `source_model_dir`: where tokenizer files are copied from on save (may be empty).
  // `output`: args.output_dir already claimed by the caller (see claim_output_folder); else the
  // first train() claims it, and the trainer holds it until it is destroyed.
  Trainer(CausalLM& model, TrainingArguments args, BatchStream& train_data,
          std::vector<Batch> eval_batches = {}, const Tokenizer* tokenizer = nullptr,
          std::string source_model_dir = {}, std::shared_ptr<OutputFolder> output = nullptr);
  ~Trainer();

  TrainResult train();
  double evaluate();  // eval_loss: mean_loss over the eval batches
  // Refuses (kNumerical) a model holding NaN or Inf: nothing non-finite is ever saved. Under LoRA it
  // writes the adapter folder (adapter_config.json, adapter_model.safetensors, tokenizer files).
  void save_model(const std::string& folder) const;

  // Replaces args.resume_from_checkpoint (a checkpoint folder, or "latest") for the next train().
  void set_resume_from_checkpoint(const std::string& checkpoint);
  int64_t global_step() const;  // steps taken, a resumed checkpoint's included

  // Adds items (name -> value) to what checkpoints record of this run; resume_from_checkpoint refuses
  // a checkpoint whose items differ, naming them (the trainer itself records seed and batch shape).
  void identify_run(const nlohmann::json& items);

  // Called after every optimizer step with the metrics record (for tests and the demo).
  void on_step(std::function<void(const nlohmann::json&)> callback);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Locks args.output_dir for one run, cleans its leftovers, and refuses an earlier run's files unless
// resuming or overwrite_output_dir (see OutputFolder). With a group of several processes (expert
// parallelism) the first claims it and the others join it, each checking it sees the same folder.
std::shared_ptr<OutputFolder> claim_output_folder(const TrainingArguments& args, ProcessGroup* group = nullptr);

// The loss (lm_loss + router_aux_loss_coef x aux_loss) of `batches` without training, each batch's
// weighted by its label tokens; NaN when they have none.
double mean_loss(CausalLM& model, const std::vector<Batch>& batches);

// The last complete checkpoint-N folder in output_dir, or empty.
std::string latest_checkpoint(const std::string& output_dir);

}  // namespace moeforge
