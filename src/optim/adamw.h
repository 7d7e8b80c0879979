// AdamW with torch.optim.AdamW's exact semantics (decoupled weight decay applied before the moment
// update, bias-corrected moments, eps added after the square root of the corrected second moment),
// over a ParameterSet's flat buffers. Precision modes, named once:
//   fp32-master   bf16 weights and gradients, fp32 master weights and moments: 16 bytes/param (default)
//   bf16-weights  bf16 weights, fp32 moments, no master copy:                  12 bytes/param
//   bf16-state    bf16 weights and moments, as Transformers trains in bf16:      8 bytes/param
// On the CPU backend weights are float32 and are their own master copy (fp32 moments in every mode).
#pragma once

#include <map>
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

class AdamW {
 public:
  // `decay[i]`: whether parameter i gets weight decay; `trainable[i]`: false freezes it (a parameter
  // of the frozen sharding class must be false).
  AdamW(ParameterSet& params, AdamWConfig config, OptimizerPrecision precision,
        std::vector<bool> decay, std::vector<bool> trainable);

  // One update with learning rate `lr` from the gradients in params.
  void step(double lr);
  int64_t steps_taken() const { return step_; }
  const AdamWConfig& config() const { return config_; }

  // Bytes of optimizer state on the device (moments and master copy).
  int64_t state_bytes() const;

  // Optimizer state for checkpoints, per parameter by its name: "<name>.exp_avg", "<name>.exp_avg_sq"
  // and, with a master copy, "<name>.master" (views into the state's buffers). `with_weights` adds
  // float32 weights that are their own master copy as "<name>.master" (for a checkpoint whose model
  // file rounds them). By name, not by offset: state can be matched to parameters however they
  // are laid out or sharded.
  // `with_replicated` false leaves out every parameter but the experts (what an expert-parallel rank
  // other than the first writes: the replicated state is the same on every rank).
  std::map<std::string, Tensor> state(bool with_weights = false, bool with_replicated = true) const;
  // Loads state() as saved (or the flat "exp_avg"/"exp_avg_sq"/"master" tensors of older
  // checkpoints); names the missing, misshapen or unknown key.
  void load_state(const std::map<std::string, Tensor>& state, int64_t step);

  // How the state of expert parameters is sharded, for the checkpoint's metadata under
  // kOptimizerShardsKey: {"format": 1, "expert_parameters": {"<name>": {"experts": [first, end],
  // "of": E}}}: all of them ([0, E) of E) in a single process, its own range with expert
  // parallelism. read_optimizer_state (optimizer_files.h) joins and splits ranges by these.
  std::string shard_metadata() const;

 private:
  // The replicated and expert weights: frozen parameters, last in the flat buffer, have no state.
  Tensor trainable_weights() const;

  ParameterSet& params_;
  AdamWConfig config_;
  OptimizerPrecision precision_;
  std::vector<bool> decay_, trainable_;
  Tensor spans_;    // [S, 3] int64 on the device: the trainable element ranges (ops::adamw_update)
  Tensor master_;   // fp32 weights in fp32-master mode with bf16 parameters, else undefined
  Tensor exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
};

// sqrt(sum of squares of every gradient), accumulated in double. With an expert-parallel group of
// several ranks (gradients already summed over the data-parallel ranks): each parameter counted
// once, the experts' squares summed over the group; the same value on every rank.
double global_grad_norm(const ParameterSet& params, ProcessGroup* expert_group = nullptr);
// torch.nn.utils.clip_grad_norm_: scales gradients by max_norm / (norm + 1e-6) when that is < 1.
// Returns the norm before clipping.
double clip_grad_norm(ParameterSet& params, double max_norm);
// The same with the norm already computed by global_grad_norm.
void clip_grad_norm_to(ParameterSet& params, double norm, double max_norm);

// The name of the first parameter holding a NaN or Inf, or empty when every weight is finite.
std::string first_non_finite_parameter(const ParameterSet& params);

}  // namespace moeforge
