#include "model/memory_plan.h"

#include <algorithm>

#include "arch/checkpoint_tensors.h"
#include "arch/weight_map.h"
#include "core/error.h"

namespace moeforge {
namespace {

constexpr double kAct = 2;   // bf16 activations
constexpr double kF32 = 4;   // norms' 1/rms, softmax statistics, router probabilities and weights
constexpr double kI32 = 4;   // expert choices and permutation indices

// Bytes per token that one decoder layer keeps between forward and backward (LayerState), and those
// the recompute policy drops (rebuilt, one layer at a time, in the backward).
struct LayerBytes {
  double kept = 0, dropped = 0;
};

LayerBytes attention_bytes(const ModelConfig& c, Recompute policy) {
  const double h = static_cast<double>(c.hidden_size), heads = static_cast<double>(c.attention.num_heads),
               kv = static_cast<double>(c.attention.num_kv_heads), d = static_cast<double>(c.attention.head_dim);
  // x_in, rstd1 and rstd2; the attention kernel's output and softmax statistics.
  const double always = h * kAct + 2 * kF32;
  const double kernel = heads * d * kAct + heads * kF32;
  // n1, n2, x_mid; q and k before and after their norm and rotation, with the norms' 1/rms; v.
  const double projections = 3 * h * kAct + 2 * (heads + kv) * d * kAct + (heads + kv) * kF32 + kv * d * kAct;
  switch (policy) {
    case Recompute::kNone: return {always + kernel + projections, 0};
    case Recompute::kSelective: return {always + kernel, projections};
    case Recompute::kFull: return {h * kAct, always - h * kAct + kernel + projections};
  }
  return {};
}

// DeepSeek's latent attention (MlaState): selective recomputation keeps all of it but the norms.
LayerBytes mla_bytes(const ModelConfig& c, Recompute policy) {
  const MlaConfig& m = *c.mla;
  const double h = static_cast<double>(c.hidden_size), heads = static_cast<double>(c.attention.num_heads);
  const double q_rank = static_cast<double>(m.q_lora_rank.value_or(0)), kv_rank = static_cast<double>(m.kv_lora_rank);
  // x_in, x_mid, rstd1, rstd2; the latents before and after their norms with 1/rms; q, k, v, the
  // kernel's output and softmax statistics.
  const double block = 2 * h * kAct + 2 * kF32 + 2 * (q_rank + kv_rank) * kAct + (q_rank > 0 ? 2 : 1) * kF32 +
                       heads * (2 * static_cast<double>(m.qk_head_dim()) + 2 * static_cast<double>(m.v_head_dim)) * kAct +
                       heads * kF32;
  const double norms = 2 * h * kAct;  // n1 and n2
  switch (policy) {
    case Recompute::kNone: return {block + norms, 0};
    case Recompute::kSelective: return {block, norms};
    case Recompute::kFull: return {h * kAct, block + norms - h * kAct};
  }
  return {};
}

// `experts_read_inputs` false: the routed experts' backward needs neither their input rows nor their
// activation's output (frozen under LoRA, with no adapters of their own: moe.cpp's backward_reads_input).
// `experts_gather_inputs`: their first product reads the token rows through the permutation itself
// (MoeBlock::gathers_input), so the dispatched rows are not kept (the weight gradient's temporary copy
// of them counts among the MoE backward's rows, plan_training_memory's transient).
LayerBytes ffn_bytes(const ModelConfig& c, const LayerSpec& layer, Recompute policy, bool experts_read_inputs,
                     bool experts_gather_inputs) {
  const double h = static_cast<double>(c.hidden_size);
  // The input product is gate and up (SwiGLU) or up alone (Nemotron-H's relu2).
  const double inputs = c.hidden_act == "relu2" ? 1 : 2;
  auto swiglu = [&](double width, double rows) {  // gate_up_out kept, act dropped by selective
    const LayerBytes none{rows * (inputs + 1) * width * kAct, 0};
    if (policy == Recompute::kNone) return none;
    if (policy == Recompute::kSelective) return LayerBytes{rows * inputs * width * kAct, rows * width * kAct};
    return LayerBytes{0, none.kept};
  };
  if (layer.ffn == LayerSpec::Ffn::kDense) return swiglu(static_cast<double>(c.intermediate_size), 1);
  if (layer.ffn != LayerSpec::Ffn::kMoe) return {};
  const MoeConfig& m = *c.moe;
  const double k = static_cast<double>(m.num_experts_per_tok);
  // The routing stays whatever the policy: probabilities, top-k choices and weights, the permutation.
  const double routing = static_cast<double>(m.num_experts) * kF32 + k * (kI32 + kF32) + 2 * k * kI32;
  LayerBytes experts = swiglu(static_cast<double>(m.expert_intermediate_size), k);
  // The experts' input width: the hidden size, or the latent one (moe_latent_size).
  const double w = m.latent_size ? static_cast<double>(*m.latent_size) : h;
  // The dispatched input rows (dropped by selective) and their weights.
  const double input_rows = experts_read_inputs && !experts_gather_inputs ? k * w * kAct : 0;
  const double rows = input_rows + k * kF32;
  if (policy == Recompute::kNone) experts.kept += rows;
  else if (policy == Recompute::kSelective) experts = {experts.kept + k * kF32, experts.dropped + input_rows};
  else experts.dropped += rows;
  if (!experts_read_inputs)
    (policy == Recompute::kNone ? experts.kept : experts.dropped) -=
        k * static_cast<double>(m.expert_intermediate_size) * kAct;
  // Latent experts also keep their input and their sum per token (MoeState::latent, latent_sum).
  if (m.latent_size) (policy == Recompute::kFull ? experts.dropped : experts.kept) += 2 * w * kAct;
  if (m.shared_expert_intermediate_size > 0) {
    const LayerBytes shared = swiglu(static_cast<double>(m.shared_expert_intermediate_size), 1);
    experts = {experts.kept + shared.kept, experts.dropped + shared.dropped};
  }
  return {routing + experts.kept, experts.dropped};
}

// Nemotron-H's Mamba-2 mixer (MambaState), kept whatever the policy but full: in_proj's parts z,
// xBC and dt, the convolution's output, the scan's output (float32) with the gated norm's 1/rms per
// group, and the norm's output.
double mamba_bytes(const ModelConfig& c) {
  const MambaConfig& m = *c.mamba;
  const double inner = static_cast<double>(m.intermediate_size()), conv = static_cast<double>(m.conv_dim());
  return (2 * inner + 2 * conv + static_cast<double>(m.num_heads)) * kAct + inner * kF32 +
         static_cast<double>(m.n_groups) * kF32;
}

// A Nemotron-H layer: a mixer or a feed-forward block alone, each with its norm. A mixer keeps the
// layer input, its norm's output (rebuilt by selective) and 1/rms; a feed-forward block the same
// around its own norm (its residual is the layer input). Nemotron-H's attention has neither RoPE nor
// q/k norms: q and k are the projections themselves.
LayerBytes half_layer_bytes(const ModelConfig& c, const LayerSpec& layer, Recompute policy, bool experts_read_inputs,
                            bool experts_gather_inputs) {
  const double h = static_cast<double>(c.hidden_size);
  const double skeleton = h * kAct + kF32, normed = h * kAct;
  LayerBytes block;
  if (layer.mixer == LayerSpec::Mixer::kMamba) {
    block = {mamba_bytes(c), 0};
  } else if (layer.mixer == LayerSpec::Mixer::kAttention) {
    const double heads = static_cast<double>(c.attention.num_heads), kv = static_cast<double>(c.attention.num_kv_heads),
                 d = static_cast<double>(c.attention.head_dim);
    const double kernel = heads * d * kAct + heads * kF32, projections = (heads + 2 * kv) * d * kAct;
    block = policy == Recompute::kNone ? LayerBytes{kernel + projections, 0} : LayerBytes{kernel, projections};
  } else {
    block = ffn_bytes(c, layer, policy, experts_read_inputs, experts_gather_inputs);
  }
  switch (policy) {
    case Recompute::kNone: return {skeleton + normed + block.kept, 0};
    case Recompute::kSelective: return {skeleton + block.kept, normed + block.dropped};
    case Recompute::kFull: {
      // The layer input and, for MoE, its routing (ffn_bytes keeps it under every policy).
      const double routing = layer.mixer == LayerSpec::Mixer::kNone ? block.kept : 0;
      return {h * kAct + routing, skeleton - h * kAct + normed + block.kept - routing + block.dropped};
    }
  }
  return {};
}

// The scan's backward works beside the kept activations: every chunk's starting state (fp32, one
// [head_dim, state] per head and 64-row chunk: ops/cuda/mamba.cu) and the fp32 B/C gradient sums.
double mamba_backward_bytes(const ModelConfig& c) {
  if (!c.mamba) return 0;
  const MambaConfig& m = *c.mamba;
  return static_cast<double>(m.num_heads * m.head_dim * m.ssm_state_size) * kF32 / 64 +
         static_cast<double>(2 * m.n_groups * m.ssm_state_size) * kF32;
}

// The elements of the adapters LoRA adds to `c` (arch/lora.h): those of the routed experts (every
// expert's) and the others.
struct AdapterElements {
  double replicated = 0, experts = 0;
};
AdapterElements count_adapters(const ModelConfig& c, const LoraConfig& lora) {
  ModelDescription d = describe_model(c);
  LoraConfig resolved = lora;
  AdapterElements n;
  for (const AdapterTensor& t : add_lora(d, c, resolved)) {
    const ParamEntry& e = d.weights.params.entry(t.param);
    (e.shard_class == ShardClass::kExpert ? n.experts : n.replicated) += static_cast<double>(e.numel());
  }
  return n;
}

// Gradient sharding's memory for the gradients in flight (CausalLM::set_gradient_sink's groups, in
// the backward pass's order: head, layers from the last, embedding), counting the trained elements of
// the classes whose gradients are sharded (the experts' at `experts_share`): on CUDA a group is
// written while the one before it is still being summed on the communication stream, so the largest
// two consecutive groups, and a tied embedding's throughout.
double gradient_groups_in_flight(const ModelConfig& c, const LoraConfig* lora, bool replicated_sharded,
                                 bool experts_sharded, double experts_share) {
  ModelDescription d = describe_model(c);
  if (lora) {
    LoraConfig resolved = *lora;
    add_lora(d, c, resolved);
  }
  const ParameterSet& ps = d.weights.params;
  auto elements = [&](const std::vector<int>& params) {
    double n = 0;
    for (int i : params) {
      if (i < 0 || !ps.trainable(i)) continue;
      const bool expert = ps.entry(i).shard_class == ShardClass::kExpert;
      if (expert ? experts_sharded : replicated_sharded) n += static_cast<double>(ps.entry(i).numel()) * (expert ? experts_share : 1);
    }
    return n;
  };
  const WeightMap& w = d.weights;
  const bool tied = w.lm_head < 0;
  std::vector<double> order = {elements({w.final_norm, w.lm_head})};
  for (size_t l = w.layers.size(); l-- > 0;) order.push_back(elements(w.layers[l].parameters()));
  if (!tied) order.push_back(elements({w.embed}));
  double pair = order.front();
  for (size_t i = 1; i < order.size(); ++i) pair = std::max(pair, order[i - 1] + order[i]);
  return pair + (tied ? elements({w.embed}) : 0);
}

}  // namespace

MemoryPlan plan_training_memory(const ModelConfig& c, const MemoryPlanOptions& o) {
  MF_CHECK(o.gpus >= 1 && o.expert_parallel >= 1 && o.gpus % o.expert_parallel == 0, kInvalidArgument,
           "memory plan: expert_parallel ", o.expert_parallel, " does not divide the ", o.gpus, " GPUs");
  MF_CHECK(o.seq >= 1 && o.micro_batch >= 1, kInvalidArgument, "memory plan: seq and micro_batch must be positive");
  MF_CHECK(!c.moe || c.moe->num_experts >= o.expert_parallel, kInvalidArgument, "memory plan: ", o.expert_parallel,
           " expert-parallel ranks for ", c.moe ? c.moe->num_experts : 0, " experts");
  MemoryPlan plan;
  double replicated = 0, experts = 0;
  for (const CheckpointTensor& t : checkpoint_tensors(c)) {
    if (!t.in_model()) continue;
    (t.role == TensorRole::kRoutedExpert ? experts : replicated) += static_cast<double>(t.numel());
  }
  // The busiest rank holds the larger share when the experts do not split evenly.
  const double experts_share = c.moe ? static_cast<double>((c.moe->num_experts + o.expert_parallel - 1) / o.expert_parallel) /
                                           static_cast<double>(c.moe->num_experts)
                                     : 0;
  // What trains: every parameter, or under LoRA the adapters alone (the base is weights only).
  double trained_replicated = replicated, trained_experts = experts;
  if (o.lora) {
    const AdapterElements adapters = count_adapters(c, *o.lora);
    trained_replicated = adapters.replicated;
    trained_experts = adapters.experts;
  }
  const double trained_here = trained_replicated + trained_experts * experts_share;
  const double params = replicated + experts * experts_share + (o.lora ? trained_here : 0);
  plan.params = static_cast<int64_t>(params);
  plan.weights = params * kAct;
  // The optimizer state is sharded over the ranks that hold copies (AdamW's OptimizerSharding): the
  // replicated parameters over every GPU, a rank's experts over the expert groups; with
  // shard_gradients their gradients too, beside the groups in flight.
  const double expert_groups = static_cast<double>(o.gpus / o.expert_parallel);
  plan.gradients = trained_here * kAct;
  if (o.shard_gradients && o.gpus > 1) {
    const bool experts_sharded = expert_groups > 1;
    plan.gradients = (trained_replicated / static_cast<double>(o.gpus) +
                      trained_experts * experts_share / (experts_sharded ? expert_groups : 1.0) +
                      gradient_groups_in_flight(c, o.lora, true, experts_sharded, experts_share)) *
                     kAct;
  }
  plan.optimizer = (trained_replicated / static_cast<double>(o.gpus) + trained_experts * experts_share / expert_groups) *
                   (o.bytes_per_param - 2 * kAct);
  const bool experts_read_inputs = !o.lora || trained_experts > 0;
  // MoeBlock::gathers_input: experts in this process (one expert-parallel rank), no gate/up bias (GPT-OSS's)
  // and no adapters on them (taken to be so whenever the experts have any).
  const bool experts_gather_inputs = o.expert_parallel == 1 && c.moe &&
                                     c.moe->activation != ExpertActivation::kGptOssClampedSwiGlu &&
                                     (!o.lora || trained_experts == 0);

  const double tokens = static_cast<double>(o.seq * o.micro_batch);
  double kept = 0, largest_rebuilt = 0;
  for (const LayerSpec& layer : c.layers) {
    LayerBytes l;
    if (layer.mixer != LayerSpec::Mixer::kNone && layer.ffn != LayerSpec::Ffn::kNone) {
      const LayerBytes a = c.mla ? mla_bytes(c, o.recompute) : attention_bytes(c, o.recompute);
      const LayerBytes f = ffn_bytes(c, layer, o.recompute, experts_read_inputs, experts_gather_inputs);
      l = {a.kept + f.kept, a.dropped + f.dropped};
    } else {
      l = half_layer_bytes(c, layer, o.recompute, experts_read_inputs, experts_gather_inputs);
    }
    kept += l.kept;
    largest_rebuilt = std::max(largest_rebuilt, l.dropped);
  }
  plan.activations = kept * tokens;
  // Beside the kept activations, at most: a chunk of the loss (up to 1 GiB of logits, ModelOptions::
  // loss_chunk_tokens) or an MoE layer's backward rows (the gradient of the gate/up products beside that
  // of the down projection's input, or beside the input rows' copy where the experts gather them), plus
  // the one layer the policy rebuilds.
  const double loss_chunk = std::min(tokens * static_cast<double>(c.vocab_size) * kAct, double(int64_t{1} << 30));
  double moe_backward = 0;
  if (c.moe)
    moe_backward = tokens * static_cast<double>(c.moe->num_experts_per_tok) *
                   static_cast<double>(c.hidden_size + 2 * c.moe->expert_intermediate_size) * kAct;
  plan.transient = std::max({loss_chunk, moe_backward, mamba_backward_bytes(c) * tokens}) + largest_rebuilt * tokens;
  return plan;
}

}  // namespace moeforge
