#include "arch/model_config.h"

#include "arch/architecture.h"
#include "core/error.h"
#include "io/json.h"

namespace moeforge {
namespace {

// The key a setting is spelled with in this file (for messages about cross-key checks).
std::string key_as_written(const nlohmann::json& raw, std::initializer_list<const char*> spellings) {
  for (const char* s : spellings)
    if (raw.contains(s)) return s;
  return *spellings.begin();
}

// Checks between keys that no single key's parse can see. Messages name the file and the keys.
void check_consistency(const ModelConfig& c) {
  const std::string where = c.source.string();
  const AttentionConfig& a = c.attention;
  if (a.num_heads % a.num_kv_heads != 0)
    fail(ErrorCode::kFormat, where, ": key 'num_attention_heads' (", a.num_heads,
         ") must be a multiple of 'num_key_value_heads' (", a.num_kv_heads, ")");
  if (a.sliding_window && *a.sliding_window <= 0)
    fail(ErrorCode::kFormat, where, ": key 'sliding_window' must be positive, got ", *a.sliding_window);
  MF_ASSERT(static_cast<int64_t>(c.layers.size()) == c.num_hidden_layers);
  // Bound the checkpoint tensor list before anyone builds it: about 3 tensors per routed expert and
  // a few dozen others per layer (DeepSeek-V3 has about 48 thousand).
  constexpr int64_t kMaxTensors = 5'000'000;
  const int64_t per_layer = 32 + (c.moe ? 3 * c.moe->num_experts : 0);
  if ((c.num_hidden_layers + c.num_mtp_layers) * per_layer > kMaxTensors)
    fail(ErrorCode::kFormat, where, ": keys 'num_hidden_layers' (", c.num_hidden_layers,
         ") and the expert count describe more than ", kMaxTensors, " checkpoint tensors; not a plausible model");

  if (c.moe) {
    const MoeConfig& m = *c.moe;
    const std::string experts_key = key_as_written(c.raw, {"num_experts", "num_local_experts", "n_routed_experts"});
    const std::string topk_key = key_as_written(c.raw, {"num_experts_per_tok", "experts_per_token"});
    if (m.num_experts_per_tok > m.num_experts)
      fail(ErrorCode::kFormat, where, ": key '", topk_key, "' (", m.num_experts_per_tok, ") must not exceed '",
           experts_key, "' (", m.num_experts, ")");
    if (m.scoring == RouterScoring::kSigmoid) {
      if (m.n_group <= 0 || m.num_experts % m.n_group != 0)
        fail(ErrorCode::kFormat, where, ": key 'n_group' (", m.n_group, ") must divide '", experts_key, "' (",
             m.num_experts, ")");
      if (m.topk_group <= 0 || m.topk_group > m.n_group)
        fail(ErrorCode::kFormat, where, ": key 'topk_group' (", m.topk_group, ") must be in [1, n_group = ",
             m.n_group, "]");
      if (m.num_experts_per_tok > m.topk_group * (m.num_experts / m.n_group))
        fail(ErrorCode::kFormat, where, ": key '", topk_key, "' (", m.num_experts_per_tok,
             ") exceeds the experts of the topk_group selected groups (", m.topk_group, " x ",
             m.num_experts / m.n_group, ")");
    }
  }
  if (c.rope && c.mla == std::nullopt) {
    // The rotated part of each head must have an even size.
    const double rotary = a.head_dim * c.rope->partial_rotary_factor;
    if (static_cast<int64_t>(rotary) % 2 != 0)
      fail(ErrorCode::kFormat, where, ": key 'head_dim' (", a.head_dim, ") x partial_rotary_factor (",
           c.rope->partial_rotary_factor, ") must give an even rotary dimension");
  }
  if (c.mla && c.mla->qk_rope_head_dim % 2 != 0)
    fail(ErrorCode::kFormat, where, ": key 'qk_rope_head_dim' (", c.mla->qk_rope_head_dim, ") must be even");
}

}  // namespace

const char* rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::kDefault: return "default";
    case RopeType::kLinear: return "linear";
    case RopeType::kDynamic: return "dynamic";
    case RopeType::kYarn: return "yarn";
    case RopeType::kLlama3: return "llama3";
  }
  return "?";
}

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (const LayerSpec& l : layers) n += l.ffn == LayerSpec::Ffn::kMoe;
  return n;
}

int64_t ModelConfig::num_dense_ffn_layers() const {
  int64_t n = 0;
  for (const LayerSpec& l : layers) n += l.ffn == LayerSpec::Ffn::kDense;
  return n;
}

ModelConfig parse_model_config(const nlohmann::json& document, const std::filesystem::path& source) {
  ConfigReader reader(document, source.string());
  ModelConfig config;
  config.source = source;
  config.raw = document;
  config.model_type = reader.required_string("model_type");
  const Architecture& arch = require_architecture(config.model_type, source.string());
  arch.parse(reader, config);
  check_consistency(config);
  return config;
}

ModelConfig parse_model_config_text(std::string_view text, const std::filesystem::path& source) {
  return parse_model_config(parse_json(text, source.string()), source);
}

ModelConfig load_model_config(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    fail(ErrorCode::kNotFound, path.string(), ": no such model folder or config.json");
  const bool folder = std::filesystem::is_directory(path, ec);
  const std::filesystem::path file = folder ? path / "config.json" : path;
  if (folder && !std::filesystem::exists(file, ec))
    fail(ErrorCode::kNotFound, file.string(), ": no such file (a model folder must hold config.json)");
  return parse_model_config(read_json_file(file), file);
}

std::string model_config_json_text(const ModelConfig& config) {
  return config.raw.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace moeforge
