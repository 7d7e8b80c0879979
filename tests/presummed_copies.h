// A process group of `size` copies of one process's parameters whose gradients are already the sum
// over the copies: the collectives of optimizer and gradient sharding have nothing to do, so each
// rank's slices can be checked in one process. Its split (the sharded gradients' own communicator on
// CUDA) is another such group; every other collective is unexpected.
#pragma once

#include <memory>
#include <vector>

#include "core/error.h"
#include "dist/process_group.h"

namespace moeforge::testing {

class PresummedCopies final : public ProcessGroup {
 public:
  PresummedCopies(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void reduce_scatter_sum(Tensor&, const std::vector<int64_t>&) override {}
  void all_gather_parts(Tensor&, const std::vector<int64_t>&) override {}
  std::shared_ptr<ProcessGroup> split(int, int) override { return std::make_shared<PresummedCopies>(rank_, size_); }
  void all_reduce_sum(Tensor&) override { unexpected(); }
  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>&) override { unexpected(); }
  Tensor all_to_all_rows(const Tensor&, const std::vector<int64_t>&, const std::vector<int64_t>&) override { unexpected(); }
  Tensor all_gather_rows(const Tensor&, const std::vector<int64_t>&) override { unexpected(); }
  void barrier() override { unexpected(); }
  [[noreturn]] void abort(int) override { unexpected(); }

 private:
  [[noreturn]] static void unexpected() { fail(ErrorCode::kInternal, "unexpected collective"); }
  int rank_, size_;
};

}  // namespace moeforge::testing
