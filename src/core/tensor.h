// Tensor: a typed, strided view of a shared block of memory on one device.
// Views (reshape of contiguous data, slice, select, transpose) share the block and copy nothing;
// the block lives as long as any view of it. Strides are in elements, offsets in elements too.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"

namespace moeforge {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& shape);

// A block of memory: owned (freed by its allocator) or borrowed (kept alive by `owner`,
// e.g. a memory-mapped safetensors file).
class Storage {
 public:
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device, const char* what);
  static std::shared_ptr<Storage> borrow(void* data, size_t bytes, Device device,
                                         std::shared_ptr<const void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::kCPU;
  bool owned_ = false;
  std::shared_ptr<const void> owner_;
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() is false

  static Tensor empty(Shape shape, DType dtype, Device device = Device::kCPU,
                      const char* what = nullptr);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::kCPU,
                      const char* what = nullptr);
  // Wraps memory owned elsewhere (contiguous); `owner` keeps it alive.
  static Tensor borrow(void* data, Shape shape, DType dtype, Device device,
                       std::shared_ptr<const void> owner);
  static Tensor from_vector(const std::vector<float>& values, Shape shape);
  static Tensor from_vector(const std::vector<int64_t>& values, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::kCPU; }
  size_t element_size() const { return dtype_size(dtype_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const;  // first element of this view
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw_data());
  }

  // Views.
  Tensor view(Shape shape) const;  // contiguous only; one dimension may be -1
  Tensor slice(int64_t d, int64_t start, int64_t end) const;
  Tensor select(int64_t d, int64_t index) const;  // drops dimension d
  Tensor transpose(int64_t d0, int64_t d1) const;

  // Copies.
  Tensor contiguous() const;  // self when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;  // self when already there
  Tensor to(DType dtype) const;    // CPU only; self when already that dtype
  void copy_from(const Tensor& src);  // same shape; any devices; dtypes must match
  void fill_zero();

  // Reads element i (row-major over the view) as float; CPU only. For tests and small reads.
  float item_float(int64_t i = 0) const;
  std::vector<float> to_float_vector() const;  // CPU only

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::kF32;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace moeforge
