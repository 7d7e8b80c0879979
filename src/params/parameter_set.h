// ParameterSet: every tensor of a model as a view into one contiguous parameter buffer, with a
// matching gradient buffer. One buffer each makes the optimizer, gradient clipping and zeroing
// single loops over flat memory, as in llm.c.
//
// Parameters come in sharding classes, each laid out contiguously (in declaration order within it):
//
//   flat params:  [ replicated ............ | expert ............ | frozen ... ]
//   flat grads:   [ replicated ............ | expert ............ ]
//
//   replicated  every data-parallel rank holds all of it; gradients are averaged across ranks
//   expert      dimension 0 indexes experts; with expert parallelism a rank holds a range of them
//   frozen      no gradient and no optimizer state (base weights under LoRA, buffers)
//
// A frozen parameter may be kept in float32 whatever the model's dtype, as Transformers keeps
// DeepSeek-V3's e_score_correction_bias (_keep_in_fp32_modules_strict): those live in a third,
// float32 buffer of their own, outside the flat parameters.
//
// so that an expert-parallel rank's collectives and a sharded optimizer see each class as one span.
//
// Gradient sharding (ZeRO-2) makes a class's gradients transient (stream_grads): no whole buffer
// exists; a backward pass binds memory to a range of the class just before writing its gradients and
// hands it to a GradientSink when they are complete, which keeps only this rank's slice of their sum.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moeforge {

// What a parameter is, for the trainable-parameter report and for freezing groups by flag.
enum class ParamGroup { kEmbedding, kAttention, kRouter, kExperts, kSharedExperts, kDenseMlp, kNorm, kLmHead, kAdapter };
const char* param_group_name(ParamGroup group);

enum class ShardClass { kReplicated, kExpert, kFrozen };
constexpr int kNumShardClasses = 3;
const char* shard_class_name(ShardClass c);

struct ParamEntry {
  std::string name;  // our name: the checkpoint name, or the fused name for stacked experts
  Shape shape;
  ParamGroup group = ParamGroup::kAttention;
  // The Hugging Face Trainer's rule: no weight decay on biases and normalisation weights.
  bool trainer_weight_decay = true;
  ShardClass shard_class = ShardClass::kReplicated;
  int64_t offset = -1;  // in elements, into the flat buffers; set by allocate()
  // An expert parameter with expert parallelism: this process holds experts [first_expert,
  // first_expert + shape[0]) of all_experts (0: all of them, shape[0]).
  int64_t first_expert = 0, all_experts = 0;
  bool keep_fp32 = false;  // frozen, held in flat_fp32_params() (offset into it)
  int64_t numel() const { return shape_numel(shape); }
  // Whether dimension 0 indexes the routed experts, which expert parallelism splits: the expert class,
  // and the routed experts LoRA freezes.
  bool indexes_experts() const {
    return shard_class == ShardClass::kExpert || (shard_class == ShardClass::kFrozen && group == ParamGroup::kExperts);
  }
  // The whole parameter (every expert) that an expert-parallel rank holds experts [first_expert,
  // first_expert + shape[0]) of: the first element held here, and its elements.
  int64_t whole_offset() const { return first_expert == 0 ? 0 : first_expert * (numel() / shape[0]); }
  int64_t whole_numel() const { return all_experts == 0 ? numel() : all_experts * (numel() / shape[0]); }
  // Elements the parameter occupies: each starts 64-aligned so vectorised kernels can treat it alone.
  int64_t padded_numel() const { return (numel() + 63) / 64 * 64; }
};

// A range of the flat buffers, in elements.
struct FlatSpan {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Receives a backward pass's gradients range by range (CausalLM::set_gradient_sink): open() before
// the first gradient of the parameters in `span` (flat coordinates, within one class) is written,
// close() after the last. Between the two, each of them accumulates into its gradient as usual.
class GradientSink {
 public:
  virtual ~GradientSink() = default;
  virtual void open(FlatSpan span) = 0;
  virtual void close(FlatSpan span) = 0;
};

class ParameterSet {
 public:
  // Declares a parameter; returns its index. All declarations come before allocate(). An expert
  // parameter's dimension 0 indexes the experts.
  int add(std::string name, Shape shape, ParamGroup group, bool trainer_weight_decay, ShardClass shard_class);
  // Moves a declared parameter to another class (LoRA freezes the base weights); before allocate().
  void set_shard_class(int i, ShardClass shard_class);
  // Expert parallelism: a parameter that indexes experts keeps experts [begin, end) of its dimension
  // 0; before allocate().
  void hold_experts(int i, int64_t begin, int64_t end);
  // A frozen parameter held in float32 whatever allocate()'s dtype; before allocate().
  void keep_in_fp32(int i);
  // Lays the parameters out class by class and allocates the flat parameter and gradient buffers
  // and the per-parameter views; gradients are zero.
  void allocate(Device device, DType param_dtype, DType grad_dtype);

