#include "model/causal_lm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "arch/checkpoint_tensors.h"
#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/hf_folder.h"
#include "io/safetensors.h"
#include "model/rope.h"
#include "ops/ops.h"

namespace moeforge {

Tensor CheckpointBinding::view_of(const Tensor& whole) const {
  Tensor v = expert >= 0 ? whole.select(0, expert) : whole;
  return row_end >= 0 ? v.slice(0, row_begin, row_end) : v;
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "selective") return Recompute::kSelective;
  if (name == "full") return Recompute::kFull;
  fail(ErrorCode::kInvalidArgument, "gradient_checkpointing '", name, "' is not one of none, selective, full");
}

bool causal_lm_supports(const std::string& model_type) {
  return model_type == "qwen3_moe" || model_type == "qwen3";
}

namespace {

struct LayerParams {
  int input_norm = -1, q = -1, k = -1, v = -1, o = -1, q_norm = -1, k_norm = -1, post_norm = -1;
  bool moe = false;
  int router = -1, gate_up = -1, down = -1;  // gate_up/down: stacked experts, or the dense MLP
};

// Activations a layer keeps from forward for backward.
struct LayerState {
  Tensor x_in, n1, rstd1, q_raw, q_rstd, k_raw, k_rstd, q_rot, k_rot, v, attn, lse;
  Tensor x_mid, n2, rstd2;
  Tensor gate_up_out, act;  // dense: [N, 2I], [N, I]; MoE: per sorted row
  Tensor probs;             // MoE
  ops::TopK topk;
  ops::Permutation perm;
  Tensor row_weight;        // MoE: the routing weight of each sorted row [N*k] fp32
  Tensor x_sorted;
  int64_t moe_index = -1;  // the layer's position among the MoE layers (for the routing hook)
};

// What every layer of one forward pass shares.
struct LayerContext {
  int64_t B, T;
  Tensor pos;  // [B*T] int64 positions on the device
  ops::AttentionMask mask;
  float eps, scale;
};

}  // namespace

struct CausalLM::Impl {
  ModelConfig config;
  ModelOptions options;
  ParameterSet params;
  std::vector<CheckpointBinding> bindings;
  int embed = -1, final_norm = -1, lm_head = -1;
  std::vector<LayerParams> layers;
  RoutingHook routing_hook;
  Tensor inv_freq;  // [head_dim / 2] fp32 on the model's device
  float rope_scaling = 1.0f;

  int64_t hidden() const { return config.hidden_size; }
  // Token rows per chunk of the training loss: ModelOptions::loss_chunk_tokens, else as many as keep
  // a chunk's logits within 1 GiB (3,533 rows of Qwen3's 151,936-token vocabulary in bf16).
  int64_t loss_chunk_rows() const {
    if (options.loss_chunk_tokens > 0) return options.loss_chunk_tokens;
    const int64_t row_bytes = config.vocab_size * static_cast<int64_t>(dtype_size(options.dtype));
    return std::max<int64_t>(1, (int64_t{1} << 30) / row_bytes);
  }
  int64_t head_dim() const { return config.attention.head_dim; }

  void declare_parameters();
  void bind(const std::string& name, int param, int64_t expert = -1, int64_t r0 = 0, int64_t r1 = -1) {
    bindings.push_back({name, param, expert, r0, r1});
  }
  Tensor w(int i) const { return params.param(i); }
  Tensor& g(int i) { return params.mutable_grad(i); }
  Tensor layer_forward(const LayerParams& lp, const LayerContext& ctx, const Tensor& x, LayerState& st);
  Tensor ffn_forward(const LayerParams& lp, LayerState& st);
  // Activation recomputation (ModelOptions::recompute): what a layer drops after its forward and
  // rebuilds before its backward. The routing (probabilities, top-k, permutation) is always kept,
  // so a recomputed layer sends every token to the experts its forward chose.
  void drop_recomputable(const LayerParams& lp, LayerState& st) const;
  void restore_recomputed(const LayerParams& lp, const LayerContext& ctx, LayerState& st);
  Tensor moe_experts_forward(const LayerParams& lp, LayerState& st);
  Tensor ffn_backward(const LayerParams& lp, LayerState& st, const Tensor& dy, const Tensor& aux_dprobs);
};

