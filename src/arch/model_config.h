// ModelConfig: a Hugging Face config.json read into one typed struct shared by every architecture
// family, with the family-specific parts optional (MoE, DeepSeek MLA, Nemotron-H Mamba-2).
//
//   ModelConfig config = load_model_config("/models/Qwen3-30B-A3B");   // folder or config.json
//   if (config.moe) ... config.moe->num_experts ...
//
// Both spellings found in the wild are read: hub files (`num_experts`, `rope_theta` + `rope_scaling`,
// `torch_dtype`) and files re-saved by Transformers 5.x (`num_local_experts`, `rope_parameters`,
// `dtype`). Policy for absent keys: sizes (vocab, hidden, layers, heads, intermediate sizes, expert
// counts, top-k) are required and their absence is an error naming the file and key; behaviour flags
// and constants (eps, biases, norm_topk_prob, ...) default as the Transformers 5.17 config class of
// that model_type does. The parsed JSON is kept in `raw`, so a saved config keeps every original key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"

namespace moeforge {

// Rotary position embedding, as Transformers' `rope_parameters` (or legacy `rope_theta` +
// `rope_scaling`). Fields that a rope type does not use keep their defaults.
enum class RopeType { kDefault, kLinear, kDynamic, kYarn, kLlama3 };
const char* rope_type_name(RopeType type);

struct RopeParameters {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;  // fraction of head_dim that is rotated
  double factor = 1.0;                 // linear, dynamic, yarn, llama3
  // yarn and llama3: the pre-extension context; Transformers fills max_position_embeddings when absent.
  int64_t original_max_position_embeddings = 0;
  // yarn (unset values mean Transformers' defaults: beta_fast 32, beta_slow 1, mscale 1, attention
  // factor from get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)).
  std::optional<double> beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor;
  bool truncate = true;  // yarn: floor/ceil the correction range (GPT-OSS sets false)
  // llama3
  double low_freq_factor = 0.0, high_freq_factor = 0.0;
};

// Which attention a layer runs (Transformers' `layer_types` values).
enum class AttentionWindow { kFull, kSliding };

struct AttentionConfig {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;        // for MLA: qk_rope_head_dim (as Transformers sets it); see MlaConfig
  bool qkv_bias = false;       // bias on q/k/v projections
  bool o_bias = false;         // bias on the output projection
  // Qwen3/Qwen3-MoE: RMSNorm over head_dim per head; OLMoE: RMSNorm over the whole q (hidden) and
  // k (kv_heads * head_dim) projections.
  enum class QkNorm { kNone, kPerHead, kWholeProjection } qk_norm = QkNorm::kNone;
  bool sinks = false;                       // GPT-OSS: one learned sink logit per head
  std::optional<int64_t> sliding_window;    // tokens, on layers whose window is kSliding
  std::optional<double> clip_qkv;           // OLMoE: clamp q, k, v to +-clip_qkv
};

// DeepSeek multi-head latent attention.
struct MlaConfig {
  std::optional<int64_t> q_lora_rank;  // null: q is a single q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  bool rope_interleave = true;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

enum class RouterScoring { kSoftmax, kSigmoid };
// How the expert MLP computes: SwiGLU with separate gate/up (Qwen, Mixtral, DeepSeek, OLMoE), GPT-OSS's
// clamped SwiGLU with interleaved gate/up and biases, or a non-gated squared-ReLU MLP (Nemotron-H).
enum class ExpertActivation { kSwiGlu, kGptOssClampedSwiGlu, kRelu2 };

struct MoeConfig {
  int64_t num_experts = 0;                // routed experts per MoE layer
  int64_t num_experts_per_tok = 0;        // top-k
  int64_t expert_intermediate_size = 0;   // per routed expert
  ExpertActivation activation = ExpertActivation::kSwiGlu;
  RouterScoring scoring = RouterScoring::kSoftmax;
  bool norm_topk_prob = false;            // renormalise the top-k weights to sum 1
  bool router_bias = false;               // GPT-OSS: the router linear has a bias
  bool score_correction_bias = false;     // DeepSeek-V3/Nemotron-H: e_score_correction_bias buffer
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1, topk_group = 1;    // group-limited routing (DeepSeek-V3)
  // Shared experts, added to every token's output. Qwen2-MoE additionally gates them with a sigmoid.
  int64_t num_shared_experts = 0;
  int64_t shared_expert_intermediate_size = 0;  // total width of the shared MLP
  bool shared_expert_gate = false;
  double router_aux_loss_coef = 0.0;
  bool output_router_logits = false;      // Transformers adds the aux loss only when true
  double swiglu_limit = 0.0;              // GPT-OSS clamp (Transformers hard-codes 7.0)
  double router_jitter_noise = 0.0;       // Mixtral: training multiplies the router input by U(1 +- j)
  // Nemotron-H `moe_latent_size`: routed experts run on a projection of the hidden state to this width.
  std::optional<int64_t> latent_size;
};

// Nemotron-H Mamba-2 mixer.
struct MambaConfig {
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t n_groups = 0;
  int64_t ssm_state_size = 0;
  int64_t conv_kernel = 0;
  int64_t chunk_size = 128;
  bool conv_bias = true;
  bool proj_bias = false;   // in_proj/out_proj bias (`use_bias`)
  std::string hidden_act = "silu";
  double time_step_min = 0.001, time_step_max = 0.1, time_step_floor = 1e-4;
  int64_t intermediate_size() const { return num_heads * head_dim; }
  int64_t conv_dim() const { return intermediate_size() + 2 * n_groups * ssm_state_size; }
};

// One decoder layer: a token mixer and a feed-forward part. Transformer families have attention plus
// a dense or MoE MLP in every layer; a Nemotron-H layer has exactly one of the four.
struct LayerSpec {
  enum class Mixer { kNone, kAttention, kMamba } mixer = Mixer::kAttention;
  enum class Ffn { kNone, kDense, kMoe } ffn = Ffn::kDense;
  AttentionWindow window = AttentionWindow::kFull;
};

struct ModelConfig {
  std::filesystem::path source;  // the config.json read (for messages)
  nlohmann::json raw;            // every key as read; written back on save
  std::string model_type;
  std::vector<std::string> architectures;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t intermediate_size = 0;  // dense MLP width (0 when no layer is dense)
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-6;
  std::string hidden_act = "silu";  // dense MLP / expert activation name as in the file
  bool tie_word_embeddings = false;
  bool mlp_bias = false;            // bias on dense/shared MLP projections (Nemotron-H `mlp_bias`)
  std::optional<DType> dtype;       // `torch_dtype` / `dtype`
  std::optional<int64_t> pad_token_id, bos_token_id;
  std::vector<int64_t> eos_token_ids;
  // Whether the embedding's pad_token_id row learns nothing from the lookup, as the families whose
  // Transformers model builds nn.Embedding(padding_idx=pad_token_id) (all but Nemotron-H).
  bool embedding_skips_pad_row = true;

