// Token embedding lookup and its gradient (a scatter-add into the table) on CUDA.
#include <cstdint>

#include <cub/device/device_radix_sort.cuh>

#include "core/cuda/device_copy.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace moeforge::ops::cuda {
namespace {

constexpr unsigned long long kNoBadRow = ~0ull;

// Records the lowest position whose id is outside [0, vocab) in *bad_row.
__device__ __forceinline__ bool id_ok(const int64_t* ids, int64_t row, int64_t vocab,
                                      unsigned long long* bad_row) {
  const int64_t id = ids[row];
  if (id >= 0 && id < vocab) return true;
  if (threadIdx.x == 0) atomicMin(bad_row, static_cast<unsigned long long>(row));
  return false;
}

// One block per token row; a bad id writes a zero row (the op then throws anyway).
__global__ void embedding_fwd_kernel(FloatRef weight, const int64_t* ids, FloatRef out, int64_t n,
                                     int64_t vocab, int64_t hidden, unsigned long long* bad_row) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const bool ok = id_ok(ids, row, vocab, bad_row);
    const int64_t src = ok ? ids[row] * hidden : 0;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
      out.store(row * hidden + j, ok ? weight.load(src + j) : 0.0f);
  }
}

__global__ void check_ids_kernel(const int64_t* ids, int64_t n, int64_t vocab,
                                 unsigned long long* bad_row) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n;
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = ids[row];
    if (id < 0 || id >= vocab) atomicMin(bad_row, static_cast<unsigned long long>(row));
  }
}

__global__ void iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = static_cast<int32_t>(i);
}

// A block per run of equal ids in the sorted ids (the run's first position; the rest skip): the run's
// rows of grad_out summed in fp32, in position order, then added into the id's row once. kVec
// columns a thread (8: 16-byte bf16 chunks).
template <int kVec>
__global__ void embedding_bwd_kernel(FloatRef grad_out, const int64_t* sorted_ids, const int32_t* positions,
                                     FloatRef grad_weight, int64_t n, int64_t hidden, int64_t padding_idx) {
  for (int64_t first = blockIdx.x; first < n; first += gridDim.x) {
    const int64_t id = sorted_ids[first];
    if (id == padding_idx || (first > 0 && sorted_ids[first - 1] == id)) continue;
    int64_t end = first + 1;
    while (end < n && sorted_ids[end] == id) ++end;
    for (int64_t j = threadIdx.x * int64_t(kVec); j < hidden; j += int64_t(blockDim.x) * kVec) {
      float sum[kVec] = {}, row[kVec];
      for (int64_t k = first; k < end; ++k) {
        load_chunk<kVec>(grad_out, positions[k] * hidden + j, row);
#pragma unroll
        for (int v = 0; v < kVec; ++v) sum[v] += row[v];
      }
      load_chunk<kVec>(grad_weight, id * hidden + j, row);
#pragma unroll
      for (int v = 0; v < kVec; ++v) row[v] += sum[v];
      store_chunk<kVec>(grad_weight, id * hidden + j, row);
    }
  }
}

// A device word holding "no bad row yet".
Tensor bad_row_flag() {
  Tensor flag = Tensor::empty({1}, DType::kI64, Device::kCUDA, "embedding id check");
  MF_CUDA_CHECK(cudaMemsetAsync(flag.raw_data(), 0xff, sizeof(unsigned long long), current_stream()));
  return flag;
}

// Host synchronisation: reads the flag and throws naming the first bad id.
void throw_if_bad_id(const Tensor& flag, const Tensor& ids, int64_t vocab, const char* op) {
  unsigned long long bad = 0;
  cuda_copy_to_host(&bad, flag.raw_data(), sizeof bad);
  if (bad == kNoBadRow) return;
  int64_t id = 0;
  cuda_copy_to_host(&id, ids.data<int64_t>() + bad, sizeof id);
  fail(ErrorCode::kInvalidArgument, op, ": token id ", id, " at position ", bad,
       " is outside the vocabulary [0, ", vocab, ")");
}

}  // namespace

