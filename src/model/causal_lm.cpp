#include "model/causal_lm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "arch/architecture.h"
#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/block_fp8.h"
#include "io/hf_folder.h"
#include "io/mxfp4.h"
#include "io/safetensors.h"
#include "model/aux_loss.h"
#include "model/batch_inputs.h"
#include "model/blocks/expert_parallel_dispatcher.h"
#include "model/causal_lm_impl.h"
#include "model/rope.h"
#include "ops/normal_hash.h"
#include "ops/ops.h"

namespace moeforge {

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "selective") return Recompute::kSelective;
  if (name == "full") return Recompute::kFull;
  fail(ErrorCode::kInvalidArgument, "gradient_checkpointing '", name, "' is not one of none, selective, full");
}

Tensor CausalLM::Impl::reused_routing(int64_t moe_index, int64_t tokens) const {
  if (routing_hook.reuse.empty()) return Tensor();
  const int64_t k = config.moe->num_experts_per_tok;
  MF_CHECK(moe_index < static_cast<int64_t>(routing_hook.reuse.size()), kInvalidArgument,
           "routing hook: no expert choices for MoE layer ", moe_index);
  const Tensor& index = routing_hook.reuse[moe_index];
  MF_CHECK(index.shape() == Shape({tokens, k}), kShape, "routing hook: expert choices of MoE layer ", moe_index,
           " have shape ", shape_str(index.shape()), ", expected [", tokens, ", ", k, "]");
  return index.to(options.device);
}

// ---- the whole model ------------------------------------------------------------------------

