#include "arch/lora.h"

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "core/error.h"

namespace moeforge {

// ---- adapter_config.json --------------------------------------------------------------------

namespace {

// PEFT writes target_modules as a list or as one string (a regular expression, or "all-linear").
void read_targets(const Json& json, const std::string& where, LoraConfig& c) {
  auto it = json.find("target_modules");
  if (it != json.end() && !it->is_null()) {
    if (it->is_string()) {
      const std::string s = it->get<std::string>();
      MF_CHECK(s == "all-linear", kUnsupported, where, ": target_modules '", s,
               "' is a regular expression; moeforge reads a list of module names or \"all-linear\"");
      c.all_linear = true;
    } else {
      c.target_modules = json_detail::convert<std::vector<std::string>>(*it, where + ": key 'target_modules'");
    }
  }
  c.target_parameters =
      get_optional<std::vector<std::string>>(json, "target_parameters", where).value_or(std::vector<std::string>{});
}

// A PEFT option moeforge does not implement, refused when set to anything but its default.
void refuse_unless_default(const Json& json, const std::string& where, const char* key, const Json& default_value,
                           const char* what) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null() || *it == default_value) return;
  fail(ErrorCode::kUnsupported, where, ": key '", key, "' = ", json_excerpt(*it), " (", what,
       ") is not supported by moeforge");
}

}  // namespace

LoraConfig LoraConfig::from_json(const Json& json, const std::string& where) {
  MF_CHECK(json.is_object(), kFormat, where, ": expected an object, got ", json_type_name(json));
  const std::string type = get_optional<std::string>(json, "peft_type", where).value_or("LORA");
  MF_CHECK(type == "LORA", kUnsupported, where, ": peft_type '", type, "' is not LoRA");
  LoraConfig c;
  c.r = require<int64_t>(json, "r", where);
  c.lora_alpha = get_optional<double>(json, "lora_alpha", where).value_or(8.0);
  c.lora_dropout = get_optional<double>(json, "lora_dropout", where).value_or(0.0);
  c.use_rslora = get_optional<bool>(json, "use_rslora", where).value_or(false);
  read_targets(json, where, c);
  c.rank_pattern = get_optional<std::map<std::string, int64_t>>(json, "rank_pattern", where).value_or(c.rank_pattern);
  c.alpha_pattern = get_optional<std::map<std::string, double>>(json, "alpha_pattern", where).value_or(c.alpha_pattern);
  auto init = json.find("init_lora_weights");
  if (init != json.end() && init->is_boolean()) c.init_lora_weights = init->get<bool>();
  c.base_model_name_or_path = get_optional<std::string>(json, "base_model_name_or_path", where).value_or("");
  refuse_unless_default(json, where, "use_dora", false, "DoRA");
  refuse_unless_default(json, where, "bias", "none", "training biases");
  refuse_unless_default(json, where, "lora_bias", false, "a bias on lora_B");
  refuse_unless_default(json, where, "fan_in_fan_out", false, "Conv1D weights");
  refuse_unless_default(json, where, "layers_to_transform", nullptr, "adapting some layers only");
  refuse_unless_default(json, where, "modules_to_save", nullptr, "fully trained extra modules");
  refuse_unless_default(json, where, "exclude_modules", nullptr, "excluded modules");
  refuse_unless_default(json, where, "trainable_token_indices", nullptr, "trainable token embeddings");
  c.validate();
  return c;
}

