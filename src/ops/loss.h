// Cross-entropy over the vocabulary, whole or in chunks with one read-back.
// The conventions of every op (layouts, who allocates, gradient accumulation, dtypes) are in ops/ops.h.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moeforge::ops {

// logits [N, V] (any float dtype; computed in fp32), targets [N] int64 with -100 ignored.
// Returns the sum of the per-token losses and the number of counted tokens; when dlogits is
// defined it receives (softmax - onehot) * grad_scale for counted rows and 0 for ignored rows;
// it may be the logits tensor itself (the gradient then replaces the logits in place).
struct CrossEntropyResult {
  double loss_sum = 0;
  int64_t count = 0;
};
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale,
                                 Tensor* dlogits);
// The same over a batch's rows in chunks, read back once: add() computes a chunk (the rows after
// the previous chunks') without returning anything, total() returns the sums of every chunk. On
// CUDA that is one host synchronisation for the batch instead of one per chunk; a bad target in
// any chunk throws from total(), naming its row in the whole batch (on the CPU, from add()).
class CrossEntropySum {
 public:
  void add(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor* dlogits);
  CrossEntropyResult total() const;

 private:
  CrossEntropyResult host_;  // chunks on the CPU
  Tensor device_totals_;     // chunks on CUDA: the running sums, on the device
  int64_t rows_ = 0;
};

}  // namespace moeforge::ops
