// The token rows the MoE blocks compute, as runs of consecutive rows: every row but padding
// (attention mask 0) whose prediction nothing trains on. So padding reaches neither the router nor
// the experts, and the residual carries it past them; a padded position that a label still trains on
// is computed in full, as Transformers computes it. Gathering and scattering copy whole runs:
// device-to-device copies queued on the stream, no host synchronisation. A batch without padding
// routes every row, and both are the identity.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moeforge {

class RoutedRows {
 public:
  RoutedRows() = default;
  // routed[i]: whether token row i is computed.
  explicit RoutedRows(const std::vector<uint8_t>& routed);

  bool all() const { return count_ == total_; }
  int64_t count() const { return count_; }
  // x [total, ...] -> its routed rows [count, ...] in order; x itself when every row is routed.
  Tensor gather(const Tensor& x) const;
  // rows [count, ...] -> [total, ...], zero on the other rows; rows itself when every row is routed.
  Tensor scatter(const Tensor& rows) const;

 private:
  struct Run {
    int64_t begin, end;
  };
  // `from`'s runs copied into a new tensor of `rows` rows: packed one after another when gathering,
  // back to their places when scattering.
  Tensor copy_runs(const Tensor& from, int64_t rows, bool gathering) const;

  std::vector<Run> runs_;
  int64_t count_ = 0, total_ = 0;
};

}  // namespace moeforge
