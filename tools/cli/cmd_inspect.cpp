// moeforge inspect: what a model is, from its config.json alone (the weights are neither read nor
// allocated): architecture, sizes, layer kinds, experts, parameter counts (total and active per
// token, saying what is counted), and the training memory of each optimizer precision mode.
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "arch/architecture.h"
#include "arch/checkpoint_tensors.h"
#include "arch/model_config.h"
#include "command.h"
#include "core/error.h"
#include "io/hf_folder.h"
#include "model/causal_lm.h"
#include "model/memory_plan.h"
#include "optim/adamw.h"
#include "training_options.h"

namespace moeforge::cli {
namespace {

namespace fs = std::filesystem;

constexpr OptimizerPrecision kPrecisions[] = {OptimizerPrecision::kFp32Master, OptimizerPrecision::kBf16Weights,
                                              OptimizerPrecision::kBf16State};

const char* precision_contents(OptimizerPrecision p) {
  switch (p) {
    case OptimizerPrecision::kFp32Master: return "bf16 weights + bf16 grads + fp32 master + 2 fp32 moments";
    case OptimizerPrecision::kBf16Weights: return "bf16 weights + bf16 grads + 2 fp32 moments";
    case OptimizerPrecision::kBf16State: return "bf16 weights + bf16 grads + 2 bf16 moments";
  }
  return "";
}

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

// 30532122624 -> "30,532,122,624 (30.53 B)".
std::string count_text(int64_t n) {
  std::string digits = std::to_string(n), grouped;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) grouped += ',';
    grouped += digits[i];
  }
  char scaled[32];
  std::snprintf(scaled, sizeof scaled, " (%.2f B)", static_cast<double>(n) / 1e9);
  return grouped + scaled;
}

struct LayerCounts {
  int64_t attention_dense = 0, attention_moe = 0, mamba = 0, attention_only = 0, moe_only = 0, mlp_only = 0;
};

LayerCounts count_layers(const ModelConfig& c) {
  LayerCounts n;
  for (const LayerSpec& l : c.layers) {
    if (l.mixer == LayerSpec::Mixer::kMamba) ++n.mamba;
    else if (l.mixer == LayerSpec::Mixer::kAttention && l.ffn == LayerSpec::Ffn::kMoe) ++n.attention_moe;
    else if (l.mixer == LayerSpec::Mixer::kAttention && l.ffn == LayerSpec::Ffn::kDense) ++n.attention_dense;
    else if (l.mixer == LayerSpec::Mixer::kAttention) ++n.attention_only;
    else if (l.ffn == LayerSpec::Ffn::kMoe) ++n.moe_only;
    else ++n.mlp_only;
  }
  return n;
}

std::string rope_text(const ModelConfig& c) {
  if (!c.rope) return "none (no positional encoding)";
  const RopeParameters& r = *c.rope;
  std::string s = str_cat(rope_type_name(r.type), ", theta ", r.theta);
  if (r.type != RopeType::kDefault) s += str_cat(", factor ", r.factor);
  if (r.original_max_position_embeddings > 0)
    s += str_cat(", original_max_position_embeddings ", r.original_max_position_embeddings);
  if (r.partial_rotary_factor != 1.0) s += str_cat(", partial_rotary_factor ", r.partial_rotary_factor);
  return s;
}

// Why train and generate would refuse this config, or empty: inspect describes more than they run.
std::string unsupported_reason(const ModelConfig& c) {
  try {
    check_model_supported(c);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kUnsupported) throw;
    return e.what();
  }
  return {};
}

