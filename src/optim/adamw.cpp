#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>

#include "core/cuda/stream.h"
#include "core/error.h"
#include "io/json.h"
#include "ops/dense.h"
#include "ops/optim.h"
#include "ops/profile.h"

namespace moeforge {

const char* optimizer_precision_name(OptimizerPrecision p) {
  switch (p) {
    case OptimizerPrecision::kFp32Master: return "fp32-master";
    case OptimizerPrecision::kBf16Weights: return "bf16-weights";
    case OptimizerPrecision::kBf16State: return "bf16-state";
  }
  return "?";
}

OptimizerPrecision parse_optimizer_precision(const std::string& name) {
  for (auto p : {OptimizerPrecision::kFp32Master, OptimizerPrecision::kBf16Weights,
                 OptimizerPrecision::kBf16State})
    if (name == optimizer_precision_name(p)) return p;
  fail(ErrorCode::kInvalidArgument, "unknown optimizer precision '", name,
       "' (fp32-master, bf16-weights or bf16-state)");
}

int optimizer_precision_bytes_per_param(OptimizerPrecision p) {
  switch (p) {
    case OptimizerPrecision::kFp32Master: return 16;  // bf16 w + bf16 g + fp32 master + 2 x fp32 moments
    case OptimizerPrecision::kBf16Weights: return 12;  // bf16 w + bf16 g + 2 x fp32 moments
    case OptimizerPrecision::kBf16State: return 8;     // bf16 w + bf16 g + 2 x bf16 moments
  }
  return 0;
}

namespace {

// Spans are cut to this many elements so that one launch spreads even a few huge expert tensors
// over every multiprocessor (one block per span).
constexpr int64_t kSpanElements = 1 << 16;
// Ranks' slices of a class are cut at parameter-padding granularity, so each slice starts aligned
// and every update span within it stays a multiple of 8 long.
constexpr int64_t kSliceGranule = 64;

std::string state_key(const std::string& param, const char* kind) { return str_cat(param, ".", kind); }

}  // namespace

AdamW::AdamW(ParameterSet& params, AdamWConfig config, OptimizerPrecision precision,
             std::vector<bool> decay, std::vector<bool> trainable, OptimizerSharding sharding)
    : params_(params), config_(config), precision_(precision), decay_(std::move(decay)),
      trainable_(std::move(trainable)), everyone_(sharding.everyone) {
  MF_CHECK(decay_.size() == params.size() && trainable_.size() == params.size(), kInvalidArgument,
           "AdamW: one decay and trainable flag per parameter");
  // Sharded gradients belong to the optimizer that shards them: a second one would read none.
  MF_CHECK(!params.streams_grads(ShardClass::kReplicated) && !params.streams_grads(ShardClass::kExpert),
           kInvalidArgument, "AdamW: another optimizer still shards this model's gradients (a Trainer with "
           "zero_stage 2 that is still alive); let it go before making another");
  for (size_t i = 0; i < params.size(); ++i)
    MF_CHECK(!trainable_[i] || params.entry(static_cast<int>(i)).shard_class != ShardClass::kFrozen, kInvalidArgument,
             "AdamW: parameter ", params.entry(static_cast<int>(i)).name, " is frozen and cannot be trained");
  const Tensor& flat = params.flat_params();
  const Device dev = flat.device();
  int64_t state_numel = 0;
  for (ShardClass c : {ShardClass::kReplicated, ShardClass::kExpert}) {
    Slice s;
    s.shard_class = c;
    s.span = params.span(c);
    ProcessGroup* copies = c == ShardClass::kReplicated ? sharding.replicated_copies : sharding.expert_copies;
    if (copies != nullptr && copies->size() > 1) s.copies = copies;
    const int ranks = s.copies ? s.copies->size() : 1, rank = s.copies ? s.copies->rank() : 0;
    const int64_t granules = s.span.size() / kSliceGranule;
    for (int r = 0; r < ranks; ++r)
      s.parts.push_back((split_begin(granules, ranks, r + 1) - split_begin(granules, ranks, r)) * kSliceGranule);
    s.owned.begin = s.span.begin + split_begin(granules, ranks, rank) * kSliceGranule;
    s.owned.end = s.owned.begin + s.parts[rank];
    s.state_begin = state_numel;
    state_numel += s.owned.size();
    // Each parameter starts 64-aligned with zero padding after it, so its span may cover the
    // padding (zero gradients keep zero weights) and stay a multiple of 8 long.
    std::vector<int64_t> spans;
    for (size_t i = 0; i < params.size(); ++i) {
      const ParamEntry& e = params.entry(static_cast<int>(i));
      if (!trainable_[i] || e.shard_class != c) continue;
      const int64_t begin = std::max(e.offset, s.owned.begin), end = std::min(e.offset + e.padded_numel(), s.owned.end);
      for (int64_t b = begin; b < end; b += kSpanElements)
        spans.insert(spans.end(), {b - s.owned.begin, std::min(b + kSpanElements, end) - s.owned.begin, decay_[i] ? 1 : 0});
    }
    s.update_spans = Tensor::from_vector(spans, {static_cast<int64_t>(spans.size() / 3), 3}).to(dev);
    if (sharding.shard_gradients && s.copies != nullptr && s.span.size() > 0) {
      params.stream_grads(c);
      s.grad_shard = Tensor::zeros({s.owned.size()}, params.flat_grads().dtype(), dev, "sharded gradients");
      // NCCL runs one communicator's collectives in the order each GPU reaches them: sums on the
      // communication stream beside the model's own collectives on the compute stream need their own.
      if (dev == Device::kCUDA) s.gradient_split = s.copies->split(0, s.copies->rank());
    }
    slices_.push_back(std::move(s));
  }

  // The CPU backend's float32 weights are their own master copy in every mode.
  if (flat.dtype() != DType::kF32 && precision_ == OptimizerPrecision::kFp32Master) {
    master_ = Tensor::empty({state_numel}, DType::kF32, dev, "AdamW master");
    // In pieces: a whole class cast at once would need its fp32 size again, transiently.
    constexpr int64_t kCastElements = int64_t{1} << 26;
    for (const Slice& s : slices_)
      for (int64_t b = s.owned.begin; b < s.owned.end; b += kCastElements) {
        const int64_t e = std::min(b + kCastElements, s.owned.end), at = s.state_begin + (b - s.owned.begin);
        master_.slice(0, at, at + (e - b)).copy_from(ops::cast(flat.slice(0, b, e), DType::kF32));
      }
  }
  const DType state_dtype = dev != Device::kCPU && precision_ == OptimizerPrecision::kBf16State
                                ? DType::kBF16 : DType::kF32;
  exp_avg_ = Tensor::zeros({state_numel}, state_dtype, dev, "AdamW exp_avg");
  exp_avg_sq_ = Tensor::zeros({state_numel}, state_dtype, dev, "AdamW exp_avg_sq");
}

AdamW::~AdamW() {
  wait_for_gradient_sums();  // the shards' memory goes back to the compute stream's pool
  for (const auto& [begin, window] : open_windows_) params_.unbind_grads({begin, begin + window.numel()});
  for (const Slice& s : slices_)
    if (s.grad_shard.defined()) params_.keep_grads(s.shard_class);
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = static_cast<int64_t>(exp_avg_.nbytes() + exp_avg_sq_.nbytes());
  if (master_.defined()) bytes += static_cast<int64_t>(master_.nbytes());
  for (const Slice& s : slices_)
    if (s.grad_shard.defined()) bytes += static_cast<int64_t>(s.grad_shard.nbytes());
  return bytes;
}

void AdamW::wait_for_gradient_sums() const {
  if (!sums_queued_) return;
  stream_wait(current_stream(), comm_stream());
  sums_queued_ = false;
}

void AdamW::zero_grad() {
  wait_for_gradient_sums();
  params_.zero_grads();
  for (Slice& s : slices_)
    if (s.grad_shard.defined()) s.grad_shard.fill_zero();
}

bool AdamW::shards_gradients() const {
  return std::any_of(slices_.begin(), slices_.end(), [](const Slice& s) { return s.grad_shard.defined(); });
}

AdamW::Slice* AdamW::sharded_slice_of(FlatSpan span) {
  for (Slice& s : slices_)
    if (s.grad_shard.defined() && s.span.begin <= span.begin && span.end <= s.span.end) return &s;
  return nullptr;
}

void AdamW::open(FlatSpan span) {
  if (sharded_slice_of(span) == nullptr || span.size() == 0) return;
  MF_ASSERT(open_windows_.count(span.begin) == 0);
  Tensor window = Tensor::zeros({span.size()}, params_.flat_grads().dtype(), params_.flat_params().device(),
                                "gradient window");
  params_.bind_grads(span, window);
  open_windows_.emplace(span.begin, std::move(window));
}

void AdamW::close(FlatSpan span) {
  Slice* s = sharded_slice_of(span);
  if (s == nullptr || span.size() == 0) return;
  auto it = open_windows_.find(span.begin);
  MF_ASSERT(it != open_windows_.end() && it->second.numel() == span.size());
  Tensor window = std::move(it->second);
  open_windows_.erase(it);
  params_.unbind_grads(span);
  // The copies' slices cut `span` into consecutive parts, in rank order (some empty).
  std::vector<int64_t> parts;
  int64_t part_begin = s->span.begin;
  for (int r = 0; r < static_cast<int>(s->parts.size()); part_begin += s->parts[r++]) {
    const int64_t begin = std::max(part_begin, span.begin), end = std::min(part_begin + s->parts[r], span.end);
    parts.push_back(std::max<int64_t>(0, end - begin));
  }
  const int rank = s->copies->rank();
  const int64_t mine = std::accumulate(parts.begin(), parts.begin() + rank, int64_t{0}), count = parts[rank];
  auto sum = [&] {
    {
      const ops::OpTimer timer(ops::OpCategory::kDataParallel);  // the benchmark's split
      s->gradient_copies().reduce_scatter_sum(window, parts);
    }
    if (count == 0) return;
    const int64_t at = std::max(span.begin, s->owned.begin) - s->owned.begin;
    Tensor shard = s->grad_shard.slice(0, at, at + count);
    ops::add_inplace(shard, window.slice(0, mine, mine + count));
  };
  if (window.device() != Device::kCUDA) return sum();
  // On the communication stream once the window's gradients are written, while the backward pass
  // goes on; the window's memory is reused only after the sum has read it.
  stream_wait(comm_stream(), current_stream());
  {
    const StreamGuard on_comm(comm_stream());
    sum();
  }
  record_stream(window, comm_stream());
  sums_queued_ = true;
}

void AdamW::gather_gradients() {
  MF_ASSERT(open_windows_.empty());
  wait_for_gradient_sums();
  for (Slice& s : slices_) {
    if (!s.grad_shard.defined()) continue;
    params_.keep_grads(s.shard_class);
    params_.stored_grads(s.owned).copy_from(s.grad_shard);
    Tensor whole = params_.stored_grads(s.span);
    s.copies->all_gather_parts(whole, s.parts);
    s.grad_shard = Tensor();
  }
}

Tensor AdamW::owned_grads(const Slice& s) const {
  return s.grad_shard.defined() ? s.grad_shard : params_.stored_grads(s.owned);
}

void AdamW::reduce_gradients() {
  for (Slice& s : slices_) {
    if (s.copies == nullptr || s.grad_shard.defined()) continue;
    Tensor grads = params_.stored_grads(s.span);
    const ops::OpTimer timer(ops::OpCategory::kDataParallel);
    s.copies->reduce_scatter_sum(grads, s.parts);
  }
}

double AdamW::grad_norm() const {
  wait_for_gradient_sums();
  if (everyone_ == nullptr || everyone_->size() == 1) return std::sqrt(ops::sum_of_squares(params_.flat_grads()));
  double squares = 0;
  for (const Slice& s : slices_)
    if (s.owned.size() > 0) squares += ops::sum_of_squares(owned_grads(s));
  return std::sqrt(sum_over_ranks(*everyone_, squares));
}

void AdamW::step(double lr, double grad_scale) {
  wait_for_gradient_sums();
  ++step_;
  const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(step_));
  // torch (single-tensor, foreach and fused paths agree): p *= 1 - lr*wd; m = b1 m + (1-b1) g;
  // v = b2 v + (1-b2) g^2; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
  ops::AdamWHyper h{static_cast<float>(lr),
                    static_cast<float>(config_.beta1),
                    static_cast<float>(config_.beta2),
                    static_cast<float>(config_.eps),
                    static_cast<float>(config_.weight_decay),
                    static_cast<float>(lr / bc1),
                    static_cast<float>(std::sqrt(bc2)),
                    static_cast<float>(grad_scale)};
  for (const Slice& s : slices_) {
    if (s.update_spans.size(0) == 0) continue;
    const int64_t b = s.state_begin, e = s.state_begin + s.owned.size();
    Tensor weights = params_.flat_params().slice(0, s.owned.begin, s.owned.end);
    Tensor master = master_.defined() ? master_.slice(0, b, e) : Tensor();
    Tensor exp_avg = exp_avg_.slice(0, b, e), exp_avg_sq = exp_avg_sq_.slice(0, b, e);
    ops::adamw_update(weights, owned_grads(s), master, exp_avg, exp_avg_sq, s.update_spans, h);
  }
  for (Slice& s : slices_) {
    if (s.copies == nullptr) continue;
    Tensor weights = params_.flat_params().slice(0, s.span.begin, s.span.end);
    const ops::OpTimer timer(ops::OpCategory::kDataParallel);
    s.copies->all_gather_parts(weights, s.parts);
  }
}

