// A Batch checked and turned into what the layers read: token ids, positions, the attention mask
// in the forms the backends take, shifted targets, and which rows are real tokens (not padding).
// Small integer work on the host, then one upload each.
#pragma once

#include <cstdint>

#include "arch/model_config.h"
#include "model/blocks/routed_rows.h"
#include "ops/attention.h"

namespace moeforge {

struct Batch;

struct BatchInputs {
  int64_t batch = 0, seq = 0;
  Tensor ids;        // [N] int64 on the device
  Tensor positions;  // [N] int64 on the device
  ops::AttentionMask mask;
  Tensor targets;    // [N] int64 on the device, labels shifted left (-100: none); undefined without labels
  int64_t num_label_tokens = 0;  // targets that are not -100
  int64_t valid_tokens = 0;      // rows the attention mask keeps
  RoutedRows routed;             // the rows the MoE blocks compute: all but untrained padding
  // [routed rows] fp32 on the device, 1 where the attention mask keeps the row (the aux loss and the
  // expert loads count those alone); undefined when it keeps every routed row.
  Tensor row_valid;
};

// Errors name the offending entry: ids or labels outside the vocabulary, shapes that differ from
// input_ids, a training batch without labels.
BatchInputs prepare_batch(const Batch& batch, const ModelConfig& config, Device device, bool backward);

}  // namespace moeforge
