// Causal attention through the cuDNN frontend's SDPA graphs (flash-attention kernels inside cuDNN),
// forward and backward. Our [B, T, H, D] layout is cuDNN's (B, H, T, D) with strides, and lse
// [B, H, T] is its fp32 "Stats" (natural-log log-sum-exp of the scaled scores), so nothing is
// copied. Packed documents use the same tensors as cuDNN's ragged layout: each block of rows is
// one cuDNN batch entry whose start is an element offset and whose length masks the rest. Building
// a graph is slow (plans are compiled), so graphs are cached per shape.
// Host code only: compiled by the C++ compiler, which is much faster than nvcc on these headers.
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <algorithm>
#include <bit>
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

enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV,
  kSeqLenQ, kSeqLenKV, kQOffsets, kKVOffsets, kStatsOffsets, kOOffsets, kVOffsets, kSink
};

#define MF_CUDNN_FE_CHECK(expr)                                                               \
  do {                                                                                        \
    auto mf_st_ = (expr);                                                                     \
    if (mf_st_.is_bad())                                                                      \
      ::moeforge::fail(::moeforge::ErrorCode::kBackend, "cuDNN error in ", #expr, ": ",       \
                       mf_st_.get_message(), " at ", __FILE__, ":", __LINE__);                \
  } while (0)

// One cuDNN handle per device, bound to the calling thread's current stream: cudnnSetStream is
// called only when that differs from the stream the handle was last bound to (cached per handle).
// The lock covers the binding alone; concurrent attention calls on one device from threads with
// different current streams would need a handle per stream.
cudnnHandle_t cudnn_handle() {
  struct Bound {
    cudnnHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
  };
  static std::mutex mutex;
  static std::vector<Bound> handles;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  const cudaStream_t stream = current_stream();
  std::lock_guard<std::mutex> lock(mutex);
  if (handles.size() <= static_cast<size_t>(device)) handles.resize(device + 1);
  Bound& b = handles[device];
  if (b.handle == nullptr) {
    cudnnStatus_t st = cudnnCreate(&b.handle);
    MF_CHECK(st == CUDNN_STATUS_SUCCESS, kBackend, "cudnnCreate failed: ", cudnnGetErrorString(st));
    b.stream = nullptr;  // a new handle runs on the legacy default stream
  }
  if (b.stream != stream) {
    const cudnnStatus_t st = cudnnSetStream(b.handle, stream);
    MF_CHECK(st == CUDNN_STATUS_SUCCESS, kBackend, "cudnnSetStream failed: ", cudnnGetErrorString(st));
    b.stream = stream;
  }
  return b.handle;
}

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// What a graph is built for. Dense graphs: `batch` sequences of `seq` tokens (seq_kv = seq).
// Varlen graphs: `batch` blocks of up to `seq` query and `seq_kv` key rows (powers of two) among
// `tokens` rows (the more of the query and key tensors' rows), causal, full or under the tail band
// (VarlenBlocks::tail_band). Query/key heads of d columns, value/output heads of dv. Graphs may also
// have a sliding window (window > 0) and, forward, a sink logit per query head.
struct Shape {
  int64_t batch, seq, seq_kv, hq, hkv, d, dv, tokens;
  bool causal;
  int64_t window = 0;
  bool sinks = false;
  bool tail_band = false;
};

// The mask options the shape asks for, on cuDNN's forward or backward attributes.
template <typename Attributes>
void set_mask(Attributes& options, const Shape& s) {
  options.set_causal_mask(s.causal);
  if (s.window > 0) options.set_diagonal_band_left_bound(static_cast<int>(s.window));
  if (s.tail_band)
    options.set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT).set_diagonal_band_left_bound(1);
}

