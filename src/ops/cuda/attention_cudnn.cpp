// Causal attention through the cuDNN frontend's SDPA graphs (flash-attention kernels inside cuDNN),
// forward and backward. Our [B, T, H, D] layout is cuDNN's (B, H, T, D) with strides, and lse
// [B, H, T] is its fp32 "Stats" (natural-log log-sum-exp of the scaled scores), so nothing is
// copied. Building a graph is slow (plans are compiled), so graphs are cached per shape.
// Host code only: compiled by the C++ compiler, which is much faster than nvcc on these headers.
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/cuda/check.h"
#include "core/tensor.h"
#include "ops/cuda/attention_cudnn.h"
#include "ops/cuda/stream.h"

namespace moeforge::ops::cuda {
namespace {

namespace fe = cudnn_frontend;

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

#define MF_CUDNN_FE_CHECK(expr)                                                               \
  do {                                                                                        \
    auto mf_st_ = (expr);                                                                     \
    if (mf_st_.is_bad())                                                                      \
      ::moeforge::fail(::moeforge::ErrorCode::kBackend, "cuDNN error in ", #expr, ": ",       \
                       mf_st_.get_message(), " at ", __FILE__, ":", __LINE__);                \
  } while (0)

// One cuDNN handle per device, bound to the stream the ops use.
cudnnHandle_t cudnn_handle() {
  static std::mutex mutex;
  static std::vector<cudnnHandle_t> handles;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (handles.size() <= static_cast<size_t>(device)) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr) {
    cudnnStatus_t st = cudnnCreate(&handles[device]);
    MF_CHECK(st == CUDNN_STATUS_SUCCESS, kBackend, "cudnnCreate failed: ", cudnnGetErrorString(st));
    st = cudnnSetStream(handles[device], kStream);
    MF_CHECK(st == CUDNN_STATUS_SUCCESS, kBackend, "cudnnSetStream failed: ", cudnnGetErrorString(st));
  }
  return handles[device];
}

struct Shape4 {
  int64_t batch, seq, hq, hkv, d;
};

// (B, H, T, D) view of a [B, T, H, D] tensor.
std::shared_ptr<fe::graph::Tensor_attributes> bthd(fe::graph::Graph& g, const char* name, Uid uid,
                                                   int64_t b, int64_t t, int64_t h, int64_t d) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({b, h, t, d})
                      .set_stride({t * h * d, d, h * d, 1}));
}

void set_bthd(const std::shared_ptr<fe::graph::Tensor_attributes>& t, Uid uid, int64_t b,
              int64_t seq, int64_t h, int64_t d) {
  t->set_output(true).set_uid(uid).set_dim({b, h, seq, d}).set_stride({seq * h * d, d, h * d, 1});
}

std::shared_ptr<fe::graph::Tensor_attributes> stats_tensor(fe::graph::Graph& g, const Shape4& s) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name("stats")
                      .set_uid(kStats)
                      .set_dim({s.batch, s.hq, s.seq, 1})
                      .set_stride({s.hq * s.seq, s.seq, 1, 1})
                      .set_data_type(fe::DataType_t::FLOAT));
}

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

void finish(fe::graph::Graph& g, cudnnHandle_t handle) {
  MF_CUDNN_FE_CHECK(g.validate());
  MF_CUDNN_FE_CHECK(g.build_operation_graph(handle));
  MF_CUDNN_FE_CHECK(g.create_execution_plans({fe::HeurMode_t::A}));
  MF_CUDNN_FE_CHECK(g.check_support(handle));
  MF_CUDNN_FE_CHECK(g.build_plans(handle));
}

std::shared_ptr<fe::graph::Graph> build_forward(const Shape4& s, float scale, cudnnHandle_t handle) {
  auto g = new_graph();
  auto q = bthd(*g, "q", kQ, s.batch, s.seq, s.hq, s.d);
  auto k = bthd(*g, "k", kK, s.batch, s.seq, s.hkv, s.d);
  auto v = bthd(*g, "v", kV, s.batch, s.seq, s.hkv, s.d);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("attention_fwd")
                     .set_generate_stats(true)
                     .set_causal_mask(true)
                     .set_attn_scale(scale);
  auto [o, stats] = g->sdpa(q, k, v, options);
  set_bthd(o, kO, s.batch, s.seq, s.hq, s.d);
  stats->set_output(true)
      .set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim({s.batch, s.hq, s.seq, 1})
      .set_stride({s.hq * s.seq, s.seq, 1, 1});
  finish(*g, handle);
  return g;
}

