#include "dist/process_group.h"

#include <cstdlib>

#include "core/error.h"

namespace moeforge {

size_t row_bytes(const Tensor& t) {
  MF_ASSERT(t.dim() >= 1);
  size_t bytes = t.element_size();
  for (int64_t d = 1; d < t.dim(); ++d) bytes *= static_cast<size_t>(t.size(d));
  return bytes;
}

int64_t collective_timeout_s() {
  const char* v = std::getenv("MOEFORGE_COLLECTIVE_TIMEOUT");
  if (v == nullptr || *v == '\0') return 1800;
  char* end = nullptr;
  const long long s = std::strtoll(v, &end, 10);
  MF_CHECK(end != v && *end == '\0' && s >= 0, kInvalidArgument, "MOEFORGE_COLLECTIVE_TIMEOUT='", v,
           "' is not a number of seconds (0: no timeout)");
  return s;
}

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