// The (B, H, T, D) view of a [B, T, H, D] tensor; with ragged offsets B counts blocks and
// the batch stride is unused (cuDNN takes each block's start from the offsets).
void set_bthd(const TensorPtr& t, Uid uid, int64_t b, int64_t seq, int64_t h, int64_t d) {
  t->set_uid(uid).set_dim({b, h, seq, d}).set_stride({seq * h * d, d, h * d, 1});
}
TensorPtr bthd(fe::graph::Graph& g, const char* name, Uid uid, int64_t b, int64_t seq, int64_t h,
               int64_t d) {
  auto t = g.tensor(fe::graph::Tensor_attributes().set_name(name));
  set_bthd(t, uid, b, seq, h, d);
  return t;
}

// Stats: dense graphs [B, Hq, T] (our lse layout); varlen graphs [tokens, Hq] (cuDNN's THD
// stats, which its backward also sizes its workspace by).
void set_stats(const TensorPtr& t, const Shape& s, bool varlen) {
  t->set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim({s.batch, s.hq, s.seq, 1});
  if (varlen)
    t->set_stride({s.seq * s.hq, 1, s.hq, 1});
  else
    t->set_stride({s.hq * s.seq, s.seq, 1, 1});
}

TensorPtr int32_vector(fe::graph::Graph& g, const char* name, Uid uid, int64_t n) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({n, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_data_type(fe::DataType_t::INT32));
}

// The per-block tensors of a varlen graph.
struct Ragged {
  TensorPtr seq_len_q, seq_len_kv, q_offsets, kv_offsets, stats_offsets, o_offsets, v_offsets;
};
Ragged ragged_inputs(fe::graph::Graph& g, const Shape& s) {
  return {int32_vector(g, "seq_len_q", kSeqLenQ, s.batch),
          int32_vector(g, "seq_len_kv", kSeqLenKV, s.batch),
          int32_vector(g, "q_offsets", kQOffsets, s.batch + 1),
          int32_vector(g, "kv_offsets", kKVOffsets, s.batch + 1),
          int32_vector(g, "stats_offsets", kStatsOffsets, s.batch + 1),
          int32_vector(g, "o_offsets", kOOffsets, s.batch + 1),
          int32_vector(g, "v_offsets", kVOffsets, s.batch + 1)};
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

std::shared_ptr<fe::graph::Graph> build_forward(const Shape& s, bool varlen, float scale,
                                                cudnnHandle_t handle) {
  auto g = new_graph();
  auto q = bthd(*g, "q", kQ, s.batch, s.seq, s.hq, s.d);
  auto k = bthd(*g, "k", kK, s.batch, s.seq_kv, s.hkv, s.d);
  auto v = bthd(*g, "v", kV, s.batch, s.seq_kv, s.hkv, s.dv);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("attention_fwd")
                     .set_generate_stats(true)
                     .set_attn_scale(scale);
  set_mask(options, s);
  if (s.sinks)  // cuDNN takes the sinks as fp32 [1, Hq, 1, 1]
    options.set_sink_token(g->tensor(fe::graph::Tensor_attributes()
                                         .set_name("sinks")
                                         .set_uid(kSink)
                                         .set_dim({1, s.hq, 1, 1})
                                         .set_stride({s.hq, 1, 1, 1})
                                         .set_data_type(fe::DataType_t::FLOAT)));
  Ragged r;
  if (varlen) {
    r = ragged_inputs(*g, s);
    options.set_padding_mask(true).set_seq_len_q(r.seq_len_q).set_seq_len_kv(r.seq_len_kv);
    q->set_ragged_offset(r.q_offsets);
    k->set_ragged_offset(r.kv_offsets);
    v->set_ragged_offset(r.v_offsets);
  }
  auto [o, stats] = g->sdpa(q, k, v, options);
  set_bthd(o, kO, s.batch, s.seq, s.hq, s.dv);
  o->set_output(true);
  set_stats(stats, s, varlen);
  stats->set_output(true);
  if (varlen) {
    o->set_ragged_offset(r.o_offsets);
    stats->set_ragged_offset(r.stats_offsets);
  }
  finish(*g, handle);
  return g;
}

std::shared_ptr<fe::graph::Graph> build_backward(const Shape& s, bool varlen, float scale,
                                                 cudnnHandle_t handle) {
  auto g = new_graph();
  auto q = bthd(*g, "q", kQ, s.batch, s.seq, s.hq, s.d);
  auto k = bthd(*g, "k", kK, s.batch, s.seq_kv, s.hkv, s.d);
  auto v = bthd(*g, "v", kV, s.batch, s.seq_kv, s.hkv, s.dv);
  auto o = bthd(*g, "o", kO, s.batch, s.seq, s.hq, s.dv);
  auto dout = bthd(*g, "dout", kDO, s.batch, s.seq, s.hq, s.dv);
  auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("stats"));
  set_stats(stats, s, varlen);
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("attention_bwd")
                     .set_attn_scale(scale);
  set_mask(options, s);
  Ragged r;
  if (varlen) {
    r = ragged_inputs(*g, s);
    // Without these bounds the fp32 accumulators in the workspace are sized for every document
    // at the longest length (capacity x max_length rows).
    options.set_padding_mask(true)
        .set_seq_len_q(r.seq_len_q)
        .set_seq_len_kv(r.seq_len_kv)
        .set_max_total_seq_len_q(s.tokens)
        .set_max_total_seq_len_kv(s.tokens);
    q->set_ragged_offset(r.q_offsets);
    for (const TensorPtr& t : {o, dout}) t->set_ragged_offset(r.o_offsets);
    k->set_ragged_offset(r.kv_offsets);
    v->set_ragged_offset(r.v_offsets);
    stats->set_ragged_offset(r.stats_offsets);
  }
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, options);
  set_bthd(dq, kDQ, s.batch, s.seq, s.hq, s.d);
  set_bthd(dk, kDK, s.batch, s.seq_kv, s.hkv, s.d);
  set_bthd(dv, kDV, s.batch, s.seq_kv, s.hkv, s.dv);
  for (const TensorPtr& t : {dq, dk, dv}) t->set_output(true);
  if (varlen) {
    dq->set_ragged_offset(r.q_offsets);
    dk->set_ragged_offset(r.kv_offsets);
    dv->set_ragged_offset(r.v_offsets);
  }
  finish(*g, handle);
  return g;
}

