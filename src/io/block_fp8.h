// Block-scaled FP8 weights, as DeepSeek releases DeepSeek-V3 (quantization_config quant_method
// "fp8", fmt "e4m3"): a weight [R, C] stored as float8_e4m3fn and its `<name>_scale_inv` [ceil(R/br),
// ceil(C/bc)] float32 (or bfloat16), one scale per block of br x bc; the weight is fp8 * scale.
// Blocks at the right and bottom edges may be partial (DeepSeek-V3's kv_a_proj_with_mqa has 576
// rows: 4.5 blocks of 128).
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace moeforge {

// The float32 weight (on the host) of `weight` [R, C] (F8_E4M3) scaled by `scale_inv` in blocks of
// block_rows x block_cols. kShape/kFormat errors name `name` and the shapes or dtypes at fault.
Tensor dequantize_block_fp8(const Tensor& weight, const Tensor& scale_inv, int64_t block_rows, int64_t block_cols,
                            const std::string& name);

}  // namespace moeforge
