// moeforge-train-bench: full training steps (forward, backward, gradient clipping, AdamW) of a
// CausalLM with random weights and random tokens, timed on the GPU; prints one JSON object.
//
//   moeforge-train-bench --config bench/configs/qwen3-30b-a3b.json --layers 8 --seq 4096
//       --micro-batch 4 --grad-accum 4 --precision bf16-state --recompute none --steps 5 --warmup 2
//       [--recompute-full-layers K]  (the first K layers recompute fully, the rest per --recompute)
//       [--activation-offload-layers K]  (the first K layers keep their activations in host memory)
//       [--document-length 1024] [--padded-tail 512] [--lora-r 16 --lora-targets attention|attention+experts]
//       [--zero-stage 2]  (with several GPUs: their gradients sharded too, as train's --zero_stage)
//       [--loss-chunk-tokens N]  (token rows per chunk of the loss; default: 1 GiB of logits)
//
// Under mpirun, srun or torchrun with one GPU per process, the processes split the routed experts
// (expert parallelism over all of them, NCCL) and each trains its own random rows: micro-batch and
// sequence are per GPU, the optimizer is sharded as the trainer shards it, and rank 0 prints the
// result with tokens/s per GPU, the peak memory of the fullest GPU, and the time of the profiled step
// spent in dispatch/combine (the expert-parallel all-to-alls, with their GB/s to the other GPUs) and
// in the data-parallel sums and gathers, with an upper bound of what of those the computation did
// not hide.
//
// --document-length L packs each row with documents of L tokens the way the trainer does
// (position_ids restart at every document, an all-ones attention_mask), so attention runs
// per document; without it every row is one sequence. --padded-tail N makes the last N tokens of
// every row padding (attention_mask 0, labels -100; their positions go on): they count in tokens/s
// and TFLOP/s as any token, so compare its ms per step. --lora-r trains LoRA adapters (alpha = 2r)
// on the attention projections, or on them and the routed experts, with the base weights frozen.
// Reports ms per optimizer step (median of the timed steps), tokens/s, model TFLOP/s (6 x active
// matrix parameters + causal attention, the count the trainer prints), peak device memory, host
// synchronisations per optimizer step, and a per-part and per-op split of GPU time from one further
// profiled step (ops bracketed by CUDA events; that step is not among the timed ones), with the
// three expert products' rates.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include "arch/model_config.h"
#include "bench_main.h"
#include "core/allocator.h"
#include "core/cuda/check.h"
#include "core/cuda/device_copy.h"
#include "core/error.h"
#include "dist/launch.h"
#include "model/causal_lm.h"
#include "ops/profile.h"
#include "optim/adamw.h"


namespace moeforge {
namespace {

struct Options {
  std::string config;
  int64_t layers = 8, seq = 4096, micro_batch = 1, grad_accum = 1, steps = 5, warmup = 2;
  int64_t document_length = 0;  // 0: one document per row
  int64_t padded_tail = 0;      // the last tokens of each row are padding (attention mask 0, no label)
  std::string precision = "bf16-state";
  std::string recompute = "none";
  int64_t recompute_full_layers = 0;
  int64_t activation_offload_layers = 0;
  int64_t lora_r = 0;  // 0: full fine-tuning
  std::string lora_targets = "attention";
  int64_t zero_stage = 1;
  int64_t loss_chunk_tokens = 0;  // 0: the model's default (ModelOptions::loss_chunk_tokens)
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      MF_CHECK(i + 1 < argc, kInvalidArgument, a, " needs a value");
      return argv[++i];
    };
    if (a == "--config") o.config = value();
    else if (a == "--layers") o.layers = std::stoll(value());
    else if (a == "--seq") o.seq = std::stoll(value());
    else if (a == "--micro-batch") o.micro_batch = std::stoll(value());
    else if (a == "--grad-accum") o.grad_accum = std::stoll(value());
    else if (a == "--steps") o.steps = std::stoll(value());
    else if (a == "--warmup") o.warmup = std::stoll(value());
    else if (a == "--precision") o.precision = value();
    else if (a == "--recompute") o.recompute = value();
    else if (a == "--recompute-full-layers") o.recompute_full_layers = std::stoll(value());
    else if (a == "--activation-offload-layers") o.activation_offload_layers = std::stoll(value());
    else if (a == "--document-length") o.document_length = std::stoll(value());
    else if (a == "--padded-tail") o.padded_tail = std::stoll(value());
    else if (a == "--lora-r") o.lora_r = std::stoll(value());
    else if (a == "--lora-targets") o.lora_targets = value();
    else if (a == "--zero-stage") o.zero_stage = std::stoll(value());
    else if (a == "--loss-chunk-tokens") o.loss_chunk_tokens = std::stoll(value());
    else fail(ErrorCode::kInvalidArgument, "unknown argument ", a);
  }
  MF_CHECK(!o.config.empty(), kInvalidArgument, "--config is required");
  MF_CHECK(o.steps >= 1, kInvalidArgument, "--steps must be at least 1");
  MF_CHECK(o.document_length >= 0 && o.document_length <= o.seq, kInvalidArgument,
           "--document-length must be between 0 and --seq");
  MF_CHECK(o.padded_tail >= 0 && o.padded_tail < o.seq, kInvalidArgument,
           "--padded-tail must be between 0 and --seq - 1");
  MF_CHECK(o.lora_targets == "attention" || o.lora_targets == "attention+experts", kInvalidArgument,
           "--lora-targets is attention or attention+experts");
  MF_CHECK(o.zero_stage == 1 || o.zero_stage == 2, kInvalidArgument, "--zero-stage is 1 or 2");
  MF_CHECK(o.loss_chunk_tokens >= 0, kInvalidArgument, "--loss-chunk-tokens must be at least 0");
  if (o.document_length == 0) o.document_length = o.seq;
  return o;
}

