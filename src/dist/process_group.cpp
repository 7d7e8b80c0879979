#include "dist/process_group.h"

namespace moeforge {

int64_t sum_over_ranks(ProcessGroup& group, int64_t value) {
  Tensor t = Tensor::empty({1}, DType::kI64, Device::kCPU, "rank sum");
  *t.data<int64_t>() = value;
  group.all_reduce_sum(t);
  return *t.data<int64_t>();
}

double sum_over_ranks(ProcessGroup& group, double value) {
  Tensor t = Tensor::empty({1}, DType::kF64, Device::kCPU, "rank sum");
  *t.data<double>() = value;
  group.all_reduce_sum(t);
  return *t.data<double>();
}

}  // namespace moeforge
