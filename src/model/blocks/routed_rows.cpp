#include "model/blocks/routed_rows.h"

#include "core/error.h"

namespace moeforge {

RoutedRows::RoutedRows(const std::vector<uint8_t>& routed) : total_(static_cast<int64_t>(routed.size())) {
  for (int64_t i = 0; i < total_; ++i) {
    if (!routed[i]) continue;
    if (runs_.empty() || runs_.back().end != i) runs_.push_back({i, i});
    ++runs_.back().end;
    ++count_;
  }
}

Tensor RoutedRows::gather(const Tensor& x) const {
  if (all()) return x;
  MF_ASSERT(x.size(0) == total_);
  return copy_runs(x, count_, /*gathering=*/true);
}

Tensor RoutedRows::scatter(const Tensor& rows) const {
  if (all()) return rows;
  MF_ASSERT(rows.size(0) == count_);
  return copy_runs(rows, total_, /*gathering=*/false);
}

Tensor RoutedRows::copy_runs(const Tensor& from, int64_t rows, bool gathering) const {
  Shape shape = from.shape();
  shape[0] = rows;
  // Scattered rows outside the runs stay zero.
  Tensor to = gathering ? Tensor::empty(shape, from.dtype(), from.device(), "routed rows")
                        : Tensor::zeros(shape, from.dtype(), from.device(), "scattered routed rows");
  int64_t packed = 0;
  for (const Run& r : runs_) {
    const int64_t n = r.end - r.begin;
    if (gathering) to.slice(0, packed, packed + n).copy_from(from.slice(0, r.begin, r.end));
    else to.slice(0, r.begin, r.end).copy_from(from.slice(0, packed, packed + n));
    packed += n;
  }
  return to;
}

}  // namespace moeforge
