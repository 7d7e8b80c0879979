#include "training_options.h"

#include <algorithm>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "dist/launch.h"
#include "train/adapter_folder.h"

namespace moeforge::cli {
namespace {

// "a, b,c" -> {"a", "b", "c"}: items trimmed, empty ones dropped.
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    const size_t first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \t");
    if (first != std::string::npos) out.push_back(item.substr(first, last - first + 1));
  }
  return out;
}

constexpr const char* kDefaultLoraTargetModules = "q_proj,k_proj,v_proj,o_proj";
// The options that configure LoRA from the command line (--adapter configures it from a folder).
constexpr const char* kLoraOptions[] = {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                                        "lora_target_parameters", "use_rslora"};

const char* source_name(ValueSource s) {
  switch (s) {
    case ValueSource::kDefault: return "default";
    case ValueSource::kRecipe: return "recipe";
    case ValueSource::kEnvironment: return "environment";
    case ValueSource::kFlag: return "flag";
  }
  return "?";
}

}  // namespace

std::vector<OptionSpec> encoder_option_table() {
  using T = OptionType;
  return {
      {.name = "dataset_text_field", .type = T::kString, .default_value = "text",
       .help = "the JSONL key holding plain text examples (TRL's dataset_text_field)"},
      {.name = "assistant_only_loss", .type = T::kBool, .default_value = "true",
       .help = "conversations train on the assistant turns only (TRL's name; its default is false); false: on "
               "every token"},
      {.name = "completion_only_loss", .type = T::kBool, .default_value = "true",
       .help = "prompt+completion data trains on the completion only (TRL's default); false: on the prompt too"},
  };
}

data::EncoderOptions encoder_options_from(const ParsedOptions& o) {
  return {.text_field = o.str("dataset_text_field"),
          .assistant_only_loss = o.flag("assistant_only_loss"),
          .completion_only_loss = o.flag("completion_only_loss")};
}

std::vector<OptionSpec> lora_option_table() {
  using T = OptionType;
  return {
      {.name = "lora_r", .type = T::kInt, .default_value = "0",
       .help = "LoRA rank: > 0 freezes the base model and trains low-rank adapters, saved as a PEFT adapter folder "
               "(checkpoints and the final save); 0 trains every weight"},
      {.name = "lora_alpha", .type = T::kFloat, .default_value = "8",
       .help = "LoRA scaling: adapters add lora_alpha / lora_r x B A (PEFT's default 8; 2 x lora_r is a common "
               "choice)"},
      {.name = "lora_dropout", .type = T::kFloat, .default_value = "0",
       .help = "dropout probability on the input of target_modules adapters in training (PEFT's default 0; "
               "refused with target parameters, the experts and the router, as PEFT refuses it)"},
      {.name = "lora_target_modules", .type = T::kString, .default_value = kDefaultLoraTargetModules,
       .help = "modules that get adapters, comma-separated PEFT target_modules names (attention: q_proj, k_proj, "
               "v_proj, o_proj; gate_proj+up_proj / down_proj adapt the experts, as PEFT renames them), "
               "'all-linear' (PEFT's every linear layer: attention, and on MoE families the experts and the "
               "router), or empty for none"},
      {.name = "lora_target_parameters", .type = T::kString,
       .help = "parameters that get adapters, comma-separated PEFT target_parameters names: the stacked experts "
               "(one pair per expert) mlp.experts.gate_up_proj,mlp.experts.down_proj, the router mlp.gate.weight"},
      {.name = "use_rslora", .type = T::kBool, .help = "rank-stabilised LoRA: scale by lora_alpha / sqrt(lora_r)"},
      {.name = "adapter", .type = T::kPath,
       .help = "start from a PEFT adapter folder: its adapter_config.json sets the LoRA configuration (the lora_* "
               "options are then not given), its adapter_model.safetensors the starting adapter weights",
       .aliases = {"adapter_name_or_path"}},
  };
}