nlohmann::json report_json(const ModelConfig& c, const Architecture& arch, const ParamCounts& p) {
  const LayerCounts n = count_layers(c);
  nlohmann::json j;
  j["config"] = c.source.string();
  j["model_type"] = c.model_type;
  j["hf_class"] = arch.hf_class;
  const std::string unsupported = unsupported_reason(c);
  j["trainable"] = unsupported.empty();
  if (!unsupported.empty()) j["unsupported"] = unsupported;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["layers"] = {{"moe", c.num_moe_layers()}, {"dense_mlp", c.num_dense_ffn_layers()},
                 {"attention", n.attention_dense + n.attention_moe + n.attention_only}, {"mamba", n.mamba}};
  j["num_attention_heads"] = c.attention.num_heads;
  j["num_key_value_heads"] = c.attention.num_kv_heads;
  j["head_dim"] = c.attention.head_dim;
  j["intermediate_size"] = c.intermediate_size;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["rope"] = rope_text(c);
  j["moe"] = nullptr;
  if (c.moe) {
    j["moe"] = {{"num_experts", c.moe->num_experts},
                {"num_experts_per_tok", c.moe->num_experts_per_tok},
                {"expert_intermediate_size", c.moe->expert_intermediate_size},
                {"num_shared_experts", c.moe->num_shared_experts},
                {"shared_expert_intermediate_size", c.moe->shared_expert_intermediate_size}};
  }
  j["num_mtp_layers"] = c.num_mtp_layers;
  j["parameters"] = {{"total", p.total},
                     {"total_without_embedding", p.total_without_embedding()},
                     {"embedding", p.embedding},
                     {"lm_head", p.lm_head},
                     {"routed_experts", p.routed_experts},
                     {"active", p.active},
                     {"active_without_embedding", p.active_without_embedding()},
                     {"mtp", p.mtp},
                     {"mtp_active", p.mtp_active},
                     {"buffers", p.buffers},
                     {"total_includes_embedding", true},
                     {"total_includes_mtp", false}};
  nlohmann::json memory = nlohmann::json::array();
  for (OptimizerPrecision prec : kPrecisions) {
    const int bytes = optimizer_precision_bytes_per_param(prec);
    memory.push_back({{"mode", optimizer_precision_name(prec)},
                      {"bytes_per_param", bytes},
                      {"bytes", static_cast<double>(p.total) * bytes},
                      {"gib", gib(static_cast<double>(p.total) * bytes)}});
  }
  j["training_memory"] = memory;
  return j;
}

void print_report(const ModelConfig& c, const Architecture& arch, const ParamCounts& p) {
  const LayerCounts n = count_layers(c);
  auto line = [](const char* label, const std::string& value) {
    std::printf("%-26s %s\n", label, value.c_str());
  };
  line("config", c.source.string());
  line("model_type", str_cat(c.model_type, " (", arch.hf_class, ")"));
  const std::string unsupported = unsupported_reason(c);
  line("trains and generates", unsupported.empty() ? "yes" : "no: " + unsupported);
  line("hidden_size", std::to_string(c.hidden_size));
  line("vocab_size", std::to_string(c.vocab_size));
  std::string kinds;
  auto add_kind = [&kinds](int64_t count, const char* kind) {
    if (count > 0) kinds += str_cat(kinds.empty() ? "" : ", ", count, " ", kind);
  };
  add_kind(n.attention_dense, "attention+dense MLP");
  add_kind(n.attention_moe, "attention+MoE");
  add_kind(n.mamba, "Mamba-2");
  add_kind(n.attention_only, "attention");
  add_kind(n.moe_only, "MoE");
  add_kind(n.mlp_only, "MLP");
  line("layers", str_cat(c.num_hidden_layers, ": ", kinds));
  const AttentionConfig& a = c.attention;
  std::string attention = str_cat(a.num_heads, " heads, ", a.num_kv_heads, " kv heads");
  if (c.mla) {
    const MlaConfig& m = *c.mla;
    attention += str_cat(", MLA (q_lora_rank ", m.q_lora_rank ? std::to_string(*m.q_lora_rank) : "none",
                         ", kv_lora_rank ", m.kv_lora_rank, ", qk ", m.qk_nope_head_dim, "+", m.qk_rope_head_dim,
                         ", v ", m.v_head_dim, ")");
  } else {
    attention += str_cat(", head_dim ", a.head_dim);
  }
  if (a.sliding_window) attention += str_cat(", sliding window ", *a.sliding_window);
  if (a.sinks) attention += ", sinks";
  line("attention", attention);
  line("rope", rope_text(c));
  if (c.num_dense_ffn_layers() > 0) line("dense MLP width", std::to_string(c.intermediate_size));
  if (c.moe) {
    const MoeConfig& m = *c.moe;
    std::string experts = str_cat(m.num_experts, " routed, top-", m.num_experts_per_tok, ", width ",
                                  m.expert_intermediate_size);
    if (m.num_shared_experts > 0)
      experts += str_cat(", shared width ", m.shared_expert_intermediate_size);
    experts += m.scoring == RouterScoring::kSigmoid ? ", sigmoid router" : ", softmax router";
    line("experts", experts);
  } else {
    line("experts", "none (dense model)");
  }
  line("tie_word_embeddings", c.tie_word_embeddings ? "true" : "false");

  std::printf("\nparameters (from the checkpoint tensor list; = Transformers num_parameters())\n");
  line("  total", count_text(p.total));
  line("    of which embedding", count_text(p.embedding));
  line("    of which lm_head", c.tie_word_embeddings ? std::string("tied to the embedding") : count_text(p.lm_head));
  line("  total w/o embedding", count_text(p.total_without_embedding()));
  line("  active per token", count_text(p.active));
  line("  active w/o embedding", count_text(p.active_without_embedding()));
  std::printf("  embeddings: the input embedding is counted in 'total' and 'active'; the 'w/o' lines\n"
              "  exclude it only (as num_parameters(exclude_embeddings=True)); lm_head stays in.\n");
  if (c.moe)
    std::printf("  active = all non-expert parameters + %lld of %lld routed experts in each MoE layer.\n",
                static_cast<long long>(c.moe->num_experts_per_tok), static_cast<long long>(c.moe->num_experts));
  if (c.num_mtp_layers > 0) {
    std::printf("  MTP module NOT counted above: %lld layer(s), %s parameters (%s active), stored in the\n"
                "  checkpoint with their own embedding and head copies; Transformers does not build them.\n",
                static_cast<long long>(c.num_mtp_layers), count_text(p.mtp).c_str(), count_text(p.mtp_active).c_str());
  } else {
    std::printf("  MTP module: none.\n");
  }
  if (p.buffers > 0)
    std::printf("  persistent buffers (e_score_correction_bias), not parameters: %lld values.\n",
                static_cast<long long>(p.buffers));

  std::printf("\ntraining memory for weights, gradients and optimizer state (total parameters;\n"
              "activations not included)\n");
  for (OptimizerPrecision prec : kPrecisions) {
    const int bytes = optimizer_precision_bytes_per_param(prec);
    std::printf("  %-13s %2d B/param %10.1f GiB   %s\n", optimizer_precision_name(prec), bytes,
                gib(static_cast<double>(p.total) * bytes), precision_contents(prec));
  }
}

