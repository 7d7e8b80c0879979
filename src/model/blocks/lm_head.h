// The final norm, the language-model head and the cross-entropy loss, with their backward done
// at once: without the logits asked back, rows go in chunks (a chunk's logits, its loss and
// gradient in place, its share of the hidden-state gradient and of the head's), so the whole
// [tokens, vocab] logits never exist at once.
#pragma once

#include "model/blocks/context.h"

namespace moeforge {

struct HeadOutput {
  double loss_sum = 0;  // cross-entropy summed over the counted targets
  Tensor logits;        // [N, V], when asked for
  Tensor dx;            // gradient of the last layer's output [N, H], when training
};

class LmHead {
 public:
  // head: the output projection's slot (the embedding's when tied). chunk_rows: token rows per
  // loss chunk.
  LmHead(int final_norm, int head, int64_t chunk_rows) : final_norm_(final_norm), head_(head), chunk_rows_(chunk_rows) {}

  // x [N, H]: the last layer's output. targets [N] int64 (-100: none) or undefined (no loss).
  // grad_scale multiplies the loss's gradient (1 / the loss denominator).
  HeadOutput run(const Params& p, const Tensor& x, const Tensor& targets, float norm_eps, float grad_scale,
                 bool backward, bool keep_logits) const;

 private:
  int final_norm_, head_;
  int64_t chunk_rows_;
};

}  // namespace moeforge
