// MXFP4 weights, as OpenAI releases GPT-OSS (quantization_config quant_method "mxfp4"): a weight
// that Transformers holds as [E, in, out] (x @ W) is stored as `<name>_blocks` uint8
// [E, out, in/32, 16] and `<name>_scales` uint8 [E, out, in/32]. Each block of 32 inputs of one
// output row is 32 E2M1 codes packed two a byte, the even element in the low nibble, times one
// power-of-two scale 2^(s - 127) (E8M0).
#pragma once

#include <string>

#include "core/tensor.h"

namespace moeforge {

// The float32 weight [E, in, out] (on the host) of `blocks` and `scales`, dequantised exactly as
// Transformers' integrations/mxfp4.py (E2M1 table, ldexp by the scale, then the transpose).
// kFormat/kShape errors name `name` and the dtypes or shapes at fault.
Tensor dequantize_mxfp4(const Tensor& blocks, const Tensor& scales, const std::string& name);

// The inverse, for saving in the release's layout: `weight` [E, in, out] (floating, on the host;
// `in` a multiple of 32, else kShape naming `name`) as blocks [E, out, in/32, 16] and scales
// [E, out, in/32]. Each block takes the smallest power of two that brings its largest magnitude
// within 6 (E2M1's largest), and each value the nearest code (ties to an even mantissa), so a
// weight that is already E2M1 times a power of two per block comes back unchanged.
struct Mxfp4Weight {
  Tensor blocks, scales;
};
Mxfp4Weight quantize_mxfp4(const Tensor& weight, const std::string& name);
// The shapes quantize_mxfp4 gives a weight of shape `weight` (the same kShape error): what a process
// that does not quantize it (another expert-parallel rank's) plans its shard for.
struct Mxfp4Shapes {
  Shape blocks, scales;
};
Mxfp4Shapes mxfp4_shapes(const Shape& weight, const std::string& name);

}  // namespace moeforge