const char* const kPlanOptions[] = {"gpus", "expert_parallel", "seq", "micro_batch", "gradient_checkpointing",
                                    "optimizer_precision", "gpu_memory_gib", "lora_r", "adapter", "zero_stage"};

// Free memory the plan leaves for the CUDA context, library workspaces and fragmentation.
constexpr double kPlanHeadroom = 0.05;

bool plan_fits(const MemoryPlan& p, double gpu_bytes) { return p.total() <= (1 - kPlanHeadroom) * gpu_bytes; }

// A plan that does not fit: each one change of the memory options that makes it fit (ZeRO-2 with
// several GPUs, more recomputation, the 8-byte optimizer), as the flags that ask for it and the
// total it plans; and when none does alone, all of them together, fitting or not.
struct PlanChange {
  std::vector<std::string> flags;
  MemoryPlan plan;
};
std::vector<PlanChange> changes_that_fit(const ModelConfig& config, const MemoryPlanOptions& o, double gpu_bytes) {
  std::vector<PlanChange> singles;
  MemoryPlanOptions all = o;
  std::vector<std::string> all_flags;
  auto consider = [&](std::vector<std::string> flags, auto change) {
    MemoryPlanOptions changed = o;
    change(changed);
    change(all);
    all_flags.insert(all_flags.end(), flags.begin(), flags.end());
    singles.push_back({std::move(flags), plan_training_memory(config, changed)});
  };
  if (o.gpus > 1 && !o.shard_gradients)
    consider({"--zero_stage", "2"}, [](MemoryPlanOptions& m) { m.shard_gradients = true; });
  if (o.recompute != Recompute::kFull)
    consider({"--gradient_checkpointing", "full"}, [](MemoryPlanOptions& m) { m.recompute = Recompute::kFull; });
  const int smallest = optimizer_precision_bytes_per_param(OptimizerPrecision::kBf16State);
  if (o.bytes_per_param > smallest)
    consider({"--optimizer_precision", "bf16-state"}, [&](MemoryPlanOptions& m) { m.bytes_per_param = smallest; });
  std::vector<PlanChange> fitting;
  for (PlanChange& c : singles)
    if (plan_fits(c.plan, gpu_bytes)) fitting.push_back(std::move(c));
  if (fitting.empty() && singles.size() > 1) fitting.push_back({all_flags, plan_training_memory(config, all)});
  return fitting;
}

