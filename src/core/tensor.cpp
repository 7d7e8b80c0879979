#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/error.h"

#ifdef MOEFORGE_WITH_CUDA
#include "core/cuda/device_copy.h"
#endif

namespace moeforge {

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device, const char* what) {
  std::shared_ptr<Storage> s(new Storage());
  s->bytes_ = bytes;
  s->device_ = device;
  s->owned_ = true;
  s->data_ = device == Device::kCPU ? cpu_alloc(bytes, what) : cuda_alloc(bytes, what);
  return s;
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t bytes, Device device,
                                         std::shared_ptr<const void> owner) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = data;
  s->bytes_ = bytes;
  s->device_ = device;
  s->owner_ = std::move(owner);
  return s;
}

Storage::~Storage() {
  if (!owned_) return;
  if (device_ == Device::kCPU)
    cpu_free(data_, bytes_);
  else
    cuda_free(data_);
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device, const char* what) {
  for (int64_t s : shape)
    MF_CHECK(s >= 0, kShape, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  t.dtype_ = dtype;
  t.storage_ = Storage::allocate(t.nbytes(), device, what);
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device, const char* what) {
  Tensor t = empty(std::move(shape), dtype, device, what);
  t.fill_zero();
  return t;
}

Tensor Tensor::borrow(void* data, Shape shape, DType dtype, Device device,
                      std::shared_ptr<const void> owner) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  t.dtype_ = dtype;
  t.storage_ = Storage::borrow(data, t.nbytes(), device, std::move(owner));
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, Shape shape) {
  MF_CHECK(shape_numel(shape) == static_cast<int64_t>(values.size()), kShape, "from_vector: ",
           values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(std::move(shape), DType::kF32);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(float));  // no null source
  return t;
}

Tensor Tensor::from_vector(const std::vector<int64_t>& values, Shape shape) {
  MF_CHECK(shape_numel(shape) == static_cast<int64_t>(values.size()), kShape, "from_vector: ",
           values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(std::move(shape), DType::kI64);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(int64_t));  // no null source
  return t;
}

int64_t Tensor::size(int64_t d) const {
  if (d < 0) d += dim();
  MF_CHECK(d >= 0 && d < dim(), kShape, "dimension ", d, " out of range for shape ",
           shape_str(shape_));
  return shape_[d];
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_) || numel() <= 1; }

