// moeforge step: one forward/backward (and optionally one AdamW step) of a model on a given batch,
// written to a safetensors file — the user's way to check moeforge against another implementation.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "command.h"
#include "training_options.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/causal_lm.h"
#include "optim/adamw.h"
#include "train/adapter_folder.h"

namespace moeforge::cli {
namespace {

const char* kOptimizerFlags[] = {"learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon",
                                 "weight_decay"};

Batch read_batch(const std::string& path) {
  SafetensorsFile file = SafetensorsFile::open(path);
  Batch batch;
  for (const auto& info : file.tensors()) {
    Tensor t = file.get(info.name);
    if (info.name == "input_ids") batch.input_ids = t;
    else if (info.name == "labels") batch.labels = t;
    else if (info.name == "attention_mask") batch.attention_mask = t;
    else if (info.name == "position_ids") batch.position_ids = t;
    else
      fail(ErrorCode::kFormat, path, ": unexpected tensor '", info.name,
           "' (a batch holds input_ids, and optionally labels, attention_mask and position_ids)");
    MF_CHECK(!dtype_is_floating(info.dtype) || info.name == "attention_mask", kFormat, path,
             ": tensor '", info.name, "' must hold integers, found ", dtype_safetensors_name(info.dtype));
  }
  MF_CHECK(batch.input_ids.defined(), kFormat, path, ": no 'input_ids' tensor");
  MF_CHECK(batch.input_ids.dim() == 2, kShape, path, ": input_ids must be [batch, sequence], got ",
           shape_str(batch.input_ids.shape()));
  Tensor labels = (batch.labels.defined() ? batch.labels : batch.input_ids).to(DType::kI64).clone();
  if (batch.attention_mask.defined()) {
    MF_CHECK(batch.attention_mask.shape() == batch.input_ids.shape(), kShape, path,
             ": attention_mask ", shape_str(batch.attention_mask.shape()), " differs from input_ids ",
             shape_str(batch.input_ids.shape()));
    // Padded positions carry no loss.
    std::vector<float> mask = batch.attention_mask.to_float_vector();
    for (size_t i = 0; i < mask.size(); ++i)
      if (mask[i] == 0.0f) labels.data<int64_t>()[i] = -100;
  }
  if (batch.position_ids.defined())
    MF_CHECK(batch.position_ids.shape() == batch.input_ids.shape(), kShape, path, ": position_ids ",
             shape_str(batch.position_ids.shape()), " differs from input_ids ",
             shape_str(batch.input_ids.shape()));
  batch.labels = labels;
  return batch;
}

// Fraction of (token, MoE layer) pairs whose set of k chosen experts is the same in both runs.
double routing_agreement(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  int64_t same = 0, total = 0;
  for (size_t l = 0; l < a.size() && l < b.size(); ++l) {
    const int64_t n = a[l].size(0), k = a[l].size(1);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> x(a[l].data<int32_t>() + i * k, a[l].data<int32_t>() + (i + 1) * k);
      std::vector<int32_t> y(b[l].data<int32_t>() + i * k, b[l].data<int32_t>() + (i + 1) * k);
      std::sort(x.begin(), x.end());
      std::sort(y.begin(), y.end());
      same += x == y;
      ++total;
    }
  }
  return total > 0 ? static_cast<double>(same) / static_cast<double>(total) : 1.0;
}

// Expert parallelism: this rank's rows of the batch (as even a split as the rows allow, in rank order).
Batch rows_of_rank(const Batch& batch, const ProcessGroup& group, const std::string& path) {
  const int64_t rows = batch.input_ids.size(0);
  MF_CHECK(rows >= group.size(), kInvalidArgument, path, ": a batch of ", rows, " rows cannot be split over ",
           group.size(), " processes (each computes at least one row)");
  const int64_t begin = split_begin(rows, group.size(), group.rank());
  const int64_t end = split_begin(rows, group.size(), group.rank() + 1);
  auto part = [&](const Tensor& t) { return t.defined() ? t.slice(0, begin, end).contiguous() : t; };
  return {part(batch.input_ids), part(batch.labels), part(batch.attention_mask), part(batch.position_ids)};
}

// Every rank's rows of `local` (dimension 0), concatenated in rank order.
Tensor gather_rows(ProcessGroup& group, const Tensor& local) {
  std::vector<int64_t> rows(static_cast<size_t>(group.size()));
  rows[static_cast<size_t>(group.rank())] = local.size(0);
  Tensor counts = Tensor::from_vector(rows, {group.size()});
  group.all_reduce_sum(counts);
  return group.all_gather_rows(local.contiguous(), std::vector<int64_t>(counts.data<int64_t>(), counts.data<int64_t>() + group.size()));
}

// The gradient of checkpoint tensor `t` in the checkpoint's layout. With expert parallelism a
// routed expert's comes from the rank holding it: every rank gathers each expert parameter's
// gradient whole (fine for the tiny models this command is for), so all ranks call this in the same
// order.
Tensor checkpoint_grad(const CausalLM& model, const CheckpointTensor& t, std::vector<Tensor>& gathered) {
  const ParameterSet& ps = model.params();
  ProcessGroup* group = model.expert_group().get();
  if (group == nullptr || group->size() == 1 || ps.entry(t.slice.param).shard_class != ShardClass::kExpert)
    return read_slice(t.slice, ps.grad(t.slice.param));
  Tensor& whole = gathered[static_cast<size_t>(t.slice.param)];
  if (!whole.defined()) whole = gather_rows(*group, ps.grad(t.slice.param));
  ParamSlice slice = t.slice;
  slice.expert = t.expert;  // the routed expert's index among all of them
  return read_slice(slice, whole);
}

Tensor scalar(double v) { return Tensor::from_vector(std::vector<float>{static_cast<float>(v)}, {}); }

// --model, with the adapter of --adapter (its folder checked before the model loads) when given.
CausalLM load_model(const ParsedOptions& o, ModelOptions mo) {
  if (o.is_set("adapter")) {
    mo.lora = read_adapter_config(o.str("adapter"));
    // As PEFT's save_pretrained (--save_pretrained): an adapter that names no base names this model.
    if (mo.lora->base_model_name_or_path.empty()) mo.lora->base_model_name_or_path = o.str("model");
  }
  CausalLM model = CausalLM::from_pretrained(o.str("model"), mo);
  if (o.is_set("adapter")) model.load_adapter(o.str("adapter"));
  return model;
}

int run_step(const ParsedOptions& o) {
  ModelOptions mo;
  mo.device = option_device(o);
  mo.dtype = option_dtype(o);
  // Under mpirun or srun: expert parallelism over every process, each computing its rows of the batch.
  const std::shared_ptr<ProcessGroup> world = join_launch_world(mo.device);
  mo.expert_group = world;
  CausalLM model = load_model(o, mo);
  // A save that cannot happen is refused before anything is computed or written.
  const CausalLM::SavedWeights saved_weights = CausalLM::saved_weights_named(o.str("save_quantization"));
  MF_CHECK(saved_weights == CausalLM::SavedWeights::kDense || o.has("save_pretrained"), kInvalidArgument,
           "--save_quantization applies to the folder --save_pretrained writes; none is given");
  check_saved_weights(model, saved_weights);
  Batch batch = read_batch(o.str("batch"));
  if (world) batch = rows_of_rank(batch, *world, o.str("batch"));
  if (o.flag("reuse_cpu_routing") && model.config().moe) {
    // Under several processes each rank's reference is the whole model on its own rows: routing is per token.
    CausalLM reference = load_model(o, ModelOptions{});
    reference.routing_hook().record = true;
    const std::vector<Tensor> want =
        reference.forward_backward(batch, /*backward=*/false, /*keep_logits=*/false).routing;
    model.routing_hook().record = true;
    const std::vector<Tensor> own =
        model.forward_backward(batch, /*backward=*/false, /*keep_logits=*/false).routing;
    std::fprintf(stderr, "routing agreement with the float32 CPU run: %.4f of (token, layer) top-k sets\n",
                 routing_agreement(own, want));
    model.routing_hook().record = false;
    model.routing_hook().reuse = want;
  }

  bool optimize = false;
  for (const char* f : kOptimizerFlags) optimize |= o.has(f);
  AdamWConfig ac;  // torch.optim.AdamW defaults for flags not given
  if (o.has("learning_rate")) ac.lr = o.real("learning_rate");
  if (o.has("adam_beta1")) ac.beta1 = o.real("adam_beta1");
  if (o.has("adam_beta2")) ac.beta2 = o.real("adam_beta2");
  if (o.has("adam_epsilon")) ac.eps = o.real("adam_epsilon");
  if (o.has("weight_decay")) ac.weight_decay = o.real("weight_decay");
  const ParameterSet& ps = model.params();
  // As torch.optim.AdamW over the parameters that require grad: every one of them decays. That is
  // every parameter, or the adapters alone over a frozen base. Under mpirun the step is sharded as in
  // training: each rank updates its slice of the replicated parameters and shares it; with
  // --zero_stage 2 it holds only that slice's gradient through the backward pass too.
  std::vector<bool> trainable(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) trainable[i] = ps.trainable(static_cast<int>(i));
  const OptimizerSharding sharding{world.get(), nullptr, world.get(), o.integer("zero_stage") >= 2};
  std::optional<AdamW> opt;
  if (optimize || sharding.shard_gradients)
    opt.emplace(model.params(), ac, OptimizerPrecision::kFp32Master, std::vector<bool>(ps.size(), true), trainable,
                sharding);
  if (opt && opt->shards_gradients()) model.set_gradient_sink(&*opt);

  StepResult r = model.forward_backward(batch, /*backward=*/true, /*keep_logits=*/true);
  // Every gradient is written out: each rank gets them summed over the ranks.
  if (opt && opt->shards_gradients()) {
    model.set_gradient_sink(nullptr);
    opt->gather_gradients();
  } else {
    model.sum_replicated_grads();
  }
  std::vector<NamedTensor> out;
  const Tensor logits = r.logits.to(Device::kCPU).to(DType::kF32);
  out.emplace_back("logits", world ? gather_rows(*world, logits) : logits);
  out.emplace_back("loss", scalar(r.loss));
  const ModelConfig& c = model.config();
  if (c.moe && c.moe->output_router_logits) out.emplace_back("aux_loss", scalar(r.aux_loss));
  if (model.lora_config() != nullptr) {
    // The adapters' gradients under their adapter_model.safetensors keys and in its layout.
    for (const AdapterTensor& t : model.adapter_tensors())
      out.emplace_back("grad." + t.key, model.adapter_file_tensor(t, model.params().grad(t.param)));
  } else {
    std::vector<Tensor> gathered(model.params().size());
    for (const auto& t : model.checkpoint_tensors())
      if (t.trained()) out.emplace_back("grad." + t.name, checkpoint_grad(model, t, gathered).to(DType::kF32));
  }

  if (optimize) {
    // The gradients are summed already (for the file), so no reduce_gradients() here.
    opt->step(ac.lr);
    // The step moved the routers: the reference's choices were for the weights before it, so the
    // forward after the step routes by itself (as Transformers' does).
    model.routing_hook().reuse.clear();
    StepResult after = model.forward_backward(batch, /*backward=*/false, /*keep_logits=*/false);
    out.emplace_back("loss_after_step", scalar(after.loss));
  }
  if (!world || world->rank() == 0) write_safetensors(o.str("out"), out);
  if (o.has("save_pretrained")) save_trained_model(model, o.str("save_pretrained"), o.str("model"), saved_weights);
  return 0;
}

CommandSpec spec() {
  CommandSpec c;
  c.name = "step";
  c.summary = "one forward/backward (and optionally one AdamW step) on a batch, written out";
  c.description =
      "Reads BATCH (input_ids [B,T] int64; optional labels, attention_mask and position_ids: a\n"
      "position that does not continue the previous one starts a new packed document) and writes\n"
      "to OUT (float32): logits, loss (mean cross-entropy over the labels that are not -100 after shifting\n"
      "left by one, plus router_aux_loss_coef x aux_loss when the config sets output_router_logits),\n"
      "aux_loss in that case, and grad.<checkpoint name> for every checkpoint tensor. Any optimizer\n"
      "flag adds one AdamW step (torch.optim.AdamW semantics and defaults, every parameter, no\n"
      "clipping) and loss_after_step, the loss of the same batch after it.\n"
      "With --adapter DIR (a PEFT adapter folder: adapter_config.json + adapter_model.safetensors) the\n"
      "model computes with those LoRA adapters on its frozen weights, as PEFT's PeftModel: OUT holds\n"
      "grad.<adapter key> for every tensor of adapter_model.safetensors (its key, shape and layout)\n"
      "instead of the base's gradients, the AdamW step updates the adapters alone, and\n"
      "--save_pretrained writes the adapter folder (as PeftModel.save_pretrained does).\n"
      "Under mpirun (or srun) the processes split the routed experts (expert parallelism) and the\n"
      "batch's rows between them; rank 0 writes OUT, which holds what one process computes, and\n"
      "--save_pretrained has each rank write its own experts' shards.";
  c.options = {
      {.name = "model", .type = OptionType::kPath, .help = "model folder (or cached model id)",
       .required = true},
      {.name = "batch", .type = OptionType::kPath, .help = "batch safetensors file", .required = true},
      {.name = "out", .type = OptionType::kPath, .help = "output safetensors file", .required = true},
      device_option(),
      dtype_option(),
      {.name = "learning_rate", .type = OptionType::kFloat, .help = "AdamW learning rate (torch default 1e-3)",
       .aliases = {"lr"}, .range = *training_option_range("learning_rate")},
      {.name = "adam_beta1", .type = OptionType::kFloat, .help = "AdamW beta1 (default 0.9)",
       .range = *training_option_range("adam_beta1")},
      {.name = "adam_beta2", .type = OptionType::kFloat, .help = "AdamW beta2 (default 0.999)",
       .range = *training_option_range("adam_beta2")},
      {.name = "adam_epsilon", .type = OptionType::kFloat, .help = "AdamW epsilon (default 1e-8)",
       .aliases = {"adam_eps"}, .range = *training_option_range("adam_epsilon")},
      {.name = "weight_decay", .type = OptionType::kFloat, .help = "AdamW weight decay (default 0.01)",
       .range = *training_option_range("weight_decay")},
      {.name = "zero_stage", .type = OptionType::kInt, .default_value = "1",
       .help = "under mpirun: 2 has each rank hold only its slice of the replicated gradients through the\n"
               "backward pass (ZeRO-2), gathered whole afterwards for OUT", .range = *training_option_range("zero_stage")},
      {.name = "reuse_cpu_routing", .type = OptionType::kBool,
       .help = "test hook: run the float32 CPU model first, report how often this run's own top-k\n"
               "expert choices agree with it, then compute with the CPU run's choices (the forward\n"
               "after an AdamW step routes by itself)"},
      {.name = "adapter", .type = OptionType::kPath,
       .help = "a PEFT adapter folder to compute with (its LoRA adapters train, the model is frozen)"},
      {.name = "save_pretrained", .type = OptionType::kPath,
       .help = "also save the model (after the step, if any) as a Hugging Face folder here (with --adapter: "
               "the adapter folder)"},
      save_quantization_option(),
  };
  c.run = run_step;
  return c;
}

const CommandRegistration registration{spec()};

}  // namespace
}  // namespace moeforge::cli
