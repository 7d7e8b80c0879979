#include "arch/architecture.h"

namespace moeforge {
namespace arch_detail {
extern const Architecture kQwen3MoeArchitecture;
extern const Architecture kQwen3Architecture;
extern const Architecture kQwen2MoeArchitecture;
extern const Architecture kMixtralArchitecture;
extern const Architecture kOlmoeArchitecture;
extern const Architecture kDeepseekV3Architecture;
extern const Architecture kGptOssArchitecture;
extern const Architecture kNemotronHArchitecture;
}  // namespace arch_detail

namespace {

// The table of supported model_types. Adding a family: a new <model_type>.cpp and a line here.
const Architecture* const kArchitectures[] = {
    &arch_detail::kQwen3MoeArchitecture,  &arch_detail::kQwen3Architecture,
    &arch_detail::kQwen2MoeArchitecture,  &arch_detail::kMixtralArchitecture,
    &arch_detail::kOlmoeArchitecture,     &arch_detail::kDeepseekV3Architecture,
    &arch_detail::kGptOssArchitecture,    &arch_detail::kNemotronHArchitecture,
};

}  // namespace

const Architecture* find_architecture(const std::string& model_type) {
  for (const Architecture* a : kArchitectures)
    if (model_type == a->model_type) return a;
  return nullptr;
}

const Architecture& require_architecture(const std::string& model_type, const std::string& where) {
  if (const Architecture* a = find_architecture(model_type)) return *a;
  std::string list;
  for (const std::string& name : supported_model_types()) list += (list.empty() ? "" : ", ") + name;
  fail(ErrorCode::kUnsupported, where, ": model_type '", model_type, "' is not supported; supported: ", list);
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> names;
  for (const Architecture* a : kArchitectures) names.emplace_back(a->model_type);
  return names;
}

std::vector<std::string> trainable_model_types() {
  std::vector<std::string> names;
  for (const Architecture* a : kArchitectures)
    if (a->trainable) names.emplace_back(a->model_type);
  return names;
}

}  // namespace moeforge