std::vector<OptionSpec> training_option_table() {
  using T = OptionType;
  std::vector<OptionSpec> table = {
      {.name = "recipe", .type = T::kPath, .help = "YAML recipe: a mapping of these option names to values",
       .positional = true},
      {.name = "model", .type = T::kPath, .help = "model folder or cached Hugging Face model id",
       .aliases = {"model_name_or_path"}},
      {.name = "train_file", .type = T::kPath,
       .help = "training data: JSONL of text | messages | prompt+completion | Alpaca instruction+input+output | "
               "ShareGPT conversations lines, .txt (one example per line) or .mfbin",
       .aliases = {"dataset"}},
      {.name = "eval_file", .type = T::kPath, .help = "held-out data (else eval_ratio of train_file)"},
      {.name = "chat_template", .type = T::kPath,
       .help = "a Jinja chat template file for encoding 'messages' data instead of the model folder's (e.g. one with "
               "{% generation %} blocks), or moeforge:NAME for a training template moeforge ships (picked automatically "
               "when the model's template is the one it was made from); the saved model keeps the folder's"},
      {.name = "eval_ratio", .type = T::kFloat, .default_value = "0", .help = "fraction of train_file held out"},
      {.name = "max_seq_length", .type = T::kInt,
       .help = "sequence length examples are packed to (default: the longest training example, at most 2048)",
       .aliases = {"max_length"}},
      {.name = "packing", .type = T::kBool, .default_value = "true",
       .help = "pack several examples into each sequence, no attention across them (TRL's packing); false: one "
               "example per sequence, padded"},
      {.name = "packing_overflow", .type = T::kChoice, .default_value = "truncate",
       .help = "documents longer than max_seq_length", .choices = {"truncate", "split"}},
      {.name = "skip_bad_lines", .type = T::kBool, .help = "skip (and count) dataset lines that do not parse"},
      {.name = "output_dir", .type = T::kPath, .default_value = "moeforge-output", .help = "where checkpoints, the model and the report go"},
      {.name = "overwrite_output_dir", .type = T::kBool,
       .help = "start over in an output_dir that holds an earlier run's checkpoints and metrics (they are removed)"},
      device_option(),
      dtype_option(),
      {.name = "learning_rate", .type = T::kFloat, .default_value = "5e-05", .help = "peak learning rate", .aliases = {"lr"}},
      {.name = "per_device_train_batch_size", .type = T::kInt,
       .help = "sequences per micro-batch (default: 8, or fewer when one epoch of the data packs into fewer)",
       .former_names = {"per_gpu_train_batch_size"}},
      {.name = "per_device_eval_batch_size", .type = T::kInt, .default_value = "8", .help = "sequences per eval batch",
       .former_names = {"per_gpu_eval_batch_size"}},
      {.name = "gradient_accumulation_steps", .type = T::kInt, .default_value = "1", .help = "micro-batches per optimizer step"},
      {.name = "max_steps", .type = T::kInt, .default_value = "-1", .help = "optimizer steps (overrides num_train_epochs)"},
      {.name = "num_train_epochs", .type = T::kFloat, .default_value = "3", .help = "epochs when max_steps is not set"},
      {.name = "warmup_steps", .type = T::kInt, .default_value = "0", .help = "linear warm-up steps"},
      {.name = "warmup_ratio", .type = T::kFloat, .default_value = "0", .help = "warm-up as a fraction of the steps"},
      {.name = "lr_scheduler_type", .type = T::kChoice, .default_value = "linear", .help = "schedule after warm-up",
       .choices = {"linear", "cosine", "cosine_with_restarts", "constant", "constant_with_warmup"}},
      {.name = "weight_decay", .type = T::kFloat, .default_value = "0", .help = "AdamW weight decay (not on norms and biases)"},
      {.name = "adam_beta1", .type = T::kFloat, .default_value = "0.9", .help = "AdamW beta1"},
      {.name = "adam_beta2", .type = T::kFloat, .default_value = "0.999", .help = "AdamW beta2"},
      {.name = "adam_epsilon", .type = T::kFloat, .default_value = "1e-08", .help = "AdamW epsilon", .aliases = {"adam_eps"}},
      {.name = "max_grad_norm", .type = T::kFloat, .default_value = "1", .help = "gradient clipping (0: off)"},
      {.name = "logging_steps", .type = T::kInt, .default_value = "10", .help = "progress line every N steps"},
      {.name = "eval_steps", .type = T::kInt, .default_value = "0", .help = "evaluate every N steps (0: at the end)"},
      {.name = "eval_strategy", .type = T::kChoice,
       .help = "Transformers' name: steps evaluates every eval_steps (default: logging_steps) steps, epoch at the end "
               "of each epoch, no only at the end; unset: eval_steps as given",
       .choices = {"no", "steps", "epoch"}},
      {.name = "save_steps", .type = T::kInt, .default_value = "500", .help = "checkpoint every N steps (0: none)"},
      {.name = "save_total_limit", .type = T::kInt, .default_value = "0", .help = "keep only the newest N checkpoints (0: all)"},
      {.name = "seed", .type = T::kInt, .default_value = "42", .help = "data order and initialisation seed"},
      {.name = "gradient_checkpointing", .type = T::kChoice, .default_value = "none",
       .help = "activation recomputation policy", .choices = {"none", "selective", "full"}},
      {.name = "recompute_full_layers", .type = T::kInt, .default_value = "0",
       .help = "the first N layers recompute fully, the others per gradient_checkpointing (Megatron's "
               "--recompute-num-layers): memory between selective and full"},
      {.name = "activation_offload_layers", .type = T::kInt, .default_value = "0",
       .help = "the first N layers keep their activations in host memory between forward and backward, "
               "copied while other layers compute (Megatron's --cpu-offloading-num-layers)"},
      {.name = "nproc_per_node", .type = T::kInt, .default_value = "1",
       .help = "processes to start on this machine (torchrun's name): the routed experts are split over "
               "them and each trains its rows of every batch; N > 1 starts moeforge N times under mpirun "
               "(ignored in processes a launcher started: mpirun, srun)"},
      {.name = "expert_parallel_size", .type = T::kInt, .default_value = "0",
       .help = "processes each routed expert is split over (0: all of them); fewer makes consecutive groups "
               "of that many, each holding every expert once, whose copies sum their gradients"},
      {.name = "zero_stage", .type = T::kInt, .default_value = "1",
       .help = "with several processes, what their copies of the parameters shard (DeepSpeed's stages): 1 the "
               "optimizer state, 2 the gradients too (each layer's are summed into their owners' slices as "
               "the backward pass completes them)"},
      {.name = "resume_from_checkpoint", .type = T::kString, .help = "a checkpoint folder, or 'latest' in output_dir",
       .aliases = {"resume"}},
      {.name = "report_to", .type = T::kString,
       .help = "extra loggers, comma-separated: tensorboard (event files in OUTPUT_DIR/runs) or none "
               "(metrics.jsonl and report.html are always written)"},
      {.name = "optimizer_precision", .type = T::kChoice, .default_value = "fp32-master",
       .help = "16, 12 or 8 bytes/param on CUDA", .choices = {"fp32-master", "bf16-weights", "bf16-state"}},
      // Transformers' names a recipe carries, with the values that mean what moeforge does (as Python's
      // TrainingArguments takes them).
      {.name = "optim", .type = T::kChoice, .default_value = "adamw_torch_fused",
       .help = "the optimizer: AdamW, under either Transformers name (its memory: optimizer_precision)",
       .choices = {"adamw_torch", "adamw_torch_fused"}},
      {.name = "bf16", .type = T::kBool,
       .help = "Transformers' bfloat16 flag, accepted: CUDA computes in bfloat16 (dtype auto), the CPU in float32"},
      {.name = "nan_policy", .type = T::kChoice, .default_value = "stop", .help = "on a NaN/Inf loss",
       .choices = {"stop", "skip"}},
      save_quantization_option(),
      {.name = "router_bias_update_rate", .type = T::kFloat, .default_value = "0",
       .help = "DeepSeek-V3 auxiliary-loss-free balancing: e_score_correction_bias step per optimizer step (0: off)"},
      {.name = "freeze", .type = T::kString,
       .help = "parameter groups that do not train, comma-separated: embeddings, attention, router, experts, "
               "shared_experts, dense_mlp, norms, lm_head"},
  };
  // The encoding options sit with the data options (pretokenize takes them too).
  const auto data_file =
      std::find_if(table.begin(), table.end(), [](const OptionSpec& o) { return o.name == "train_file"; });
  const std::vector<OptionSpec> encoding = encoder_option_table();
  table.insert(data_file + 1, encoding.begin(), encoding.end());
  // LoRA, under Hugging Face PEFT's LoraConfig names and defaults (inspect plans with them too).
  const auto freeze = std::find_if(table.begin(), table.end(), [](const OptionSpec& o) { return o.name == "freeze"; });
  const std::vector<OptionSpec> lora = lora_option_table();
  table.insert(freeze + 1, lora.begin(), lora.end());
  // The ranges are declared beside TrainingArguments, which the Python API validates against too.
  for (OptionSpec& o : table)
    if (const NumericRange* r = training_option_range(o.name)) o.range = *r;
  return table;
}

