#include "moeforge/model.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "arch/checkpoint_tensors.h"
#include "arch/lora.h"
#include "arch/weight_map.h"
#include "core/allocator.h"
#include "core/error.h"
#include "dist/launch.h"
#include "io/hf_folder.h"
#include "io/json.h"

namespace moeforge {

namespace fs = std::filesystem;

namespace {

Device parse_device(const std::string& device) {
  if (device == "auto") return cuda_available() ? Device::kCUDA : Device::kCPU;
  if (device == "cpu") return Device::kCPU;
  if (device == "cuda" || device == "cuda:0") return Device::kCUDA;
  fail(ErrorCode::kInvalidArgument, "device='", device, "': expected 'auto', 'cpu' or 'cuda' (one GPU per process: 'cuda:0')");
}

ModelOptions model_options(const PretrainedOptions& o) {
  ModelOptions mo;
  // The launcher's processes together (mpirun, srun): each computes its own rows of every batch, and
  // the routed experts are split over all of them, over consecutive groups of expert_parallel_size,
  // or with 1 not at all (data parallelism alone, as `moeforge train --expert_parallel_size 1`).
  mo.device = parse_device(o.device);
  const std::shared_ptr<ProcessGroup> world = world_process_group(mo.device);
  const int64_t processes = world ? world->size() : 1;
  if (o.expert_parallel_size == 1 && processes > 1) {
    mo.data_group = world;
    mo.expert_group = world->split(world->rank(), world->rank());
  } else if (o.expert_parallel_size != 1) {
    MF_CHECK(o.expert_parallel_size > 1 && processes > 1 && processes % o.expert_parallel_size == 0,
             kInvalidArgument, "expert_parallel_size=", o.expert_parallel_size,
             " needs that many processes, or a multiple, started together by mpirun or srun; this one runs ",
             processes == 1 ? std::string("alone") : str_cat("with ", processes, " processes"),
             " (start it with: mpirun -np ", o.expert_parallel_size, " python ...)");
    mo.expert_group = world;
    if (o.expert_parallel_size < processes) {
      mo.data_group = world;
      mo.expert_group = world->split(world->rank() / static_cast<int>(o.expert_parallel_size), world->rank());
    }
  }
  // As Transformers' gradient_checkpointing=True: each layer's forward reruns in its backward.
  mo.recompute = o.gradient_checkpointing ? Recompute::kFull : Recompute::kNone;
  if (o.dtype == "auto") {
    // The CPU backend is the float32 reference; the CUDA backend computes in bf16 whatever the
    // checkpoint's dtype (its grouped expert GEMMs take bf16).
    mo.dtype = mo.device == Device::kCPU ? DType::kF32 : DType::kBF16;
  } else {
    std::optional<DType> d = dtype_from_torch_name(o.dtype);
    MF_CHECK(d.has_value(), kInvalidArgument, "dtype='", o.dtype,
             "': expected 'auto' or a dtype name such as 'float32' or 'bfloat16'");
    mo.dtype = *d;
  }
  return mo;
}

// The integer inputs as [batch, sequence] tensors of input_ids' shape; `name` for messages.
void check_input(const Tensor& t, const char* name, const Shape& shape) {
  if (!t.defined()) return;
  MF_CHECK(t.dim() == 2, kShape, name, " must be [batch, sequence], got ", shape_str(t.shape()));
  MF_CHECK(t.shape() == shape, kShape, name, " has shape ", shape_str(t.shape()), ", input_ids ", shape_str(shape));
  MF_CHECK(!dtype_is_floating(t.dtype()) || std::strcmp(name, "attention_mask") == 0, kInvalidArgument, name,
           " must hold integers, got ", dtype_torch_name(t.dtype()));
}

// A batch of the public API's tensors (input_ids defined), each checked and named in errors.
Batch checked_batch(const Tensor& input_ids, const Tensor& attention_mask, const Tensor& labels,
                    const Tensor& position_ids) {
  MF_CHECK(input_ids.dim() == 2, kShape, "input_ids must be [batch, sequence], got ", shape_str(input_ids.shape()));
  MF_CHECK(!dtype_is_floating(input_ids.dtype()), kInvalidArgument, "input_ids must hold integers, got ",
           dtype_torch_name(input_ids.dtype()));
  check_input(attention_mask, "attention_mask", input_ids.shape());
  check_input(labels, "labels", input_ids.shape());
  check_input(position_ids, "position_ids", input_ids.shape());
  return Batch{input_ids, labels, attention_mask, position_ids};
}

}  // namespace

ModelForCausalLM::ModelForCausalLM(CausalLM model, std::string name_or_path, fs::path folder)
    : model_(std::move(model)),
      name_or_path_(std::move(name_or_path)),
      folder_(std::move(folder)),
      weights_from_folder_(!folder_.empty()) {}

ModelForCausalLM AutoModelForCausalLM::from_pretrained(const std::string& path_or_id, const PretrainedOptions& options) {
  const fs::path folder = resolve_model_folder(path_or_id);
  // CausalLM::from_pretrained rejects an architecture it does not run, listing those it does.
  ModelOptions mo = model_options(options);
  return ModelForCausalLM(CausalLM::from_pretrained(folder, mo), path_or_id, folder);
}

ModelForCausalLM AutoModelForCausalLM::from_config(const fs::path& config_path, const PretrainedOptions& options,
                                                   uint64_t seed) {
  ModelConfig config = load_model_config(config_path);
  ModelOptions mo = model_options(options);
  return ModelForCausalLM(CausalLM::from_config(config, mo, seed), config_path.string(), fs::path());
}

CausalLMOutput ModelForCausalLM::forward(const Tensor& input_ids, const Tensor& attention_mask, const Tensor& labels,
                                         const Tensor& position_ids) {
  MF_CHECK(input_ids.defined(), kInvalidArgument, "input_ids is required");
  StepResult r = model_.forward_backward(checked_batch(input_ids, attention_mask, labels, position_ids),
                                         /*backward=*/false, /*keep_logits=*/true);
  CausalLMOutput out;
  if (labels.defined()) out.loss = r.loss;
  out.logits = r.logits.to(Device::kCPU).to(DType::kF32).contiguous();
  return out;
}

LossGradients ModelForCausalLM::loss_gradients(const Tensor& input_ids, const Tensor& attention_mask,
                                               const Tensor& labels, const Tensor& position_ids) {
  MF_CHECK(input_ids.defined() && labels.defined(), kInvalidArgument, "gradients need input_ids and labels");
  const Batch batch = checked_batch(input_ids, attention_mask, labels, position_ids);
  ParameterSet& params = model_.params();
  MF_CHECK(!params.streams_grads(ShardClass::kReplicated) && !params.streams_grads(ShardClass::kExpert),
           kInvalidArgument, "loss_gradients: a Trainer with zero_stage 2 holds this model's gradients sharded over "
           "the processes; call it once that Trainer is gone");
  params.zero_grads();
  StepResult r = model_.forward_backward(batch, /*backward=*/true, /*keep_logits=*/false);
  LossGradients out;
  out.loss = r.loss;
  for (const CheckpointTensor& t : model_.checkpoint_tensors())
    if (t.trained()) out.gradients.emplace_back(t.name, read_slice(t.slice, params.grad(t.slice.param)).to(DType::kF32).clone());
  params.zero_grads();  // a Trainer made later starts from zero
  return out;
}

Tensor ModelForCausalLM::generate(const Tensor& input_ids, const Tensor& attention_mask, GenerationConfig config) {
  MF_CHECK(input_ids.defined() && input_ids.dim() == 2, kShape, "input_ids must be [batch, sequence], got ",
           input_ids.defined() ? shape_str(input_ids.shape()) : "nothing");
  MF_CHECK(!dtype_is_floating(input_ids.dtype()), kInvalidArgument, "input_ids must hold integers");
  check_input(attention_mask, "attention_mask", input_ids.shape());
  MF_CHECK(config.max_new_tokens >= 0, kInvalidArgument, "max_new_tokens must be >= 0, got ", config.max_new_tokens);
  MF_CHECK(config.temperature > 0, kInvalidArgument, "temperature must be > 0, got ", config.temperature);
  MF_CHECK(config.top_k >= 0, kInvalidArgument, "top_k must be >= 0, got ", config.top_k);
  MF_CHECK(config.top_p > 0 && config.top_p <= 1, kInvalidArgument, "top_p must lie in (0, 1], got ", config.top_p);
  if (config.eos_token_ids.empty()) config.eos_token_ids = default_eos_token_ids();

  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  Tensor ids = input_ids.contiguous().to(DType::kI64);
  Tensor mask = attention_mask.defined() ? attention_mask.contiguous().to(DType::kI64) : Tensor();
  std::vector<std::vector<int32_t>> rows(B);
  size_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> prompt;
    for (int64_t t = 0; t < T; ++t)
      if (!mask.defined() || mask.data<int64_t>()[b * T + t] != 0)
        prompt.push_back(static_cast<int32_t>(ids.data<int64_t>()[b * T + t]));
    MF_CHECK(!prompt.empty(), kInvalidArgument, "input_ids row ", b, " has no unmasked token to start from");
    GenerationConfig row_config = config;
    row_config.seed = config.seed + static_cast<uint64_t>(b);
    rows[b] = moeforge::generate(model_, prompt, row_config);
    longest = std::max(longest, rows[b].size());
  }
  const int64_t width = T + static_cast<int64_t>(longest);
  const int64_t pad = config.pad_token_id >= 0 ? config.pad_token_id : pad_token_id();
  Tensor out = Tensor::empty({B, width}, DType::kI64);
  for (int64_t b = 0; b < B; ++b) {
    int64_t* row = out.data<int64_t>() + b * width;
    std::memcpy(row, ids.data<int64_t>() + b * T, T * sizeof(int64_t));
    for (int64_t t = T; t < width; ++t) {
      const size_t k = static_cast<size_t>(t - T);
      row[t] = k < rows[b].size() ? rows[b][k] : pad;
    }
  }
  return out;
}