// The three expert products of the profiled step and their rates. Every grouped_linear call
// multiplies the micro-batch's expert rows (its tokens x k; under expert parallelism, on average per
// GPU) by one of the model's expert weights [E, N, K], which alternate in every MoE layer, so a call
// is 2 x rows x N x K FLOPs on average over those weights. (LoRA's adapter products are grouped
// calls of other shapes: not counted.)
nlohmann::ordered_json expert_product_rates(const CausalLM& model, const ops::OpProfile& profile, int64_t tokens) {
  double weight_nk = 0;
  int64_t weights = 0;
  for (const auto& e : model.params().entries())
    if (e.group == ParamGroup::kExperts && e.shape.size() == 3) {
      weight_nk += static_cast<double>(e.shape[1] * e.shape[2]);
      ++weights;
    }
  nlohmann::ordered_json out;
  if (weights == 0) return out;
  const double rows = static_cast<double>(tokens * model.config().moe->num_experts_per_tok);
  const double flops_per_call = 2 * rows * weight_nk / static_cast<double>(weights);
  using ops::Op;
  // The first product may read its rows through the permutation (gathered_grouped_linear).
  const std::vector<std::pair<const char*, std::vector<Op>>> products = {
      {"forward", {Op::kGroupedLinear, Op::kGatheredGroupedLinear}},
      {"dx", {Op::kGroupedLinearDx}},
      {"dw", {Op::kGroupedLinearDw}}};
  for (const auto& [product, product_ops] : products) {
    double ms = 0;
    int64_t calls = 0;
    for (Op op : product_ops) {
      ms += profile.op_ms[static_cast<size_t>(op)];
      calls += profile.op_calls[static_cast<size_t>(op)];
    }
    out[product] = {{"ms", ms}, {"calls", calls},
                    {"tflops", ms > 0 ? static_cast<double>(calls) * flops_per_call / (ms * 1e-3) / 1e12 : 0.0}};
  }
  return out;
}