// ModelOptions::lora from --adapter or the lora_* options, or nothing when LoRA is off; refuses
// LoRA options that would have no effect (given with --adapter, or without a rank).
std::optional<LoraConfig> lora_options_from(const ParsedOptions& o) {
  if (o.is_set("adapter")) {
    for (const char* name : kLoraOptions)
      MF_CHECK(!o.has(name), kInvalidArgument, "option '", name, "' cannot be combined with 'adapter' ",
               o.str("adapter"), ": the adapter folder's adapter_config.json sets the LoRA configuration");
    return read_adapter_config(o.str("adapter"));
  }
  if (o.integer("lora_r") == 0) {
    for (const char* name : kLoraOptions)
      MF_CHECK(!o.has(name) || std::string_view(name) == "lora_r", kInvalidArgument, "option '", name,
               "' configures LoRA, which is off: set lora_r > 0 (or adapter) to train adapters");
    return std::nullopt;
  }
  LoraConfig lora;
  lora.r = o.integer("lora_r");
  lora.lora_alpha = o.real("lora_alpha");
  lora.lora_dropout = o.real("lora_dropout");
  lora.use_rslora = o.flag("use_rslora");
  const std::string modules = o.is_set("lora_target_modules") ? o.str("lora_target_modules") : "";
  if (modules == "all-linear") lora.all_linear = true;
  else lora.target_modules = split_list(modules);
  if (o.is_set("lora_target_parameters")) lora.target_parameters = split_list(o.str("lora_target_parameters"));
  lora.validate();
  return lora;
}