std::vector<int64_t> ModelForCausalLM::default_eos_token_ids() const {
  // Transformers' generate reads generation_config.json first (Qwen3 lists <|im_end|> and <|endoftext|>).
  const fs::path path = folder_ / "generation_config.json";
  if (!folder_.empty() && fs::exists(path)) {
    const Json generation = read_json_file(path);
    auto it = generation.find("eos_token_id");
    if (it != generation.end() && it->is_number_integer()) return {it->get<int64_t>()};
    if (it != generation.end() && it->is_array()) {
      std::vector<int64_t> ids;
      for (const Json& id : *it) {
        MF_CHECK(id.is_number_integer(), kFormat, path.string(), ": eos_token_id must hold integers");
        ids.push_back(id.get<int64_t>());
      }
      return ids;
    }
  }
  return model_.config().eos_token_ids;
}

void ModelForCausalLM::save_pretrained(const fs::path& folder, const std::string& quantization) const {
  model_.save_pretrained(folder, default_save_dtype(model_.config()), folder_, CausalLM::kMaxShardBytes,
                         CausalLM::saved_weights_named(quantization));
}

const nlohmann::json& ModelForCausalLM::config() const { return model_.config().raw; }

bool cuda_is_available() { return cuda_available(); }

void ModelForCausalLM::set_gradient_checkpointing(bool on) {
  model_.set_recompute(on ? Recompute::kFull : Recompute::kNone);
}