Json LoraConfig::to_json() const {
  Json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["r"] = r;
  j["lora_alpha"] = lora_alpha;
  j["lora_dropout"] = lora_dropout;
  j["use_rslora"] = use_rslora;
  j["target_modules"] = all_linear ? Json("all-linear") : Json(target_modules);
  j["target_parameters"] = target_parameters.empty() ? Json(nullptr) : Json(target_parameters);
  j["rank_pattern"] = rank_pattern;
  j["alpha_pattern"] = alpha_pattern;
  j["init_lora_weights"] = init_lora_weights;
  j["base_model_name_or_path"] = base_model_name_or_path.empty() ? Json(nullptr) : Json(base_model_name_or_path);
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["use_dora"] = false;
  j["lora_bias"] = false;
  j["inference_mode"] = true;
  j["modules_to_save"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["revision"] = nullptr;
  return j;
}

void LoraConfig::validate() const {
  MF_CHECK(r > 0, kInvalidArgument, "LoRA: r must be positive, got ", r);
  MF_CHECK(std::isfinite(lora_alpha) && lora_alpha != 0, kInvalidArgument,
           "LoRA: lora_alpha must be a nonzero number, got ", lora_alpha);
  MF_CHECK(lora_dropout >= 0 && lora_dropout < 1, kInvalidArgument, "LoRA: lora_dropout must be in [0, 1), got ",
           lora_dropout);
  MF_CHECK(all_linear || !target_modules.empty() || !target_parameters.empty(), kInvalidArgument,
           "LoRA: no target: set target_modules (e.g. q_proj,k_proj,v_proj,o_proj) and/or target_parameters "
           "(e.g. mlp.experts.gate_up_proj,mlp.experts.down_proj)");
  for (const auto& [pattern, rank] : rank_pattern)
    MF_CHECK(rank > 0, kInvalidArgument, "LoRA: rank_pattern '", pattern, "' must be positive, got ", rank);
}

// ---- targets --------------------------------------------------------------------------------

namespace {

bool name_matches(const std::string& path, const std::string& target) {
  return path == target || (path.size() > target.size() && path.ends_with("." + target));
}

// PEFT's Transformers-4 -> 5 renaming of expert targets for the families whose experts Transformers
// 5 fuses (peft/utils/transformers_weight_conversion.py, _MOE_TARGET_MODULE_MAPPING).
struct ExpertRenaming {
  const char* gate;
  const char* up;
  const char* down;
};
std::optional<ExpertRenaming> expert_renaming(const std::string& model_type) {
  if (model_type == "mixtral") return ExpertRenaming{"w1", "w3", "w2"};
  if (model_type == "qwen3_moe" || model_type == "qwen2_moe" || model_type == "olmoe")
    return ExpertRenaming{"gate_proj", "up_proj", "down_proj"};
  return std::nullopt;
}

// Rewrites `c` as PEFT 0.21 does before it adapts a model of `config`'s family: "all-linear" becomes
// the family's linear modules; Transformers-4 expert names become target_parameters.
void resolve_peft_targets(const ModelConfig& config, LoraConfig& c) {
  const auto renaming = expert_renaming(config.model_type);
  MF_CHECK(!(c.all_linear && config.mamba), kUnsupported, "LoRA: target_modules \"all-linear\" on ",
           config.model_type, " includes the Mamba mixers' out_proj, which PEFT 0.21 refuses on Mamba models; "
           "list the modules (q_proj, k_proj, v_proj, o_proj, in_proj)");
  if (c.all_linear) {
    c.all_linear = false;
    c.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
    if (renaming) {
      for (const char* n : {renaming->gate, renaming->up, renaming->down}) c.target_modules.push_back(n);
      c.target_modules.push_back("gate");  // the router
    } else if (config.num_dense_ffn_layers() > 0) {
      for (const char* n : {"gate_proj", "up_proj", "down_proj"}) c.target_modules.push_back(n);
    }
  }
  if (!renaming) return;
  std::vector<std::string> modules;
  std::set<std::string> parameters(c.target_parameters.begin(), c.target_parameters.end());
  bool gate = false, up = false;
  for (const std::string& t : c.target_modules) {
    if (name_matches(t, renaming->gate)) {
      gate = true;
      parameters.insert("gate_up_proj");
    } else if (name_matches(t, renaming->up)) {
      up = true;
      parameters.insert("gate_up_proj");
    } else if (name_matches(t, renaming->down)) {
      parameters.insert("down_proj");
    } else if (name_matches(t, "gate")) {
      parameters.insert("gate.weight");
    } else {
      modules.push_back(t);
    }
  }
  MF_CHECK(gate == up, kInvalidArgument, "LoRA: target '", gate ? renaming->gate : renaming->up,
           "' without '", gate ? renaming->up : renaming->gate, "': ", config.model_type,
           " fuses them into mlp.experts.gate_up_proj (as PEFT, adapt both or neither)");
  if (gate && up) {
    // Two rank-r adapters side by side are one rank-2r adapter of the fused weight; alpha doubles
    // with the rank to keep each half's scale alpha / r.
    c.rank_pattern[R"(.*\.gate_up_proj)"] = 2 * c.r;
    c.alpha_pattern[R"(.*\.gate_up_proj)"] = 2 * c.lora_alpha;
  }
  c.target_modules = modules;
  c.target_parameters.assign(parameters.begin(), parameters.end());
}

// rank_pattern / alpha_pattern: the first pattern matching the end of `path` (PEFT's get_pattern_key).
template <typename T>
T pattern_value(const std::map<std::string, T>& patterns, const std::string& path, T fallback) {
  for (const auto& [pattern, value] : patterns)
    if (std::regex_match(path, std::regex("(.*\\.)?(" + pattern + ")"))) return value;
  return fallback;
}

std::string strip_suffix(const std::string& s, const std::string& suffix) {
  return s.ends_with(suffix) ? s.substr(0, s.size() - suffix.size()) : s;
}

class LoraBuilder {
 public:
  // checkpoint_root: the key prefix the checkpoint has where the model Transformers builds (and PEFT
  // names adapters by) has "model." (Nemotron-H's "backbone."), or empty.
  LoraBuilder(ModelDescription& d, const LoraConfig& c, std::string checkpoint_root)
      : d_(d), c_(c), checkpoint_root_(std::move(checkpoint_root)) {}

  // A module target (lora.Linear) on the projection `s` (weight [out, in]).
  void linear(LinearSlots& s) {
    if (s.weight < 0) return;
    const ParamEntry w = params().entry(s.weight);  // a copy: declare() below grows the list
    const std::string module = strip_suffix(w.name, ".weight");
    if (!matches(c_.target_modules, module, modules_used_)) return;
    const int64_t out = w.shape[0], in = w.shape[1];
    const int64_t r = rank(module);
    s.lora.a = declare(module + ".lora_A.weight", {r, in}, ShardClass::kReplicated);
    s.lora.b = declare(module + ".lora_B.weight", {out, r}, ShardClass::kReplicated);
    s.lora.scale = scale(module, r);
    s.lora.dropout = static_cast<float>(c_.lora_dropout);
    tensors_.push_back({peft_key(module, ".lora_A.weight"), s.lora.a, {r, in}, AdapterLayout::kSame});
    tensors_.push_back({peft_key(module, ".lora_B.weight"), s.lora.b, {out, r}, AdapterLayout::kSame});
  }

  // A target parameter (PEFT's ParamWrapper) on stacked experts [E, out, in]. `wrappers_after`:
  // how many of the same module's parameters PEFT wraps after this one (each nests this wrapper one
  // `base_layer` deeper in the file's keys).
  void experts(int param, LoraSlots& lora, int wrappers_after) {
    const ParamEntry w = params().entry(param);  // a copy: declare() below grows the list
    MF_CHECK(c_.lora_dropout == 0, kUnsupported, "LoRA: lora_dropout ", c_.lora_dropout, " on ", w.name,
             ": PEFT adapts stacked experts through a ParamWrapper, which refuses dropout (its input cannot be "
             "dropped per adapter); set lora_dropout to 0 or target attention modules only");
    const int64_t E = w.shape[0], out = w.shape[1], in = w.shape[2];
    const int64_t r = rank(w.name);
    lora.a = declare(w.name + ".lora_A", {E, r, in}, ShardClass::kExpert);
    lora.b = declare(w.name + ".lora_B", {E, out, r}, ShardClass::kExpert);
    lora.scale = scale(w.name, r);
    std::string module = w.name.substr(0, w.name.rfind('.'));
    for (int i = 0; i < wrappers_after; ++i) module += ".base_layer";
    // A checkpoint storing the experts transposed ([E, in, out], GPT-OSS) is what PEFT calls
    // is_transposed: its adapters keep these shapes, and B's rows follow the checkpoint's output order.
    const AdapterLayout b_layout = fused_slice_interleaved(param) ? AdapterLayout::kExpertColumnsInterleavedGateUpRows
                                                                  : AdapterLayout::kExpertColumnsInterleaved;
    tensors_.push_back({peft_key(module, ".lora_A.weight"), lora.a, {r * E, in}, AdapterLayout::kSame});
    tensors_.push_back({peft_key(module, ".lora_B.weight"), lora.b, {out, r * E}, b_layout});
  }

  // A target parameter on a 2-D weight [out, in] (the router): PEFT's ParamWrapper of one expert,
  // keyed by the weight's module, lora_A [r, in] and lora_B [out, r].
  void matrix_parameter(int param, LoraSlots& lora) {
    const ParamEntry w = params().entry(param);  // a copy: declare() below grows the list
    MF_CHECK(c_.lora_dropout == 0, kUnsupported, "LoRA: lora_dropout ", c_.lora_dropout, " on ", w.name,
             ": PEFT adapts a target parameter through a ParamWrapper, which refuses dropout; set lora_dropout "
             "to 0 or leave the router out");
    const int64_t out = w.shape[0], in = w.shape[1];
    const int64_t r = rank(w.name);
    const std::string module = strip_suffix(w.name, ".weight");
    lora.a = declare(module + ".lora_A.weight", {r, in}, ShardClass::kReplicated);
    lora.b = declare(module + ".lora_B.weight", {out, r}, ShardClass::kReplicated);
    lora.scale = scale(w.name, r);
    tensors_.push_back({peft_key(module, ".lora_A.weight"), lora.a, {r, in}, AdapterLayout::kSame});
    tensors_.push_back({peft_key(module, ".lora_B.weight"), lora.b, {out, r}, AdapterLayout::kSame});
  }

  bool targets_parameter(int param) {
    return param >= 0 && matches(c_.target_parameters, params().entry(param).name, parameters_used_);
  }
  bool targets_module(const std::string& module) { return matches(c_.target_modules, module, modules_used_); }

  std::vector<AdapterTensor> finish(const std::string& model_type) {
    auto check_used = [&](const std::vector<std::string>& targets, const std::set<std::string>& used,
                          const char* key) {
      for (const std::string& t : targets)
        MF_CHECK(used.count(t), kInvalidArgument, "LoRA: ", key, " '", t, "' matches nothing in ", model_type,
                 " (targets: q_proj, k_proj, v_proj, o_proj; experts: mlp.experts.gate_up_proj, "
                 "mlp.experts.down_proj; router: mlp.gate.weight, GPT-OSS's mlp.router.weight; Nemotron-H: in_proj, "
                 "fc1_latent_proj, fc2_latent_proj)");
    };
    check_used(c_.target_modules, modules_used_, "target_modules");
    check_used(c_.target_parameters, parameters_used_, "target_parameters");
    return std::move(tensors_);
  }

 private:
  ParameterSet& params() { return d_.weights.params; }
  // Whether the checkpoint stores parameter `param` whole with its output rows' two halves
  // interleaved (GPT-OSS's gate_up_proj).
  bool fused_slice_interleaved(int param) const {
    return std::any_of(d_.tensors.begin(), d_.tensors.end(), [&](const CheckpointTensor& t) {
      return t.slice.param == param && t.slice.row_end < 0 && t.slice.interleaved;
    });
  }
  // The adapter file's key of `module` (a checkpoint name): under PEFT's base_model.model., with the
  // runtime's root.
  std::string peft_key(const std::string& module, const char* tensor) const {
    const bool renamed = !checkpoint_root_.empty() && module.starts_with(checkpoint_root_);
    return str_cat("base_model.model.", renamed ? "model." + module.substr(checkpoint_root_.size()) : module, tensor);
  }
  bool matches(const std::vector<std::string>& targets, const std::string& path, std::set<std::string>& used) {
    bool any = false;
    for (const std::string& t : targets)
      if (name_matches(path, t)) used.insert(t), any = true;
    return any;
  }
  int64_t rank(const std::string& path) const { return pattern_value(c_.rank_pattern, path, c_.r); }
  float scale(const std::string& path, int64_t r) const {
    const double alpha = pattern_value(c_.alpha_pattern, path, c_.lora_alpha);
    return static_cast<float>(c_.use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r);
  }
  int declare(std::string name, Shape shape, ShardClass shard_class) {
    return params().add(std::move(name), std::move(shape), ParamGroup::kAdapter, true, shard_class);
  }

  ModelDescription& d_;
  const LoraConfig& c_;
  std::string checkpoint_root_;
  std::set<std::string> modules_used_, parameters_used_;
  std::vector<AdapterTensor> tensors_;
};

// What moeforge cannot adapt yet, refused by the path PEFT would adapt.
void refuse(const std::string& path, const char* what) {
  fail(ErrorCode::kUnsupported, "LoRA on ", what, " (", path,
       ") is not supported yet; moeforge adapts attention projections, Mamba in_proj, routers, routed experts and "
       "latent expert projections");
}

}  // namespace

std::vector<AdapterTensor> add_lora(ModelDescription& d, const ModelConfig& config, LoraConfig& lora) {
  MF_CHECK(d.trainable(), kUnsupported, "LoRA: model_type '", config.model_type, "' cannot be trained yet");
  lora.validate();
  resolve_peft_targets(config, lora);
  ParameterSet& params = d.weights.params;
  for (size_t i = 0; i < params.size(); ++i) params.set_shard_class(static_cast<int>(i), ShardClass::kFrozen);
  // Transformers renames Nemotron-H's backbone. to model. on load (conversion_mapping.py).
  const bool mamba = config.mamba.has_value();
  LoraBuilder b(d, lora, mamba ? "backbone." : "");
  for (LayerSlots& layer : d.weights.layers) {
    for (LinearSlots* s : layer.lora_linears()) b.linear(*s);
    if (layer.mamba.on()) {
      const std::string out_proj = strip_suffix(params.entry(layer.mamba.out_proj.weight).name, ".weight");
      MF_CHECK(!b.targets_module(out_proj), kUnsupported, "LoRA on ", out_proj,
               ": PEFT 0.21 refuses out_proj and conv1d on Mamba models (_check_lora_target_modules_mamba); "
               "adapt in_proj instead");
    }
    auto refuse_dense = [&](const SwiGluSlots& s, const char* what) {
      if (s.gate_up < 0) return;
      const std::string& gate_up = params.entry(s.gate_up).name;
      const std::string down = strip_suffix(params.entry(s.down).name, ".weight");
      // A gated MLP's fused gate_up_proj, or a non-gated one's up_proj.weight (Nemotron-H).
      const std::vector<std::string> modules =
          gate_up.ends_with(".gate_up_proj")
              ? std::vector<std::string>{strip_suffix(gate_up, ".gate_up_proj") + ".gate_proj",
                                         strip_suffix(gate_up, ".gate_up_proj") + ".up_proj", down}
              : std::vector<std::string>{strip_suffix(gate_up, ".weight"), down};
      for (const std::string& m : modules)
        if (b.targets_module(m)) refuse(m, what);
    };
    refuse_dense(layer.mlp, "dense MLP projections");
    refuse_dense(layer.moe.shared, "shared-expert projections");
    if (b.targets_parameter(layer.moe.router)) b.matrix_parameter(layer.moe.router, layer.moe.router_lora);
    SwiGluSlots& e = layer.moe.experts;
    const bool gate_up = b.targets_parameter(e.gate_up), down = b.targets_parameter(e.down);
    // PEFT wraps a module's parameters in their registration order, gate_up_proj before down_proj.
    if (gate_up) b.experts(e.gate_up, e.gate_up_lora, down ? 1 : 0);
    if (down) b.experts(e.down, e.down_lora, 0);
  }
  return b.finish(config.model_type);
}

// ---- file layout ----------------------------------------------------------------------------

namespace {

// Calls f(i, k) for each element of an expert B [E, out, r] (ours): i its index in ours, k in the
// file's [out, r * E].
template <typename F>
void for_each_expert_b(AdapterLayout layout, const Shape& ours, F f) {
  const int64_t E = ours[0], out = ours[1], r = ours[2];
  const bool gate_up_rows = layout == AdapterLayout::kExpertColumnsInterleavedGateUpRows;
  MF_CHECK(!gate_up_rows || out % 2 == 0, kInvalidArgument, "LoRA: an interleaved gate_up lora_B needs an even "
           "number of rows, got ", out);
  int64_t i = 0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < out; ++o) {
      const int64_t file_row = gate_up_rows ? (o < out / 2 ? 2 * o : 2 * (o - out / 2) + 1) : o;
      for (int64_t j = 0; j < r; ++j) f(i++, file_row * r * E + j * E + e);
    }
}

}  // namespace

Tensor adapter_to_file(const AdapterTensor& t, const Tensor& param) {
  const Tensor host = param.to(Device::kCPU).contiguous().to(DType::kF32);
  if (t.layout == AdapterLayout::kSame) return host.clone().view(t.file_shape);
  Tensor file = Tensor::empty(t.file_shape, DType::kF32);
  const float* src = host.data<float>();
  float* dst = file.data<float>();
  for_each_expert_b(t.layout, param.shape(), [&](int64_t i, int64_t k) { dst[k] = src[i]; });
  return file;
}

Tensor adapter_from_file(const AdapterTensor& t, const Tensor& file_tensor, const Shape& param_shape) {
  const Tensor host = file_tensor.to(Device::kCPU).contiguous().to(DType::kF32);
  if (t.layout == AdapterLayout::kSame) return host.view(param_shape);
  Tensor ours = Tensor::empty(param_shape, DType::kF32);
  const float* src = host.data<float>();
  float* dst = ours.data<float>();
  for_each_expert_b(t.layout, param_shape, [&](int64_t i, int64_t k) { dst[i] = src[k]; });
  return ours;
}

}  // namespace moeforge