  AttentionConfig attention;
  std::optional<RopeParameters> rope;  // absent: no positional encoding (Nemotron-H)
  std::optional<MlaConfig> mla;
  std::optional<MoeConfig> moe;
  std::optional<MambaConfig> mamba;
  std::vector<LayerSpec> layers;       // num_hidden_layers entries

  // DeepSeek-V3 `num_nextn_predict_layers`: multi-token-prediction layers stored in the checkpoint
  // after the main layers. Transformers neither builds nor loads them.
  int64_t num_mtp_layers = 0;
  // `quantization_config.quant_method` of the checkpoint ("fp8" DeepSeek-V3, "mxfp4" GPT-OSS), if any.
  std::string checkpoint_quantization;
  // "fp8": the [rows, columns] of the blocks each weight_scale_inv value scales
  // (quantization_config.weight_block_size, Transformers' default [128, 128]).
  std::vector<int64_t> fp8_block;

  int64_t num_moe_layers() const;
  int64_t num_dense_ffn_layers() const;
};

// Reads `path` (a model folder holding config.json, or the config.json itself), picks the
// architecture by `model_type`, parses and checks it. Errors: kNotFound (no file), kFormat (not JSON,
// repeated or missing/mistyped key, inconsistent sizes; the message names the file and key), kUnsupported
// (unknown model_type, listing the supported ones).
ModelConfig load_model_config(const std::filesystem::path& path);

// Same from config.json text, or from an already-parsed document; `source` names it in messages.
ModelConfig parse_model_config_text(std::string_view text, const std::filesystem::path& source);
ModelConfig parse_model_config(const nlohmann::json& document, const std::filesystem::path& source);

// config.json text of `config.raw`: 2-space indent and a final newline, as Transformers writes it
// (keys sorted, which is also the order of hub files).
std::string model_config_json_text(const ModelConfig& config);

}  // namespace moeforge
