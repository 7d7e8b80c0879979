// The attention mask of ops/attention.h as CUDA kernels read it (attention.cu, mamba.cu).
// Included only by .cu files of ops/cuda.
#pragma once

#include "ops/attention.h"
#include "ops/cuda/common.cuh"

namespace moeforge::ops::cuda {

// The mask rules of ops.h for batch row b: query t may attend key s iff s <= t, key s is valid and
// both lie in the same segment (and query t is valid where padded queries attend nothing). Absent
// tensors are null pointers.
struct MaskView {
  const void* key_valid;
  int valid_bytes;  // element size of key_valid: 8, 4 or 1
  const int32_t* segment;
  int64_t seq;
  int64_t window;  // > 0: query t attends only keys s > t - window as well
  bool padded_queries_attend = true;

  __device__ __forceinline__ bool valid(int64_t b, int64_t s) const {
    if (key_valid == nullptr) return true;
    const int64_t i = b * seq + s;
    if (valid_bytes == 8) return static_cast<const int64_t*>(key_valid)[i] != 0;
    if (valid_bytes == 4) return static_cast<const int32_t*>(key_valid)[i] != 0;
    return static_cast<const uint8_t*>(key_valid)[i] != 0;
  }
  __device__ __forceinline__ bool allowed(int64_t b, int64_t t, int64_t s) const {
    return s <= t && (window <= 0 || s > t - window) && valid(b, s) &&
           (segment == nullptr || segment[b * seq + s] == segment[b * seq + t]) &&
           (padded_queries_attend || valid(b, t));
  }
  // Row t of sequence b begins a packed document (the first row always does).
  __device__ __forceinline__ bool starts_document(int64_t b, int64_t t) const {
    return t == 0 || (segment != nullptr && segment[b * seq + t] != segment[b * seq + t - 1]);
  }
  // The first key query t may attend.
  __device__ __forceinline__ int64_t first_key(int64_t t) const { return window > 0 && t >= window ? t - window + 1 : 0; }
  // One past the last query that may attend key s.
  __device__ __forceinline__ int64_t last_query(int64_t s) const {
    return window > 0 && s + window < seq ? s + window : seq;
  }
};

inline MaskView mask_view(const AttentionMask& mask, int64_t seq, int64_t window, const char* op) {
  MaskView m{nullptr, 0, nullptr, seq, window, mask.padded_queries_attend};
  if (mask.key_valid.defined()) {
    const DType d = mask.key_valid.dtype();
    MF_CHECK(d == DType::kI64 || d == DType::kI32 || d == DType::kU8 || d == DType::kBool,
             kUnsupported, op, ": key_valid has dtype ", dtype_torch_name(d),
             "; expected int64, int32 or uint8");
    MF_ASSERT(mask.key_valid.is_contiguous());
    m.key_valid = mask.key_valid.raw_data();
    m.valid_bytes = static_cast<int>(mask.key_valid.element_size());
  }
  if (mask.segment.defined()) {
    check_dtype(mask.segment, DType::kI32, op, "segment");
    m.segment = mask.segment.data<int32_t>();
  }
  return m;
}

}  // namespace moeforge::ops::cuda
