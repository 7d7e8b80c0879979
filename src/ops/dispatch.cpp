// The argument checks of every op (dispatch.h).
#include "ops/dispatch.h"

namespace moeforge::ops::detail {

void check_defined(Op op, const char* name, const Tensor& t) {
  MF_CHECK(t.defined(), kInvalidArgument, op_name(op), ": ", name, " is an undefined tensor");
}

void check_layout(Op op, const char* name, const Tensor& t, Device device) {
  check_defined(op, name, t);
  MF_CHECK(t.device() == device, kInvalidArgument, op_name(op), ": ", name, " is on ",
           device_name(t.device()), " but the other inputs are on ", device_name(device));
  MF_CHECK(t.is_contiguous(), kInvalidArgument, op_name(op), ": ", name, " of shape ",
           shape_str(t.shape()), " is not contiguous (call .contiguous())");
}

void check_shape(Op op, const char* name, const Tensor& t, const Shape& expected) {
  MF_CHECK(t.shape() == expected, kShape, op_name(op), ": ", name, " has shape ",
           shape_str(t.shape()), ", expected ", shape_str(expected));
}

void check_rank(Op op, const char* name, const Tensor& t, int64_t rank) {
  MF_CHECK(t.dim() == rank, kShape, op_name(op), ": ", name, " has shape ", shape_str(t.shape()),
           ", expected ", rank, " dimensions");
}

void check_dtype(Op op, const char* name, const Tensor& t, DType expected) {
  MF_CHECK(t.dtype() == expected, kInvalidArgument, op_name(op), ": ", name, " has dtype ",
           dtype_torch_name(t.dtype()), ", expected ", dtype_torch_name(expected));
}

void check_float(Op op, const char* name, const Tensor& t) {
  MF_CHECK(dtype_is_floating(t.dtype()), kInvalidArgument, op_name(op), ": ", name, " has dtype ",
           dtype_torch_name(t.dtype()), ", expected a floating dtype");
  MF_CHECK(t.device() != Device::kCPU || t.dtype() == DType::kF32, kUnsupported, op_name(op), ": ",
           name, " has dtype ", dtype_torch_name(t.dtype()), " but the CPU ops take float32 only");
}

Device check_float_input(Op op, const char* name, const Tensor& t, int64_t rank) {
  check_defined(op, name, t);
  const Device device = t.device();
  check_layout(op, name, t, device);
  check_float(op, name, t);
  check_rank(op, name, t, rank);
  return device;
}

void check_float_tensor(Op op, const char* name, const Tensor& t, Device device, const Shape& shape) {
  check_layout(op, name, t, device);
  check_float(op, name, t);
  check_shape(op, name, t, shape);
}

void check_typed_tensor(Op op, const char* name, const Tensor& t, Device device, DType dtype,
                        const Shape& shape) {
  check_layout(op, name, t, device);
  check_dtype(op, name, t, dtype);
  check_shape(op, name, t, shape);
}

void prepare_saved(Op op, const char* name, Tensor& t, Device device, const Shape& shape) {
  if (!t.defined()) {
    t = Tensor::empty(shape, DType::kF32, device, name);
    return;
  }
  check_typed_tensor(op, name, t, device, DType::kF32, shape);
}

Device check_typed_input(Op op, const char* name, const Tensor& t, DType dtype, int64_t rank) {
  check_defined(op, name, t);
  const Device device = t.device();
  check_layout(op, name, t, device);
  check_dtype(op, name, t, dtype);
  check_rank(op, name, t, rank);
  return device;
}

Device check_probs(Op op, const Tensor& probs) {
  return check_typed_input(op, "probs", probs, DType::kF32, 2);
}

void no_cuda(Op op) {
  fail(ErrorCode::kUnsupported, op_name(op), ": this moeforge was built without the CUDA backend");
}

}  // namespace moeforge::ops::detail
