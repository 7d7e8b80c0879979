#include "moeforge/trainer.h"

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "data/data_loader.h"
#include "data/dataset.h"
#include "data/example_encoder.h"
#include "data/token_corpus.h"
#include "train/loader_stream.h"
#include "train/run_fingerprint.h"
#include "train/session.h"

namespace moeforge {

struct TokenizedDataset::Impl {
  const PreTrainedTokenizer* tokenizer;
  data::EncoderOptions options;
  std::unique_ptr<data::ExampleEncoder> encoder;  // made on the first example that needs one
  data::CorpusBuilder builder;
  std::shared_ptr<const data::TokenCorpus> corpus;  // set once a trainer takes the dataset

  void check_open(const std::string& where) const {
    MF_CHECK(!corpus, kInvalidArgument, where, ": the dataset was already handed to a trainer; build a new one");
  }
};

TokenizedDataset::TokenizedDataset(const PreTrainedTokenizer* tokenizer, data::EncoderOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->tokenizer = tokenizer;
  impl_->options = std::move(options);
}
TokenizedDataset::TokenizedDataset(TokenizedDataset&&) noexcept = default;
TokenizedDataset::~TokenizedDataset() = default;

void TokenizedDataset::add_example(const nlohmann::ordered_json& example, const std::string& where) {
  Impl& m = *impl_;
  m.check_open(where);
  MF_CHECK(m.tokenizer != nullptr, kInvalidArgument, where,
           ": examples with text or messages need a tokenizer (none was given and the model folder has none)");
  if (!m.encoder) {
    const PreTrainedTokenizer& t = *m.tokenizer;
    m.encoder = std::make_unique<data::ExampleEncoder>(t.tokenizer(), t.chat_template(),
                                                       data::eos_token_id_from_config(t.folder(), t.tokenizer()),
                                                       m.options);
  }
  data::EncodedExample e = m.encoder->encode(example, where);
  m.builder.add_document(e.ids, e.loss_mask);
}

void TokenizedDataset::add_tokens(const std::vector<int64_t>& input_ids, const std::vector<int64_t>& labels,
                                  const std::string& where) {
  impl_->check_open(where);
  MF_CHECK(labels.empty() || labels.size() == input_ids.size(), kInvalidArgument, where, ": labels has ",
           labels.size(), " entries, input_ids ", input_ids.size());
  std::vector<uint32_t> ids(input_ids.size());
  std::vector<uint8_t> loss_mask(input_ids.size(), 1);
  for (size_t i = 0; i < input_ids.size(); ++i) {
    MF_CHECK(input_ids[i] >= 0 && input_ids[i] <= INT32_MAX, kInvalidArgument, where, ": input_ids[", i,
             "] = ", input_ids[i], " is not a token id");
    ids[i] = static_cast<uint32_t>(input_ids[i]);
    if (labels.empty()) continue;
    // Packing rebuilds labels from the ids and a loss flag, so a label can only be its id or -100.
    MF_CHECK(labels[i] == input_ids[i] || labels[i] == data::kIgnoreIndex, kInvalidArgument, where, ": labels[", i,
             "] = ", labels[i], " is neither input_ids[", i, "] = ", input_ids[i], " nor -100");
    loss_mask[i] = labels[i] != data::kIgnoreIndex;
  }
  impl_->builder.add_document(ids, loss_mask);
}

uint64_t TokenizedDataset::size() const {
  return impl_->corpus ? impl_->corpus->num_documents() : impl_->builder.num_documents();
}

namespace {

// The dataset's documents as a corpus; the dataset takes no more examples after this (the corpus
// points into the builder's storage), and another trainer may share the same corpus.
std::shared_ptr<const data::TokenCorpus> dataset_corpus(TokenizedDataset::Impl& dataset, const char* name,
                                                        uint64_t vocab_size) {
  if (!dataset.corpus) {
    dataset.corpus = std::make_shared<const data::TokenCorpus>(dataset.builder.finish(name, vocab_size));
    dataset.corpus->check_vocabulary(vocab_size);
  }
  return dataset.corpus;
}

}  // namespace

struct DatasetTrainer::Impl {
  ModelForCausalLM& model;
  uint64_t model_generation;  // the model's generation() when the trainer was made
  std::string output_dir;
  std::unique_ptr<LoaderStream> train_stream;
  std::vector<Batch> eval_batches;
  std::unique_ptr<Trainer> trainer;
};

DatasetTrainer::DatasetTrainer(ModelForCausalLM& model, TrainingArguments args, int64_t max_seq_length,
                               TokenizedDataset& train_dataset, TokenizedDataset* eval_dataset,
                               const PreTrainedTokenizer* tokenizer, bool packing)
    : impl_(std::make_unique<Impl>(Impl{model, model.generation(), args.output_dir, nullptr, {}, nullptr})) {
  MF_CHECK(max_seq_length >= 0, kInvalidArgument,
           "max_seq_length must be > 0, or 0 for the longest training example (at most ", kDefaultMaxSeqLength,
           "), got ", max_seq_length);
  MF_CHECK(train_dataset.size() > 0, kInvalidArgument, "train_dataset is empty");
  MF_CHECK(args.per_device_train_batch_size > 0, kInvalidArgument, "per_device_train_batch_size must be > 0, got ",
           args.per_device_train_batch_size);
  MF_CHECK(args.per_device_eval_batch_size > 0, kInvalidArgument, "per_device_eval_batch_size must be > 0, got ",
           args.per_device_eval_batch_size);
  MF_CHECK(args.gradient_accumulation_steps > 0, kInvalidArgument, "gradient_accumulation_steps must be > 0, got ",
           args.gradient_accumulation_steps);
  const uint64_t vocab = static_cast<uint64_t>(model.causal_lm().config().vocab_size);
  data::LoaderOptions lo;
  lo.max_seq_length = max_seq_length;
  lo.batch_size = args.per_device_train_batch_size;
  lo.seed = args.seed;
  lo.packing = packing;
  lo.pad_token_id = 0;  // padded positions are masked out; any id inside the vocabulary does
  // Expert parallelism: each rank takes its rows of every global batch.
  ProcessGroup* group = model.causal_lm().data_group().get();
  if (group != nullptr && group->size() > 1) {
    lo.rank = group->rank();
    lo.world_size = group->size();
  } else {
    group = nullptr;
  }
  auto train_corpus = dataset_corpus(*train_dataset.impl_, "train_dataset", vocab);
  const std::vector<uint64_t> train_documents = data::all_documents(train_corpus->num_documents());
  if (max_seq_length == 0) lo.max_seq_length = data::longest_document(*train_corpus, train_documents, kDefaultMaxSeqLength);
  // As a Transformers DataLoader's batch never holds more examples than the dataset has, a batch
  // holds no more rows than one epoch fills (rather than packing the next epochs into it).
  data::fit_batch_to_epoch(train_corpus, train_documents, lo);
  impl_->train_stream = std::make_unique<LoaderStream>(data::DataLoader(train_corpus, train_documents, lo));
  if (eval_dataset != nullptr && eval_dataset->size() > 0) {
    auto eval_corpus = dataset_corpus(*eval_dataset->impl_, "eval_dataset", vocab);
    data::LoaderOptions eo = lo;
    eo.shuffle = false;
    eo.repeat = false;
    eo.batch_size = args.per_device_eval_batch_size;
    eo.sequences_per_batch = 0;
    data::DataLoader eval(eval_corpus, data::all_documents(eval_corpus->num_documents()), eo);
    while (std::optional<data::PackedBatch> b = eval.next()) {
      // Kept by every rank or none (each holds its rows of the same global batch).
      const int64_t labels = group ? sum_over_ranks(*group, b->num_label_tokens) : b->num_label_tokens;
      if (labels > 0) impl_->eval_batches.push_back(to_model_batch(*b));
    }
  }
  impl_->trainer = std::make_unique<Trainer>(model.causal_lm(), std::move(args), *impl_->train_stream,
                                             impl_->eval_batches, tokenizer ? &tokenizer->tokenizer() : nullptr,
                                             model.folder().string());
  // A resume must continue the same examples (train/run_fingerprint.h).
  impl_->trainer->identify_run({{"train_dataset", token_fingerprint(*train_corpus)}});
}

DatasetTrainer::~DatasetTrainer() = default;

namespace {

// The trainer's optimizer and parameter views belong to the model as it was when the trainer was
// made; adding, merging or dropping adapters rebuilds the model under it.
void check_model_unchanged(const ModelForCausalLM& model, uint64_t generation) {
  MF_CHECK(model.generation() == generation, kInvalidArgument,
           "the model was rebuilt (LoRA adapters added, loaded, merged or unloaded) after this trainer was made; "
           "make a new trainer for it");
}

}  // namespace

TrainResult DatasetTrainer::train() {
  check_model_unchanged(impl_->model, impl_->model_generation);
  return impl_->trainer->train();
}

double DatasetTrainer::evaluate() {
  check_model_unchanged(impl_->model, impl_->model_generation);
  MF_CHECK(!impl_->eval_batches.empty(), kInvalidArgument,
           "evaluate() needs an eval_dataset with at least one trained-on label");
  return impl_->trainer->evaluate();
}

void DatasetTrainer::set_resume_from_checkpoint(const std::string& checkpoint) {
  impl_->trainer->set_resume_from_checkpoint(checkpoint);
}

int64_t DatasetTrainer::global_step() const { return impl_->trainer->global_step(); }

void DatasetTrainer::save_model(const std::string& folder) const {
  check_model_unchanged(impl_->model, impl_->model_generation);
  impl_->trainer->save_model(folder.empty() ? impl_->output_dir : folder);
}

}  // namespace moeforge
