// AdamW with torch.optim.AdamW's exact semantics (decoupled weight decay applied before the moment
// update, bias-corrected moments, eps added after the square root of the corrected second moment),
// over a ParameterSet's flat buffers. Precision modes, named once:
//   fp32-master   bf16 weights and gradients, fp32 master weights and moments: 16 bytes/param (default)
//   bf16-weights  bf16 weights, fp32 moments, no master copy:                  12 bytes/param
//   bf16-state    bf16 weights and moments, as Transformers trains in bf16:      8 bytes/param
// On the CPU backend weights are float32 and are their own master copy (fp32 moments in every mode).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "params/parameter_set.h"

namespace moeforge {

// The optimizer.safetensors metadata key of AdamW::shard_metadata().
inline constexpr const char* kOptimizerShardsKey = "moeforge.optimizer_shards";

enum class OptimizerPrecision { kFp32Master, kBf16Weights, kBf16State };
const char* optimizer_precision_name(OptimizerPrecision p);
OptimizerPrecision parse_optimizer_precision(const std::string& name);
int optimizer_precision_bytes_per_param(OptimizerPrecision p);

struct AdamWConfig {  // torch.optim.AdamW's defaults
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

// Data parallelism for the optimizer, as Megatron's distributed optimizer: the ranks that hold copies
// of a sharding class split it into consecutive slices; each rank receives its slice's gradient
// summed over the copies (a reduce-scatter, not an all-reduce), keeps the optimizer state of that
// slice alone (ZeRO stage 1), updates it, and sends it to the other copies (an all-gather). The
// gradient buffer stays whole, as micro-batches accumulate into it, unless `shard_gradients`
// (ZeRO stage 2): then a shared class has no whole gradient buffer. The backward pass hands each
// layer's gradients over as it completes them (AdamW is the model's GradientSink), their sum over
// the copies is reduce-scattered at once, and each rank accumulates its slice alone. On CUDA that
// runs on the communication stream, while the next layer's backward computes, over a communicator
// of its own (a split of the copies: the model's collectives on the compute stream use the
// others). Null or one-rank groups: this process holds the class alone.
struct OptimizerSharding {
  ProcessGroup* replicated_copies = nullptr;  // the ranks holding the replicated parameters (the data group)
  ProcessGroup* expert_copies = nullptr;      // the ranks holding this rank's experts (its expert group's replicas)
  // Every rank of the run: their slices together hold each trainable element once (the gradient norm).
  ProcessGroup* everyone = nullptr;
  bool shard_gradients = false;  // ZeRO-2 for the classes that have copies
};

// Elements [begin, end) of a parameter whose every expert, flattened, has `of` elements.
struct ElementRange {
  int64_t begin = 0, end = 0, of = 0;
};

class AdamW : public GradientSink {
 public:
  // `decay[i]`: whether parameter i gets weight decay; `trainable[i]`: false freezes it (a parameter
  // of the frozen sharding class must be false).
  AdamW(ParameterSet& params, AdamWConfig config, OptimizerPrecision precision,
        std::vector<bool> decay, std::vector<bool> trainable, OptimizerSharding sharding = {});
  // Gives the parameters back their whole gradient buffers (with sharded gradients).
  ~AdamW() override;
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // Zeroes every gradient this optimizer reads: the stored buffers and the sharded gradients.
  void zero_grad();
  // Whether some class's gradients are sharded: the model must hand them over (set_gradient_sink).
  bool shards_gradients() const;
  // GradientSink, with sharded gradients: open() gives `span` zeroed memory for one micro-batch's
  // gradients; close() sums them over the copies into this rank's slice (a class that is not sharded:
  // nothing to do).
  void open(FlatSpan span) override;
  void close(FlatSpan span) override;
  // Ends gradient sharding for a caller that reads every gradient (moeforge step): each sharded class's
  // buffer comes back, holding on every copy the gradients summed over the copies (what
  // reduce_gradients() gives a slice of), and the model must have no sink from here on.
  void gather_gradients();

  // Sums the gradients of this rank's slices over their copies (the rest of the gradient buffer is
  // left stale: only the slices are read from here on). Sharded gradients were summed as they came.
  void reduce_gradients();
  // sqrt(sum of squares of every gradient) after reduce_gradients(), accumulated in double, each
  // element counted once over the run: the same on every rank.
  double grad_norm() const;
  // One update of this rank's slices with learning rate `lr`, then every copy receives them. The
  // update reads every gradient times grad_scale (clip_coefficient's; the stored gradients keep
  // their values).
  void step(double lr, double grad_scale = 1.0);
  int64_t steps_taken() const { return step_; }
  const AdamWConfig& config() const { return config_; }

