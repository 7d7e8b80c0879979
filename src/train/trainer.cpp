#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <utility>

#include "core/error.h"
#include "core/fault_injection.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/hf_folder.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "optim/adamw.h"
#include "optim/optimizer_files.h"
#include "optim/schedule.h"
#include "tokenizer/tokenizer.h"
#include "train/adapter_folder.h"
#include "train/report.h"
#include "train/run_fingerprint.h"
#include "train/stop_signal.h"
#include "train/tensorboard.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

// nan_policy=skip stops after this many skipped steps in a row: by then the model, not a batch, is broken.
constexpr int64_t kMaxConsecutiveSkippedSteps = 10;

int64_t count_label_tokens(const Batch& b) {
  // Labels are unshifted: position t's label is the target of position t-1, so position 0 counts not.
  Tensor labels = b.labels.to(Device::kCPU).to(DType::kI64).contiguous();
  const int64_t B = labels.size(0), T = labels.size(1);
  int64_t n = 0;
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 1; t < T; ++t) n += labels.data<int64_t>()[r * T + t] != -100;
  return n;
}

std::string format_duration(double seconds) {
  int64_t s = static_cast<int64_t>(seconds);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

// A checkpoint's trainer_state.json, every field checked: a hand-edited or truncated file is bad
// input named by its path and key, never an internal error or a run into checkpoint--10.
struct TrainerState {
  int64_t global_step = 0;
  int64_t optimizer_steps = 0;
  nlohmann::json data_position;
  nlohmann::json log_history = nlohmann::json::array();
  nlohmann::json run_fingerprint;  // null in checkpoints written before moeforge recorded it
};

TrainerState read_trainer_state(const fs::path& folder) {
  const fs::path path = folder / "trainer_state.json";
  const nlohmann::json ts = read_json_file(path);
  validate_trainer_state(ts, path.string());
  TrainerState state{ts["global_step"].get<int64_t>(), ts["optimizer_steps"].get<int64_t>(), ts["data_position"]};
  state.run_fingerprint = ts.value("run_fingerprint", nlohmann::json());
  for (const auto& r : ts.value("log_history", nlohmann::json::array())) {
    MF_CHECK(r.is_object() && r.contains("step") && r["step"].is_number_integer(), kFormat, path.string(),
             ": every 'log_history' entry needs an integer 'step'");
    if (r["step"].get<int64_t>() <= state.global_step) state.log_history.push_back(r);
  }
  return state;
}

}  // namespace

std::string latest_checkpoint(const std::string& output_dir) {
  int64_t best = -1;
  std::string path;
  if (!fs::is_directory(output_dir)) return {};
  static const std::regex pattern("checkpoint-([0-9]+)");
  for (const auto& e : fs::directory_iterator(output_dir)) {
    std::smatch m;
    std::string name = e.path().filename().string();
    if (!e.is_directory() || !std::regex_match(name, m, pattern)) continue;
    if (!fs::exists(e.path() / "trainer_state.json")) continue;  // incomplete
    int64_t step = std::stoll(m[1]);
    if (step > best) {
      best = step;
      path = e.path().string();
    }
  }
  return path;
}

struct Trainer::Impl {
  CausalLM& model;
  TrainingArguments args;
  BatchStream& data;
  std::vector<Batch> eval_batches;
  const Tokenizer* tokenizer;
  std::string source_model_dir;
  std::shared_ptr<OutputFolder> output;  // claimed by the caller or by the first train(); held until the trainer goes
  std::unique_ptr<AdamW> optimizer;
  std::vector<bool> trainable;
  int64_t step = 0;
  int64_t consecutive_skips = 0;  // nan_policy=skip
  nlohmann::json log_history = nlohmann::json::array();
  RunReport report{"moeforge training report"};
  // Expert parallelism: the model's group when it has several ranks, else null. Every rank trains;
  // the first alone logs and writes metrics, the report and the shared checkpoint files.
  ProcessGroup* group = nullptr;
  bool main_rank = true;
  std::unique_ptr<TensorBoardWriter> tensorboard;  // when report_to names it
  std::function<void(const nlohmann::json&)> callback;
  // What the checkpoints record of this run and a resume must match (run_fingerprint.h): the options
  // that decide the data order and what a step is, and what identify_run() adds.
  nlohmann::json run_fingerprint;

