#include "core/async_copy.h"

#include <cstring>

#include "core/error.h"

#ifdef MOEFORGE_WITH_CUDA
#include "core/cuda/device_copy.h"
#endif

namespace moeforge {

Tensor empty_pinned(Shape shape, DType dtype, const char* what) {
#ifdef MOEFORGE_WITH_CUDA
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  void* ptr = cuda_pinned_alloc(bytes, what);
  std::shared_ptr<const void> owner(ptr, [](const void* p) { cuda_pinned_free(const_cast<void*>(p)); });
  return Tensor::borrow(ptr, std::move(shape), dtype, Device::kCPU, std::move(owner));
#else
  return Tensor::empty(std::move(shape), dtype, Device::kCPU, what);
#endif
}

void copy_async(const Tensor& dst, const Tensor& src) {
  MF_CHECK(dst.is_contiguous() && src.is_contiguous(), kInvalidArgument, "copy_async: non-contiguous tensor");
  MF_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel(), kShape, "copy_async: ", dtype_torch_name(src.dtype()),
           " ", shape_str(src.shape()), " into ", dtype_torch_name(dst.dtype()), " ", shape_str(dst.shape()));
  if (dst.device() == Device::kCPU && src.device() == Device::kCPU) {
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
#ifdef MOEFORGE_WITH_CUDA
  cuda_copy_async(dst.raw_data(), src.raw_data(), src.nbytes());
#else
  fail(ErrorCode::kUnsupported, "copy_async: this moeforge build has no CUDA backend (built without CUDA)");
#endif
}

}  // namespace moeforge