  // Bytes of optimizer state on the device (moments, master copy and sharded gradients).
  int64_t state_bytes() const;

  // The optimizer state of this rank's slices for checkpoints, per parameter by its name:
  // "<name>.exp_avg", "<name>.exp_avg_sq" and, with a master copy, "<name>.master" (views into the
  // state's buffers). `with_weights` adds float32 weights that are their own master copy as
  // "<name>.master" (for a checkpoint whose model file rounds them). A parameter this rank holds
  // whole comes in its shape, a part of one flat; owned_ranges() says which elements. By name, not
  // by offset: state can be matched to parameters however they are laid out or sharded.
  std::map<std::string, Tensor> state(bool with_weights = false) const;
  // Loads state() as saved: each key holds this rank's elements of the parameter (owned_ranges()),
  // or the whole parameter (of which they are taken), or the flat "exp_avg"/"exp_avg_sq"/"master"
  // tensors of older checkpoints. Names the missing, misshapen or unknown key. With copies, every
  // rank calls it: the slices' weights are shared afterwards.
  void load_state(const std::map<std::string, Tensor>& state, int64_t step);

  // Which elements of each parameter this rank keeps state for, counted in the whole parameter
  // (every expert, flattened): parameters with no element here are absent.
  std::map<std::string, ElementRange> owned_ranges() const;
  // owned_ranges() for the checkpoint's metadata under kOptimizerShardsKey (optimizer_files.h):
  // {"format": 2, "parameters": {"<name>": {"elements": [begin, end], "of": N}}}.
  std::string shard_metadata() const;

 private:
  // A sharding class's slice on this rank: where it lies in the flat buffers and in the state's.
  struct Slice {
    ShardClass shard_class = ShardClass::kReplicated;
    ProcessGroup* copies = nullptr;  // null: no other rank holds this class
    std::vector<int64_t> parts;      // every copy's slice, in elements, in rank order
    FlatSpan span;                   // the class in the flat buffers
    FlatSpan owned;                  // this rank's slice of it
    int64_t state_begin = 0;         // where the slice's state starts
    Tensor update_spans;             // [S, 3] int64 on the device, relative to `owned` (ops::adamw_update)
    // With sharded gradients: the gradient of `owned`, summed over the copies and the micro-batches;
    // on CUDA they are summed over a split of `copies` of their own (the communication stream's).
    Tensor grad_shard;
    std::shared_ptr<ProcessGroup> gradient_split;
    ProcessGroup& gradient_copies() const { return gradient_split ? *gradient_split : *copies; }
  };
  // Parameter i's elements in this rank's slices: flat-buffer range and state offset (empty: none).
  struct OwnedPart {
    FlatSpan flat;
    int64_t state_begin = 0;
  };
  OwnedPart owned_part(int i) const;
  Tensor owned_grads(const Slice& s) const;  // the gradient of s.owned
  // The current stream waits for the sharded gradients' sums queued on the communication stream.
  void wait_for_gradient_sums() const;
  Slice* sharded_slice_of(FlatSpan span);    // the slice whose class holds `span`, if its gradients are sharded
  Tensor state_of(const Tensor& buffer, int i) const;  // a view of parameter i's owned state

  ParameterSet& params_;
  AdamWConfig config_;
  OptimizerPrecision precision_;
  std::vector<bool> decay_, trainable_;
  ProcessGroup* everyone_ = nullptr;
  std::vector<Slice> slices_;  // the replicated and the expert class
  Tensor master_;   // fp32 weights in fp32-master mode with bf16 parameters, else undefined
  Tensor exp_avg_, exp_avg_sq_;
  std::map<int64_t, Tensor> open_windows_;  // sharded gradients' memory of the open spans, by span.begin
  mutable bool sums_queued_ = false;        // close() queued work on the communication stream
  int64_t step_ = 0;
};

// torch.nn.utils.clip_grad_norm_'s factor for gradients of norm `norm`: max_norm / (norm + 1e-6)
// where that is < 1, else 1. AdamW::step takes it.
double clip_coefficient(double norm, double max_norm);

// The name of the first parameter holding a NaN or Inf, or empty when every weight is finite.
std::string first_non_finite_parameter(const ParameterSet& params);

}  // namespace moeforge
