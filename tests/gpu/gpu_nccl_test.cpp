// The NCCL process group (src/dist/nccl_process_group.h) on one GPU: a communicator of one rank,
// made over a one-rank stand-in for the launcher's group, through every collective. NCCL refuses two
// ranks on one GPU, so the exchanges between ranks run where 2, 4 or 8 GPUs are lent
// (src/dist/README.md); here each collective must hand back what one rank gave, on the device and
// from the host, in the dtypes the model and the optimizer use.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "core/allocator.h"
#include "dist/nccl_process_group.h"
#include "testing.h"

namespace moeforge {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

// The launcher's group when one process runs: it only carries the unique id to itself.
class OneRank final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(Tensor&) override {}
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send) override { return send; }
  Tensor all_to_all_rows(const Tensor& send, const std::vector<int64_t>&, const std::vector<int64_t>&) override {
    return send.clone();
  }
  Tensor all_gather_rows(const Tensor& local, const std::vector<int64_t>&) override { return local.clone(); }
  void reduce_scatter_sum(Tensor&, const std::vector<int64_t>&) override {}
  void all_gather_parts(Tensor&, const std::vector<int64_t>&) override {}
  std::shared_ptr<ProcessGroup> split(int, int) override { return std::make_shared<OneRank>(); }
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::exit(exit_code); }
};

Tensor counting(int64_t rows, int64_t cols, DType dtype) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.25f - 3.0f;
  return Tensor::from_vector(v, {rows, cols}).to(dtype);
}

void expect_same(const Tensor& have, const Tensor& want, const char* what) {
  ASSERT_EQ(have.shape(), want.shape()) << what;
  EXPECT_EQ(have.to(Device::kCPU).to(DType::kF32).to_float_vector(), want.to(Device::kCPU).to(DType::kF32).to_float_vector())
      << what;
}

TEST(NcclGroup, OneRankHandsBackWhatItGave) {
  SKIP_WITHOUT_GPU();
  select_cuda_device(0);
  OneRank launcher;
  const std::shared_ptr<ProcessGroup> group = nccl_group(launcher);
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->size(), 1);

  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor want = counting(6, 4, dtype);
    Tensor device = want.to(Device::kCUDA);
    group->all_reduce_sum(device);
    expect_same(device, want, "all-reduce on the device");
    EXPECT_EQ(group->all_to_all_counts({6}), std::vector<int64_t>{6});
    expect_same(group->all_to_all_rows(want.to(Device::kCUDA), {6}, {6}), want, "all-to-all of device rows");
    expect_same(group->all_to_all_rows(want, {6}, {6}), want, "all-to-all of host rows");
    expect_same(group->all_gather_rows(want.to(Device::kCUDA), {6}), want, "all-gather of device rows");
    Tensor flat = want.to(Device::kCUDA).view({24});
    group->reduce_scatter_sum(flat, {24});
    group->all_gather_parts(flat, {24});
    expect_same(flat.view({6, 4}), want, "reduce-scatter and all-gather of parts");
  }
  EXPECT_EQ(sum_over_ranks(*group, int64_t{41}), 41);
  EXPECT_EQ(sum_over_ranks(*group, 2.5), 2.5);
  const std::shared_ptr<ProcessGroup> sub = group->split(0, 0);
  EXPECT_EQ(sub->size(), 1);
  Tensor one = counting(1, 3, DType::kF32).to(Device::kCUDA);
  sub->all_reduce_sum(one);
  expect_same(one, counting(1, 3, DType::kF32), "all-reduce over a split");
  group->barrier();
}

}  // namespace
}  // namespace moeforge