int64_t ModelForCausalLM::num_parameters(bool exclude_embeddings) const {
  ParamCounts counts = count_parameters(model_.config());
  return (exclude_embeddings ? counts.total - counts.embedding : counts.total) + num_adapter_parameters();
}

// ---- LoRA ----------------------------------------------------------------------------------

int64_t ModelForCausalLM::num_adapter_parameters() const {
  int64_t n = 0;
  for (const AdapterTensor& t : model_.adapter_tensors()) n += model_.params().entry(t.param).numel();
  return n;
}

void ModelForCausalLM::add_adapter(LoraConfig config, uint64_t seed) {
  MF_CHECK(model_.lora_config() == nullptr, kInvalidArgument,
           "the model already has LoRA adapters (moeforge holds one adapter at a time): unload() or "
           "merge_and_unload() them first");
  if (config.base_model_name_or_path.empty()) config.base_model_name_or_path = name_or_path_;
  // The targets against the model's description first (no weights): a typo fails here, with the
  // model untouched.
  ModelDescription description = describe_model(model_.config());
  LoraConfig resolved = config;
  add_lora(description, model_.config(), resolved);
  rebuild(std::move(config), seed);
}

void ModelForCausalLM::load_adapter(const fs::path& folder) {
  const fs::path config_file = folder / "adapter_config.json";
  MF_CHECK(fs::exists(config_file), kNotFound, folder.string(),
           ": no adapter_config.json (a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors)");
  MF_CHECK(fs::exists(folder / "adapter_model.safetensors"), kNotFound, folder.string(),
           ": no adapter_model.safetensors (a PEFT adapter folder holds adapter_config.json and "
           "adapter_model.safetensors)");
  LoraConfig config = LoraConfig::from_json(read_json_file(config_file), config_file.string());
  add_adapter(std::move(config));
  try {
    model_.load_adapter(folder);
  } catch (...) {
    unload();  // as it was before the call
    throw;
  }
}