void* Tensor::raw_data() const {
  MF_CHECK(defined(), kInvalidArgument, "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(element_size());
}

Tensor Tensor::view(Shape shape) const {
  MF_CHECK(is_contiguous(), kShape, "view of a non-contiguous tensor of shape ", shape_str(shape_));
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      MF_CHECK(infer < 0, kShape, "view: more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    MF_CHECK(known > 0 && numel() % known == 0, kShape, "view: cannot infer ", shape_str(shape),
             " from ", shape_str(shape_));
    shape[infer] = numel() / known;
  }
  MF_CHECK(shape_numel(shape) == numel(), kShape, "view: shape ", shape_str(shape),
           " does not match ", shape_str(shape_));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  if (d < 0) d += dim();
  MF_CHECK(d >= 0 && d < dim() && 0 <= start && start <= end && end <= shape_[d], kShape,
           "slice(", d, ", ", start, ", ", end, ") out of range for shape ", shape_str(shape_));
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  if (d < 0) d += dim();
  Tensor t = slice(d, index, index + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  if (d0 < 0) d0 += dim();
  if (d1 < 0) d1 += dim();
  MF_CHECK(d0 >= 0 && d0 < dim() && d1 >= 0 && d1 < dim(), kShape, "transpose(", d0, ", ", d1,
           ") out of range for shape ", shape_str(shape_));
  Tensor t = *this;
  std::swap(t.shape_[d0], t.shape_[d1]);
  std::swap(t.strides_[d0], t.strides_[d1]);
  return t;
}

namespace {

// Copies a strided CPU view into contiguous memory, one innermost run at a time.
void gather_strided(const Tensor& src, void* dst) {
  const size_t es = src.element_size();
  const int64_t n = src.numel();
  if (n == 0) return;
  const int64_t nd = src.dim();
  const char* base = static_cast<const char*>(src.raw_data());
  char* out = static_cast<char*>(dst);
  if (nd == 0) {
    std::memcpy(out, base, es);
    return;
  }
  const int64_t inner = src.shape()[nd - 1];
  const int64_t inner_stride = src.strides()[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  for (int64_t done = 0; done < n; done += inner) {
    int64_t off = 0;
    for (int64_t d = 0; d < nd - 1; ++d) off += idx[d] * src.strides()[d];
    if (inner_stride == 1) {
      std::memcpy(out, base + off * es, inner * es);
      out += inner * es;
    } else {
      for (int64_t i = 0; i < inner; ++i, out += es)
        std::memcpy(out, base + (off + i * inner_stride) * es, es);
    }
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++idx[d] < src.shape()[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor t = empty(shape_, dtype_, target);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype_) return *this;
  MF_CHECK(device() == Device::kCPU, kUnsupported, "dtype conversion of a ", device_name(device()),
           " tensor on the host path");
  Tensor src = contiguous();
  Tensor t = empty(shape_, target);
  convert_elements(src.raw_data(), dtype_, t.raw_data(), target, static_cast<size_t>(numel()));
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  MF_CHECK(src.shape_ == shape_, kShape, "copy_from: source shape ", shape_str(src.shape_),
           " differs from destination ", shape_str(shape_));
  MF_CHECK(src.dtype_ == dtype_, kInvalidArgument, "copy_from: dtype ",
           dtype_torch_name(src.dtype_), " into ", dtype_torch_name(dtype_));
  if (device() == Device::kCPU && src.device() == Device::kCPU) {
    if (is_contiguous()) {
      gather_strided(src, raw_data());
      return;
    }
    Tensor tmp = src.contiguous();
    // Scatter into a strided destination: walk this view with the same loop on a transposed role.
    const size_t es = element_size();
    const char* in = static_cast<const char*>(tmp.raw_data());
    std::vector<int64_t> idx(shape_.size(), 0);
    char* base = static_cast<char*>(raw_data());
    for (int64_t i = 0; i < numel(); ++i) {
      int64_t off = 0;
      for (size_t d = 0; d < shape_.size(); ++d) off += idx[d] * strides_[d];
      std::memcpy(base + off * es, in + i * es, es);
      for (size_t d = shape_.size(); d-- > 0;) {
        if (++idx[d] < shape_[d]) break;
        idx[d] = 0;
      }
    }
    return;
  }
#ifdef MOEFORGE_WITH_CUDA
  MF_CHECK(is_contiguous() && src.is_contiguous(), kUnsupported,
           "copy between devices needs contiguous tensors (shape ", shape_str(shape_), ")");
  cuda_copy_bytes(raw_data(), device(), src.raw_data(), src.device(), nbytes());
#else
  fail(ErrorCode::kUnsupported, "copy to or from CUDA in a build without CUDA");
#endif
}

void Tensor::fill_zero() {
  MF_CHECK(is_contiguous(), kUnsupported, "fill_zero on a non-contiguous view");
  if (device() == Device::kCPU) {
    std::memset(raw_data(), 0, nbytes());
    return;
  }
#ifdef MOEFORGE_WITH_CUDA
  cuda_zero_bytes(raw_data(), nbytes());
#endif
}

float Tensor::item_float(int64_t i) const {
  MF_CHECK(device() == Device::kCPU, kUnsupported, "item_float on a CUDA tensor");
  MF_CHECK(i >= 0 && i < numel(), kShape, "item_float index ", i, " out of range for ",
           shape_str(shape_));
  // Convert the linear index into an offset through the strides.
  int64_t off = 0, rem = i;
  for (size_t d = shape_.size(); d-- > 0;) {
    off += (rem % shape_[d]) * strides_[d];
    rem /= shape_[d];
  }
  float v;
  const char* p = static_cast<const char*>(raw_data()) + off * static_cast<int64_t>(element_size());
  convert_elements(p, dtype_, &v, DType::kF32, 1);
  return v;
}

std::vector<float> Tensor::to_float_vector() const {
  Tensor t = contiguous().to(DType::kF32);
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

}  // namespace moeforge