  size_t size() const { return entries_.size(); }
  const ParamEntry& entry(int i) const { return entries_[i]; }
  const std::vector<ParamEntry>& entries() const { return entries_; }
  const Tensor& param(int i) const { return params_[i]; }
  bool trainable(int i) const { return entries_[i].shard_class != ShardClass::kFrozen; }
  // Undefined for a frozen matrix. A frozen vector (a norm weight, a bias) has a scratch gradient
  // that nothing reads: the norm ops compute their weight's gradient in the pass that computes dx.
  const Tensor& grad(int i) const {
    zero_unwritten(i);
    return grads_[i];
  }
  // The gradient for an op that adds to it.
  Tensor& mutable_grad(int i) {
    zero_unwritten(i);
    return grads_[i];
  }
  // The gradient for an op that writes every element of it: beta is 0 while nothing was written to
  // it since zero_grads() (the op overwrites it without reading it, and from then on it is written),
  // else 1 (the op adds to it). The weight-gradient products take this, so that the first
  // micro-batch of a step neither reads a zeroed buffer nor needs one.
  Tensor& grad_to_write(int i, float& beta);
  const Tensor& flat_params() const { return flat_params_; }
  // The parameters kept in float32 (keep_in_fp32), undefined when there are none.
  const Tensor& flat_fp32_params() const { return flat_fp32_params_; }
  // The stored gradients: those of every trainable (replicated and expert) parameter, flat_params()'s
  // first trainable_numel() elements, less a streamed class's (stream_grads).
  const Tensor& flat_grads() const {
    zero_unwritten(FlatSpan{grads_begin_, grads_begin_ + flat_grads_.numel()});
    return flat_grads_;
  }
  // The stored gradients of `span` (flat coordinates, within a class that is not streamed).
  Tensor stored_grads(FlatSpan span) const;
  // Where a class lies in the flat buffers (after allocate()).
  FlatSpan span(ShardClass c) const { return spans_[static_cast<int>(c)]; }
  int64_t numel() const { return total_; }
  int64_t trainable_numel() const { return span(ShardClass::kExpert).end; }
  // Zeroes the stored gradients. Lazily: a gradient is marked unwritten, and is zeroed when something
  // reads it or adds to it before an op has written it whole (grad_to_write), so that a training step
  // spends no pass over the gradient buffer on zeros its first micro-batch overwrites.
  void zero_grads();

  // ---- gradient sharding (after allocate())
  // Frees class c's gradient buffer (trainable c is replicated or expert). Its parameters' gradients
  // are undefined except while bind_grads() gives them memory; every stored gradient is zeroed.
  // keep_grads() restores the buffer, zero, and the other class keeps its gradients.
  void stream_grads(ShardClass c);
  void keep_grads(ShardClass c);
  bool streams_grads(ShardClass c) const { return streamed_[static_cast<int>(c)]; }
  // Points the gradient of every parameter within `span` (a range of a streamed class that starts and
  // ends at parameter boundaries) into `memory` (span.size() elements, at its offset from span.begin);
  // unbind_grads() leaves them undefined again.
  void bind_grads(FlatSpan span, const Tensor& memory);
  void unbind_grads(FlatSpan span);

 private:
  // (Re)allocates the buffer of the classes whose gradients are stored and points their views into
  // it; with keep_values, what the old buffer held of them stays.
  void allocate_stored_grads(Device device, DType grad_dtype, bool keep_values);
  // The trainable parameters whose first element lies in `span`.
  std::vector<int> params_in(FlatSpan span) const;
  // Zeroes the unwritten gradients (zero_grads) of parameter i, or of those in `span`. Const: an
  // unwritten gradient is zero to every reader; only its memory is behind.
  void zero_unwritten(int i) const;
  void zero_unwritten(FlatSpan span) const;

  std::vector<ParamEntry> entries_;
  std::vector<Tensor> params_, grads_;
  Tensor flat_params_, flat_grads_, discarded_grads_, flat_fp32_params_;
  FlatSpan spans_[kNumShardClasses];
  bool streamed_[kNumShardClasses] = {};
  mutable std::vector<char> unwritten_;  // per parameter: its stored gradient is zero but not in memory
  mutable int64_t unwritten_count_ = 0;
  int64_t stored_count_ = 0;  // parameters whose gradients are stored, as of zero_grads()
  int64_t grads_begin_ = 0;  // the flat offset of flat_grads_'s first element
  int64_t total_ = 0;
};

}  // namespace moeforge