void CausalLM::Impl::declare_parameters() {
  const ModelConfig& c = config;
  MF_CHECK(causal_lm_supports(c.model_type), kUnsupported, c.source.string(), ": model_type '",
           c.model_type, "' cannot be trained yet (trainable: qwen3_moe, qwen3)");
  MF_CHECK(!c.attention.qkv_bias && !c.attention.o_bias && !c.attention.sinks, kUnsupported,
           c.source.string(), ": attention biases/sinks are not supported for ", c.model_type);
  MF_CHECK(!c.attention.sliding_window.has_value(), kUnsupported, c.source.string(),
           ": sliding-window attention is not supported yet");
  MF_CHECK(c.rope.has_value() && c.rope->type == RopeType::kDefault &&
               c.rope->partial_rotary_factor == 1.0,
           kUnsupported, c.source.string(), ": only the default rope type is supported for ",
           c.model_type);
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.attention.head_dim;
  const int64_t Hq = c.attention.num_heads, Hkv = c.attention.num_kv_heads;
  const bool qk_norm = c.attention.qk_norm == AttentionConfig::QkNorm::kPerHead;

  embed = params.add("model.embed_tokens.weight", {V, H}, ParamGroup::kEmbedding, true, ShardClass::kReplicated);
  bind("model.embed_tokens.weight", embed);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = str_cat("model.layers.", l, ".");
    LayerParams lp;
    auto plain = [&](const std::string& name, Shape shape, ParamGroup group, bool decay) {
      int i = params.add(p + name, std::move(shape), group, decay, ShardClass::kReplicated);
      bind(p + name, i);
      return i;
    };
    lp.input_norm = plain("input_layernorm.weight", {H}, ParamGroup::kNorm, false);
    lp.q = plain("self_attn.q_proj.weight", {Hq * D, H}, ParamGroup::kAttention, true);
    lp.k = plain("self_attn.k_proj.weight", {Hkv * D, H}, ParamGroup::kAttention, true);
    lp.v = plain("self_attn.v_proj.weight", {Hkv * D, H}, ParamGroup::kAttention, true);
    lp.o = plain("self_attn.o_proj.weight", {H, Hq * D}, ParamGroup::kAttention, true);
    if (qk_norm) {
      lp.q_norm = plain("self_attn.q_norm.weight", {D}, ParamGroup::kNorm, false);
      lp.k_norm = plain("self_attn.k_norm.weight", {D}, ParamGroup::kNorm, false);
    }
    lp.post_norm = plain("post_attention_layernorm.weight", {H}, ParamGroup::kNorm, false);
    lp.moe = c.layers[l].ffn == LayerSpec::Ffn::kMoe;
    if (lp.moe) {
      const int64_t E = c.moe->num_experts, I = c.moe->expert_intermediate_size;
      lp.router = plain("mlp.gate.weight", {E, H}, ParamGroup::kRouter, true);
      lp.gate_up = params.add(p + "mlp.experts.gate_up_proj", {E, 2 * I, H}, ParamGroup::kExperts, true,
                              ShardClass::kExpert);
      lp.down = params.add(p + "mlp.experts.down_proj", {E, H, I}, ParamGroup::kExperts, true, ShardClass::kExpert);
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = str_cat(p, "mlp.experts.", e, ".");
        bind(x + "gate_proj.weight", lp.gate_up, e, 0, I);
        bind(x + "up_proj.weight", lp.gate_up, e, I, 2 * I);
        bind(x + "down_proj.weight", lp.down, e);
      }
    } else {
      const int64_t I = c.intermediate_size;
      lp.gate_up = params.add(p + "mlp.gate_up_proj", {2 * I, H}, ParamGroup::kDenseMlp, true, ShardClass::kReplicated);
      bind(p + "mlp.gate_proj.weight", lp.gate_up, -1, 0, I);
      bind(p + "mlp.up_proj.weight", lp.gate_up, -1, I, 2 * I);
      lp.down = plain("mlp.down_proj.weight", {H, I}, ParamGroup::kDenseMlp, true);
    }
    layers.push_back(lp);
  }
  final_norm = params.add("model.norm.weight", {H}, ParamGroup::kNorm, false, ShardClass::kReplicated);
  bind("model.norm.weight", final_norm);
  if (!c.tie_word_embeddings) {
    lm_head = params.add("lm_head.weight", {V, H}, ParamGroup::kLmHead, true, ShardClass::kReplicated);
    bind("lm_head.weight", lm_head);
  }
}

// ---- forward / backward of one feed-forward block ------------------------------------------------

Tensor CausalLM::Impl::ffn_forward(const LayerParams& lp, LayerState& st) {
  if (!lp.moe) {
    st.gate_up_out = ops::linear(st.n2, w(lp.gate_up));
    st.act = ops::swiglu_fwd(st.gate_up_out);
    return ops::linear(st.act, w(lp.down));
  }
  const MoeConfig& moe = *config.moe;
  if (st.topk.index.defined()) return moe_experts_forward(lp, st);  // recomputation keeps the routing
  const int64_t moe_index = st.moe_index;
  Tensor router_logits = ops::linear(st.n2, w(lp.router));
  st.probs = ops::softmax_fwd(router_logits);
  if (routing_hook.reuse.empty()) {
    st.topk = ops::router_topk(st.probs, moe.num_experts_per_tok, moe.norm_topk_prob);
  } else {
    MF_CHECK(moe_index < static_cast<int64_t>(routing_hook.reuse.size()), kInvalidArgument,
             "routing hook: no expert choices for MoE layer ", moe_index);
    const Tensor& index = routing_hook.reuse[moe_index];
    MF_CHECK(index.shape() == Shape({st.n2.size(0), moe.num_experts_per_tok}), kShape,
             "routing hook: expert choices of MoE layer ", moe_index, " have shape ",
             shape_str(index.shape()), ", expected [", st.n2.size(0), ", ", moe.num_experts_per_tok, "]");
    st.topk = ops::router_weights_for(st.probs, index.to(st.probs.device()), moe.norm_topk_prob);
  }
  st.perm = ops::make_permutation(st.topk.index, moe.num_experts);
  return moe_experts_forward(lp, st);
}