CausalLM::CausalLM(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CausalLM::CausalLM(CausalLM&&) noexcept = default;
CausalLM& CausalLM::operator=(CausalLM&&) noexcept = default;
CausalLM::~CausalLM() = default;

const ModelConfig& CausalLM::config() const { return impl_->config; }
ParameterSet& CausalLM::params() { return impl_->params(); }
const ParameterSet& CausalLM::params() const { return impl_->params(); }
const std::vector<CheckpointTensor>& CausalLM::checkpoint_tensors() const { return impl_->tensors; }
const ModelOptions& CausalLM::options() const { return impl_->options; }
RoutingHook& CausalLM::routing_hook() { return impl_->routing_hook; }
void CausalLM::set_recompute(Recompute policy, int64_t full_layers) {
  impl_->options.recompute = policy;
  impl_->options.recompute_full_layers = full_layers;
}
void CausalLM::set_activation_offload_layers(int64_t layers) { impl_->options.activation_offload_layers = layers; }

namespace {

std::string list_names(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// What the blocks do not compute yet, refused with the config key that asks for it.
void check_trainable(const ModelConfig& c, const ModelDescription& d) {
  const std::string where = c.source.string();
  // Training and generation share these blocks: the message fits both.
  MF_CHECK(d.trainable(), kUnsupported, where, ": moeforge cannot run model_type '", c.model_type,
           "' yet ('moeforge inspect' reads its config and counts its parameters; training and generation cover ",
           list_names(trainable_model_types()), ")");
  MF_CHECK(c.checkpoint_quantization.empty() || c.checkpoint_quantization == "fp8" ||
               (c.checkpoint_quantization == "mxfp4" && c.model_type == "gpt_oss"),
           kUnsupported, where, ": checkpoints quantised with '", c.checkpoint_quantization,
           "' (quantization_config.quant_method) are not supported; block FP8 (\"fp8\") is, and MXFP4 "
           "(\"mxfp4\") for gpt_oss");
  // Windows are checked against Transformers on GPT-OSS's layers only so far.
  MF_CHECK(!c.attention.sliding_window.has_value() || c.model_type == "gpt_oss", kUnsupported, where,
           ": sliding-window attention (key 'sliding_window' = ", c.attention.sliding_window.value_or(0),
           ") is not supported yet for ", c.model_type, "; set it to null to train with full causal attention");
  MF_CHECK(!c.attention.clip_qkv.has_value(), kUnsupported, where,
           ": key 'clip_qkv' (clamping q, k and v) is not supported yet; set it to null");
  MF_CHECK(!c.moe || c.moe->router_jitter_noise == 0.0, kUnsupported, where,
           ": key 'router_jitter_noise' (random scaling of the router input in training) is not supported; set it to 0");
  // Nemotron-H alone has no rotary embedding.
  MF_CHECK(c.rope.has_value() ? (c.rope->type == RopeType::kDefault || c.rope->type == RopeType::kYarn) &&
                                    c.rope->partial_rotary_factor == 1.0
                              : c.model_type == "nemotron_h",
           kUnsupported, where, ": only the default and yarn rope types are supported for ", c.model_type);
  MF_CHECK(c.model_type != "nemotron_h" || !c.mlp_bias, kUnsupported, where,
           ": key 'mlp_bias' (biases on Nemotron-H's MLPs) is not supported yet; set it to false");
  MF_CHECK(!c.mamba || !c.mamba->proj_bias, kUnsupported, where,
           ": key 'use_bias' (biases on the Mamba-2 projections) is not supported yet; set it to false");
}

std::unique_ptr<CausalLM::Impl> make_impl(const ModelConfig& config, const ModelOptions& options) {
  MF_CHECK(options.device == Device::kCUDA || options.dtype == DType::kF32, kUnsupported,
           "the CPU backend computes in float32 (asked for ", dtype_torch_name(options.dtype), ")");
  MF_CHECK(options.device == Device::kCPU || options.dtype == DType::kBF16 || config.num_moe_layers() == 0,
           kUnsupported, "the CUDA backend computes mixture-of-experts layers in bfloat16 (asked for ",
           dtype_torch_name(options.dtype), "): use --dtype bfloat16");
  ModelDescription description = describe_model(config);
  check_trainable(config, description);
  auto impl = std::make_unique<CausalLM::Impl>();
  impl->config = config;
  impl->options = options;
  if (options.lora) {
    impl->lora = options.lora;
    impl->adapters = add_lora(description, config, *impl->lora);
  }
  if (const std::shared_ptr<ProcessGroup>& group = options.expert_group; group && group->size() > 1) {
    if (config.moe) {
      auto dispatcher = std::make_unique<ExpertParallelDispatcher>(group, config.moe->num_experts);
      hold_experts(description, dispatcher->experts_begin(group->rank()), dispatcher->experts_begin(group->rank() + 1));
      impl->dispatcher = std::move(dispatcher);
    }
  }
  if (!impl->dispatcher) impl->dispatcher = std::make_unique<LocalDispatcher>();
  if (const std::shared_ptr<ProcessGroup>& data = options.data_group; data && data != options.expert_group) {
    const int ep = options.expert_group ? options.expert_group->size() : 1;
    const int ep_rank = options.expert_group ? options.expert_group->rank() : 0;
    MF_CHECK(data->size() % ep == 0 && data->rank() % ep == ep_rank, kInvalidArgument, "data group of ", data->size(),
             " ranks: its expert groups of ", ep, " must be consecutive ranks (this is rank ", data->rank(),
             ", rank ", ep_rank, " of its expert group)");
    if (data->size() > ep) impl->expert_replicas = data->split(ep_rank, data->rank());
  }
  impl->tensors = std::move(description.tensors);
  impl->weights = std::move(description.weights);
  const RotaryTable rope = config.rope ? make_rotary_table(*config.rope, config.attention.head_dim) : RotaryTable();
  const Tensor inv_freq = rope.inv_freq.defined() ? rope.inv_freq.to(options.device) : Tensor();
  for (size_t i = 0; i < impl->weights.layers.size(); ++i)
    impl->layers.emplace_back(impl->weights.layers[i], config, static_cast<int64_t>(i), inv_freq,
                              rope.attention_scaling, *impl->dispatcher);
  const WeightMap& w = impl->weights;
  const int head = w.lm_head >= 0 ? w.lm_head : w.embed;
  impl->head.emplace(w.final_norm, head, impl->loss_chunk_rows(head));
  return impl;
}

// Moves CPU-initialised parameters to the model's device and dtype (those kept in float32 as they are).
void place_parameters(CausalLM::Impl& impl, const Tensor& host_flat, const Tensor& host_fp32) {
  ParameterSet& ps = impl.params();
  ps.allocate(impl.options.device, impl.options.dtype, impl.options.dtype);
  Tensor converted = host_flat.to(impl.options.dtype);
  Tensor dst = ps.flat_params();
  dst.copy_from(converted);
  if (host_fp32.defined()) {
    Tensor dst_fp32 = ps.flat_fp32_params();
    dst_fp32.copy_from(host_fp32);
  }
}

}  // namespace

double training_flops_per_token(const CausalLM& model, int64_t seq) {
  const ModelConfig& c = model.config();
  // An expert-parallel process holds 1/EP of the routed experts but computes, on average, as many
  // expert rows as its own tokens need: the experts count whole.
  const double ep = model.expert_group() ? static_cast<double>(model.expert_group()->size()) : 1.0;
  double active = 0;
  for (const auto& e : model.params().entries()) {
    if (e.group == ParamGroup::kEmbedding || e.group == ParamGroup::kNorm) continue;
    double n = static_cast<double>(e.numel());
    if (e.group == ParamGroup::kExperts) n *= ep * static_cast<double>(c.moe->num_experts_per_tok) / c.moe->num_experts;
    active += n;
  }
  if (c.tie_word_embeddings) active += static_cast<double>(c.vocab_size * c.hidden_size);
  // Scores (q.k) and outputs (p.v), 2 FLOPs a multiply-add, 3x for forward and backward, halved by the mask.
  const double qk = c.mla ? static_cast<double>(c.mla->qk_head_dim()) : static_cast<double>(c.attention.head_dim);
  const double v = c.mla ? static_cast<double>(c.mla->v_head_dim) : static_cast<double>(c.attention.head_dim);
  int64_t attention_layers = 0, mamba_layers = 0;
  for (const LayerSpec& l : c.layers) {
    attention_layers += l.mixer == LayerSpec::Mixer::kAttention;
    mamba_layers += l.mixer == LayerSpec::Mixer::kMamba;
  }
  const double scan = c.mamba ? 4.0 * static_cast<double>(c.mamba->intermediate_size() * c.mamba->ssm_state_size) : 0.0;
  return 6 * active + 3.0 * attention_layers * c.attention.num_heads * seq * (qk + v) + 3.0 * mamba_layers * scan;
}

DType default_save_dtype(const ModelConfig& config) {
  return config.dtype.value_or(config.checkpoint_quantization == "mxfp4" ? DType::kBF16 : DType::kF32);
}

namespace {

using ops::splitmix64;

// uniform(-bound, bound) from the counter-based hash of ops::normal_at (ops/normal_hash.h).
float uniform_at(uint64_t seed, uint64_t i, uint64_t j, float bound) {
  const uint64_t a = splitmix64(seed ^ splitmix64(i * 0x100000001b3ull + (j << 1) + 1));
  return static_cast<float>((static_cast<double>(a >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound);
}

// PEFT's initialisation of a LoRA pair (init_lora_weights=True): A as nn.Linear's default
// (kaiming_uniform with a = sqrt(5): uniform in +-1/sqrt(in_features)), B zero, so the adapted model
// starts as the base model. Without init_lora_weights B is drawn like A, as PEFT leaves nn.Linear's
// default on both.
void initialize_adapters(CausalLM::Impl& m) {
  ParameterSet& ps = m.params();
  for (const AdapterTensor& t : m.adapters) {
    const bool is_b = t.key.ends_with("lora_B.weight");
    const Tensor& param = ps.param(t.param);
    Tensor host = Tensor::zeros(param.shape(), DType::kF32);
    // With expert parallelism a routed expert's adapter draws its experts' values as one process would.
    const ParamEntry& e = ps.entry(t.param);
    const int64_t first = e.whole_offset();
    if (!is_b || !m.lora->init_lora_weights) {
      const float bound = 1.0f / std::sqrt(static_cast<float>(t.file_shape[1]));
      float* v = host.data<float>();
      // The expert adapters of a large model are hundreds of millions of values: drawn in parallel
      // (each value depends on its index alone).
      const int64_t n = host.numel();
      const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 64);
      const int64_t chunk = std::max<int64_t>(1 << 20, (n + threads - 1) / threads);
      std::vector<std::thread> pool;
      for (int64_t begin = 0; begin < n; begin += chunk)
        pool.emplace_back([&, begin] {
          for (int64_t j = begin; j < std::min(n, begin + chunk); ++j)
            v[j] = uniform_at(m.options.adapter_seed, static_cast<uint64_t>(t.param), static_cast<uint64_t>(first + j),
                              bound);
        });
      for (auto& th : pool) th.join();
    }
    Tensor dst = param;
    dst.copy_from(host.to(param.dtype()).to(param.device()));
  }
}

// LoRA's dropout masks of a training pass: a function of the adapter seed and the batch's tokens,
// so a resumed run draws the masks the uninterrupted one did, with no generator state to save.
uint64_t dropout_seed(uint64_t adapter_seed, const Batch& batch) {
  const Tensor ids = batch.input_ids.to(Device::kCPU).contiguous().to(DType::kI64);
  uint64_t h = splitmix64(adapter_seed ^ 0x6c6f7261ull);
  for (int64_t i = 0; i < ids.numel(); ++i) h = splitmix64(h ^ static_cast<uint64_t>(ids.data<int64_t>()[i]));
  return h | 1;  // never 0, which means no dropout
}

}  // namespace

CausalLM CausalLM::from_config(const ModelConfig& config, const ModelOptions& options, uint64_t seed) {
  auto impl = make_impl(config, options);
  const float std_dev = static_cast<float>(config.raw.value("initializer_range", 0.02));
  // Norms start at one; buffers at zero, as Transformers initialises DeepSeek-V3's
  // e_score_correction_bias; every other parameter j-th element ops::normal_at(seed, index, j).
  std::vector<bool> is_buffer(impl->params().size(), false);
  for (const CheckpointTensor& t : impl->tensors)
    if (t.buffer && t.in_model()) is_buffer[t.slice.param] = true;
  if (options.device == Device::kCUDA) {
    // Drawn where they live: on the host, Qwen3-30B-A3B's 30.5B draws and their copy took 367 s
    // on the H200 machine's 16 cores.
    ParameterSet& ps = impl->params();
    ps.allocate(options.device, options.dtype, options.dtype);
    for (size_t i = 0; i < ps.size(); ++i) {
      Tensor p = ps.param(static_cast<int>(i));
      if (ps.entry(static_cast<int>(i)).group == ParamGroup::kNorm) {
        Tensor ones = Tensor::empty(p.shape(), DType::kF32);
        for (int64_t j = 0; j < ones.numel(); ++j) ones.data<float>()[j] = 1.0f;
        p.copy_from(ones.to(p.dtype()));
      } else if (is_buffer[i]) {
        p.fill_zero();
      } else {
        ops::init_normal(p, seed, i, std_dev);
      }
    }
    initialize_adapters(*impl);
    return CausalLM(std::move(impl));
  }
  // On the host in the model's dtype, in parallel, then placed.
  const DType host_dtype = options.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  ParameterSet host;
  for (const auto& e : impl->params().entries()) {
    const int i = host.add(e.name, e.shape, e.group, e.trainer_weight_decay, e.shard_class);
    if (e.keep_fp32) host.keep_in_fp32(i);
  }
  host.allocate(Device::kCPU, host_dtype, host_dtype);
  constexpr int64_t kChunk = 1 << 20;
  struct Work { int param; int64_t begin, end; };
  std::vector<Work> work;
  for (size_t i = 0; i < host.size(); ++i)
    for (int64_t b = 0; b < host.entry(static_cast<int>(i)).numel(); b += kChunk)
      work.push_back({static_cast<int>(i), b, std::min(b + kChunk, host.entry(static_cast<int>(i)).numel())});
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    for (size_t w = next++; w < work.size(); w = next++) {
      const Work& job = work[w];
      const ParamEntry& entry = host.entry(job.param);
      const bool is_norm = entry.group == ParamGroup::kNorm;
      // An expert-parallel rank draws its experts' values as a single process would.
      const int64_t first = entry.whole_offset();
      const Tensor& p = host.param(job.param);
      const bool bf16 = p.dtype() == DType::kBF16;
      for (int64_t j = job.begin; j < job.end; ++j) {
        const float v = is_norm                ? 1.0f
                        : is_buffer[job.param] ? 0.0f
                                               : ops::normal_at(seed, static_cast<uint64_t>(job.param),
                                                                static_cast<uint64_t>(first + j), std_dev);
        if (bf16)
          p.data<uint16_t>()[j] = float_to_bf16(v);
        else
          p.data<float>()[j] = v;
      }
    }
  };
  const unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 64u);
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  place_parameters(*impl, host.flat_params(), host.flat_fp32_params());
  initialize_adapters(*impl);
  return CausalLM(std::move(impl));
}

void check_model_supported(const ModelConfig& config) { check_trainable(config, describe_model(config)); }

CausalLM CausalLM::from_pretrained(const std::filesystem::path& folder, const ModelOptions& options) {
  ModelConfig config = load_model_config(folder);
  auto impl = make_impl(config, options);
  impl->params().allocate(options.device, options.dtype, options.dtype);
  initialize_adapters(*impl);
  CausalLM model(std::move(impl));
  model.load_weights(folder);
  return model;
}

namespace {

// The name of a block-FP8 weight's scales: `<weight name>_scale_inv`.
constexpr std::string_view kFp8ScaleSuffix = "_scale_inv";
// An MXFP4 weight (GPT-OSS's release) is stored as `<weight name>_blocks` and `<weight name>_scales`.
constexpr std::string_view kMxfp4BlocksSuffix = "_blocks";
constexpr std::string_view kMxfp4ScalesSuffix = "_scales";

// The tensor of the checkpoint that holds model tensor `name`: itself, or its MXFP4 blocks.
std::string stored_name(const CheckpointReader& reader, const std::string& name, const ModelConfig& config) {
  const std::string blocks = name + std::string(kMxfp4BlocksSuffix);
  if (config.checkpoint_quantization == "mxfp4" && !reader.contains(name) && reader.contains(blocks)) return blocks;
  return name;
}

// One checkpoint tensor into its slice of the parameters. Converted to the model's dtype on the
// device for CUDA (from float32 or bfloat16; other float types on the host first), on the host for
// the CPU backend: only this one tensor is ever staged in host memory.
void load_tensor(const Tensor& src, Tensor dst) {
  if (src.dtype() == dst.dtype()) return dst.copy_from(src);
  const bool cast_on_device = dst.device() != Device::kCPU &&
                              (src.dtype() == DType::kF32 || src.dtype() == DType::kBF16);
  if (cast_on_device) return dst.copy_from(ops::cast(src.to(dst.device()), dst.dtype()));
  const Tensor host = src.to(DType::kF32).to(dst.dtype());
  dst.copy_from(host);
}

// A checkpoint tensor as dense floats: block-FP8 weights (DeepSeek's releases) and MXFP4 ones
// (GPT-OSS's) are dequantised on the host, one tensor at a time; other float dtypes are returned
// as stored.
Tensor read_dense(CheckpointReader& reader, const std::string& name, const ModelConfig& config) {
  if (const std::string blocks = stored_name(reader, name, config); blocks != name) {
    const std::string scales = name + std::string(kMxfp4ScalesSuffix);
    MF_CHECK(reader.contains(scales), kFormat, reader.shard_of(blocks).string(), ": tensor ", blocks,
             " has no ", scales, " (an MXFP4 weight needs both)");
    Tensor dense = dequantize_mxfp4(reader.get(blocks), reader.get(scales), name);
    reader.release(blocks);
    reader.release(scales);
    return dense;
  }
  const Tensor src = reader.get(name);
  const std::string shard = reader.shard_of(name).string();
  MF_CHECK(dtype_is_floating(src.dtype()), kFormat, shard, ": tensor ", name, " has dtype ",
           dtype_safetensors_name(src.dtype()), ", expected a float type");
  const std::string scale = name + std::string(kFp8ScaleSuffix);
  const bool has_scale = config.checkpoint_quantization == "fp8" && reader.contains(scale);
  if (src.dtype() != DType::kF8E4M3) {
    MF_CHECK(!has_scale, kFormat, shard, ": tensor ", name, " has scales (", scale, ") but is stored as ",
             dtype_safetensors_name(src.dtype()), ", not F8_E4M3");
    return src;
  }
  MF_CHECK(has_scale, kFormat, shard, ": tensor ", name, " is stored in FP8 without its ", scale,
           " (block-FP8 weights need their scales and quantization_config.quant_method \"fp8\")");
  Tensor dense = dequantize_block_fp8(src, reader.get(scale), config.fp8_block[0], config.fp8_block[1], name);
  reader.release(scale);
  return dense;
}

}  // namespace

void CausalLM::load_weights(const std::filesystem::path& folder) {
  Impl& m = *impl_;
  const ModelConfig& config = m.config;
  CheckpointReader reader(folder);
  // Multi-token-prediction tensors are listed but not part of the model: a checkpoint may hold
  // them or not, and they are not read (as Transformers ignores DeepSeek-V3's).
  std::set<std::string> expected;
  for (const auto& b : m.tensors) expected.insert(b.name);
  std::vector<std::string> missing, unexpected;
  for (const auto& b : m.tensors)
    if (b.held() && !reader.contains(stored_name(reader, b.name, config)))
      missing.push_back(b.name);
  // Whether `name` ends in `suffix` after an expected tensor's name (a quantised weight's parts).
  auto part_of_expected = [&](const std::string& name, std::string_view suffix) {
    return name.ends_with(suffix) && expected.count(name.substr(0, name.size() - suffix.size()));
  };
  for (const auto& name : reader.tensor_names()) {
    // Tied checkpoints sometimes carry lm_head.weight as well; Transformers ignores it, so do we.
    if (expected.count(name) || (config.tie_word_embeddings && name == "lm_head.weight")) continue;
    if (config.checkpoint_quantization == "fp8" && part_of_expected(name, kFp8ScaleSuffix))
      continue;  // a block-FP8 weight's scales, read with it
    if (config.checkpoint_quantization == "mxfp4" &&
        (part_of_expected(name, kMxfp4BlocksSuffix) || part_of_expected(name, kMxfp4ScalesSuffix)))
      continue;  // an MXFP4 weight's parts
    unexpected.push_back(name);
  }
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 8; ++i) s += (i ? ", " : "") + names[i];
    if (names.size() > 8) s += str_cat(", ... (", names.size(), " in all)");
    return s;
  };
  MF_CHECK(missing.empty(), kFormat, folder.string(), ": the checkpoint lacks tensors that ",
           config.model_type, " with this config.json needs: ", list(missing));
  MF_CHECK(unexpected.empty(), kFormat, folder.string(), ": the checkpoint has tensors that ",
           config.model_type, " with this config.json does not use: ", list(unexpected));

  // Shard by shard, so each file's pages are read in order; a tensor's pages are dropped from this
  // process once copied, so resident memory stays at about one tensor, not the checkpoint.
  std::vector<CheckpointTensor*> order;
  for (auto& b : m.tensors)
    if (b.held()) order.push_back(&b);
  std::stable_sort(order.begin(), order.end(), [&](const CheckpointTensor* x, const CheckpointTensor* y) {
    return reader.shard_of(stored_name(reader, x->name, config)) < reader.shard_of(stored_name(reader, y->name, config));
  });
  for (CheckpointTensor* b : order) {
    const std::string stored = stored_name(reader, b->name, config);
    const Tensor src = read_dense(reader, b->name, config);
    b->keep_f32 = src.dtype() == DType::kF32 && config.dtype.value_or(DType::kF32) != DType::kF32;
    MF_CHECK(src.shape() == b->shape, kShape, reader.shard_of(stored).string(), ": tensor ", b->name,
             " has shape ", shape_str(src.shape()), ", config.json implies ", shape_str(b->shape));
    const ParamSlice& s = b->slice;
    const Tensor held = s.experts_end >= 0 ? src.slice(0, s.experts_begin, s.experts_end) : src;
    load_tensor(to_slice_layout(s, held), slice_view(s, m.params().param(s.param)));
    reader.release(stored);
  }
}