nlohmann::json plan_json(const MemoryPlan& p, const MemoryPlanOptions& o, double gpu_bytes) {
  return {{"gpus", o.gpus}, {"expert_parallel", o.expert_parallel}, {"seq", o.seq},
                      {"micro_batch", o.micro_batch}, {"params_per_gpu", p.params}, {"weights_bytes", p.weights},
                      {"gradients_bytes", p.gradients}, {"optimizer_bytes", p.optimizer},
                      {"activations_bytes", p.activations}, {"transient_bytes", p.transient},
                      {"total_bytes", p.total()}, {"fits", plan_fits(p, gpu_bytes)},
                      {"gpu_bytes", gpu_bytes}, {"zero_stage", o.shard_gradients ? 2 : 1}};
}

void print_plan(const MemoryPlan& p, const MemoryPlanOptions& o, const ParsedOptions& options, double gpu_bytes) {
  std::printf("\nmemory plan per GPU: %lld GPUs, experts split over %lld; %lld x %lld tokens; %s recompute; %s\n",
              static_cast<long long>(o.gpus), static_cast<long long>(o.expert_parallel),
              static_cast<long long>(o.micro_batch), static_cast<long long>(o.seq),
              options.str("gradient_checkpointing").c_str(), options.str("optimizer_precision").c_str());
  auto row = [](const char* what, double bytes, const std::string& note) {
    std::printf("  %-16s %9.2f GiB   %s\n", what, gib(bytes), note.c_str());
  };
  row("weights", p.weights, str_cat(count_text(p.params), " parameters in bf16 (routed experts: this GPU's)"));
  const bool sharded = o.shard_gradients && o.gpus > 1;
  row("gradients", p.gradients,
      str_cat(o.lora ? "bf16, the adapters' alone" : "bf16",
              sharded ? "; zero_stage 2: sharded as the optimizer state, plus two layers' in flight" : ""));
  row("optimizer state", p.optimizer,
      o.gpus > 1 ? "sharded: the replicated parameters' over every GPU, the experts' over their copies" : "");
  row("activations", p.activations, "what every layer keeps between forward and backward");
  row("transient", p.transient, "a loss chunk, an MoE or Mamba backward, and the layer being recomputed");
  row("total", p.total(), str_cat(plan_fits(p, gpu_bytes) ? "fits" : "does NOT fit", " in ",
                                  options.real("gpu_memory_gib"), " GiB with 5% left for the CUDA context, "
                                  "workspaces and fragmentation"));
}