// The experts of a routed MoE layer: permute, grouped SwiGLU, sum over each token's slots. The
// routing weight scales the SwiGLU output, before the (linear) down projection, which is the same
// sum as weighting the experts' outputs; so the outputs are not kept for the weights' gradient,
// which SwiGLU's backward gives instead (512 MiB a layer at 16k tokens of Qwen3-30B-A3B).
Tensor CausalLM::Impl::moe_experts_forward(const LayerParams& lp, LayerState& st) {
  st.x_sorted = ops::permute(st.n2, st.perm);
  st.gate_up_out = ops::grouped_linear(st.x_sorted, w(lp.gate_up), st.perm.offsets);
  st.row_weight = ops::permute_weights(st.topk.weight, st.perm);
  st.act = ops::swiglu_fwd(st.gate_up_out, st.row_weight);
  const Tensor y_sorted = ops::grouped_linear(st.act, w(lp.down), st.perm.offsets);
  return ops::unpermute(y_sorted, st.perm, st.n2.size(0));
}

Tensor CausalLM::Impl::layer_forward(const LayerParams& lp, const LayerContext& ctx, const Tensor& x,
                                     LayerState& st) {
  const int64_t B = ctx.B, T = ctx.T, N = B * T, D = config.attention.head_dim;
  const int64_t Hq = config.attention.num_heads, Hkv = config.attention.num_kv_heads;
  st.x_in = x;
  st.n1 = ops::rms_norm_fwd(x, w(lp.input_norm), ctx.eps, st.rstd1);
  Tensor q = ops::linear(st.n1, w(lp.q));
  Tensor k = ops::linear(st.n1, w(lp.k));
  st.v = ops::linear(st.n1, w(lp.v));
  if (lp.q_norm >= 0) {
    st.q_raw = q.view({N, Hq, D});
    st.k_raw = k.view({N, Hkv, D});
    st.q_rot = ops::qk_norm_rope_fwd(st.q_raw, w(lp.q_norm), ctx.eps, ctx.pos, inv_freq,
                                     rope_scaling, st.q_rstd);
    st.k_rot = ops::qk_norm_rope_fwd(st.k_raw, w(lp.k_norm), ctx.eps, ctx.pos, inv_freq,
                                     rope_scaling, st.k_rstd);
  } else {
    st.q_rot = ops::rope_fwd(q.view({N, Hq, D}), ctx.pos, inv_freq, rope_scaling);
    st.k_rot = ops::rope_fwd(k.view({N, Hkv, D}), ctx.pos, inv_freq, rope_scaling);
  }
  st.attn = ops::attention_fwd(st.q_rot.view({B, T, Hq, D}), st.k_rot.view({B, T, Hkv, D}),
                               st.v.view({B, T, Hkv, D}), ctx.mask, ctx.scale, st.lse);
  Tensor x_mid = ops::linear(st.attn.view({N, Hq * D}), w(lp.o));
  st.n2 = ops::add_rms_norm_fwd(x_mid, x, w(lp.post_norm), ctx.eps, st.rstd2);  // x_mid += x
  st.x_mid = x_mid;
  Tensor out = ffn_forward(lp, st);
  ops::add_inplace(out, x_mid);
  return out;
}

// selective: the products of cheap element-wise ops and gathers (the two norm outputs, the
// permuted expert inputs, the SwiGLU output) are dropped; the matrix products' and attention's
// outputs are kept. full: only the layer input and its routing are kept.
void CausalLM::Impl::drop_recomputable(const LayerParams& lp, LayerState& st) const {
  switch (options.recompute) {
    case Recompute::kNone:
      return;
    case Recompute::kSelective:
      st.n1 = st.n2 = st.x_sorted = st.act = Tensor();
      return;
    case Recompute::kFull: {
      LayerState kept;
      kept.x_in = st.x_in;
      kept.moe_index = st.moe_index;
      if (lp.moe) {
        kept.probs = st.probs;
        kept.topk = st.topk;
        kept.perm = st.perm;
      }
      st = std::move(kept);
      return;
    }
  }
}

void CausalLM::Impl::restore_recomputed(const LayerParams& lp, const LayerContext& ctx, LayerState& st) {
  switch (options.recompute) {
    case Recompute::kNone:
      return;
    case Recompute::kSelective:
      st.n1 = ops::rms_norm_fwd(st.x_in, w(lp.input_norm), ctx.eps, st.rstd1);
      st.n2 = ops::rms_norm_fwd(st.x_mid, w(lp.post_norm), ctx.eps, st.rstd2);
      if (lp.moe) st.x_sorted = ops::permute(st.n2, st.perm);
      st.act = ops::swiglu_fwd(st.gate_up_out, st.row_weight);
      return;
    case Recompute::kFull:
      layer_forward(lp, ctx, st.x_in, st);
      return;
  }
}