SessionOptions session_options_from(const ParsedOptions& o) {
  SessionOptions s;
  MF_CHECK(o.is_set("model"), kInvalidArgument, "moeforge train: option '--model' is required");
  s.model = o.str("model");
  s.model_options.device = option_device(o);
  s.model_options.dtype = option_dtype(o);
  TrainingArguments& a = s.args;
  a.output_dir = o.str("output_dir");
  a.overwrite_output_dir = o.flag("overwrite_output_dir");
  a.learning_rate = o.real("learning_rate");
  if (o.is_set("per_device_train_batch_size")) a.per_device_train_batch_size = o.integer("per_device_train_batch_size");
  a.per_device_eval_batch_size = o.integer("per_device_eval_batch_size");
  a.gradient_accumulation_steps = o.integer("gradient_accumulation_steps");
  a.max_steps = o.integer("max_steps");
  a.num_train_epochs = o.real("num_train_epochs");
  a.warmup_steps = o.integer("warmup_steps");
  a.warmup_ratio = o.real("warmup_ratio");
  a.lr_scheduler_type = o.str("lr_scheduler_type");
  a.weight_decay = o.real("weight_decay");
  a.adam_beta1 = o.real("adam_beta1");
  a.adam_beta2 = o.real("adam_beta2");
  a.adam_epsilon = o.real("adam_epsilon");
  a.max_grad_norm = o.real("max_grad_norm");
  a.logging_steps = o.integer("logging_steps");
  a.eval_steps = o.integer("eval_steps");
  if (o.is_set("eval_strategy")) {  // as Transformers: "steps" defaults eval_steps to logging_steps, the others ignore it
    a.eval_strategy = o.str("eval_strategy");
    if (a.eval_strategy == "steps" && !o.has("eval_steps")) a.eval_steps = a.logging_steps;
  }
  a.save_steps = o.integer("save_steps");
  a.save_total_limit = o.integer("save_total_limit");
  a.seed = static_cast<uint64_t>(o.integer("seed"));
  a.gradient_checkpointing = o.str("gradient_checkpointing");
  a.recompute_full_layers = o.integer("recompute_full_layers");
  a.activation_offload_layers = o.integer("activation_offload_layers");
  if (o.is_set("resume_from_checkpoint")) a.resume_from_checkpoint = o.str("resume_from_checkpoint");
  if (o.is_set("report_to")) a.report_to = split_list(o.str("report_to"));
  a.optimizer_precision = o.str("optimizer_precision");
  a.zero_stage = o.integer("zero_stage");
  a.nan_policy = o.str("nan_policy");
  a.save_quantization = o.str("save_quantization");
  a.router_bias_update_rate = o.real("router_bias_update_rate");
  if (o.is_set("freeze")) a.freeze = split_list(o.str("freeze"));
  for (const auto& g : a.freeze) {
    static const std::vector<std::string> kGroups = {"embeddings", "attention", "router", "experts",
                                                     "shared_experts", "dense_mlp", "norms", "lm_head"};
    if (std::find(kGroups.begin(), kGroups.end(), g) == kGroups.end()) {
      std::string hint = closest_match(g, kGroups);
      fail(ErrorCode::kInvalidArgument, "freeze: unknown parameter group '", g, "'",
           hint.empty() ? std::string() : str_cat(" (did you mean '", hint, "'?)"));
    }
  }
  validate(a);
  s.model_options.recompute = parse_recompute(a.gradient_checkpointing);
  s.model_options.recompute_full_layers = a.recompute_full_layers;
  s.model_options.activation_offload_layers = a.activation_offload_layers;
  s.model_options.lora = lora_options_from(o);
  if (s.model_options.lora) {
    if (o.is_set("adapter")) s.adapter = o.str("adapter");
    // What PEFT records: fresh adapters name the model they are added to (get_peft_model), an adapter
    // folder keeps the base it names and names this model when it names none (save_pretrained).
    std::string& base = s.model_options.lora->base_model_name_or_path;
    if (!o.is_set("adapter") || base.empty()) base = s.model;
    s.model_options.adapter_seed = a.seed;
  }
  DataArguments& d = s.data;
  if (o.is_set("train_file")) d.train_file = o.str("train_file");
  if (o.is_set("eval_file")) d.eval_file = o.str("eval_file");
  if (o.is_set("chat_template")) d.chat_template = o.str("chat_template");
  d.eval_ratio = o.real("eval_ratio");
  if (o.is_set("max_seq_length")) d.max_seq_length = o.integer("max_seq_length");
  d.fit_batch_to_data = !o.is_set("per_device_train_batch_size");
  d.overflow = o.str("packing_overflow");
  d.packing = o.flag("packing");
  d.encoder = encoder_options_from(o);
  d.skip_bad_lines = o.flag("skip_bad_lines");
  return s;
}

std::string resolved_config_yaml(const CommandSpec& command, const ParsedOptions& o) {
  std::ostringstream os;
  os << "# moeforge " << command.name << ": the resolved configuration (flags > environment > recipe > defaults)\n";
  for (const auto& spec : command.options) {
    if (spec.name == "recipe" || !o.is_set(spec.name)) continue;
    os << spec.name << ": \"" << o.str(spec.name) << "\"  # " << source_name(o.source(spec.name)) << "\n";
  }
  return os.str();
}

std::shared_ptr<ProcessGroup> join_launch_world(Device device) {
  std::shared_ptr<ProcessGroup> world = world_process_group(device);
  if (world && world->rank() != 0) {
    set_log_rank(world->rank());
    if (log_level() < LogLevel::kWarning) set_log_level(LogLevel::kWarning);
  }
  return world;
}

}  // namespace moeforge::cli