  // The model hands its gradients to the optimizer only while the optimizer exists.
  ~Impl() {
    if (optimizer && model.gradient_sink() == optimizer.get()) model.set_gradient_sink(nullptr);
  }

  Impl(CausalLM& m, TrainingArguments a, BatchStream& d, std::vector<Batch> e, const Tokenizer* t, std::string s)
      : model(m), args(std::move(a)), data(d), eval_batches(std::move(e)), tokenizer(t), source_model_dir(std::move(s)) {
    if (model.data_group() && model.data_group()->size() > 1) {
      group = model.data_group().get();
      main_rank = group->rank() == 0;
    }
    // The global batch, not the rows per process: a checkpoint resumes at another process count.
    const int64_t global_batch = data.sequences_per_batch() > 0
                                     ? data.sequences_per_batch()
                                     : args.per_device_train_batch_size * (group ? group->size() : 1);
    run_fingerprint = {{"seed", args.seed},
                       {"train_batch_size", global_batch},
                       {"gradient_accumulation_steps", args.gradient_accumulation_steps}};
  }

  void build_optimizer();
  void print_preamble(const Batch& first, int64_t total_steps);
  void check_weights_finite(const std::string& before) const;
  void save_checkpoint(int64_t global_step);
  void resume(const std::string& folder);
  void write_metrics(const nlohmann::json& record);
  // Whether any rank received a stop signal (all ranks stop at the same step).
  bool stop_requested() const {
    const int64_t here = StopSignalScope::received() != 0;
    return (group ? sum_over_ranks(*group, here) : here) > 0;
  }
  fs::path metrics_path() const { return output->path() / "metrics.jsonl"; }
  // Bytes of weights, gradients and optimizer state, as allocated.
  size_t state_bytes_per_model() const {
    return model.params().flat_params().nbytes() + model.params().flat_grads().nbytes() +
           static_cast<size_t>(optimizer->state_bytes());
  }
};

void Trainer::Impl::build_optimizer() {
  const ParameterSet& ps = model.params();
  std::vector<bool> decay(ps.size());
  trainable.assign(ps.size(), true);
  for (size_t i = 0; i < ps.size(); ++i) {
    const ParamEntry& e = ps.entry(static_cast<int>(i));
    decay[i] = e.trainer_weight_decay;
    trainable[i] = ps.trainable(static_cast<int>(i));  // LoRA's base weights are frozen
    for (const auto& g : args.freeze) {
      std::string name = param_group_name(e.group);
      std::string want = g;
      std::replace(want.begin(), want.end(), '_', ' ');
      if (name == want || (want == "embedding" && e.group == ParamGroup::kEmbedding)) trainable[i] = false;
    }
  }
  AdamWConfig ac{args.learning_rate, args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay};
  // Data parallelism: each rank keeps the optimizer state of its slice of the parameters it shares.
  // ZeRO-2 shards the gradients of those parameters too.
  const OptimizerSharding sharding{group, model.expert_replicas().get(), group, args.zero_stage >= 2};
  optimizer = std::make_unique<AdamW>(model.params(), ac, parse_optimizer_precision(args.optimizer_precision),
                                      decay, trainable, sharding);
  if (optimizer->shards_gradients()) model.set_gradient_sink(optimizer.get());
}

