// Text generation from a CausalLM: greedy or sampled (temperature, top-k, top-p), stopping at an
// end-of-sequence id. Each new token re-runs the forward pass over the whole sequence (no KV cache
// yet): exact, and fast enough for the checkpoint checks and demo it serves; a cached decoder is the
// next step for long generations.
#pragma once

#include <cstdint>
#include <vector>

#include "model/causal_lm.h"

namespace moeforge {

struct GenerationConfig {
  int64_t max_new_tokens = 64;
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0: no top-k filter
  double top_p = 1.0;  // 1: no nucleus filter
  uint64_t seed = 0;
  std::vector<int64_t> eos_token_ids;
  // What fills a batch row after it stopped (ModelForCausalLM::generate); < 0: the model's pad id.
  int64_t pad_token_id = -1;
};

// Returns the new tokens only (the stop token included when it was produced).
std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt, const GenerationConfig& config);

}  // namespace moeforge