StepResult CausalLM::forward_backward(const Batch& batch, bool backward, bool keep_logits,
                                      double loss_denominator) {
  Impl& m = *impl_;
  const ModelConfig& c = m.config;
  const Device dev = m.options.device;
  const Params p{m.params()};
  const BatchInputs in = prepare_batch(batch, c, dev, backward);
  BatchContext ctx;
  ctx.batch = in.batch;
  ctx.seq = in.seq;
  ctx.positions = in.positions;
  ctx.mask = in.mask;
  ctx.routed = in.routed;
  ctx.norm_eps = static_cast<float>(c.norm_eps);
  // Each layer's policy is set in ctx before its forward and its backward.
  auto offloaded = [&](size_t l) { return backward && static_cast<int64_t>(l) < m.options.activation_offload_layers; };
  auto recompute_policy = [&](size_t l) {
    if (!backward) return Recompute::kNone;
    return static_cast<int64_t>(l) < m.options.recompute_full_layers ? Recompute::kFull : m.options.recompute;
  };
  if (backward && m.lora && m.lora->lora_dropout > 0) ctx.lora_dropout_seed = dropout_seed(m.options.adapter_seed, batch);
  const int64_t num_moe = c.moe ? c.num_moe_layers() : 0;
  std::optional<LoadBalancingLoss> aux;
  if (num_moe > 0 && c.moe->output_router_logits) aux.emplace(*c.moe, num_moe, in, dev);

  // ---- forward
  std::vector<LayerState> states(m.layers.size());
  Tensor x = ops::embedding_fwd(p.w(m.weights.embed), in.ids);
  for (size_t l = 0, moe_index = 0; l < m.layers.size(); ++l) {
    const DecoderLayer& layer = m.layers[l];
    const Tensor reuse = layer.is_moe() ? m.reused_routing(static_cast<int64_t>(moe_index++), in.routed.count()) : Tensor();
    ctx.recompute = recompute_policy(l);
    x = layer.forward(p, ctx, x, states[l], reuse);
    if (aux && layer.is_moe()) aux->add_layer(states[l].moe.router);
    layer.drop_recomputable(ctx, states[l]);
    if (offloaded(l)) m.offload.offload(l, states[l]);
  }

  // With expert parallelism: the whole batch's label count, aux-loss statistics and loss (one
  // small all-reduce each).
  ProcessGroup* group = m.group();
  int64_t label_tokens = in.num_label_tokens;
  if (group) label_tokens = sum_over_ranks(*group, label_tokens);
  // Over every rank's rows: one rank may hold none (a small global batch's empty rows).
  MF_CHECK(label_tokens > 0 || !backward, kInvalidArgument,
           "every label of the batch is -100 (after shifting left by one): nothing to train on");
  if (aux && group) aux->sum_over_ranks(*group);
  StepResult result;
  result.num_label_tokens = label_tokens;
  const double denom = loss_denominator > 0 ? loss_denominator : static_cast<double>(label_tokens);
  // Gradient sharding: each group's gradients get memory just before the pass writes them.
  GradientSink* sink = backward ? m.gradient_sink : nullptr;
  auto open_group = [&](size_t g) {
    if (sink) for (FlatSpan s : m.gradient_groups[g]) sink->open(s);
  };
  auto close_group = [&](size_t g) {
    if (sink) for (FlatSpan s : m.gradient_groups[g]) sink->close(s);
  };
  const bool tied = m.weights.lm_head < 0;
  open_group(Impl::kHeadGroup);
  if (tied) open_group(Impl::kEmbedGroup);
  HeadOutput head = m.head->run(p, x, in.targets, ctx.norm_eps, static_cast<float>(1.0 / denom), backward,
                                keep_logits);
  close_group(Impl::kHeadGroup);
  const double loss_sum = group ? sum_over_ranks(*group, head.loss_sum) : head.loss_sum;
  result.lm_loss = label_tokens > 0 ? loss_sum / denom : 0.0;
  result.loss = result.lm_loss;
  if (keep_logits) result.logits = head.logits.view({in.batch, in.seq, c.vocab_size});

  if (m.routing_hook.record)
    for (size_t l = 0; l < m.layers.size(); ++l)
      if (m.layers[l].is_moe()) result.routing.push_back(states[l].moe.router.topk.index.to(Device::kCPU));
  // The tokens routed to each expert per MoE layer (the load-balance report and router bias
  // updates): padding is routed only where a label trains on it, so with such padding, and with
  // expert parallelism, counted from the choices of the kept rows (summed over the ranks); else
  // read back in one copy from the device-side dispatch offsets.
  if (num_moe > 0 && (group || in.row_valid.defined())) {
    const int64_t E = c.moe->num_experts;
    Tensor loads = Tensor::zeros({num_moe, E}, DType::kF32, dev, "expert loads");
    int64_t row = 0;
    for (size_t l = 0; l < m.layers.size(); ++l) {
      if (!m.layers[l].is_moe()) continue;
      Tensor counts = loads.select(0, row++);
      ops::expert_counts(states[l].moe.router.topk.index, in.row_valid, counts);
    }
    // Exact in fp32 while a count stays below 2^24 (ops::expert_counts).
    Tensor host = loads.to(Device::kCPU).clone();
    if (group) group->all_reduce_sum(host);
    for (int64_t r = 0; r < num_moe; ++r) {
      const float* load = host.data<float>() + r * E;
      result.expert_load.emplace_back(load, load + E);
    }
  } else if (num_moe > 0) {
    const int64_t E = c.moe->num_experts;
    Tensor all_offsets = Tensor::empty({num_moe, E + 1}, DType::kI64, dev, "expert offsets");
    int64_t row = 0;
    for (size_t l = 0; l < m.layers.size(); ++l) {
      if (!m.layers[l].is_moe()) continue;
      Tensor dst = all_offsets.select(0, row++);
      dst.copy_from(states[l].moe.plan.expert_offsets());
    }
    const Tensor host_offsets = all_offsets.to(Device::kCPU);
    for (int64_t r = 0; r < num_moe; ++r) {
      const int64_t* off = host_offsets.data<int64_t>() + r * (E + 1);
      std::vector<int64_t> load(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) load[e] = off[e + 1] - off[e];
      result.expert_load.push_back(std::move(load));
    }
  }
  Tensor aux_dprobs;
  if (aux) {
    result.aux_loss = aux->value();
    result.loss += c.moe->router_aux_loss_coef * result.aux_loss;
    if (backward) aux_dprobs = aux->probs_grad();
  }
  if (!backward) return result;

  // ---- backward (the head's was done with the loss)
  Tensor dx = head.dx;
  // Offloaded activations come back ActivationOffload::kPrefetchLayers layers ahead of their use.
  const size_t ahead = ActivationOffload::kPrefetchLayers;
  for (size_t l = m.layers.size() - std::min(m.layers.size(), ahead); l < m.layers.size(); ++l)
    if (offloaded(l)) m.offload.prefetch(l, states[l]);
  for (size_t l = m.layers.size(); l-- > 0;) {
    const DecoderLayer& layer = m.layers[l];
    if (l >= ahead && offloaded(l - ahead)) m.offload.prefetch(l - ahead, states[l - ahead]);
    if (offloaded(l)) m.offload.wait(l);
    ctx.recompute = recompute_policy(l);
    layer.restore_recomputed(p, ctx, states[l]);
    open_group(Impl::kFirstLayerGroup + l);
    dx = layer.backward(p, ctx, dx, states[l], layer.is_moe() ? aux_dprobs : Tensor());
    close_group(Impl::kFirstLayerGroup + l);
  }
  // Where Transformers builds nn.Embedding(padding_idx=pad_token_id), the padding row learns nothing
  // from the lookup (a tied head still trains it).
  const bool skips_pad =
      c.embedding_skips_pad_row && c.pad_token_id && *c.pad_token_id >= 0 && *c.pad_token_id < c.vocab_size;
  const int64_t padding_idx = skips_pad ? *c.pad_token_id : -1;
  if (!tied) open_group(Impl::kEmbedGroup);
  if (p.trainable(m.weights.embed)) ops::embedding_bwd(dx, in.ids, p.g(m.weights.embed), padding_idx);
  close_group(Impl::kEmbedGroup);
  return result;
}

