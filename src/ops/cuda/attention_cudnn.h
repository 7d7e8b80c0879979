// Attention through cuDNN's fused SDPA (attention_cudnn.cu, its own translation unit so that
// nothing else compiles the cuDNN frontend). Each returns false, doing nothing, when the call is
// outside what it takes; attention.cu then runs its own kernel.
#pragma once

#include "ops/ops.h"

namespace moeforge::ops::cuda {

// bf16 q, k, v, out (and dout, dq, dk, dv), fp32 lse, head_dim a multiple of 8 up to 128, and a
// plain causal mask: no key_valid and no segment tensor.
bool cudnn_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                         float scale, Tensor& out, Tensor& lse);
bool cudnn_attention_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& out, const Tensor& lse, const AttentionMask& mask,
                         float scale, AttentionGrads& grads);

}  // namespace moeforge::ops::cuda
