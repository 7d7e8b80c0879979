// Parses arbitrary bytes as a config.json. A malformed or implausible config must end in a
// moeforge::Error; anything else (another exception, a crash, UB, a runaway allocation) is a bug.
// An accepted config is taken through everything `moeforge inspect` does with it. Seeds in
// corpus/config/ are copies of tests/data/configs files (real, tiny, re-saved and malformed).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "arch/checkpoint_tensors.h"
#include "arch/model_config.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeforge;
  try {
    const ModelConfig config =
        parse_model_config_text(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
    const std::vector<CheckpointTensor> tensors = checkpoint_tensors(config);
    (void)count_parameters(config, tensors);
    (void)model_config_json_text(config);
  } catch (const Error&) {
  }
  return 0;
}
