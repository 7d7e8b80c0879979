#include "core/error.h"
#include "core/tensor.h"
#include "testing.h"

namespace moeforge {
namespace {

Tensor iota(Shape shape) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from_vector(v, std::move(shape));
}

TEST(Tensor, ViewsShareMemory) {
  Tensor t = iota({2, 3, 4});
  Tensor s = t.select(0, 1);  // [3, 4], elements 12..23
  EXPECT_EQ(shape_str(s.shape()), "[3, 4]");
  EXPECT_EQ(s.item_float(0), 12.0f);
  s.data<float>()[0] = -1.0f;
  EXPECT_EQ(t.item_float(12), -1.0f);
  Tensor v = t.view({6, -1});
  EXPECT_EQ(shape_str(v.shape()), "[6, 4]");
  EXPECT_EQ(v.storage(), t.storage());
}

TEST(Tensor, TransposeAndContiguous) {
  Tensor t = iota({2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  Tensor c = tt.contiguous();
  EXPECT_EQ(c.to_float_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor sl = t.slice(1, 1, 3);  // [[1,2],[4,5]]
  EXPECT_EQ(sl.to_float_vector(), (std::vector<float>{1, 2, 4, 5}));
  // Copy into a strided destination.
  Tensor dst = Tensor::zeros({3, 2}, DType::kF32);
  dst.transpose(0, 1).copy_from(t);
  EXPECT_EQ(dst.to_float_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(Tensor, DTypeConversion) {
  Tensor t = Tensor::from_vector(std::vector<float>{1.5f, -2.25f, 3.0f}, {3});
  Tensor b = t.to(DType::kBF16);
  EXPECT_EQ(b.dtype(), DType::kBF16);
  EXPECT_EQ(b.to(DType::kF32).to_float_vector(), t.to_float_vector());
}

TEST(Tensor, ErrorsNameTheShape) {
  Tensor t = iota({2, 3});
  try {
    t.view({4, 2});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kShape);
    EXPECT_NE(std::string(e.what()).find("[4, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.slice(0, 1, 3), Error);
  EXPECT_THROW(Tensor::empty({2}, DType::kF32, Device::kCUDA), Error);  // CPU build: no CUDA
}

TEST(Allocator, TracksPeak) {
  reset_cpu_peak_memory();
  size_t before = cpu_memory_stats().in_use;
  {
    Tensor t = Tensor::empty({1024, 1024}, DType::kF32);
    EXPECT_GE(cpu_memory_stats().in_use, before + 4u * 1024 * 1024);
  }
  EXPECT_EQ(cpu_memory_stats().in_use, before);
  EXPECT_GE(cpu_memory_stats().peak_in_use, before + 4u * 1024 * 1024);
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
}

}  // namespace
}  // namespace moeforge
