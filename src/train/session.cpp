#include "train/session.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "arch/weight_map.h"
#include "chat/chat_template.h"
#include "core/error.h"
#include "core/fault_injection.h"
#include "core/log.h"
#include "data/data_loader.h"
#include "data/dataset.h"
#include "data/example_encoder.h"
#include "io/hf_folder.h"
#include "io/mxfp4.h"
#include "ops/dense.h"
#include "tokenizer/tokenizer.h"
#include "train/adapter_folder.h"
#include "train/loader_stream.h"
#include "train/run_fingerprint.h"
#include "train/stop_signal.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

// The first parameter whose reloaded value is not the trained one as the folder stores it, or
// empty. Bitwise: the folder must hold exactly what the run trained, not something close to it. As
// stored: rounded to `saved_dtype`, except the tensors saved in float32 whatever that dtype (a
// parameter kept so, or what the source checkpoint stored in float32: CheckpointTensor::keep_f32),
// and, saved as MXFP4, those weights quantised and back.
std::string first_parameter_unlike_saved(const CausalLM& trained, const ParameterSet& reloaded, DType saved_dtype,
                                         CausalLM::SavedWeights weights) {
  const ParameterSet& params = trained.params();
  std::vector<std::vector<const CheckpointTensor*>> kept_f32(params.size()), mxfp4(params.size());
  for (const CheckpointTensor& t : trained.checkpoint_tensors()) {
    if (t.held() && t.keep_f32) kept_f32[static_cast<size_t>(t.slice.param)].push_back(&t);
    if (t.held() && t.mxfp4 && weights == CausalLM::SavedWeights::kMxfp4AsReleased)
      mxfp4[static_cast<size_t>(t.slice.param)].push_back(&t);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& t = params.param(static_cast<int>(i));
    const DType stored = params.entry(static_cast<int>(i)).keep_fp32 ? DType::kF32 : saved_dtype;
    Tensor want = ops::cast(ops::cast(t, stored), t.dtype()).to(Device::kCPU).contiguous();
    for (const CheckpointTensor* k : kept_f32[i]) slice_view(k->slice, want).copy_from(slice_view(k->slice, t).to(Device::kCPU));
    for (const CheckpointTensor* k : mxfp4[i]) {
      const Mxfp4Weight q = quantize_mxfp4(read_slice(k->slice, t), k->name);
      const Tensor back = dequantize_mxfp4(q.blocks, q.scales, k->name);
      slice_view(k->slice, want).copy_from(to_slice_layout(k->slice, back).to(t.dtype()));
    }
    Tensor got = reloaded.param(static_cast<int>(i)).to(Device::kCPU).contiguous();
    if (got.shape() != want.shape() || got.dtype() != want.dtype() ||
        std::memcmp(got.raw_data(), want.raw_data(), want.nbytes()) != 0)
      return params.entry(static_cast<int>(i)).name;
  }
  return {};
}

}  // namespace

struct TrainingSession::Impl {
  SessionOptions options;
  // Claimed before anything loads: a busy or unusable output_dir fails in a second, not after the model.
  std::shared_ptr<OutputFolder> output;
  std::string model_dir;
  Tokenizer tokenizer;
  std::unique_ptr<chat::ChatTemplate> chat;
  CausalLM model;
  std::unique_ptr<LoaderStream> train_stream;
  std::vector<Batch> eval_batches;
  nlohmann::json run_fingerprint;  // the data and options a resume must match (Trainer::identify_run)

  explicit Impl(SessionOptions o)
      : options(std::move(o)),
        output(claim_output_folder(options.args, group())),
        model_dir(supported_model_folder(options.model)),
        tokenizer(Tokenizer::from_file(model_dir)),
        chat(load_chat(model_dir, options.data.chat_template)),
        model(CausalLM::from_pretrained(model_dir, options.model_options)) {}

  // An unsupported architecture is named before the folder's tokenizer or the data is asked for.
  static std::string supported_model_folder(const std::string& model) {
    std::string dir = resolve_model_folder(model).string();
    check_model_supported(load_model_config(dir));
    return dir;
  }

