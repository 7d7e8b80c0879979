#include "arch/weight_map.h"

#include <algorithm>
#include <utility>

#include "arch/architecture.h"
#include "core/error.h"

namespace moeforge {

namespace {

// A trainable family's every tensor the model holds is bound to a parameter slice of exactly its shape.
void check_bindings(const ModelConfig& config, const ModelDescription& d) {
  if (!d.trainable()) return;
  for (const CheckpointTensor& t : d.tensors) {
    if (!t.held()) continue;
    MF_CHECK(t.slice.param >= 0, kInternal, config.model_type, ": checkpoint tensor ", t.name,
             " is bound to no parameter");
    const Shape have = slice_shape(t.slice, d.weights.params.entry(t.slice.param).shape);
    MF_CHECK(have == t.shape, kInternal, config.model_type, ": checkpoint tensor ", t.name, " ",
             shape_str(t.shape), " is bound to a slice of shape ", shape_str(have));
  }
}

}  // namespace

ModelDescription describe_model(const ModelConfig& config) {
  const Architecture& arch = require_architecture(config.model_type, config.source.string());
  ModelDescription description;
  arch.describe(config, description);
  MF_ASSERT(description.trainable() == arch.trainable);
  check_bindings(config, description);
  return description;
}

void hold_experts(ModelDescription& d, int64_t begin, int64_t end) {
  ParameterSet& ps = d.weights.params;
  for (size_t i = 0; i < ps.size(); ++i)
    if (ps.entry(static_cast<int>(i)).indexes_experts())
      ps.hold_experts(static_cast<int>(i), begin, end);
  for (CheckpointTensor& t : d.tensors) {
    if (t.slice.param < 0 || !ps.entry(t.slice.param).indexes_experts()) continue;
    if (t.slice.expert < 0) {
      t.slice.experts_begin = begin;
      t.slice.experts_end = end;
    } else if (t.slice.expert >= begin && t.slice.expert < end)
      t.slice.expert -= begin;
    else
      t.remote = true;
  }
}

std::vector<LinearSlots*> LayerSlots::lora_linears() {
  AttentionSlots& a = attention;
  MlaSlots& m = mla;
  return {&a.q, &a.k, &a.v, &a.o, &m.q, &m.q_a, &m.q_b, &m.kv_a, &m.kv_b, &m.o,
          &mamba.in_proj, &moe.latent_in, &moe.latent_out};
}

std::vector<const LinearSlots*> LayerSlots::lora_linears() const {
  const std::vector<LinearSlots*> slots = const_cast<LayerSlots*>(this)->lora_linears();
  return {slots.begin(), slots.end()};
}

std::vector<int> LayerSlots::parameters() const {
  std::vector<int> all;
  auto add = [&](std::initializer_list<int> slots) {
    for (int slot : slots)
      if (slot >= 0) all.push_back(slot);
  };
  auto lora = [&](const LoraSlots& l) { add({l.a, l.b}); };
  auto linear = [&](const LinearSlots& l) {
    add({l.weight, l.bias});
    lora(l.lora);
  };
  auto swiglu = [&](const SwiGluSlots& s) {
    add({s.gate_up, s.down, s.gate_up_bias, s.down_bias});
    lora(s.gate_up_lora);
    lora(s.down_lora);
  };
  add({input_norm, post_norm, attention.q_norm, attention.k_norm, attention.sinks, mla.q_a_norm, mla.kv_a_norm,
       mamba.conv_weight, mamba.conv_bias, mamba.dt_bias, mamba.a_log, mamba.d, mamba.norm, moe.router,
       moe.router_bias, moe.shared_gate, moe.score_bias});
  for (const LinearSlots* l : lora_linears()) linear(*l);
  linear(mamba.out_proj);
  lora(moe.router_lora);
  swiglu(mlp);
  swiglu(moe.experts);
  swiglu(moe.shared);
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return all;
}

Shape slice_shape(const ParamSlice& slice, const Shape& param_shape) {
  Shape shape = param_shape;
  if (slice.expert >= 0) shape.erase(shape.begin());
  if (slice.row_end >= 0) shape[0] = slice.row_end - slice.row_begin;
  if (slice.transposed) std::swap(shape[shape.size() - 2], shape[shape.size() - 1]);
  return shape;
}

Tensor slice_view(const ParamSlice& slice, const Tensor& whole) {
  Tensor v = slice.expert >= 0 ? whole.select(0, slice.expert) : whole;
  return slice.row_end >= 0 ? v.slice(0, slice.row_begin, slice.row_end) : v;
}

namespace {

// The last dimension [..., 2h] of a contiguous host tensor regrouped: `to_pairs` takes halves
// [a_0..a_h-1, b_0..b_h-1] to pairs [a_0, b_0, a_1, b_1, ...]; otherwise pairs back to halves.
Tensor regroup_last(const Tensor& t, bool to_pairs) {
  Shape split = t.shape(), whole = t.shape();
  const int64_t n = whole.back();
  MF_CHECK(n % 2 == 0, kShape, "interleaved checkpoint tensor ", shape_str(whole), " has an odd last dimension");
  split.back() = to_pairs ? 2 : n / 2;
  split.push_back(to_pairs ? n / 2 : 2);
  return t.contiguous().view(split).transpose(-2, -1).contiguous().view(whole);
}

}  // namespace

Tensor read_slice(const ParamSlice& slice, const Tensor& whole) {
  Tensor t = slice_view(slice, whole).to(Device::kCPU);
  if (slice.transposed) t = t.transpose(-2, -1);
  if (slice.interleaved) t = regroup_last(t, /*to_pairs=*/true);
  return t.contiguous();
}

Tensor to_slice_layout(const ParamSlice& slice, const Tensor& src) {
  Tensor t = src;
  if (slice.interleaved) t = regroup_last(t, /*to_pairs=*/false);
  if (slice.transposed) t = t.transpose(-2, -1).contiguous();
  return t;
}

}  // namespace moeforge
