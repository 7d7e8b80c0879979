#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"

namespace moeforge {

std::vector<int32_t> generate(CausalLM& model, const std::vector<int32_t>& prompt, const GenerationConfig& config) {
  MF_CHECK(!prompt.empty(), kInvalidArgument, "generate: the prompt is empty");
  MF_CHECK(config.temperature > 0, kInvalidArgument, "generate: temperature must be > 0");
  std::vector<int64_t> seq(prompt.begin(), prompt.end());
  std::vector<int32_t> out;
  std::mt19937_64 rng(config.seed);
  const int64_t V = model.config().vocab_size;
  for (int64_t step = 0; step < config.max_new_tokens; ++step) {
    Batch b;
    b.input_ids = Tensor::from_vector(seq, {1, static_cast<int64_t>(seq.size())});
    StepResult r = model.forward_backward(b, false, true);
    Tensor last = r.logits.select(1, static_cast<int64_t>(seq.size()) - 1).select(0, 0);
    std::vector<float> logits = last.to(Device::kCPU).to_float_vector();
    int64_t next;
    if (!config.do_sample) {
      next = std::max_element(logits.begin(), logits.end()) - logits.begin();
    } else {
      std::vector<int64_t> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b2) { return logits[a] > logits[b2]; });
      if (config.top_k > 0 && config.top_k < V) order.resize(config.top_k);
      std::vector<double> p(order.size());
      double mx = logits[order[0]], sum = 0;
      for (size_t i = 0; i < order.size(); ++i) sum += p[i] = std::exp((logits[order[i]] - mx) / config.temperature);
      size_t keep = order.size();
      if (config.top_p < 1.0) {
        double acc = 0;
        for (size_t i = 0; i < order.size(); ++i) {
          acc += p[i] / sum;
          if (acc >= config.top_p) { keep = i + 1; break; }
        }
      }
      std::discrete_distribution<size_t> pick(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep));
      next = order[pick(rng)];
    }
    out.push_back(static_cast<int32_t>(next));
    seq.push_back(next);
    if (std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), next) != config.eos_token_ids.end()) break;
  }
  return out;
}

}  // namespace moeforge