  // Expert parallelism's group when it has several ranks, else null.
  ProcessGroup* group() const {
    const ModelOptions& m = options.model_options;
    const auto& g = m.data_group ? m.data_group : m.expert_group;
    return g && g->size() > 1 ? g.get() : nullptr;
  }

  static std::unique_ptr<chat::ChatTemplate> load_chat(const std::string& dir, const std::string& template_file) {
    if (!template_file.empty()) return std::make_unique<chat::ChatTemplate>(chat::ChatTemplate::from_folder(dir, template_file));
    if (!fs::exists(fs::path(dir) / "tokenizer_config.json") && !fs::exists(fs::path(dir) / "chat_template.jinja"))
      return nullptr;
    try {
      return std::make_unique<chat::ChatTemplate>(chat::ChatTemplate::from_folder(dir));
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kNotFound) throw;
      return nullptr;  // a folder without a chat template: "messages" datasets will say so
    }
  }

  // Says which template renders "messages" data, in the log and in the config record; a training
  // variant picked for the model's template is recorded as the --chat_template that selects it.
  void record_chat_template(const chat::ChatTemplate* messages_chat) {
    if (messages_chat == nullptr) return;
    const bool picked = messages_chat != chat.get();
    MF_LOG_INFO("chat template for 'messages' data: ", messages_chat->source_name(),
                picked ? " (moeforge's training variant of the model's template)" : "");
    if (options.config_record.empty() || !options.data.chat_template.empty()) return;
    options.config_record += picked ? str_cat("chat_template: \"", messages_chat->source_name(), "\"  # picked for the model's template\n")
                                    : str_cat("# chat_template: the model's own, ", messages_chat->source_name(), "\n");
  }

  // The sequence length and batch size the user left to the data: the longest training example
  // (at most kDefaultMaxSeqLength) and no more rows per batch than one epoch fills, so a small
  // dataset is not padded up to 8 x 2048 tokens; a global batch then holds the same sequences at
  // every process count (data::fit_batch_to_epoch). Both go in the config record.
  void size_to_data(const std::shared_ptr<const data::TokenCorpus>& corpus, const std::vector<uint64_t>& docs,
                    data::LoaderOptions& lo) {
    const DataArguments& d = options.data;
    int64_t& batch = options.args.per_device_train_batch_size;
    lo.max_seq_length = d.max_seq_length;
    if (lo.max_seq_length == 0) {
      const int64_t longest = data::longest_document(*corpus, docs, std::numeric_limits<int64_t>::max());
      lo.max_seq_length = std::min(longest, kDefaultMaxSeqLength);
      MF_LOG_INFO("max_seq_length ", lo.max_seq_length, ": sized to the data (its longest training example",
                  longest > kDefaultMaxSeqLength ? str_cat(", ", longest, " tokens, cut to ", kDefaultMaxSeqLength) : "",
                  ")");
      record_config(str_cat("max_seq_length: \"", lo.max_seq_length, "\"  # sized to the data\n"));
    }
    lo.batch_size = batch;
    if (d.fit_batch_to_data) {
      const int64_t sequences = data::fit_batch_to_epoch(corpus, docs, lo);
      const int64_t rows = lo.world_size * lo.batch_size;
      const std::string empty = lo.sequences_per_batch == 0 ? ""
                                : str_cat("; each global batch holds them, its last ", rows - sequences, " of ", rows,
                                          " rows empty");
      if (lo.batch_size < batch || !empty.empty()) {
        batch = lo.batch_size;
        MF_LOG_INFO("per_device_train_batch_size ", batch, ": sized to the data (one epoch packs ", sequences,
                    " sequences of ", lo.max_seq_length, " tokens", empty, ")");
      }
      record_config(str_cat("per_device_train_batch_size: \"", batch, "\"  # sized to the data", empty, "\n"));
    }
  }

  // Examples longer than max_seq_length lose their tail under the truncate rule: counted, warned
  // about and recorded (TRL truncates silently).
  void report_truncation(const data::TokenCorpus& corpus, const std::vector<uint64_t>& docs,
                         const data::LoaderOptions& lo) {
    if (lo.overflow != data::OverflowRule::kTruncate) return;
    const auto limit = static_cast<uint64_t>(lo.max_seq_length);
    uint64_t examples = 0, dropped = 0, total = 0;
    for (uint64_t doc : docs) {
      const uint64_t length = corpus.document_length(doc);
      total += length;
      if (length <= limit) continue;
      ++examples;
      dropped += length - limit;
    }
    if (examples == 0) return;
    const std::string what = str_cat(examples, " of ", docs.size(), " training examples are longer than max_seq_length ",
                                     lo.max_seq_length, " and truncated: ", dropped, " of ", total, " tokens dropped");
    MF_LOG_WARN(what, " (packing_overflow split keeps them as more sequences)");
    record_config(str_cat("# truncated: ", what, "\n"));
  }

  // Adds to the run's moeforge_config.yaml (when it writes one).
  void record_config(const std::string& lines) {
    if (!options.config_record.empty()) options.config_record += lines;
  }

  void prepare_data() {
    raise_signal_fault(fault_at("load"));
    const DataArguments& d = options.data;
    MF_CHECK(!d.train_file.empty(), kInvalidArgument, "no training data: set train_file");
    data::ExampleEncoder encoder(tokenizer, chat.get(), data::eos_token_id_from_config(model_dir, tokenizer), d.encoder);
    record_chat_template(encoder.messages_template());
    data::LoadReport report;
    auto corpus = std::make_shared<const data::TokenCorpus>(
        data::load_dataset(d.train_file, encoder, {.skip_bad_lines = d.skip_bad_lines}, &report));
    // By content, not by path: a moved file resumes, an edited one does not.
    run_fingerprint = {{"train_file", content_fingerprint(d.train_file)},
                       {"training tokens", token_fingerprint(*corpus)},
                       {"eval_file", d.eval_file.empty() ? "" : content_fingerprint(d.eval_file)},
                       {"eval_ratio", d.eval_ratio},
                       {"max_seq_length", d.max_seq_length},
                       {"overflow", d.overflow},
                       {"model config.json", content_fingerprint(fs::path(model_dir) / "config.json")}};
    if (report.bad_lines > 0) {
      MF_LOG_WARN(d.train_file, ": skipped ", report.bad_lines, " bad lines of ", report.lines);
      for (const auto& e : report.bad_line_errors) MF_LOG_WARN("  ", e);
    }
    data::LoaderOptions lo;
    lo.seed = options.args.seed;
    lo.overflow = data::overflow_rule_from_name(d.overflow);
    lo.packing = d.packing;
    lo.pad_token_id = 0;
    if (group()) {  // each rank takes its rows of every global batch
      lo.rank = group()->rank();
      lo.world_size = group()->size();
    }
    std::shared_ptr<const data::TokenCorpus> eval_corpus;
    std::vector<uint64_t> train_docs, eval_docs;
    if (!d.eval_file.empty()) {
      train_docs = data::all_documents(corpus->num_documents());
      eval_corpus = std::make_shared<const data::TokenCorpus>(
          data::load_dataset(d.eval_file, encoder, {.skip_bad_lines = d.skip_bad_lines}));
      eval_docs = data::all_documents(eval_corpus->num_documents());
    } else {
      data::DocumentSplit split = data::split_for_eval(corpus->num_documents(), d.eval_ratio, options.args.seed);
      train_docs = std::move(split.train);
      eval_docs = std::move(split.eval);
      eval_corpus = corpus;
    }
    MF_LOG_INFO("data: ", train_docs.size(), " training documents, ", eval_docs.size(), " held out");
    size_to_data(corpus, train_docs, lo);
    report_truncation(*corpus, train_docs, lo);
    train_stream = std::make_unique<LoaderStream>(data::DataLoader(corpus, train_docs, lo));
    if (!eval_docs.empty()) {
      data::LoaderOptions eo = lo;
      eo.shuffle = false;
      eo.repeat = false;
      eo.batch_size = options.args.per_device_eval_batch_size;
      eo.sequences_per_batch = 0;
      data::DataLoader eval(eval_corpus, eval_docs, eo);
      while (static_cast<int64_t>(eval_batches.size()) < d.max_eval_batches) {
        std::optional<data::PackedBatch> b = eval.next();
        if (!b) break;
        // Kept by every rank or none: each rank holds its rows of the same global batch.
        const int64_t labels = group() ? sum_over_ranks(*group(), b->num_label_tokens) : b->num_label_tokens;
        if (labels > 0) eval_batches.push_back(to_model_batch(*b));
      }
    }
  }
};