void CausalLM::set_gradient_sink(GradientSink* sink) {
  Impl& m = *impl_;
  m.gradient_sink = nullptr;
  m.gradient_groups.clear();
  if (sink == nullptr) return;
  const ParameterSet& ps = m.params();
  std::vector<std::vector<int>> members(Impl::kFirstLayerGroup + m.weights.layers.size());
  members[Impl::kEmbedGroup] = {m.weights.embed};
  members[Impl::kHeadGroup] = {m.weights.final_norm, m.weights.lm_head};
  for (size_t l = 0; l < m.weights.layers.size(); ++l)
    members[Impl::kFirstLayerGroup + l] = m.weights.layers[l].parameters();
  auto group_name = [](size_t g) {
    return g == Impl::kEmbedGroup ? std::string("the embedding")
           : g == Impl::kHeadGroup ? std::string("the head")
                                   : str_cat("layer ", g - Impl::kFirstLayerGroup);
  };
  std::vector<int> owner(ps.size(), -1);
  for (size_t g = 0; g < members.size(); ++g)
    for (int i : members[g]) {
      if (i < 0 || !ps.trainable(i)) continue;
      MF_CHECK(owner[i] == -1, kUnsupported, "gradient sharding: parameter ", ps.entry(i).name, " is used by ",
               group_name(static_cast<size_t>(owner[i])), " and by ", group_name(g));
      owner[i] = static_cast<int>(g);
    }
  // Each group's span in each class, which must hold no other group's parameter.
  std::vector<std::pair<FlatSpan, size_t>> spans;
  m.gradient_groups.assign(members.size(), {});
  for (ShardClass c : {ShardClass::kReplicated, ShardClass::kExpert})
    for (size_t g = 0; g < members.size(); ++g) {
      FlatSpan span{INT64_MAX, INT64_MIN};
      for (int i : members[g])
        if (i >= 0 && owner[i] == static_cast<int>(g) && ps.entry(i).shard_class == c) {
          span.begin = std::min(span.begin, ps.entry(i).offset);
          span.end = std::max(span.end, ps.entry(i).offset + ps.entry(i).padded_numel());
        }
      if (span.begin >= span.end) continue;
      m.gradient_groups[g].push_back(span);
      spans.emplace_back(span, g);
    }
  for (size_t i = 0; i < ps.size(); ++i)
    MF_CHECK(!ps.trainable(static_cast<int>(i)) || owner[i] >= 0, kUnsupported, "gradient sharding: parameter ",
             ps.entry(static_cast<int>(i)).name, " belongs to no layer, nor to the embedding or the head");
  std::sort(spans.begin(), spans.end(), [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
  for (size_t i = 1; i < spans.size(); ++i)
    MF_CHECK(spans[i - 1].first.end <= spans[i].first.begin, kUnsupported, "gradient sharding: the parameters of ",
             group_name(spans[i - 1].second), " and of ", group_name(spans[i].second),
             " are interleaved in the parameter buffer");
  m.gradient_sink = sink;
}

GradientSink* CausalLM::gradient_sink() const { return impl_->gradient_sink; }

void CausalLM::sum_replicated_grads() {
  ProcessGroup* group = impl_->group();
  if (group == nullptr) return;
  auto sum_span = [&](ShardClass c, ProcessGroup& over) {
    const FlatSpan span = params().span(c);
    MF_CHECK(!params().streams_grads(c), kInvalidArgument, "sum_replicated_grads: the ", shard_class_name(c),
             " gradients are sharded (a sharded optimizer sums them)");
    Tensor grads = params().stored_grads(span);
    if (span.size() > 0) over.all_reduce_sum(grads);
  };
  sum_span(ShardClass::kReplicated, *group);
  if (impl_->expert_replicas) sum_span(ShardClass::kExpert, *impl_->expert_replicas);
}

const std::shared_ptr<ProcessGroup>& CausalLM::expert_group() const { return impl_->options.expert_group; }
const std::shared_ptr<ProcessGroup>& CausalLM::data_group() const {
  return impl_->options.data_group ? impl_->options.data_group : impl_->options.expert_group;
}
const std::shared_ptr<ProcessGroup>& CausalLM::expert_replicas() const { return impl_->expert_replicas; }

bool CausalLM::has_router_biases() const {
  const auto& layers = impl_->weights.layers;
  return std::any_of(layers.begin(), layers.end(), [](const LayerSlots& l) { return l.moe.score_bias >= 0; });
}

void CausalLM::update_router_biases(const std::vector<std::vector<int64_t>>& expert_load, double rate) {
  Impl& m = *impl_;
  MF_CHECK(has_router_biases(), kUnsupported, "router bias updates: model_type '", m.config.model_type,
           "' routes without a score-correction bias (e_score_correction_bias)");
  const int64_t experts = m.config.moe->num_experts;
  MF_CHECK(static_cast<int64_t>(expert_load.size()) == m.config.num_moe_layers(), kInvalidArgument,
           "router bias updates: loads of ", expert_load.size(), " MoE layers, the model has ", m.config.num_moe_layers());
  // One upload of the loads; each router's float32 bias then moves on the device (no host sync).
  Tensor host = Tensor::empty({m.config.num_moe_layers(), experts}, DType::kF32);
  for (size_t l = 0; l < expert_load.size(); ++l) {
    MF_CHECK(static_cast<int64_t>(expert_load[l].size()) == experts, kInvalidArgument, "router bias updates: ",
             expert_load[l].size(), " expert loads in MoE layer ", l, ", the model has ", experts, " experts");
    for (int64_t e = 0; e < experts; ++e) host.data<float>()[l * experts + e] = static_cast<float>(expert_load[l][e]);
  }
  const Tensor loads = host.to(m.options.device);
  int64_t moe_index = 0;
  for (const LayerSlots& layer : m.weights.layers) {
    if (!layer.is_moe()) continue;
    Tensor bias = m.params().param(layer.moe.score_bias);
    ops::router_bias_update(bias, loads.select(0, moe_index++), static_cast<float>(rate));
  }
}

namespace {

// save_pretrained's files beside the weights: the stale shards of an earlier save removed, config.json
// and the tokenizer and generation files of the source folder.
void save_folder_files(const ModelConfig& config, const std::filesystem::path& folder,
                       const std::vector<std::filesystem::path>& files, DType dtype,
                       const std::filesystem::path& source_folder, bool mxfp4) {
  remove_stale_checkpoint_files(folder, files);

  ModelConfig saved = config;
  // Dense weights (dequantised) are not what a quantised source's quantization_config describes;
  // MXFP4 ones are OpenAI's release layout, whose config says which modules stay dense.
  saved.raw.erase("quantization_config");
  if (mxfp4)
    saved.raw["quantization_config"] = {
        {"quant_method", "mxfp4"},
        {"modules_to_not_convert",
         {"model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"}}};
  // The config keeps every original key; only the dtype it declares follows what was written.
  for (const char* key : {"torch_dtype", "dtype"})
    if (saved.raw.contains(key)) saved.raw[key] = std::string(dtype_torch_name(dtype));
  if (!saved.raw.contains("torch_dtype") && !saved.raw.contains("dtype"))
    saved.raw["torch_dtype"] = std::string(dtype_torch_name(dtype));
  atomic_write_file(folder / "config.json", model_config_json_text(saved));

  if (source_folder.empty() || std::filesystem::equivalent(source_folder, folder)) return;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "chat_template.jinja", "generation_config.json", "vocab.json",
                           "merges.txt", "added_tokens.json"}) {
    auto src = source_folder / name;
    if (std::filesystem::exists(src))
      std::filesystem::copy_file(src, folder / name,
                                 std::filesystem::copy_options::overwrite_existing);
  }
}

}  // namespace