void Trainer::Impl::print_preamble(const Batch& first, int64_t total_steps) {
  const ParameterSet& ps = model.params();
  std::map<std::string, std::pair<int64_t, bool>> groups;
  int64_t total = 0, trained = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const ParamEntry& e = ps.entry(static_cast<int>(i));
    auto& g = groups[param_group_name(e.group)];
    g.first += e.numel();
    g.second = trainable[i];
    total += e.numel();
    if (trainable[i]) trained += e.numel();
  }
  MF_LOG_INFO("trainable parameters: ", trained, " of ", total);
  for (const auto& [name, g] : groups)
    MF_LOG_INFO("  ", name, ": ", g.first, g.second ? "  trains" : "  FROZEN");
  if (const LoraConfig* lora = model.lora_config()) {
    std::string targets;
    for (const auto& t : lora->target_modules) targets += (targets.empty() ? "" : ",") + t;
    for (const auto& t : lora->target_parameters) targets += (targets.empty() ? "" : ",") + t;
    MF_LOG_INFO("LoRA: r ", lora->r, ", alpha ", lora->lora_alpha, lora->use_rslora ? " (rsLoRA)" : "", ", dropout ",
                lora->lora_dropout, ", ", model.adapter_tensors().size(), " adapter tensors on ", targets,
                "; checkpoints and the final save hold the adapter (PEFT format), not the base model");
  }
  const ModelConfig& c = model.config();
  if (c.moe) {
    MF_LOG_INFO("auxiliary load-balancing loss: ",
                c.moe->output_router_logits ? str_cat("ON (router_aux_loss_coef ", c.moe->router_aux_loss_coef, ")")
                                            : "OFF (config output_router_logits is false)");
  }
  const size_t state_bytes = state_bytes_per_model();
  MF_LOG_INFO("memory plan: ", format_bytes(state_bytes), " for weights, gradients and optimizer state (",
              args.optimizer_precision, ", ", static_cast<double>(state_bytes) / ps.numel(), " B/param on this backend)");
  if (optimizer->shards_gradients())
    MF_LOG_INFO("zero_stage 2: each process keeps its slice of the shared gradients, summed as each layer's complete");
  else if (args.zero_stage >= 2)
    MF_LOG_INFO("zero_stage 2: no other process holds these parameters, so there are no gradients to shard");
  MF_LOG_INFO("steps: ", total_steps, " x ", args.gradient_accumulation_steps, " micro-batches of ",
              first.input_ids.size(0), " x ", first.input_ids.size(1), " tokens");
  if (tokenizer != nullptr) {
    // One packed sample with the tokens that carry loss in [[ ]].
    Tensor ids = first.input_ids.to(Device::kCPU).to(DType::kI64);
    Tensor labels = first.labels.to(Device::kCPU).to(DType::kI64);
    const int64_t T = ids.size(1);
    std::string preview;
    bool in_loss = false;
    for (int64_t t = 0; t < T && preview.size() < 600; ++t) {
      bool loss = labels.data<int64_t>()[t] != -100;
      if (loss != in_loss) preview += loss ? "[[" : "]]";
      in_loss = loss;
      preview += tokenizer->decode({static_cast<int32_t>(ids.data<int64_t>()[t])}, false);
    }
    if (in_loss) preview += "]]";
    MF_LOG_INFO("sample 0 of the first batch (tokens with loss in [[ ]]):\n", preview);
  }
}

void Trainer::Impl::write_metrics(const nlohmann::json& record) {
  if (!main_rank) return;
  append_line(metrics_path(), record.dump());
  if (tensorboard) {
    // Tags as the Hugging Face Trainer's TensorBoard callback names them.
    static const std::pair<const char*, const char*> kTags[] = {
        {"loss", "train/loss"}, {"aux_loss", "train/aux_loss"}, {"lr", "train/learning_rate"},
        {"grad_norm", "train/grad_norm"}, {"tokens_per_s", "train/tokens_per_second"},
        {"tflops", "train/tflops"}, {"eval_loss", "eval/loss"}};
    const int64_t step = record.value("step", int64_t{0});
    for (const auto& [key, tag] : kTags)
      if (record.contains(key)) tensorboard->add_scalar(tag, record[key].get<double>(), step);
    tensorboard->flush();
  }
}

void Trainer::Impl::check_weights_finite(const std::string& before) const {
  const std::string bad = first_non_finite_parameter(model.params());
  MF_CHECK(bad.empty(), kNumerical, "after step ", step, " parameter ", bad,
           " holds NaN or Inf, so ", before, " is not written (the updates diverged: check learning_rate, ",
           "adam_epsilon and max_grad_norm; the last checkpoint, if any, is untouched)");
}

