// core/cuda/stream.h from host code: the header needs no CUDA headers (this file includes none),
// and in a build without CUDA there is no current stream, guards and record_stream do nothing, and
// a Stream or Event cannot be made. The CUDA behaviour is tested in tests/gpu/gpu_streams_test.cpp.
#include "core/cuda/stream.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/tensor.h"

namespace moeforge {
namespace {

TEST(StreamApi, RecordStreamOfAHostTensorDoesNothing) {
  const Tensor t = Tensor::zeros({4}, DType::kF32);
  record_stream(t, nullptr);
  record_stream(Tensor(), nullptr);
  EXPECT_EQ(t.item_float(0), 0.0f);
}

TEST(StreamApi, WithoutCudaThereIsNoStream) {
#ifdef MOEFORGE_WITH_CUDA
  GTEST_SKIP() << "a CUDA build: tests/gpu covers streams";
#else
  EXPECT_EQ(current_stream(), nullptr);
  EXPECT_EQ(compute_stream(), nullptr);
  EXPECT_EQ(comm_stream(), nullptr);
  {
    StreamGuard g(nullptr);
    EXPECT_EQ(current_stream(), nullptr);
  }
  stream_wait(nullptr, nullptr);
  try {
    Stream s;
    FAIL() << "made a CUDA stream without CUDA";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
  EXPECT_THROW(Event(), Error);
#endif
}

}  // namespace
}  // namespace moeforge