std::shared_ptr<fe::graph::Graph> build_backward(const Shape4& s, float scale, cudnnHandle_t handle) {
  auto g = new_graph();
  auto q = bthd(*g, "q", kQ, s.batch, s.seq, s.hq, s.d);
  auto k = bthd(*g, "k", kK, s.batch, s.seq, s.hkv, s.d);
  auto v = bthd(*g, "v", kV, s.batch, s.seq, s.hkv, s.d);
  auto o = bthd(*g, "o", kO, s.batch, s.seq, s.hq, s.d);
  auto dout = bthd(*g, "dout", kDO, s.batch, s.seq, s.hq, s.d);
  auto stats = stats_tensor(*g, s);
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_bwd")
                     .set_causal_mask(true)
                     .set_attn_scale(scale);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, options);
  set_bthd(dq, kDQ, s.batch, s.seq, s.hq, s.d);
  set_bthd(dk, kDK, s.batch, s.seq, s.hkv, s.d);
  set_bthd(dv, kDV, s.batch, s.seq, s.hkv, s.d);
  finish(*g, handle);
  return g;
}

// Cached graphs by (device, direction, shape, scale).
std::shared_ptr<fe::graph::Graph> cached_graph(bool backward, const Shape4& s, float scale) {
  using Key = std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t>;
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<fe::graph::Graph>> graphs;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  uint32_t scale_bits;
  std::memcpy(&scale_bits, &scale, sizeof scale_bits);
  const Key key{device, backward, s.batch, s.seq, s.hq, s.hkv, s.d, scale_bits};
  cudnnHandle_t handle = cudnn_handle();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = graphs.find(key);
  if (it != graphs.end()) return it->second;
  auto g = backward ? build_backward(s, scale, handle) : build_forward(s, scale, handle);
  graphs.emplace(key, g);
  return g;
}

void execute(const fe::graph::Graph& g, std::unordered_map<int64_t, void*>& pack) {
  int64_t workspace_bytes = 0;
  MF_CUDNN_FE_CHECK(g.get_workspace_size(workspace_bytes));
  Tensor workspace = Tensor::empty({std::max<int64_t>(workspace_bytes, 1)}, DType::kU8,
                                   Device::kCUDA, "cuDNN attention workspace");
  MF_CUDNN_FE_CHECK(g.execute(cudnn_handle(), pack, workspace.raw_data()));
}

bool all_bf16(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->dtype() != DType::kBF16 || reinterpret_cast<uintptr_t>(t->raw_data()) % 16 != 0)
      return false;
  return true;
}

bool supported(const AttentionMask& mask, const Tensor& q) {
  const int64_t d = q.size(3);
  return !mask.key_valid.defined() && !mask.segment.defined() && d % 8 == 0 && d <= 128 &&
         q.numel() > 0;
}

Shape4 shape_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
}

}  // namespace

bool cudnn_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                         float scale, Tensor& out, Tensor& lse) {
  if (!supported(mask, q) || !all_bf16({&q, &k, &v, &out}) || lse.dtype() != DType::kF32)
    return false;
  auto g = cached_graph(false, shape_of(q, k), scale);
  std::unordered_map<int64_t, void*> pack = {{kQ, q.raw_data()},   {kK, k.raw_data()},
                                             {kV, v.raw_data()},   {kO, out.raw_data()},
                                             {kStats, lse.raw_data()}};
  execute(*g, pack);
  return true;
}

bool cudnn_attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                         float scale, AttentionGrads& grads) {
  if (!supported(mask, q) ||
      !all_bf16({&dout, &q, &k, &v, &out, &grads.dq, &grads.dk, &grads.dv}) ||
      lse.dtype() != DType::kF32)
    return false;
  auto g = cached_graph(true, shape_of(q, k), scale);
  std::unordered_map<int64_t, void*> pack = {
      {kQ, q.raw_data()},         {kK, k.raw_data()},         {kV, v.raw_data()},
      {kO, out.raw_data()},       {kDO, dout.raw_data()},     {kStats, lse.raw_data()},
      {kDQ, grads.dq.raw_data()}, {kDK, grads.dk.raw_data()}, {kDV, grads.dv.raw_data()}};
  execute(*g, pack);
  return true;
}

}  // namespace moeforge::ops::cuda
