#include "arch/weight_map.h"

#include "arch/architecture.h"
#include "core/error.h"

namespace moeforge {

namespace {

// A trainable family's every tensor the model holds is bound to a parameter slice of exactly its shape.
void check_bindings(const ModelConfig& config, const ModelDescription& d) {
  if (!d.trainable()) return;
  for (const CheckpointTensor& t : d.tensors) {
    if (!t.in_model()) continue;
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

std::vector<LinearSlots*> LayerSlots::attention_projections() {
  AttentionSlots& a = attention;
  MlaSlots& m = mla;
  return {&a.q, &a.k, &a.v, &a.o, &m.q, &m.q_a, &m.q_b, &m.kv_a, &m.kv_b, &m.o};
}

std::vector<const LinearSlots*> LayerSlots::attention_projections() const {
  const std::vector<LinearSlots*> slots = const_cast<LayerSlots*>(this)->attention_projections();
  return {slots.begin(), slots.end()};
}

Shape slice_shape(const ParamSlice& slice, const Shape& param_shape) {
  Shape shape = param_shape;
  if (slice.expert >= 0) shape.erase(shape.begin());
  if (slice.row_end >= 0) shape[0] = slice.row_end - slice.row_begin;
  return shape;
}

Tensor slice_view(const ParamSlice& slice, const Tensor& whole) {
  Tensor v = slice.expert >= 0 ? whole.select(0, slice.expert) : whole;
  return slice.row_end >= 0 ? v.slice(0, slice.row_begin, slice.row_end) : v;
}

}  // namespace moeforge
