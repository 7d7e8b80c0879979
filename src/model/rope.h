// Rotary tables from a config's rope parameters, computed as Transformers' rope init functions do
// (in float32): inv_freq[i] = 1 / theta^(2i / rotary_dim), adjusted per rope type.
#pragma once

#include "arch/model_config.h"
#include "core/tensor.h"

namespace moeforge {

struct RotaryTable {
  Tensor inv_freq;                // [rotary_dim / 2] float32, CPU
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn); 1 for default and linear
};

RotaryTable make_rotary_table(const RopeParameters& rope, int64_t head_dim);

}  // namespace moeforge
