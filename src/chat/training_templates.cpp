#include "chat/training_templates.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "io/sha256.h"

namespace moeforge::chat {

namespace {

// The SHA-256 of the model template each variant was made from, the text of tokenizer_config.json's
// chat_template (python/oracle/training_template_masks.py prints it as model_template_sha256).
constexpr std::pair<std::string_view, std::string_view> kMadeFrom[] = {
    {"qwen3", "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"},
    {"deepseek_v3", "3b8267e54b67df6500f231ffa969955cc9d26b3444a291ced4eb96ca7d3ca1ea"},
};

}  // namespace

const TrainingTemplate* training_template_for(std::string_view model_template) {
  const std::string digest = sha256_hex(model_template.data(), model_template.size());
  for (const auto& [name, model_digest] : kMadeFrom)
    if (digest == model_digest) return &training_template_named(name);
  return nullptr;
}

const TrainingTemplate& training_template_named(std::string_view name) {
  const auto& all = training_templates();
  auto it = std::find_if(all.begin(), all.end(), [&](const TrainingTemplate& t) { return t.name == name; });
  if (it != all.end()) return *it;
  fail(ErrorCode::kNotFound, "moeforge ships no training chat template '", name, "' (it ships ",
       training_template_names(), ")");
}

std::string training_template_names() {
  std::string names;
  for (const TrainingTemplate& t : training_templates())
    names += str_cat(names.empty() ? "" : ", ", kTrainingTemplatePrefix, t.name);
  return names;
}

}  // namespace moeforge::chat