void ModelForCausalLM::save_adapter(const fs::path& folder) const {
  MF_CHECK(model_.lora_config() != nullptr, kInvalidArgument,
           "save_adapter: the model has no LoRA adapters (add_adapter or load_adapter first)");
  model_.save_adapter(folder, DType::kF32);
}

void ModelForCausalLM::merge_and_unload() {
  MF_CHECK(model_.lora_config() != nullptr, kInvalidArgument, "merge_and_unload: the model has no LoRA adapters");
  model_.merge_adapters();
  weights_from_folder_ = false;
  rebuild(std::nullopt, model_.options().adapter_seed);
}

void ModelForCausalLM::unload() {
  MF_CHECK(model_.lora_config() != nullptr, kInvalidArgument, "unload: the model has no LoRA adapters");
  rebuild(std::nullopt, model_.options().adapter_seed);
}

void ModelForCausalLM::rebuild(std::optional<LoraConfig> lora, uint64_t seed) {
  ModelOptions options = model_.options();  // device, dtype, recompute as set now
  options.lora = std::move(lora);
  options.adapter_seed = seed;
  ++generation_;
  if (weights_from_folder_) {
    // Read the base weights again rather than copy them, with the old model gone first: a model
    // that fills most of a GPU is never held twice.
    ModelOptions previous = model_.options();
    { CausalLM released = std::move(model_); }
    try {
      model_ = CausalLM::from_pretrained(folder_, options);
    } catch (...) {
      previous.lora.reset();  // its adapter weights are gone: at least the base model again
      model_ = CausalLM::from_pretrained(folder_, previous);
      throw;
    }
    return;
  }
  // The weights may differ from any file (trained, merged, random): a new model of the same config,
  // the base parameters copied over by name. Its own random base is drawn and overwritten.
  CausalLM fresh = CausalLM::from_config(model_.config(), options, /*seed=*/0);
  const ParameterSet& from = model_.params();
  std::map<std::string, int> by_name;
  for (int i = 0; i < static_cast<int>(from.size()); ++i)
    if (from.entry(i).group != ParamGroup::kAdapter) by_name[from.entry(i).name] = i;
  ParameterSet& to = fresh.params();
  for (int i = 0; i < static_cast<int>(to.size()); ++i) {
    const ParamEntry& e = to.entry(i);
    if (e.group == ParamGroup::kAdapter) continue;
    auto it = by_name.find(e.name);
    MF_CHECK(it != by_name.end() && from.entry(it->second).shape == e.shape, kInternal,
             "rebuilding the model: base parameter ", e.name, " has no counterpart");
    Tensor dst = to.param(i);
    dst.copy_from(from.param(it->second));
  }
  model_ = std::move(fresh);
}

int64_t ModelForCausalLM::pad_token_id() const {
  const ModelConfig& c = model_.config();
  if (c.pad_token_id) return *c.pad_token_id;
  return c.eos_token_ids.empty() ? 0 : c.eos_token_ids.front();
}

}  // namespace moeforge