AdamW::OwnedPart AdamW::owned_part(int i) const {
  const ParamEntry& e = params_.entry(i);
  for (const Slice& s : slices_) {
    if (e.offset < s.span.begin || e.offset >= s.span.end) continue;
    const int64_t begin = std::max(e.offset, s.owned.begin), end = std::min(e.offset + e.numel(), s.owned.end);
    if (begin < end) return {{begin, end}, s.state_begin + (begin - s.owned.begin)};
  }
  return {};
}

Tensor AdamW::state_of(const Tensor& buffer, int i) const {
  const OwnedPart part = owned_part(i);
  const Tensor t = buffer.slice(0, part.state_begin, part.state_begin + part.flat.size());
  return part.flat.size() == params_.entry(i).numel() ? t.view(params_.entry(i).shape) : t;
}

std::map<std::string, Tensor> AdamW::state(bool with_weights) const {
  std::map<std::string, Tensor> state;
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    const ParamEntry& e = params_.entry(i);
    const OwnedPart part = owned_part(i);
    if (e.shard_class == ShardClass::kFrozen || part.flat.size() == 0) continue;
    state.emplace(state_key(e.name, "exp_avg"), state_of(exp_avg_, i));
    state.emplace(state_key(e.name, "exp_avg_sq"), state_of(exp_avg_sq_, i));
    if (master_.defined()) {
      state.emplace(state_key(e.name, "master"), state_of(master_, i));
    } else if (with_weights && params_.flat_params().dtype() == DType::kF32) {
      const Tensor w = params_.flat_params().slice(0, part.flat.begin, part.flat.end);
      state.emplace(state_key(e.name, "master"), part.flat.size() == e.numel() ? w.view(e.shape) : w);
    }
  }
  return state;
}