TrainingSession::TrainingSession(SessionOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  if (!impl_->options.adapter.empty()) {
    impl_->model.load_adapter(impl_->options.adapter);
    MF_LOG_INFO("adapters start from ", impl_->options.adapter);
  }
  impl_->prepare_data();
}

TrainingSession::~TrainingSession() = default;

CausalLM& TrainingSession::model() { return impl_->model; }
const Tokenizer& TrainingSession::tokenizer() const { return impl_->tokenizer; }
const chat::ChatTemplate* TrainingSession::chat_template() const { return impl_->chat.get(); }
const std::string& TrainingSession::model_dir() const { return impl_->model_dir; }

TrainResult TrainingSession::run() {
  Impl& m = *impl_;
  const TrainingArguments& a = m.options.args;
  // Signals during the final save and the reload check wait for them to finish (see stop_signal.h).
  StopSignalScope stop_signals;
  if (!m.options.config_record.empty() && (!m.group() || m.group()->rank() == 0)) atomic_write_file(m.output->path() / "moeforge_config.yaml", m.options.config_record);
  Trainer trainer(m.model, a, *m.train_stream, m.eval_batches, &m.tokenizer, m.model_dir, m.output);
  trainer.identify_run(m.run_fingerprint);
  TrainResult result;
  try {
    result = trainer.train();
  } catch (...) {
    // A run that fails before its first logged step leaves no folder holding only its config record.
    std::error_code ignored;
    if (!fs::exists(m.output->path() / "metrics.jsonl") && latest_checkpoint(m.output->path().string()).empty())
      fs::remove(m.output->path() / "moeforge_config.yaml", ignored);
    throw;
  }
  if (result.interrupted) return result;

  raise_signal_fault(fault_at("final_save"));
  trainer.save_model(a.output_dir);
  const bool lora = m.model.lora_config() != nullptr;
  MF_LOG_INFO("saved the trained ", lora ? "LoRA adapter (PEFT format)" : "model", " to ", a.output_dir);
  // The saved folder must reproduce the trained model: reload it (under LoRA: the base, then the
  // saved adapter) and compare every weight with the trained one as saved (rounded to the folder's
  // dtype), then report the loss of both: eval_loss on the held-out batches, or without any, the
  // loss of one training batch.
  CausalLM reloaded = CausalLM::from_pretrained(lora ? m.model_dir : a.output_dir, m.options.model_options);
  if (lora) load_trained_model(reloaded, a.output_dir);
  const DType saved_dtype = saved_model_dtype(m.model);
  const CausalLM::SavedWeights weights = CausalLM::saved_weights_named(a.save_quantization);
  const std::string differs = first_parameter_unlike_saved(m.model, reloaded.params(), saved_dtype, weights);
  MF_CHECK(differs.empty(), kInternal, "the saved model in ", a.output_dir, " does not reload to the trained weights: ",
           differs, " differs from the trained value as saved (", dtype_torch_name(saved_dtype), ", save_quantization ",
           a.save_quantization, ")");
  const bool held_out = !m.eval_batches.empty();
  const std::vector<Batch> probe = held_out ? m.eval_batches : std::vector<Batch>{m.train_stream->next()};
  const std::string what = held_out ? "eval_loss" : "loss on a training batch";
  const double trained = held_out && result.final_eval_loss >= 0 ? result.final_eval_loss : mean_loss(m.model, probe);
  const double again = mean_loss(reloaded, probe);
  MF_LOG_INFO("reload check: the saved folder holds the trained weights", saved_dtype == m.model.params().flat_params().dtype()
              ? "" : str_cat(" rounded to ", dtype_torch_name(saved_dtype)),
              weights == CausalLM::SavedWeights::kMxfp4AsReleased ? ", the experts' as MXFP4" : "", "; its ", what, " ", again,
              " (the trained model's: ", trained, ")");
  if (StopSignalScope::received() != 0)
    MF_LOG_WARN("signal ", StopSignalScope::received(), " arrived during the final save; the save was completed first");
  return result;
}

}  // namespace moeforge