// dy: gradient of the block output [N, H]; returns the gradient of its input n2.
Tensor CausalLM::Impl::ffn_backward(const LayerParams& lp, LayerState& st, const Tensor& dy,
                                    const Tensor& aux_dprobs) {
  if (!lp.moe) {
    Tensor dact = Tensor::empty(st.act.shape(), st.act.dtype(), st.act.device());
    ops::gemm(dy, false, w(lp.down), false, dact);
    ops::gemm(dy, true, st.act, false, g(lp.down), 1.0f, 1.0f);
    Tensor dgu = ops::swiglu_bwd(dact, st.gate_up_out).d_gate_up;
    Tensor dn2 = Tensor::empty(st.n2.shape(), st.n2.dtype(), st.n2.device());
    ops::gemm(dgu, false, w(lp.gate_up), false, dn2);
    ops::gemm(dgu, true, st.n2, false, g(lp.gate_up), 1.0f, 1.0f);
    return dn2;
  }
  const MoeConfig& moe = *config.moe;
  const Tensor& offsets = st.perm.offsets;
  const Tensor d_sorted = ops::permute(dy, st.perm);
  Tensor dact = ops::grouped_linear_dx(d_sorted, w(lp.down), offsets);
  ops::grouped_linear_dw(d_sorted, st.act, offsets, g(lp.down));
  ops::SwigluGrads sg = ops::swiglu_bwd(dact, st.gate_up_out, st.row_weight);
  Tensor dx_sorted = ops::grouped_linear_dx(sg.d_gate_up, w(lp.gate_up), offsets);
  ops::grouped_linear_dw(sg.d_gate_up, st.x_sorted, offsets, g(lp.gate_up));
  Tensor dn2 = ops::unpermute(dx_sorted, st.perm, st.n2.size(0));
  const Tensor d_weight = ops::unpermute_weights(sg.d_row_scale, st.perm);
  Tensor dprobs = ops::router_topk_bwd(d_weight, st.probs, st.topk, moe.norm_topk_prob);
  if (aux_dprobs.defined()) ops::add_inplace(dprobs, aux_dprobs);
  Tensor drouter = ops::softmax_bwd(dprobs, st.probs);
  drouter = ops::cast(drouter, st.n2.dtype());
  ops::gemm(drouter, false, w(lp.router), false, dn2, 1.0f, 1.0f);
  ops::gemm(drouter, true, st.n2, false, g(lp.router), 1.0f, 1.0f);
  return dn2;
}

// ---- the whole model ------------------------------------------------------------------------

