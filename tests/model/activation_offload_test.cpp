// ActivationOffload on a CPU layer state: what it moves out is gone from the state until prefetch
// brings it back bit for bit; the routing, and memory another tensor shares, never leave.
#include <cstring>
#include <vector>

#include "model/activation_offload.h"
#include "testing.h"

namespace moeforge {
namespace {

Tensor filled(Shape shape, float start) {
  Tensor t = Tensor::empty(std::move(shape), DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = start + static_cast<float>(i);
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(ActivationOffload, MovesKeptActivationsOutAndBack) {
  LayerState st;
  st.x_in = filled({4, 8}, 1.0f);
  st.attention.out = filled({4, 16}, 100.0f);
  st.moe.experts.gate_up_out = filled({8, 6}, -50.0f);
  st.moe.router.probs = filled({4, 3}, 0.5f);
  st.moe.router.topk.index = filled({4, 2}, 0.0f);  // routing: read between forward and backward
  const Tensor shared = filled({4, 8}, 7.0f);
  st.n1 = shared;  // its memory is also held here, so it stays
  const void* routing = st.moe.router.topk.index.raw_data();
  // The originals' values, not their memory: offload() lets that go.
  const Tensor x_in = st.x_in.clone(), out = st.attention.out.clone(), gate_up = st.moe.experts.gate_up_out.clone(),
               probs = st.moe.router.probs.clone();

  ActivationOffload offload;
  for (int step = 0; step < 2; ++step) {  // the second step reuses the host buffers
    offload.offload(3, st);
    EXPECT_FALSE(st.x_in.defined());
    EXPECT_FALSE(st.attention.out.defined());
    EXPECT_FALSE(st.moe.experts.gate_up_out.defined());
    EXPECT_FALSE(st.moe.router.probs.defined());
    EXPECT_TRUE(st.moe.router.topk.index.defined());
    EXPECT_EQ(st.n1.raw_data(), shared.raw_data());

    offload.prefetch(3, st);
    offload.wait(3);
    EXPECT_TRUE(same_bits(st.x_in, x_in));
    EXPECT_TRUE(same_bits(st.attention.out, out));
    EXPECT_TRUE(same_bits(st.moe.experts.gate_up_out, gate_up));
    EXPECT_TRUE(same_bits(st.moe.router.probs, probs));
    EXPECT_EQ(st.moe.router.topk.index.raw_data(), routing);
  }
  // A layer never offloaded is left alone.
  offload.prefetch(0, st);
  EXPECT_TRUE(same_bits(st.x_in, x_in));
}

}  // namespace
}  // namespace moeforge