void embedding_fwd(const Tensor& weight, const Tensor& ids, Tensor& out) {
  check_dtype(ids, DType::kI64, "embedding_fwd", "ids");
  const int64_t n = ids.numel(), vocab = weight.size(0), hidden = weight.size(1);
  if (n == 0) return;
  Tensor flag = bad_row_flag();
  embedding_fwd_kernel<<<grid_for(n, 1), 256, 0, current_stream()>>>(
      float_ref(weight, "embedding_fwd", "weight"), ids.data<int64_t>(),
      float_ref(out, "embedding_fwd", "out"), n, vocab, hidden,
      static_cast<unsigned long long*>(flag.raw_data()));
  MF_CUDA_CHECK_LAUNCH();
  throw_if_bad_id(flag, ids, vocab, "embedding_fwd");
}

void embedding_bwd(const Tensor& grad_out, const Tensor& ids, Tensor& grad_weight, int64_t padding_idx) {
  check_dtype(ids, DType::kI64, "embedding_bwd", "ids");
  const int64_t n = ids.numel(), vocab = grad_weight.size(0), hidden = grad_weight.size(1);
  if (n == 0) return;
  // Check every id before touching grad_weight so that an error leaves it unchanged.
  Tensor flag = bad_row_flag();
  check_ids_kernel<<<grid_for(n, 256), 256, 0, current_stream()>>>(
      ids.data<int64_t>(), n, vocab, static_cast<unsigned long long*>(flag.raw_data()));
  MF_CUDA_CHECK_LAUNCH();
  throw_if_bad_id(flag, ids, vocab, "embedding_bwd");

  // The positions sorted by id (radix sort on the bits a vocabulary id can have), so that each id's
  // rows are summed once in fp32 and its gradient row rounded once: no fp32 table of the whole
  // vocabulary, and the same sums in the same order every run.
  const cudaStream_t stream = current_stream();
  Tensor order = Tensor::empty({2, n}, DType::kI32, Device::kCUDA, "embedding_bwd positions");
  Tensor sorted_ids = Tensor::empty({n}, DType::kI64, Device::kCUDA, "embedding_bwd sorted ids");
  int32_t* positions = order.data<int32_t>();
  iota_kernel<<<grid_for(n, 256), 256, 0, stream>>>(positions + n, n);
  MF_CUDA_CHECK_LAUNCH();
  int end_bit = 1;
  while (end_bit < 63 && (int64_t{1} << end_bit) < vocab) ++end_bit;
  size_t temp_bytes = 0;
  MF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids.data<int64_t>(), sorted_ids.data<int64_t>(),
                                                positions + n, positions, n, 0, end_bit, stream));
  Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes)}, DType::kU8, Device::kCUDA, "embedding_bwd sort");
  MF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, ids.data<int64_t>(),
                                                sorted_ids.data<int64_t>(), positions + n, positions, n, 0, end_bit,
                                                stream));
  const FloatRef gout = float_ref(grad_out, "embedding_bwd", "grad_out");
  const FloatRef gw = float_ref(grad_weight, "embedding_bwd", "grad_weight");
  const unsigned grid = grid_for(n, 1);
  if (bf16_chunks(hidden, {&grad_out, &grad_weight}))
    embedding_bwd_kernel<8><<<grid, 256, 0, stream>>>(gout, sorted_ids.data<int64_t>(), positions, gw, n, hidden,
                                                      padding_idx);
  else
    embedding_bwd_kernel<1><<<grid, 256, 0, stream>>>(gout, sorted_ids.data<int64_t>(), positions, gw, n, hidden,
                                                      padding_idx);
  MF_CUDA_CHECK_LAUNCH();
}

}  // namespace moeforge::ops::cuda
