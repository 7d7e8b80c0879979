#include "io/block_fp8.h"

#include "core/error.h"

namespace moeforge {

Tensor dequantize_block_fp8(const Tensor& weight, const Tensor& scale_inv, int64_t block_rows, int64_t block_cols,
                            const std::string& name) {
  MF_CHECK(weight.dtype() == DType::kF8E4M3 && weight.dim() == 2, kFormat, "tensor ", name, " has dtype ",
           dtype_safetensors_name(weight.dtype()), " and shape ", shape_str(weight.shape()),
           "; a block-FP8 weight is a 2-D F8_E4M3 matrix");
  MF_CHECK(scale_inv.dtype() == DType::kF32 || scale_inv.dtype() == DType::kBF16, kFormat, "tensor ", name,
           "_scale_inv has dtype ", dtype_safetensors_name(scale_inv.dtype()), ", expected F32 or BF16");
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const Shape grid = {(rows + block_rows - 1) / block_rows, (cols + block_cols - 1) / block_cols};
  MF_CHECK(scale_inv.shape() == grid, kShape, "tensor ", name, "_scale_inv has shape ", shape_str(scale_inv.shape()),
           ", expected ", shape_str(grid), " for the ", shape_str(weight.shape()), " weight in blocks of ", block_rows,
           " x ", block_cols, " (quantization_config.weight_block_size)");
  const Tensor fp8 = weight.to(Device::kCPU).contiguous();
  const Tensor scale = scale_inv.to(Device::kCPU).to(DType::kF32);
  const uint8_t* q = fp8.data<uint8_t>();
  const float* s = scale.data<float>();
  Tensor out = Tensor::empty(weight.shape(), DType::kF32);
  float* w = out.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      w[r * cols + c] = f8e4m3_to_float(q[r * cols + c]) * s[(r / block_rows) * grid[1] + c / block_cols];
  return out;
}

}  // namespace moeforge