void AdamW::load_state(const std::map<std::string, Tensor>& state, int64_t step) {
  // Checkpoints before per-parameter state held each kind as one flat tensor, every parameter at its
  // 64-aligned place in declaration order (before parameters were laid out by sharding class).
  const bool flat_layout = state.count("exp_avg") != 0;
  std::vector<int64_t> declared_offset;
  for (int64_t offset = 0; const ParamEntry& e : params_.entries()) {
    declared_offset.push_back(offset);
    offset += e.padded_numel();
  }
  // Copies this rank's elements of parameter i's `kind` into `into` (flat, those elements).
  auto load = [&](int i, const char* kind, Tensor into) {
    const ParamEntry& e = params_.entry(i);
    const std::string key = flat_layout ? std::string(kind) : state_key(e.name, kind);
    auto it = state.find(key);
    MF_CHECK(it != state.end(), kFormat, "optimizer state lacks '", key, "'");
    Tensor src = it->second.to(Device::kCPU);
    if (flat_layout) {
      MF_CHECK(src.numel() == params_.numel(), kShape, "optimizer state '", key, "' has ", src.numel(),
               " elements, the model has ", params_.numel());
      const int64_t at = declared_offset[i];
      src = src.view({src.numel()}).slice(0, at, at + e.numel()).view(e.shape);
    }
    const OwnedPart part = owned_part(i);
    const bool whole_here = part.flat.size() == e.numel();
    const int64_t begin = part.flat.begin - e.offset, end = part.flat.end - e.offset;
    // The whole parameter in its shape, or (held in part) this rank's elements, flat.
    const bool whole = src.shape() == e.shape, mine = !whole_here && src.dim() == 1 && src.numel() == end - begin;
    MF_CHECK(whole || mine, kShape, "optimizer state '", key, "' has shape ", shape_str(src.shape()), ", the parameter ",
             shape_str(e.shape), whole_here ? "" : str_cat(" (of which this process holds elements [", begin, ", ", end, "))"));
    Tensor elements = src.contiguous().view({src.numel()});
    if (whole && !whole_here) elements = elements.slice(0, begin, end);
    into.copy_from(elements.to(into.dtype()).contiguous());
  };
  std::set<std::string> known;
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    const ParamEntry& e = params_.entry(i);
    if (e.shard_class == ShardClass::kFrozen) continue;
    for (const char* kind : {"exp_avg", "exp_avg_sq", "master"}) known.insert(state_key(e.name, kind));
    const OwnedPart part = owned_part(i);
    if (part.flat.size() == 0) continue;
    auto state_part = [&](const Tensor& buffer) { return buffer.slice(0, part.state_begin, part.state_begin + part.flat.size()); };
    load(i, "exp_avg", state_part(exp_avg_));
    load(i, "exp_avg_sq", state_part(exp_avg_sq_));
    const bool has_master = state.count(flat_layout ? std::string("master") : state_key(e.name, "master")) != 0;
    const Tensor weights = params_.flat_params().slice(0, part.flat.begin, part.flat.end);
    if (master_.defined()) {
      // A checkpoint written in another precision mode has no master copy: the weights are one.
      if (has_master) load(i, "master", state_part(master_));
      else state_part(master_).copy_from(ops::cast(weights, DType::kF32));
    } else if (has_master && params_.flat_params().dtype() == DType::kF32) {
      // Float32 weights are their own master copy; a checkpoint that saved the model in a narrower
      // dtype keeps their exact values here.
      load(i, "master", weights);
    }
  }
  if (!flat_layout)
    for (const auto& [key, tensor] : state)
      MF_CHECK(known.count(key) != 0, kFormat, "optimizer state '", key, "' belongs to no parameter of this model");
  step_ = step;
  // Exact float32 weights came with this rank's slices only; the copies of the others still hold
  // what the model file rounded until their owners send them.
  for (Slice& s : slices_) {
    if (s.copies == nullptr) continue;
    Tensor weights = params_.flat_params().slice(0, s.span.begin, s.span.end);
    s.copies->all_gather_parts(weights, s.parts);
  }
}