void Trainer::Impl::save_checkpoint(int64_t global_step) {
  check_weights_finite(str_cat("checkpoint-", global_step));
  const fs::path final_dir = output->path() / str_cat("checkpoint-", global_step);
  // Every rank writes into the first rank's temporary folder.
  const int64_t pid = group ? sum_over_ranks(*group, main_rank ? int64_t{::getpid()} : int64_t{0}) : ::getpid();
  const fs::path tmp = output->path() / str_cat(".tmp-checkpoint-", global_step, "-", pid);
  if (main_rank) fs::remove_all(tmp);
  if (group) group->barrier();
  const DType saved_dtype = saved_model_dtype(model);
  try {
    const Fault fault = fault_at("save");
    if (fault == Fault::kNoSpace)
      fail(ErrorCode::kIo, "writing ", (tmp / (model.lora_config() ? "adapter_model.safetensors" : "model.safetensors")).string(),
           ": No space left on device");
    save_trained_model(model, tmp, source_model_dir);
    raise_signal_fault(fault);
    std::vector<NamedTensor> state;
    // Weights saved in a narrower dtype than they train in: their exact values go with the optimizer
    // state, so a resume continues bit for bit.
    const bool rounded = model.params().flat_params().dtype() != saved_dtype;
    // Each rank its slices of the state (no two ranks hold the same element's).
    for (const auto& [k, v] : optimizer->state(rounded)) state.emplace_back(k, v.to(Device::kCPU).contiguous());
    write_safetensors(tmp / optimizer_file_name(group ? group->rank() : 0, group ? group->size() : 1), state,
                      {{kOptimizerShardsKey, optimizer->shard_metadata()}});
    if (group) group->barrier();
    if (main_rank) {
      nlohmann::json ts = {{"global_step", global_step},
                           {"optimizer_steps", optimizer->steps_taken()},
                           {"data_position", data.position()},
                           {"run_fingerprint", run_fingerprint},
                           {"log_history", log_history}};
      // Written last: a checkpoint folder without trainer_state.json is incomplete by definition.
      atomic_write_file(tmp / "trainer_state.json", ts.dump(2));
      raise_signal_fault(fault_at("rename"));
      fs::remove_all(final_dir);
      fs::rename(tmp, final_dir);
    }
    if (group) group->barrier();
  } catch (const Error& e) {
    fs::remove_all(tmp);
    std::string last = latest_checkpoint(output->path().string());
    fail(e.code(), "saving checkpoint ", final_dir.string(), " failed: ", e.what(),
         last.empty() ? std::string("; no earlier checkpoint exists")
                      : str_cat("; the previous checkpoint ", last, " is intact"));
  } catch (const fs::filesystem_error& e) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    fail(ErrorCode::kIo, "saving checkpoint ", final_dir.string(), " failed: ", e.what());
  }
  if (args.save_total_limit > 0 && main_rank) {
    std::vector<std::pair<int64_t, fs::path>> all;
    static const std::regex pattern("checkpoint-([0-9]+)");
    for (const auto& e : fs::directory_iterator(args.output_dir)) {
      std::smatch m;
      std::string name = e.path().filename().string();
      if (e.is_directory() && std::regex_match(name, m, pattern)) all.emplace_back(std::stoll(m[1]), e.path());
    }
    std::sort(all.begin(), all.end());
    while (static_cast<int64_t>(all.size()) > args.save_total_limit) {
      fs::remove_all(all.front().second);
      all.erase(all.begin());
    }
  }
  MF_LOG_INFO("saved ", final_dir.string());
}

