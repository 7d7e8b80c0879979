// What every op's dispatch source (dense.cpp, norm.cpp, ...) shares: the argument checks, made
// once for all backends (devices agree, dtypes, shapes, contiguity) and named after the op in its
// messages, and MF_DISPATCH, which calls the op's CPU or CUDA implementation and times the CUDA one
// under the op's profiler category. Checks that need to read tensor values (token ids in range,
// expert offsets) happen where the data is read, in the backend. Internal to src/ops.
#pragma once

#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/op_table.h"
#include "ops/profile.h"
#ifdef MOEFORGE_WITH_CUDA
#include "ops/cuda/cuda_ops.h"
#endif

namespace moeforge::ops::detail {

void check_defined(Op op, const char* name, const Tensor& t);
// Every tensor an op reads or writes is contiguous and lives on the device of the op's first input.
void check_layout(Op op, const char* name, const Tensor& t, Device device);
void check_shape(Op op, const char* name, const Tensor& t, const Shape& expected);
void check_rank(Op op, const char* name, const Tensor& t, int64_t rank);
void check_dtype(Op op, const char* name, const Tensor& t, DType expected);
// Activations, weights and their gradients: any floating dtype on CUDA, float32 on the CPU (the
// CPU backend is the float32 reference).
void check_float(Op op, const char* name, const Tensor& t);
// A defined, contiguous floating tensor of `rank` dimensions: an op's first input. Returns its
// device, which the op's other tensors must share.
Device check_float_input(Op op, const char* name, const Tensor& t, int64_t rank);
// A floating tensor of an expected shape on `device`.
void check_float_tensor(Op op, const char* name, const Tensor& t, Device device, const Shape& shape);
// A tensor of an exact dtype and shape on `device`.
void check_typed_tensor(Op op, const char* name, const Tensor& t, Device device, DType dtype,
                        const Shape& shape);
// An optional saved-statistics output (rstd, lse): allocated when undefined, else checked and
// overwritten.
void prepare_saved(Op op, const char* name, Tensor& t, Device device, const Shape& shape);
// A defined, contiguous tensor of an exact dtype and rank: an op's first input (index tensors).
// Returns its device.
Device check_typed_input(Op op, const char* name, const Tensor& t, DType dtype, int64_t rank);
// probs: a defined, contiguous [rows, columns] fp32 tensor (softmax and router outputs). Returns
// its device.
Device check_probs(Op op, const Tensor& probs);

inline bool on_cpu(const Tensor& t) { return t.device() == Device::kCPU; }
[[noreturn]] void no_cuda(Op op);

}  // namespace moeforge::ops::detail

// Runs `call`, a function of both cpu_ops.h and cuda_ops.h (same signatures), on the backend of t.
#ifdef MOEFORGE_WITH_CUDA
#define MF_DISPATCH(t, op, call)               \
  do {                                         \
    if (::moeforge::ops::detail::on_cpu(t)) {  \
      cpu::call;                               \
    } else {                                   \
      OpTimer timer_(op);                      \
      cuda::call;                              \
    }                                          \
  } while (0)
#else
#define MF_DISPATCH(t, op, call)              \
  do {                                        \
    if (::moeforge::ops::detail::on_cpu(t))   \
      cpu::call;                              \
    else                                      \
      ::moeforge::ops::detail::no_cuda(op);   \
  } while (0)
#endif
