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

}  // namespace moeforge