void Trainer::Impl::resume(const std::string& folder) {
  const TrainerState ts = read_trainer_state(folder);
  if (ts.run_fingerprint.is_null()) {
    MF_LOG_WARN("resume_from_checkpoint: ", folder, " does not record its data and options (an older moeforge "
                "wrote it); resuming without checking that they are this run's");
  } else {
    const std::vector<std::string> differ = fingerprint_differences(ts.run_fingerprint, run_fingerprint);
    std::string list;
    for (const auto& d : differ) list += (list.empty() ? "" : "; ") + d;
    MF_CHECK(differ.empty(), kInvalidArgument, "resume_from_checkpoint: ", folder,
             " belongs to a run with other data or options: ", list,
             ". Resume with that run's data and options, or start over with overwrite_output_dir (or another output_dir)");
  }
  load_trained_model(model, folder);
  // Written by any number of processes: each parameter's elements come from the files holding them.
  optimizer->load_state(read_optimizer_state(folder, model.params(), optimizer->owned_ranges()), ts.optimizer_steps);
  data.restore(ts.data_position);
  step = ts.global_step;
  log_history = ts.log_history;
  for (const auto& r : log_history) report.add(r);
  // metrics.jsonl continues the resumed history: records after the checkpoint's step (from the run
  // that went on past it) are dropped, so no step appears twice.
  std::string text;
  for (const auto& r : log_history) text += r.dump() + "\n";
  if (main_rank) atomic_write_file(metrics_path(), text);
  MF_LOG_INFO("resumed from ", folder, " at step ", step);
}

Trainer::Trainer(CausalLM& model, TrainingArguments args, BatchStream& train_data, std::vector<Batch> eval_batches,
                 const Tokenizer* tokenizer, std::string source_model_dir, std::shared_ptr<OutputFolder> output)
    : impl_(std::make_unique<Impl>(model, std::move(args), train_data, std::move(eval_batches), tokenizer,
                                   std::move(source_model_dir))) {
  validate(impl_->args);
  impl_->output = std::move(output);
  // As the Hugging Face Trainer: gradient_checkpointing in the arguments turns it on in the model;
  // "none" leaves the model's own setting.
  if (impl_->args.gradient_checkpointing != "none" || impl_->args.recompute_full_layers > 0)
    model.set_recompute(parse_recompute(impl_->args.gradient_checkpointing), impl_->args.recompute_full_layers);
  if (impl_->args.activation_offload_layers > 0) model.set_activation_offload_layers(impl_->args.activation_offload_layers);
  MF_CHECK(impl_->args.router_bias_update_rate == 0 || model.has_router_biases(), kInvalidArgument,
           "router_bias_update_rate: model_type '", model.config().model_type,
           "' has no router score-correction bias (e_score_correction_bias) to update");
  check_saved_weights(model, CausalLM::saved_weights_named(impl_->args.save_quantization));
  impl_->build_optimizer();
}

Trainer::~Trainer() = default;

void Trainer::set_resume_from_checkpoint(const std::string& checkpoint) { impl_->args.resume_from_checkpoint = checkpoint; }

int64_t Trainer::global_step() const { return impl_->step; }

void Trainer::identify_run(const nlohmann::json& items) { impl_->run_fingerprint.update(items); }

void Trainer::on_step(std::function<void(const nlohmann::json&)> callback) { impl_->callback = std::move(callback); }

double mean_loss(CausalLM& model, const std::vector<Batch>& batches) {
  double loss_sum = 0;
  int64_t tokens = 0;
  for (const Batch& b : batches) {
    StepResult r = model.forward_backward(b, false, false);
    loss_sum += r.loss * r.num_label_tokens;
    tokens += r.num_label_tokens;
  }
  return tokens > 0 ? loss_sum / tokens : NAN;
}

double Trainer::evaluate() { return mean_loss(impl_->model, impl_->eval_batches); }

void Trainer::save_model(const std::string& folder) const {
  impl_->check_weights_finite(folder);
  save_trained_model(impl_->model, folder, impl_->source_model_dir,
                     CausalLM::saved_weights_named(impl_->args.save_quantization));
}