int run_inspect(const ParsedOptions& options) {
  // A config.json as given; else a folder or a cached Hub id, resolved as `train` resolves it.
  const std::string model = options.str("model");
  const ModelConfig config = load_model_config(fs::is_regular_file(model) ? fs::path(model) : resolve_model_folder(model));
  const Architecture& arch = require_architecture(config.model_type, config.source.string());
  const ParamCounts counts = count_parameters(config);
  bool plan_asked = false;
  for (const char* name : kPlanOptions) plan_asked |= options.has(name);
  MemoryPlanOptions o;
  o.gpus = options.integer("gpus");
  o.expert_parallel = options.has("expert_parallel") ? options.integer("expert_parallel") : o.gpus;
  o.seq = options.integer("seq");
  o.micro_batch = options.integer("micro_batch");
  o.recompute = parse_recompute(options.str("gradient_checkpointing"));
  o.bytes_per_param = optimizer_precision_bytes_per_param(parse_optimizer_precision(options.str("optimizer_precision")));
  const std::optional<LoraConfig> lora = lora_options_from(options);
  if (lora) o.lora = &*lora;
  o.shard_gradients = options.integer("zero_stage") >= 2;
  const double gpu_bytes = options.real("gpu_memory_gib") * 1024.0 * 1024.0 * 1024.0;
  const MemoryPlan plan = plan_asked ? plan_training_memory(config, o) : MemoryPlan{};
  if (options.flag("json")) {
    nlohmann::json j = report_json(config, arch, counts);
    if (plan_asked) {
      j["memory_plan"] = plan_json(plan, o, gpu_bytes);
      if (!plan_fits(plan, gpu_bytes)) {
        nlohmann::json changes = nlohmann::json::array();
        for (const PlanChange& c : changes_that_fit(config, o, gpu_bytes))
          changes.push_back({{"flags", c.flags}, {"total_bytes", c.plan.total()}, {"fits", plan_fits(c.plan, gpu_bytes)}});
        j["memory_plan"]["changes"] = changes;
      }
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    print_report(config, arch, counts);
    if (plan_asked) {
      print_plan(plan, o, options, gpu_bytes);
      if (!plan_fits(plan, gpu_bytes))
        for (const PlanChange& c : changes_that_fit(config, o, gpu_bytes)) {
          std::string flags;
          for (const std::string& f : c.flags) flags += (flags.empty() ? "" : " ") + f;
          std::printf("  with %s: %.2f GiB, %s\n", flags.c_str(), gib(c.plan.total()),
                      plan_fits(c.plan, gpu_bytes) ? "fits" : "still does NOT fit (more GPUs or expert-parallel ranks)");
        }
    }
  }
  return 0;
}

CommandSpec inspect_command() {
  CommandSpec c;
  c.name = "inspect";
  c.summary = "describe a model from its config.json: layers, experts, parameters, training memory";
  c.description =
      "Reads only config.json (MODEL may be a folder holding it, or the file itself); no weights are\n"
      "read or allocated. Parameter counts come from the list of checkpoint tensors of the model's\n"
      "architecture and equal Transformers' num_parameters().\n"
      "Any of the plan options adds a memory plan per GPU for fine-tuning on CUDA (full, or LoRA with\n"
      "train's lora_* options or an adapter folder): weights, gradients, optimizer state, the activations\n"
      "each layer keeps at the recompute policy and the largest transient, and whether it fits; when it\n"
      "does not, which one change of --zero_stage, --gradient_checkpointing or --optimizer_precision makes it\n"
      "fit (or what all of them together plan).";
  c.options = {
      {.name = "model", .type = OptionType::kPath, .help = "model folder, config.json or cached model id",
       .aliases = {"config"}, .required = true, .positional = true},
      {.name = "json", .type = OptionType::kBool, .help = "print machine-readable JSON"},
      {.name = "gpus", .type = OptionType::kInt, .default_value = "1", .help = "plan: GPUs of the run"},
      {.name = "expert_parallel", .type = OptionType::kInt, .help = "plan: ranks the routed experts are split over "
       "(default: every GPU)", .aliases = {"ep"}},
      {.name = "seq", .type = OptionType::kInt, .default_value = "4096", .help = "plan: sequence length"},
      {.name = "micro_batch", .type = OptionType::kInt, .default_value = "1", .help = "plan: sequences per GPU per micro-batch"},
      {.name = "gradient_checkpointing", .type = OptionType::kChoice, .default_value = "none",
       .help = "plan: recompute policy", .choices = {"none", "selective", "full"}},
      {.name = "optimizer_precision", .type = OptionType::kChoice, .default_value = "fp32-master",
       .help = "plan: optimizer precision mode", .choices = {"fp32-master", "bf16-weights", "bf16-state"}},
      {.name = "zero_stage", .type = OptionType::kInt, .default_value = "1",
       .help = "plan: train's zero_stage (2: gradients sharded too)", .range = *training_option_range("zero_stage")},
      {.name = "gpu_memory_gib", .type = OptionType::kFloat, .default_value = "140",
       .help = "plan: memory of one GPU (an H200: 140 GiB as nvidia-smi reports it)"},
  };
  const std::vector<OptionSpec> lora = lora_option_table();
  c.options.insert(c.options.end(), lora.begin(), lora.end());
  c.run = run_inspect;
  return c;
}

const CommandRegistration kRegistration{inspect_command()};

}  // namespace
}  // namespace moeforge::cli