// Graphs cached by (device, direction, layout, shape, scale).
std::shared_ptr<fe::graph::Graph> cached_graph(bool backward, bool varlen, const Shape& s,
                                               float scale) {
  using Key = std::tuple<int, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, bool, int64_t, bool, bool, uint32_t>;
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<fe::graph::Graph>> graphs;
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  uint32_t scale_bits;
  std::memcpy(&scale_bits, &scale, sizeof scale_bits);
  const Key key{device, backward, varlen,   s.batch,  s.seq,   s.seq_kv, s.hq,      s.hkv,
                s.d,    s.dv,     s.tokens, s.causal, s.window, s.sinks,  s.tail_band, scale_bits};
  cudnnHandle_t handle = cudnn_handle();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = graphs.find(key);
  if (it != graphs.end()) return it->second;
  auto g = backward ? build_backward(s, varlen, scale, handle)
                    : build_forward(s, varlen, scale, handle);
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

Shape dense_shape(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window, bool sinks) {
  return {q.size(0), q.size(1), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), q.size(0) * q.size(1),
          true,      window,    sinks};
}

// Block lengths are rounded up to a power of two so that a few graphs serve every batch.
Shape varlen_shape(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenBlocks& blocks, int64_t window,
                   bool sinks) {
  auto bucket = [](int64_t n) { return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(n))); };
  const int64_t tokens = std::max(q.size(0) * q.size(1), k.size(0) * k.size(1));
  return {blocks.capacity, bucket(blocks.max_queries), bucket(blocks.max_keys), q.size(2), k.size(2),
          q.size(3),       v.size(3),                  tokens,                   blocks.causal,
          window,          sinks,                      blocks.tail_band};
}