int run(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::ifstream in(o.config);
  MF_CHECK(in.good(), kIo, "cannot read ", o.config);
  nlohmann::json doc = nlohmann::json::parse(in);
  doc["num_hidden_layers"] = o.layers;
  // A per-layer list (GPT-OSS's layer_types) or pattern (Nemotron-H's) keeps its first layers.
  if (doc.contains("layer_types") && doc["layer_types"].is_array() && doc["layer_types"].size() > static_cast<size_t>(o.layers))
    doc["layer_types"].erase(doc["layer_types"].begin() + o.layers, doc["layer_types"].end());
  if (doc.contains("hybrid_override_pattern") && doc["hybrid_override_pattern"].is_string())
    doc["hybrid_override_pattern"] = doc["hybrid_override_pattern"].get<std::string>().substr(0, o.layers);
  ModelConfig config = parse_model_config(doc, o.config);

  // Several processes: expert parallelism over all of them, everything else data-parallel.
  const std::shared_ptr<ProcessGroup> world = world_process_group(Device::kCUDA);
  const int rank = world ? world->rank() : 0, gpus = world ? world->size() : 1;
  ModelOptions mo;
  mo.device = Device::kCUDA;
  if (gpus > 1) mo.expert_group = world;
  mo.dtype = DType::kBF16;
  mo.recompute = parse_recompute(o.recompute);
  mo.recompute_full_layers = o.recompute_full_layers;
  mo.activation_offload_layers = o.activation_offload_layers;
  mo.loss_chunk_tokens = o.loss_chunk_tokens;
  if (o.lora_r > 0) {
    LoraConfig lora;
    lora.r = o.lora_r;
    lora.lora_alpha = 2.0 * static_cast<double>(o.lora_r);
    lora.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
    if (o.lora_targets == "attention+experts") lora.target_parameters = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"};
    mo.lora = lora;
  }
  const auto init_start = std::chrono::steady_clock::now();
  CausalLM model = CausalLM::from_config(config, mo, /*seed=*/1);
  // Known apart from the steps: the host-side initialisation this replaced took 367 s at 48 layers.
  if (rank == 0) std::fprintf(stderr, "random weights made and placed in %.1f s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - init_start).count());
  const size_t n = model.params().size();
  std::vector<bool> decay(n), trainable(n);
  for (size_t i = 0; i < n; ++i) {
    decay[i] = model.params().entry(static_cast<int>(i)).trainer_weight_decay;
    trainable[i] = model.params().trainable(static_cast<int>(i));
  }
  ProcessGroup* shared = gpus > 1 ? world.get() : nullptr;
  AdamW optimizer(model.params(), AdamWConfig{1e-5, 0.9, 0.999, 1e-8, 0.0},
                  parse_optimizer_precision(o.precision), decay, trainable,
                  OptimizerSharding{shared, nullptr, shared, o.zero_stage == 2});
  if (optimizer.shards_gradients()) model.set_gradient_sink(&optimizer);

  // Random tokens, labels = inputs (the model shifts them), fixed across steps; each GPU its own.
  std::mt19937_64 rng(7 + static_cast<uint64_t>(rank));
  std::uniform_int_distribution<int64_t> token(0, config.vocab_size - 1);
  std::vector<Batch> batches;
  for (int64_t a = 0; a < o.grad_accum; ++a) {
    std::vector<int64_t> ids(static_cast<size_t>(o.micro_batch * o.seq));
    for (auto& id : ids) id = token(rng);
    Batch b;
    b.input_ids = Tensor::from_vector(ids, {o.micro_batch, o.seq});
    b.labels = b.input_ids;
    if (o.document_length < o.seq || o.padded_tail > 0) {
      // Padded tokens continue their row's positions (right padding, as a collator pads).
      std::vector<int64_t> positions(ids.size()), mask(ids.size()), labels = ids;
      for (size_t i = 0; i < positions.size(); ++i) {
        const auto t = static_cast<int64_t>(i) % o.seq;
        positions[i] = t % o.document_length;
        mask[i] = t < o.seq - o.padded_tail ? 1 : 0;
        if (mask[i] == 0) labels[i] = -100;
      }
      b.position_ids = Tensor::from_vector(positions, {o.micro_batch, o.seq});
      b.attention_mask = Tensor::from_vector(mask, {o.micro_batch, o.seq});
      b.labels = Tensor::from_vector(labels, {o.micro_batch, o.seq});
    }
    batches.push_back(b);
  }
  const double window_tokens =
      static_cast<double>(o.grad_accum * o.micro_batch * (o.seq - o.padded_tail - 1) * gpus);

  double last_loss = 0;
  auto optimizer_step = [&]() {  // the trainer's step
    optimizer.zero_grad();
    double loss = 0;
    for (const Batch& b : batches) loss += model.forward_backward(b, true, false, window_tokens).loss;
    optimizer.reduce_gradients();
    // Clipped at the Hugging Face Trainer's default max_grad_norm, 1.0.
    optimizer.step(1e-5, clip_coefficient(optimizer.grad_norm(), 1.0));
    last_loss = loss;
  };

  for (int64_t i = 0; i < o.warmup; ++i) optimizer_step();
  MF_CUDA_CHECK(cudaDeviceSynchronize());
  reset_cuda_peak_memory();
  std::vector<double> ms;
  int64_t syncs = 0;
  for (int64_t i = 0; i < o.steps; ++i) {
    const int64_t syncs_before = cuda_host_sync_count();
    const auto t0 = std::chrono::steady_clock::now();
    optimizer_step();
    MF_CUDA_CHECK(cudaDeviceSynchronize());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    syncs = cuda_host_sync_count() - syncs_before;
  }
  const MemoryStats mem = cuda_memory_stats();
  // The fullest GPU's peak.
  int64_t peak = mem.peak_in_use;
  if (gpus > 1) {
    const Tensor peaks = world->all_gather_rows(Tensor::from_vector(std::vector<int64_t>{peak}, {1}),
                                                std::vector<int64_t>(static_cast<size_t>(gpus), 1));
    const Tensor host = peaks.to(Device::kCPU);
    for (int64_t r = 0; r < gpus; ++r) peak = std::max(peak, host.data<int64_t>()[r]);
  }

  ops::set_op_profiling(true);
  const auto profiled_start = std::chrono::steady_clock::now();
  optimizer_step();
  MF_CUDA_CHECK(cudaDeviceSynchronize());
  const double profiled_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - profiled_start).count();
  const ops::OpProfile profile = ops::read_op_profile();
  const auto& split = profile.category_ms;
  ops::set_op_profiling(false);

  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const double tokens = static_cast<double>(o.grad_accum * o.micro_batch * o.seq);  // per GPU
  // Attention work follows the documents' length.
  const double flops_per_token = training_flops_per_token(model, o.document_length);
  const double tflops = tokens * flops_per_token / (median * 1e-3) / 1e12;
  nlohmann::ordered_json r;
  r["gpus"] = gpus;
  if (gpus > 1) {
    r["expert_parallel"] = gpus;
    r["zero_stage"] = o.zero_stage;
  }
  r["layers"] = o.layers;
  r["seq"] = o.seq;
  r["micro_batch"] = o.micro_batch;
  r["grad_accum"] = o.grad_accum;
  r["precision"] = o.precision;
  r["recompute"] = o.recompute;
  if (o.recompute_full_layers > 0) r["recompute_full_layers"] = o.recompute_full_layers;
  if (o.activation_offload_layers > 0) r["activation_offload_layers"] = o.activation_offload_layers;
  r["document_length"] = o.document_length;
  r["padded_tail"] = o.padded_tail;
  if (o.loss_chunk_tokens > 0) r["loss_chunk_tokens"] = o.loss_chunk_tokens;
  r["bytes_per_param"] = optimizer_precision_bytes_per_param(parse_optimizer_precision(o.precision));
  r["parameters"] = model.params().numel();
  int64_t trainable_count = 0;
  for (size_t i = 0; i < n; ++i)
    if (trainable[i]) trainable_count += model.params().entry(static_cast<int>(i)).numel();
  r["trainable_parameters"] = trainable_count;
  if (o.lora_r > 0) r["lora"] = str_cat("r=", o.lora_r, " ", o.lora_targets);
  r["ms_per_step"] = median;
  r["ms_all"] = ms;
  r["tokens_per_s"] = tokens * gpus / (median * 1e-3);
  r["tokens_per_s_per_gpu"] = tokens / (median * 1e-3);
  r["tflops"] = tflops;  // per GPU
  r["gflop_per_token"] = flops_per_token / 1e9;
  r["peak_memory_bytes"] = peak;
  r["host_syncs_per_step"] = syncs;
  r["loss"] = last_loss;
  nlohmann::ordered_json parts;
  for (size_t c = 0; c < split.size(); ++c) parts[ops::op_category_name(static_cast<ops::OpCategory>(c))] = split[c];
  r["split_ms"] = parts;
  nlohmann::ordered_json op_ms, op_calls;
  for (size_t i = 0; i < profile.op_ms.size(); ++i) {
    if (profile.op_calls[i] == 0) continue;
    const char* name = ops::op_info(static_cast<ops::Op>(i)).name;
    op_ms[name] = profile.op_ms[i];
    op_calls[name] = profile.op_calls[i];
  }
  r["op_ms"] = op_ms;
  r["op_calls"] = op_calls;
  if (o.lora_r == 0) r["expert_products"] = expert_product_rates(model, profile, o.micro_batch * o.seq);
  if (gpus > 1) {
    // Dispatch and combine run on the compute stream, in its order: none of their time is hidden.
    // Their rate: the rows' bytes to other ranks over that time.
    const auto dispatch = static_cast<size_t>(ops::OpCategory::kDispatchCombine);
    r["dispatch_combine_ms"] = split[dispatch];
    r["dispatch_combine_gb_per_s"] = split[dispatch] > 0 ? static_cast<double>(profile.category_bytes[dispatch]) / (split[dispatch] * 1e6) : 0.0;
    // The data-parallel sums run on the communication stream beside the backward pass (zero_stage 2)
    // or after it. What the compute stream did not hide, estimated: the profiled step's time less the
    // time of every other category (the compute stream runs them one after another), at most all of
    // it. Launch gaps count as exposed, so this is an upper bound.
    const auto sums = static_cast<size_t>(ops::OpCategory::kDataParallel);
    double compute = 0;
    for (size_t c = 0; c < split.size(); ++c)
      if (c != sums) compute += split[c];
    r["data_parallel_ms"] = split[sums];
    r["data_parallel_exposed_ms_at_most"] = std::clamp(profiled_ms - compute, 0.0, split[sums]);
  }
  if (rank == 0) std::printf("%s\n", r.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace moeforge

int main(int argc, char** argv) { return moeforge::bench_main("moeforge-train-bench", moeforge::run, argc, argv); }
