// The run report: one self-contained HTML file (inline SVG, no scripts, no network) with the loss and
// eval-loss curves, learning rate, grad norm, throughput, and a heat map of tokens per expert per
// layer over time — routing collapse shows as a row going dark or saturating.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moeforge {

class RunReport {
 public:
  explicit RunReport(std::string title) : title_(std::move(title)) {}
  // A metrics record as the trainer writes to metrics.jsonl ("step", "loss", "lr", "grad_norm",
  // "tokens_per_s", optional "eval_loss", optional "expert_load": [[tokens per expert] per MoE layer]).
  void add(const nlohmann::json& record);
  // Writes the HTML to `path` (atomically, so a browser never sees half a file).
  void write(const std::string& path, const std::string& status) const;
  std::string html(const std::string& status) const;

 private:
  std::string title_;
  std::vector<nlohmann::json> records_;
};

}  // namespace moeforge