CausalLM::CausalLM(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CausalLM::CausalLM(CausalLM&&) noexcept = default;
CausalLM& CausalLM::operator=(CausalLM&&) noexcept = default;
CausalLM::~CausalLM() = default;

const ModelConfig& CausalLM::config() const { return impl_->config; }
ParameterSet& CausalLM::params() { return impl_->params; }
const ParameterSet& CausalLM::params() const { return impl_->params; }
const std::vector<CheckpointBinding>& CausalLM::bindings() const { return impl_->bindings; }
const ModelOptions& CausalLM::options() const { return impl_->options; }
RoutingHook& CausalLM::routing_hook() { return impl_->routing_hook; }
void CausalLM::set_recompute(Recompute policy) { impl_->options.recompute = policy; }

namespace {

std::unique_ptr<CausalLM::Impl> make_impl(const ModelConfig& config, const ModelOptions& options) {
  MF_CHECK(options.device == Device::kCUDA || options.dtype == DType::kF32, kUnsupported,
           "the CPU backend computes in float32 (asked for ", dtype_torch_name(options.dtype), ")");
  MF_CHECK(options.device == Device::kCPU || options.dtype == DType::kBF16 || config.num_moe_layers() == 0,
           kUnsupported, "the CUDA backend computes mixture-of-experts layers in bfloat16 (asked for ",
           dtype_torch_name(options.dtype), "): use --dtype bfloat16");
  auto impl = std::make_unique<CausalLM::Impl>();
  impl->config = config;
  impl->options = options;
  impl->declare_parameters();
  RotaryTable rope = make_rotary_table(*config.rope, config.attention.head_dim);
  impl->inv_freq = rope.inv_freq.to(options.device);
  impl->rope_scaling = rope.attention_scaling;
  return impl;
}

// Moves CPU-initialised parameters to the model's device and dtype.
void place_parameters(CausalLM::Impl& impl, const Tensor& host_flat) {
  ParameterSet& ps = impl.params;
  ps.allocate(impl.options.device, impl.options.dtype, impl.options.dtype);
  Tensor converted = host_flat.to(impl.options.dtype);
  Tensor dst = ps.flat_params();
  dst.copy_from(converted);
}

}  // namespace

double training_flops_per_token(const CausalLM& model, int64_t seq) {
  const ModelConfig& c = model.config();
  double active = 0;
  for (const auto& e : model.params().entries()) {
    if (e.group == ParamGroup::kEmbedding || e.group == ParamGroup::kNorm) continue;
    double n = static_cast<double>(e.numel());
    if (e.group == ParamGroup::kExperts) n *= static_cast<double>(c.moe->num_experts_per_tok) / c.moe->num_experts;
    active += n;
  }
  if (c.tie_word_embeddings) active += static_cast<double>(c.vocab_size * c.hidden_size);
  return 6 * active + 6.0 * c.num_hidden_layers * c.attention.num_heads * c.attention.head_dim * seq;
}

std::vector<std::pair<std::string, Shape>> causal_lm_checkpoint_layout(const ModelConfig& config) {
  CausalLM::Impl impl;
  impl.config = config;
  impl.declare_parameters();  // declares shapes and bindings; allocate() is never called
  std::vector<std::pair<std::string, Shape>> layout;
  for (const auto& b : impl.bindings) {
    Shape shape = impl.params.entry(b.param).shape;
    if (b.expert >= 0) shape.erase(shape.begin());
    if (b.row_end >= 0) shape[0] = b.row_end - b.row_begin;
    layout.emplace_back(b.name, shape);
  }
  return layout;
}

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// normal(0, std) for element j of parameter i: Box-Muller on two uniforms from a counter-based
// hash of (seed, i, j), so the values do not depend on how the work is split across threads.
float normal_at(uint64_t seed, uint64_t i, uint64_t j, float std_dev) {
  const uint64_t a = splitmix64(seed ^ splitmix64(i * 0x100000001b3ull + (j << 1)));
  const uint64_t b = splitmix64(a ^ 0xd1b54a32d192ed03ull);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return static_cast<float>(std_dev * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace

CausalLM CausalLM::from_config(const ModelConfig& config, const ModelOptions& options, uint64_t seed) {
  auto impl = make_impl(config, options);
  // Filled on the host in the model's dtype (a 30B-parameter model's float32 copy would not fit
  // many hosts twice), in parallel, then copied to the device once.
  const DType host_dtype = options.dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
  ParameterSet host;
  for (const auto& e : impl->params.entries())
    host.add(e.name, e.shape, e.group, e.trainer_weight_decay, e.shard_class);
  host.allocate(Device::kCPU, host_dtype, host_dtype);
  const float std_dev = static_cast<float>(config.raw.value("initializer_range", 0.02));
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
      const bool is_norm = host.entry(job.param).group == ParamGroup::kNorm;
      const Tensor& p = host.param(job.param);
      for (int64_t j = job.begin; j < job.end; ++j) {
        const float v = is_norm ? 1.0f : normal_at(seed, static_cast<uint64_t>(job.param), static_cast<uint64_t>(j), std_dev);
        if (host_dtype == DType::kBF16)
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
  place_parameters(*impl, host.flat_params());
  return CausalLM(std::move(impl));
}

CausalLM CausalLM::from_pretrained(const std::filesystem::path& folder, const ModelOptions& options) {
  ModelConfig config = load_model_config(folder);
  auto impl = make_impl(config, options);
  impl->params.allocate(options.device, options.dtype, options.dtype);
  CausalLM model(std::move(impl));
  model.load_weights(folder);
  return model;
}

namespace {

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

}  // namespace

void CausalLM::load_weights(const std::filesystem::path& folder) {
  Impl& m = *impl_;
  const ModelConfig& config = m.config;
  CheckpointReader reader(folder);
  const auto& keep = m.options.load_filter;
  auto wanted = [&](const std::string& name) { return !keep || keep(name); };

  std::set<std::string> expected;
  for (const auto& b : m.bindings) expected.insert(b.name);
  std::vector<std::string> missing, unexpected;
  for (const auto& b : m.bindings)
    if (wanted(b.name) && !reader.contains(b.name)) missing.push_back(b.name);
  for (const auto& name : reader.tensor_names()) {
    // Tied checkpoints sometimes carry lm_head.weight as well; Transformers ignores it, so do we.
    if (!expected.count(name) && !(config.tie_word_embeddings && name == "lm_head.weight"))
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
  std::vector<const CheckpointBinding*> order;
  for (const auto& b : m.bindings)
    if (wanted(b.name)) order.push_back(&b);
  std::stable_sort(order.begin(), order.end(), [&](const CheckpointBinding* x, const CheckpointBinding* y) {
    return reader.shard_of(x->name) < reader.shard_of(y->name);
  });
  for (const CheckpointBinding* b : order) {
    Tensor dst = b->view_of(m.params.param(b->param));
    const Tensor src = reader.get(b->name);
    MF_CHECK(src.shape() == dst.shape(), kShape, reader.shard_of(b->name).string(), ": tensor ",
             b->name, " has shape ", shape_str(src.shape()), ", config.json implies ",
             shape_str(dst.shape()));
    MF_CHECK(dtype_is_floating(src.dtype()), kFormat, reader.shard_of(b->name).string(), ": tensor ",
             b->name, " has dtype ", dtype_safetensors_name(src.dtype()), ", expected a float type");
    load_tensor(src, dst);
    reader.release(b->name);
  }
}

StepResult CausalLM::forward_backward(const Batch& batch, bool backward, bool keep_logits,
                                      double loss_denominator) {
  Impl& m = *impl_;
  const ModelConfig& c = m.config;
  const Device dev = m.options.device;
  MF_CHECK(batch.input_ids.defined() && batch.input_ids.dim() == 2, kShape,
           "input_ids must be [batch, sequence], got ",
           batch.input_ids.defined() ? shape_str(batch.input_ids.shape()) : "nothing");
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1), N = B * T;
  const int64_t H = c.hidden_size, D = c.attention.head_dim, V = c.vocab_size;
  const int64_t Hq = c.attention.num_heads, Hkv = c.attention.num_kv_heads;
  const float eps = static_cast<float>(c.norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (const Tensor* t : {&batch.labels, &batch.attention_mask, &batch.position_ids})
    MF_CHECK(!t->defined() || t->shape() == batch.input_ids.shape(), kShape,
             "labels, attention_mask and position_ids must have the shape of input_ids ",
             shape_str(batch.input_ids.shape()), ", got ", shape_str(t->shape()));

  // Host-side preparation of the small integer inputs: ids, positions, document segments, targets.
  Tensor ids_host = batch.input_ids.to(Device::kCPU).contiguous().to(DType::kI64).view({N});
  for (int64_t i = 0; i < N; ++i) {
    int64_t id = ids_host.data<int64_t>()[i];
    MF_CHECK(id >= 0 && id < V, kInvalidArgument, "input_ids[", i / T, ", ", i % T, "] = ", id,
             " is outside the vocabulary [0, ", V, ")");
  }
  Tensor positions = Tensor::empty({N}, DType::kI64);
  Tensor segments;
  if (batch.position_ids.defined()) {
    Tensor pos_in = batch.position_ids.to(Device::kCPU).contiguous().to(DType::kI64);
    std::memcpy(positions.raw_data(), pos_in.raw_data(), N * sizeof(int64_t));
    // A position that does not continue the previous one starts a new packed document.
    segments = Tensor::empty({B, T}, DType::kI32);
    for (int64_t b = 0; b < B; ++b) {
      int32_t seg = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t* p = positions.data<int64_t>() + b * T;
        if (t > 0 && p[t] != p[t - 1] + 1) ++seg;
        segments.data<int32_t>()[b * T + t] = seg;
      }
    }
  } else {
    for (int64_t i = 0; i < N; ++i) positions.data<int64_t>()[i] = i % T;
  }
  std::vector<uint8_t> valid(N, 1);
  if (batch.attention_mask.defined()) {
    Tensor am = batch.attention_mask.to(Device::kCPU).contiguous().to(DType::kF32);
    for (int64_t i = 0; i < N; ++i) valid[i] = am.data<float>()[i] != 0.0f;
  }
  Tensor targets;
  int64_t num_label_tokens = 0;
  if (batch.labels.defined()) {
    Tensor labels = batch.labels.to(Device::kCPU).contiguous().to(DType::kI64);
    targets = Tensor::empty({N}, DType::kI64);
    int64_t* tg = targets.data<int64_t>();
    const int64_t* lb = labels.data<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        int64_t v = t + 1 < T ? lb[b * T + t + 1] : -100;  // shift left; the last position has none
        MF_CHECK(v == -100 || (v >= 0 && v < V), kInvalidArgument, "labels[", b, ", ", t + 1,
                 "] = ", v, " is neither -100 nor inside the vocabulary [0, ", V, ")");
        tg[b * T + t] = v;
        num_label_tokens += v != -100;
      }
    MF_CHECK(num_label_tokens > 0 || !backward, kInvalidArgument,
             "every label of the batch is -100 (after shifting left by one): nothing to train on");
    targets = targets.to(dev);
  }
  Tensor ids = ids_host.to(dev);
  Tensor pos = positions.to(dev);
  ops::AttentionMask mask;
  if (batch.attention_mask.defined())
    mask.key_valid = batch.attention_mask.to(Device::kCPU).contiguous().to(DType::kI32).to(dev);
  if (segments.defined()) mask.segment = segments.to(dev);
  // The same mask as documents, for the variable-length attention kernels (CUDA only reads it).
  if (dev != Device::kCPU && (mask.key_valid.defined() || mask.segment.defined()))
    mask.documents = ops::attention_documents(
        B, T, segments.defined() ? segments.data<int32_t>() : nullptr,
        batch.attention_mask.defined() ? valid.data() : nullptr, dev);

  // ---- forward
  const LayerContext ctx{B, T, pos, mask, eps, scale};
  std::vector<LayerState> states(c.num_hidden_layers);
  Tensor x = ops::embedding_fwd(m.w(m.embed), ids);
  int64_t moe_index = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerState& st = states[l];
    st.moe_index = moe_index;
    moe_index += m.layers[l].moe;
    x = m.layer_forward(m.layers[l], ctx, x, st);
    if (backward) m.drop_recomputable(m.layers[l], st);
  }
  Tensor final_rstd;
  Tensor hidden_final = ops::rms_norm_fwd(x, m.w(m.final_norm), eps, final_rstd);
  const int head = m.lm_head >= 0 ? m.lm_head : m.embed;
  MF_CHECK(targets.defined() || !backward, kInvalidArgument, "backward needs labels");

  // The language-model head and the loss; when training, also their backward: d_hidden and the
  // head's gradient. Without the logits asked back the rows go in chunks (logits of a chunk, its
  // loss and gradient in place, its share of d_hidden and of the head's gradient), so the whole
  // [tokens, vocab] logits never exist at once.
  StepResult result;
  result.num_label_tokens = num_label_tokens;
  const double denom = loss_denominator > 0 ? loss_denominator : static_cast<double>(num_label_tokens);
  const float grad_scale = static_cast<float>(1.0 / denom);
  Tensor d_hidden;
  if (backward) d_hidden = Tensor::empty({N, H}, hidden_final.dtype(), dev, "hidden-state gradient");
  auto head_backward = [&](const Tensor& dlogits_rows, const Tensor& hidden_rows, Tensor d_hidden_rows) {
    ops::gemm(dlogits_rows, false, m.w(head), false, d_hidden_rows);
    ops::gemm(dlogits_rows, true, hidden_rows, false, m.g(head), 1.0f, 1.0f);
  };
  if (backward && !keep_logits) {
    const int64_t rows = m.loss_chunk_rows();
    ops::CrossEntropySum loss;  // read back once, after the last chunk
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
      const int64_t r1 = std::min(N, r0 + rows);
      Tensor hidden_rows = hidden_final.slice(0, r0, r1);
      Tensor logits = ops::linear(hidden_rows, m.w(head));
      loss.add(logits, targets.slice(0, r0, r1), grad_scale, &logits);
      head_backward(logits, hidden_rows, d_hidden.slice(0, r0, r1));
    }
    const double loss_sum = loss.total().loss_sum;
    result.lm_loss = num_label_tokens > 0 ? loss_sum / denom : 0.0;
  } else {
    Tensor logits = ops::linear(hidden_final, m.w(head));  // [N, V]
    if (targets.defined()) {
      Tensor dlogits;
      if (backward) dlogits = Tensor::empty(logits.shape(), logits.dtype(), dev, "logit gradients");
      ops::CrossEntropyResult ce = ops::cross_entropy(logits, targets, grad_scale, backward ? &dlogits : nullptr);
      result.lm_loss = num_label_tokens > 0 ? ce.loss_sum / denom : 0.0;
      if (backward) head_backward(dlogits, hidden_final, d_hidden);
    }
    if (keep_logits) result.logits = logits.view({B, T, V});
  }
  result.loss = result.lm_loss;

  // Per MoE layer, read back in one copy for all layers: the tokens routed to each expert (the
  // load-balance report, and the aux loss's counts), from the device-side permutation offsets; and,
  // when the aux loss is on and no token is padding, each expert's router probability summed over
  // the tokens (a ones-vector product). Padded batches count their valid tokens on the host instead.
  const int64_t num_moe = c.moe ? c.num_moe_layers() : 0;
  const bool aux_on = num_moe > 0 && c.moe->output_router_logits;
  int64_t n_valid = 0;
  for (int64_t i = 0; i < N; ++i) n_valid += valid[i];
  const bool aux_sums_on_device = aux_on && n_valid == N;
  Tensor host_prob_sums;  // [MoE layers, E] fp32, when aux_sums_on_device
  if (num_moe > 0) {
    const int64_t E = c.moe->num_experts;
    Tensor all_offsets = Tensor::empty({num_moe, E + 1}, DType::kI64, dev, "expert offsets");
    Tensor prob_sums, ones;
    if (aux_sums_on_device) {
      prob_sums = Tensor::empty({num_moe, E}, DType::kF32, dev, "router probability sums");
      ones = Tensor::from_vector(std::vector<float>(static_cast<size_t>(N), 1.0f), {1, N}).to(dev);
    }
    int64_t row = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!m.layers[l].moe) continue;
      Tensor dst = all_offsets.select(0, row);
      dst.copy_from(states[l].perm.offsets);
      if (aux_sums_on_device) {
        Tensor sums_row = prob_sums.slice(0, row, row + 1);
        ops::gemm(ones, false, states[l].probs, false, sums_row);
      }
      if (m.routing_hook.record) result.routing.push_back(states[l].topk.index.to(Device::kCPU));
      ++row;
    }
    Tensor host_offsets = all_offsets.to(Device::kCPU);
    if (aux_sums_on_device) host_prob_sums = prob_sums.to(Device::kCPU);
    for (int64_t r = 0; r < row; ++r) {
      const int64_t* off = host_offsets.data<int64_t>() + r * (E + 1);
      std::vector<int64_t> load(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) load[e] = off[e + 1] - off[e];
      result.expert_load.push_back(std::move(load));
    }
  }

  // Load-balancing auxiliary loss, as Transformers' load_balancing_loss_func: over all MoE layers
  // together and the non-padded tokens, aux = E * sum_e (count_e / R) * (P_e / R), where count_e is
  // how often e is in a top-k, P_e the summed router probability, R = (MoE layers) x (tokens). Its
  // gradient reaches the probabilities only: d aux / d p[r, e] = E * count_e / R^2 for valid rows.
  std::vector<Tensor> aux_dprobs(c.num_hidden_layers);
  if (aux_on) {
    const int64_t E = c.moe->num_experts, K = c.moe->num_experts_per_tok;
    std::vector<double> count(E, 0.0), prob_sum(E, 0.0);
    if (aux_sums_on_device) {
      for (int64_t r = 0; r < num_moe; ++r)
        for (int64_t e = 0; e < E; ++e) {
          count[e] += static_cast<double>(result.expert_load[r][e]);
          prob_sum[e] += host_prob_sums.data<float>()[r * E + e];
        }
    } else {
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        if (!m.layers[l].moe) continue;
        Tensor probs = states[l].probs.to(Device::kCPU).to(DType::kF32);
        Tensor idx = states[l].topk.index.to(Device::kCPU);
        for (int64_t i = 0; i < N; ++i) {
          if (!valid[i]) continue;
          for (int64_t j = 0; j < K; ++j) count[idx.data<int32_t>()[i * K + j]] += 1.0;
          for (int64_t e = 0; e < E; ++e) prob_sum[e] += probs.data<float>()[i * E + e];
        }
      }
    }
    const double R = static_cast<double>(num_moe * n_valid);
    double aux = 0;
    for (int64_t e = 0; e < E; ++e) aux += (count[e] / R) * (prob_sum[e] / R);
    aux *= static_cast<double>(E);
    result.aux_loss = aux;
    result.loss += c.moe->router_aux_loss_coef * aux;
    if (backward) {
      Tensor g = Tensor::zeros({N, E}, DType::kF32);
      for (int64_t i = 0; i < N; ++i)
        if (valid[i])
          for (int64_t e = 0; e < E; ++e)
            g.data<float>()[i * E + e] =
                static_cast<float>(c.moe->router_aux_loss_coef * E * count[e] / (R * R));
      Tensor g_dev = g.to(dev);
      for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        if (m.layers[l].moe) aux_dprobs[l] = g_dev;
    }
  }
  if (!backward) return result;

  // ---- backward (the head's was done with the loss)
  Tensor dx = ops::rms_norm_bwd(d_hidden, x, m.w(m.final_norm), final_rstd, m.g(m.final_norm));
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    const LayerParams& lp = m.layers[l];
    LayerState& st = states[l];
    m.restore_recomputed(lp, ctx, st);
    Tensor dn2 = m.ffn_backward(lp, st, dx, aux_dprobs[l]);
    // dx reaches x_mid twice: through the post-attention norm and along the residual stream.
    Tensor dx_mid =
        ops::rms_norm_bwd(dn2, st.x_mid, m.w(lp.post_norm), st.rstd2, m.g(lp.post_norm), dx);

    Tensor attn_flat = st.attn.view({N, Hq * D});
    Tensor dattn = Tensor::empty({N, Hq * D}, attn_flat.dtype(), dev);
    ops::gemm(dx_mid, false, m.w(lp.o), false, dattn);
    ops::gemm(dx_mid, true, attn_flat, false, m.g(lp.o), 1.0f, 1.0f);
    ops::AttentionGrads ag =
        ops::attention_bwd(dattn.view({B, T, Hq, D}), st.q_rot.view({B, T, Hq, D}),
                           st.k_rot.view({B, T, Hkv, D}), st.v.view({B, T, Hkv, D}), st.attn,
                           st.lse, mask, scale);
    Tensor dq, dk;
    if (lp.q_norm >= 0) {
      dq = ops::qk_norm_rope_bwd(ag.dq.view({N, Hq, D}), st.q_raw, m.w(lp.q_norm), st.q_rstd, pos,
                                 m.inv_freq, m.rope_scaling, m.g(lp.q_norm));
      dk = ops::qk_norm_rope_bwd(ag.dk.view({N, Hkv, D}), st.k_raw, m.w(lp.k_norm), st.k_rstd, pos,
                                 m.inv_freq, m.rope_scaling, m.g(lp.k_norm));
    } else {
      dq = ops::rope_bwd(ag.dq.view({N, Hq, D}), pos, m.inv_freq, m.rope_scaling);
      dk = ops::rope_bwd(ag.dk.view({N, Hkv, D}), pos, m.inv_freq, m.rope_scaling);
    }
    dq = dq.view({N, Hq * D});
    dk = dk.view({N, Hkv * D});
    Tensor dv = ag.dv.view({N, Hkv * D});
    Tensor dn1 = Tensor::empty({N, H}, st.n1.dtype(), dev);
    ops::gemm(dq, false, m.w(lp.q), false, dn1);
    ops::gemm(dk, false, m.w(lp.k), false, dn1, 1.0f, 1.0f);
    ops::gemm(dv, false, m.w(lp.v), false, dn1, 1.0f, 1.0f);
    ops::gemm(dq, true, st.n1, false, m.g(lp.q), 1.0f, 1.0f);
    ops::gemm(dk, true, st.n1, false, m.g(lp.k), 1.0f, 1.0f);
    ops::gemm(dv, true, st.n1, false, m.g(lp.v), 1.0f, 1.0f);
    dx = ops::rms_norm_bwd(dn1, st.x_in, m.w(lp.input_norm), st.rstd1, m.g(lp.input_norm), dx_mid);
    st = LayerState();  // free this layer's activations as soon as they are used
  }
  ops::embedding_bwd(dx, ids, m.g(m.embed));
  return result;
}

void CausalLM::save_pretrained(const std::filesystem::path& folder, DType dtype,
                               const std::filesystem::path& source_folder,
                               uint64_t max_shard_bytes) const {
  const Impl& m = *impl_;
  std::vector<NamedTensor> tensors;
  tensors.reserve(m.bindings.size());
  for (const auto& b : m.bindings) {
    Tensor t = b.view_of(m.params.param(b.param)).to(Device::kCPU).contiguous();
    tensors.emplace_back(b.name, t.dtype() == dtype ? t.clone() : t.to(dtype));
  }
  std::filesystem::create_directories(folder);
  write_sharded_checkpoint(folder, tensors, max_shard_bytes);

  ModelConfig saved = m.config;
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

}  // namespace moeforge