void add_blocks(std::unordered_map<int64_t, void*>& pack, const VarlenBlocks& blocks) {
  // cuDNN reads these through non-const pointers in the variant pack; it does not write them.
  pack[kSeqLenQ] = const_cast<int32_t*>(blocks.seq_len_q);
  pack[kSeqLenKV] = const_cast<int32_t*>(blocks.seq_len_kv);
  pack[kQOffsets] = const_cast<int32_t*>(blocks.q_offsets);
  pack[kKVOffsets] = const_cast<int32_t*>(blocks.kv_offsets);
  pack[kStatsOffsets] = const_cast<int32_t*>(blocks.stats_offsets);
  pack[kOOffsets] = const_cast<int32_t*>(blocks.o_offsets);
  pack[kVOffsets] = const_cast<int32_t*>(blocks.v_offsets);
}

void run_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Shape& s, bool varlen,
                 const VarlenBlocks* blocks, const Tensor& sinks_f32, float scale, Tensor& out, Tensor& stats) {
  auto g = cached_graph(false, varlen, s, scale);
  std::unordered_map<int64_t, void*> pack = {{kQ, q.raw_data()},   {kK, k.raw_data()},
                                             {kV, v.raw_data()},   {kO, out.raw_data()},
                                             {kStats, stats.raw_data()}};
  if (varlen) add_blocks(pack, *blocks);
  if (s.sinks) pack[kSink] = sinks_f32.raw_data();
  execute(*g, pack);
}

void run_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& out, const Tensor& stats, const Shape& s, bool varlen,
                  const VarlenBlocks* blocks, float scale, AttentionGrads& grads) {
  auto g = cached_graph(true, varlen, s, scale);
  std::unordered_map<int64_t, void*> pack = {
      {kQ, q.raw_data()},         {kK, k.raw_data()},         {kV, v.raw_data()},
      {kO, out.raw_data()},       {kDO, dout.raw_data()},     {kStats, stats.raw_data()},
      {kDQ, grads.dq.raw_data()}, {kDK, grads.dk.raw_data()}, {kDV, grads.dv.raw_data()}};
  if (varlen) add_blocks(pack, *blocks);
  execute(*g, pack);
}

}  // namespace

bool cudnn_attention_takes(const Tensor& q, const Tensor& v, std::initializer_list<const Tensor*> others) {
  auto bf16_aligned = [](const Tensor& t) {
    return t.dtype() == DType::kBF16 && reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0;
  };
  // cuDNN 9's support matrix: head sizes up to 256 on Hopper and newer, 128 before.
  static const int64_t max_head = [] {
    int device = 0, major = 0;
    MF_CUDA_CHECK(cudaGetDevice(&device));
    MF_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    return major >= 9 ? 256 : 128;
  }();
  const int64_t d = q.size(3), dv = v.size(3);
  if (q.numel() == 0 || d % 8 != 0 || dv % 8 != 0 || d > max_head || dv > max_head || !bf16_aligned(q) ||
      !bf16_aligned(v))
    return false;
  return std::all_of(others.begin(), others.end(), [&](const Tensor* t) { return bf16_aligned(*t); });
}

void cudnn_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         const Tensor& sinks_f32, int64_t window, Tensor& out, Tensor& lse) {
  run_forward(q, k, v, dense_shape(q, k, v, window, sinks_f32.defined()), false, nullptr, sinks_f32, scale, out,
              lse);
}

void cudnn_attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& out, const Tensor& lse, float scale, int64_t window,
                         AttentionGrads& grads) {
  run_backward(dout, q, k, v, out, lse, dense_shape(q, k, v, window, false), false, nullptr, scale, grads);
}

void cudnn_varlen_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const VarlenBlocks& blocks,
                                float scale, const Tensor& sinks_f32, int64_t window, Tensor& out, Tensor& stats) {
  run_forward(q, k, v, varlen_shape(q, k, v, blocks, window, sinks_f32.defined()), true, &blocks, sinks_f32, scale,
              out, stats);
}

void cudnn_varlen_attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const Tensor& stats, const VarlenBlocks& blocks, float scale,
                                int64_t window, AttentionGrads& grads) {
  run_backward(dout, q, k, v, out, stats, varlen_shape(q, k, v, blocks, window, false), true, &blocks, scale,
               grads);
}

}  // namespace moeforge::ops::cuda