std::shared_ptr<OutputFolder> claim_output_folder(const TrainingArguments& args, ProcessGroup* group) {
  OutputFolderPolicy policy{.resuming = !args.resume_from_checkpoint.empty(), .overwrite = args.overwrite_output_dir};
  if (group == nullptr || group->size() == 1) return OutputFolder::claim(args.output_dir, policy);
  // The first rank claims, the others join once it has: its lock file carries a token of this run.
  std::random_device entropy;
  const int64_t mine = group->rank() == 0 ? static_cast<int64_t>(((uint64_t{entropy()} << 31) ^ entropy()) | 1) : 0;
  policy.run_token = sum_over_ranks(*group, mine);
  std::shared_ptr<OutputFolder> folder;
  if (group->rank() == 0) folder = OutputFolder::claim(args.output_dir, policy);
  group->barrier();
  if (group->rank() != 0) folder = OutputFolder::join(args.output_dir, policy.run_token);
  return folder;
}

TrainResult Trainer::train() {
  Impl& m = *impl_;
  const TrainingArguments& a = m.args;
  // From here on a signal stops the run at the next step boundary, with a checkpoint.
  StopSignalScope stop_signals;
  if (!m.output) m.output = claim_output_folder(a, m.group);  // held until the trainer goes
  for (const auto& r : a.report_to) {
    MF_CHECK(r == "tensorboard" || r == "none", kInvalidArgument, "report_to: '", r,
             "' is not supported (tensorboard, none; metrics.jsonl and report.html are always written)");
    if (r == "tensorboard" && !m.tensorboard && m.main_rank)
      m.tensorboard = std::make_unique<TensorBoardWriter>((m.output->path() / "runs").string());
  }
  if (!a.resume_from_checkpoint.empty()) {
    std::string folder = a.resume_from_checkpoint == "latest" ? latest_checkpoint(m.output->path().string())
                                                              : a.resume_from_checkpoint;
    MF_CHECK(!folder.empty(), kNotFound, "resume_from_checkpoint: no complete checkpoint in ", a.output_dir);
    MF_CHECK(fs::exists(fs::path(folder) / "trainer_state.json"), kNotFound, "resume_from_checkpoint: ", folder,
             " is not a complete checkpoint (no trainer_state.json)");
    m.resume(folder);
  }
  const int64_t batches_per_epoch = m.data.batches_per_epoch();
  int64_t total_steps = a.max_steps;
  if (total_steps <= 0) {
    MF_CHECK(batches_per_epoch > 0, kInvalidArgument,
             "set max_steps: the number of batches per epoch of this dataset is unknown");
    const double steps = std::ceil(a.num_train_epochs * batches_per_epoch /
                                   static_cast<double>(a.gradient_accumulation_steps));
    // Beyond 2^53 the count is not even exact in a double; no run takes that many steps.
    MF_CHECK(steps <= 9007199254740992.0, kInvalidArgument, "num_train_epochs ", a.num_train_epochs, " means ",
             steps, " optimizer steps on this dataset, more than any run can take");
    total_steps = static_cast<int64_t>(steps);
  }
  MF_CHECK(a.eval_strategy != "epoch" || batches_per_epoch > 0, kInvalidArgument,
           "eval_strategy epoch: the number of batches per epoch of this dataset is unknown (eval_strategy steps "
           "evaluates every eval_steps)");
  // Epoch e ends with micro-batch e x batches_per_epoch, in the step that takes it (an accumulation
  // window may straddle two epochs).
  auto ends_epoch = [&](int64_t step) {
    const int64_t taken = step * a.gradient_accumulation_steps;
    return taken / batches_per_epoch > (taken - a.gradient_accumulation_steps) / batches_per_epoch;
  };
  const int64_t warmup = a.warmup_steps > 0 ? a.warmup_steps
                                            : static_cast<int64_t>(std::ceil(a.warmup_ratio * total_steps));
  const LrSchedule schedule = parse_lr_schedule(a.lr_scheduler_type);

  TrainResult result;
  double loss_sum = 0;  // of this call's steps, for training_loss
  int64_t losses_summed = 0;
  bool preamble_done = m.step > 0;
  const auto t_start = std::chrono::steady_clock::now();
  int64_t tokens_since_log = 0, start_step = m.step;
  auto t_log = t_start;
  std::pair<int64_t, double> last_eval{-1, -1.0};  // the step of this call's latest evaluation, and its loss
  while (m.step < total_steps) {
    std::vector<Batch> window;
    int64_t window_tokens = 0;
    for (int64_t i = 0; i < a.gradient_accumulation_steps; ++i) {
      window.push_back(m.data.next());
      window_tokens += count_label_tokens(window.back());
    }
    // Expert parallelism: each rank holds its rows of the global batch (the data loader's shard).
    if (m.group) window_tokens = sum_over_ranks(*m.group, window_tokens);
    if (!preamble_done) {
      m.print_preamble(window.front(), total_steps);
      preamble_done = true;
    }
    m.optimizer->zero_grad();
    double loss = 0, lm = 0, aux = 0;
    int64_t seq = window.front().input_ids.size(1);
    std::vector<std::vector<int64_t>> load;
    for (const Batch& b : window) {
      StepResult r = m.model.forward_backward(b, true, false, static_cast<double>(std::max<int64_t>(1, window_tokens)));
      loss += r.loss;
      lm += r.lm_loss;
      aux += r.aux_loss / a.gradient_accumulation_steps;
      tokens_since_log += b.input_ids.numel() * (m.group ? m.group->size() : 1);
      if (load.empty()) load = r.expert_load;
      else
        for (size_t l = 0; l < load.size(); ++l)
          for (size_t e = 0; e < load[l].size(); ++e) load[l][e] += r.expert_load[l][e];
    }
    m.optimizer->reduce_gradients();
    const double lr = a.learning_rate * lr_multiplier(schedule, m.step, warmup, total_steps);
    // The NaN policy looks at the loss and at the gradient norm: a NaN can reach the gradients (or a
    // weight) without the loss showing it. Both are the same on every rank, and so are its decisions.
    double grad_norm = std::isfinite(loss) ? m.optimizer->grad_norm() : NAN;
    const bool skip = !std::isfinite(grad_norm);
    if (skip) {
      const std::string what = std::isfinite(loss) ? str_cat("the gradient norm is ", grad_norm)
                                                   : str_cat("the loss is ", loss);
      const std::string broken = first_non_finite_parameter(m.model.params());
      const std::string cause = broken.empty() ? std::string()
                                               : str_cat("; parameter ", broken, " already holds NaN or Inf");
      MF_CHECK(a.nan_policy == "skip", kNumerical, "step ", m.step + 1, ": ", what, cause,
               " (data position before this step: ", m.data.position().dump(),
               "); nan_policy=skip would skip such batches");
      MF_CHECK(++m.consecutive_skips < kMaxConsecutiveSkippedSteps, kNumerical, "step ", m.step + 1, ": ", what,
               cause, "; ", kMaxConsecutiveSkippedSteps,
               " steps in a row were skipped (nan_policy=skip), so the model, not a batch, is broken");
      MF_LOG_WARN("step ", m.step + 1, ": ", what, cause, "; skipping the batch (nan_policy=skip)");
    } else {
      m.consecutive_skips = 0;
      m.optimizer->step(lr, a.max_grad_norm > 0 ? clip_coefficient(grad_norm, a.max_grad_norm) : 1.0);
      if (a.router_bias_update_rate > 0) m.model.update_router_biases(load, a.router_bias_update_rate);
    }
    ++m.step;
    result.final_loss = loss;
    if (!skip) {  // a skipped step's loss is not finite and trained nothing
      loss_sum += loss;
      result.training_loss = loss_sum / static_cast<double>(++losses_summed);
    }
    raise_signal_fault(fault_at("step"));

    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - t_start).count();
    const double since = std::chrono::duration<double>(now - t_log).count();
    nlohmann::json rec = {{"step", m.step}, {"loss", loss}, {"lm_loss", lm}, {"lr", lr}, {"grad_norm", grad_norm}};
    if (m.model.config().moe && m.model.config().moe->output_router_logits) rec["aux_loss"] = aux;
    if (!load.empty()) rec["expert_load"] = load;
    const bool log_now = m.step % std::max<int64_t>(1, a.logging_steps) == 0 || m.step == total_steps;
    if (log_now) {
      const double tps = since > 0 ? tokens_since_log / since : 0;
      rec["tokens_per_s"] = tps;
      rec["tflops"] = tps * training_flops_per_token(m.model, seq) / 1e12;
      const MemoryStats mem = m.model.options().device == Device::kCPU ? cpu_memory_stats() : cuda_memory_stats();
      rec["peak_memory_bytes"] = mem.peak_in_use;
      int64_t lo = INT64_MAX, hi = 0;
      for (const auto& l : load)
        for (int64_t v : l) { lo = std::min(lo, v); hi = std::max(hi, v); }
      const double eta = (elapsed / std::max<int64_t>(1, m.step - start_step)) * (total_steps - m.step);
      // The record's names and values: loss is what is optimised, lm_loss plus the scaled aux_loss.
      std::string line = str_cat("step ", m.step, "/", total_steps, " | loss ", loss);
      if (rec.contains("aux_loss")) line += str_cat(" (lm_loss ", lm, ", aux_loss ", aux, ")");
      char buf[256];
      std::snprintf(buf, sizeof buf, " | lr %.2e | gnorm %.3f | %.0f tok/s | %.3f TFLOP/s | mem %s | eta %s", lr,
                    grad_norm, tps, rec["tflops"].get<double>(), format_bytes(mem.peak_in_use).c_str(),
                    format_duration(eta).c_str());
      line += buf;
      if (!load.empty()) line += str_cat(" | experts min/max ", lo, "/", hi);
      MF_LOG_INFO(line);
      tokens_since_log = 0;
      t_log = now;
    }
    const bool eval_now = a.eval_strategy == "steps" ? a.eval_steps > 0 && m.step % a.eval_steps == 0
                                                     : a.eval_strategy == "epoch" && ends_epoch(m.step);
    if (!m.eval_batches.empty() && eval_now) {
      rec["eval_loss"] = evaluate();
      MF_LOG_INFO("step ", m.step, " | eval_loss ", rec["eval_loss"].get<double>());
      last_eval = {m.step, rec["eval_loss"].get<double>()};
    }
    m.log_history.push_back(rec);
    m.report.add(rec);
    m.write_metrics(rec);
    if (log_now && m.main_rank)
      m.report.write((m.output->path() / "report.html").string(), str_cat("running: step ", m.step, " of ", total_steps));
    if (m.callback) m.callback(rec);

    const bool stop = m.stop_requested();
    if ((a.save_steps > 0 && m.step % a.save_steps == 0) || stop) m.save_checkpoint(m.step);
    if (stop) {
      MF_LOG_WARN("stopped by signal ", StopSignalScope::received(), " after step ", m.step, "; checkpoint saved");
      result.interrupted = true;
      result.steps = m.step;
      return result;
    }
  }
  result.steps = m.step;
  {
    const MemoryStats mem = m.model.options().device == Device::kCPU ? cpu_memory_stats() : cuda_memory_stats();
    const size_t state = m.state_bytes_per_model();
    MF_LOG_INFO("peak memory ", format_bytes(mem.peak_in_use), " (weights, gradients and optimizer state ",
                format_bytes(state), ": ", static_cast<double>(state) / m.model.params().numel(), " B/param, ",
                a.optimizer_precision, ")");
  }
  // The final evaluation, unless the last step's own (an epoch's end, or a multiple of eval_steps) was it.
  if (!m.eval_batches.empty() && last_eval.first == m.step) {
    result.final_eval_loss = last_eval.second;
    MF_LOG_INFO("final eval_loss ", result.final_eval_loss, " (the last step's)");
  } else if (!m.eval_batches.empty()) {
    result.final_eval_loss = evaluate();
    nlohmann::json rec = {{"step", m.step}, {"eval_loss", result.final_eval_loss}};
    m.report.add(rec);
    m.log_history.push_back(rec);
    m.write_metrics(rec);
    MF_LOG_INFO("final eval_loss ", result.final_eval_loss);
  }
  if (m.main_rank) m.report.write((m.output->path() / "report.html").string(), str_cat("finished: ", m.step, " steps"));
  return result;
}

}  // namespace moeforge