std::map<std::string, ElementRange> AdamW::owned_ranges() const {
  std::map<std::string, ElementRange> ranges;
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    const ParamEntry& e = params_.entry(i);
    const OwnedPart part = owned_part(i);
    if (e.shard_class == ShardClass::kFrozen || part.flat.size() == 0) continue;
    const int64_t first = e.whole_offset() - e.offset;
    ranges[e.name] = {first + part.flat.begin, first + part.flat.end, e.whole_numel()};
  }
  return ranges;
}

std::string AdamW::shard_metadata() const {
  nlohmann::json parameters = nlohmann::json::object();
  for (const auto& [name, r] : owned_ranges()) parameters[name] = {{"elements", {r.begin, r.end}}, {"of", r.of}};
  return nlohmann::json{{"format", 2}, {"parameters", parameters}}.dump();
}

double clip_coefficient(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

std::string first_non_finite_parameter(const ParameterSet& params) {
  // One reduction over all weights (sums of squares in double: finite float32 values cannot overflow
  // it); the per-parameter search runs only when that finds something.
  if (std::isfinite(ops::sum_of_squares(params.flat_params()))) return {};
  for (size_t i = 0; i < params.size(); ++i)
    if (!std::isfinite(ops::sum_of_squares(params.param(static_cast<int>(i))))) return params.entry(static_cast<int>(i)).name;
  return "(unknown)";
}

}  // namespace moeforge