CausalLM::SavedWeights CausalLM::saved_weights_named(const std::string& quantization) {
  if (quantization == "none") return SavedWeights::kDense;
  MF_CHECK(quantization == "mxfp4", kInvalidArgument, "save_quantization '", quantization,
           "': expected none or mxfp4 (GPT-OSS's release layout)");
  return SavedWeights::kMxfp4AsReleased;
}

void CausalLM::check_saved_weights(SavedWeights weights) const {
  const Impl& m = *impl_;
  MF_CHECK(weights == SavedWeights::kDense ||
               std::any_of(m.tensors.begin(), m.tensors.end(), [](const CheckpointTensor& t) { return t.mxfp4; }),
           kUnsupported, "save_quantization mxfp4: ", m.config.model_type,
           " has no release in MXFP4 to save as (gpt_oss has)");
}

void CausalLM::save_pretrained(const std::filesystem::path& folder, DType dtype,
                               const std::filesystem::path& source_folder,
                               uint64_t max_shard_bytes, SavedWeights weights) const {
  const Impl& m = *impl_;
  const bool mxfp4 = weights == SavedWeights::kMxfp4AsReleased;
  check_saved_weights(weights);
  // With expert parallelism each rank of the first expert group writes its experts and rank 0
  // everything else, into shards of their own (write_checkpoint_part): no rank gathers the model.
  // The first expert group's ranks are the data group's first ones (ModelOptions::data_group).
  ProcessGroup* group = m.group();
  ProcessGroup* experts = m.options.expert_group && m.options.expert_group->size() > 1 ? m.options.expert_group.get() : nullptr;
  const int rank = group ? group->rank() : 0, ranks = group ? group->size() : 1;
  const int ep = experts ? experts->size() : 1;
  auto writer_of = [&](const CheckpointTensor& b) -> int {
    if (!experts || b.expert < 0 || !m.params().entry(b.slice.param).indexes_experts()) return 0;
    return split_owner(m.config.moe->num_experts, ep, b.expert);
  };
  std::vector<std::vector<TensorSize>> parts(static_cast<size_t>(ranks));
  std::vector<NamedTensor> tensors;
  tensors.reserve(m.tensors.size());
  for (const auto& b : m.tensors) {
    if (!b.in_model()) continue;
    const int writer = writer_of(b);
    // Kept in float32 as Transformers keeps it (a parameter kept so) or as the source checkpoint
    // stored it (CheckpointTensor::keep_f32).
    const DType saved = b.keep_f32 || m.params().entry(b.slice.param).keep_fp32 ? DType::kF32 : dtype;
    std::vector<TensorSize>& part = parts[static_cast<size_t>(writer)];
    if (mxfp4 && b.mxfp4) {  // two byte tensors, as quantize_mxfp4 below makes them
      const Mxfp4Shapes q = mxfp4_shapes(b.shape, b.name);
      for (const auto& [suffix, shape] : {std::pair{kMxfp4BlocksSuffix, q.blocks}, std::pair{kMxfp4ScalesSuffix, q.scales}})
        part.push_back({b.name + std::string(suffix), static_cast<uint64_t>(shape_numel(shape)),
                        static_cast<uint64_t>(shape_numel(shape))});
    } else {
      part.push_back({b.name, static_cast<uint64_t>(b.numel()) * dtype_size(saved), static_cast<uint64_t>(b.numel())});
    }
    // A tensor of every expert (GPT-OSS) is joined from its expert group's parts, one tensor at a time.
    const bool split = b.slice.experts_end >= 0 && experts;
    if (writer != rank && !split) continue;
    Tensor t = read_slice(b.slice, m.params().param(b.slice.param));
    if (split) {
      std::vector<int64_t> rows;
      for (int r = 0; r < ep; ++r)
        rows.push_back(split_begin(m.config.moe->num_experts, ep, r + 1) - split_begin(m.config.moe->num_experts, ep, r));
      t = experts->all_gather_rows(t, rows);
      if (writer != rank) continue;
    }
    if (mxfp4 && b.mxfp4) {
      Mxfp4Weight q = quantize_mxfp4(t, b.name);
      tensors.emplace_back(b.name + std::string(kMxfp4BlocksSuffix), std::move(q.blocks));
      tensors.emplace_back(b.name + std::string(kMxfp4ScalesSuffix), std::move(q.scales));
      continue;
    }
    tensors.emplace_back(b.name, t.dtype() == saved ? t.clone() : t.to(saved));
  }
  // Multi-token-prediction layers are not part of the model: those the source folder holds are
  // carried over as they are there (dense, in the saved dtype), so the folder stays complete for
  // the engines that run them.
  const bool source_has_weights = !source_folder.empty() &&
                                  (std::filesystem::exists(source_folder / kSafetensorsSingleFile) ||
                                   std::filesystem::exists(source_folder / kSafetensorsIndexFile));
  if (m.config.num_mtp_layers > 0 && source_has_weights) {
    CheckpointReader source(source_folder);
    for (const auto& b : m.tensors) {
      if (b.in_model() || !source.contains(b.name)) continue;
      const DType saved = b.buffer ? DType::kF32 : dtype;  // buffers stay float32, as in the model
      parts[0].push_back({b.name, static_cast<uint64_t>(b.numel()) * dtype_size(saved), static_cast<uint64_t>(b.numel())});
      if (rank != 0) continue;
      const Tensor t = read_dense(source, b.name, m.config);  // may view the source's mapped file
      tensors.emplace_back(b.name, t.dtype() == saved ? t.clone() : t.to(DType::kF32).to(saved));
      source.release(b.name);
    }
  }
  if (!group) parts[0] = tensor_sizes(tensors);  // as written (an MXFP4 weight is two tensors)
  std::filesystem::create_directories(folder);
  const std::vector<std::filesystem::path> files =
      write_checkpoint_part(folder, parts, rank, tensors, max_shard_bytes);
  // The rest is rank 0's, once every rank's shards are in place; every rank returns with the folder complete.
  if (group) group->barrier();
  if (rank == 0) save_folder_files(m.config, folder, files, dtype, source_folder, mxfp4);
  if (group) group->barrier();
}


}  // namespace moeforge
