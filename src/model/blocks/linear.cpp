#include "model/blocks/linear.h"

#include "ops/ops.h"

namespace moeforge {

namespace {

bool drops(uint64_t pass_seed, const LoraSlots& lora) { return pass_seed != 0 && lora.dropout > 0; }

// The adapter's own stream of masks in this pass.
uint64_t adapter_seed(uint64_t pass_seed, const LoraSlots& lora) {
  return pass_seed ^ (static_cast<uint64_t>(lora.a + 1) * 0xd1b54a32d192ed03ull);
}

// The adapter's input: x, or x with dropout.
Tensor adapter_input(uint64_t pass_seed, const LoraSlots& lora, const Tensor& x) {
  return drops(pass_seed, lora) ? ops::dropout(x, lora.dropout, adapter_seed(pass_seed, lora)) : x;
}

}  // namespace

Tensor linear_fwd(const Params& p, const LinearSlots& s, const Tensor& x, Tensor& lora_u, uint64_t dropout_seed) {
  Tensor y = ops::linear(x, p.w(s.weight), s.bias >= 0 ? p.w(s.bias) : Tensor());
  if (!s.lora.on()) return y;
  lora_u = ops::linear(adapter_input(dropout_seed, s.lora, x), p.w(s.lora.a));
  ops::scale_inplace(lora_u, s.lora.scale);
  ops::gemm(lora_u, false, p.w(s.lora.b), true, y, 1.0f, 1.0f);
  return y;
}

void linear_bwd(const Params& p, const LinearSlots& s, const Tensor& dy, const Tensor& x, const Tensor& lora_u,
                Tensor& dx, bool accumulate, uint64_t dropout_seed) {
  ops::gemm(dy, false, p.w(s.weight), false, dx, 1.0f, accumulate ? 1.0f : 0.0f);
  if (p.trainable(s.weight)) {
    float beta = 1.0f;
    Tensor& grad = p.g_write(s.weight, beta);
    ops::gemm(dy, true, x, false, grad, 1.0f, beta);
  }
  if (s.bias >= 0 && p.trainable(s.bias)) ops::linear_bias_bwd(dy, p.g(s.bias));
  if (!s.lora.on()) return;
  ops::gemm(dy, true, lora_u, false, p.g(s.lora.b), 1.0f, 1.0f);
  Tensor du = Tensor::empty(lora_u.shape(), lora_u.dtype(), lora_u.device(), "LoRA du");
  ops::gemm(dy, false, p.w(s.lora.b), false, du, s.lora.scale);
  ops::gemm(du, true, adapter_input(dropout_seed, s.lora, x), false, p.g(s.lora.a), 1.0f, 1.0f);
  if (!drops(dropout_seed, s.lora)) return ops::gemm(du, false, p.w(s.lora.a), false, dx, 1.0f, 1.0f);
  Tensor dx_adapter = Tensor::empty(dx.shape(), dx.dtype(), dx.device(), "LoRA dx");
  ops::gemm(du, false, p.w(s.lora.a), false, dx_adapter);
  ops::add_inplace(dx, ops::dropout(dx_adapter, s.lora.dropout, adapter_seed(dropout_seed, s.lora)));
}

Tensor grouped_fwd(const Params& p, int weight, const LoraSlots& lora, const Tensor& x, const Tensor& offsets,
                   Tensor& lora_u, const Tensor& bias) {
  if (!lora.on()) return ops::grouped_linear(x, p.w(weight), offsets, bias);
  Tensor y = ops::grouped_linear(x, p.w(weight), offsets);
  lora_u = ops::grouped_linear(x, p.w(lora.a), offsets);
  ops::scale_inplace(lora_u, lora.scale);
  ops::add_inplace(y, ops::grouped_linear(lora_u, p.w(lora.b), offsets));
  if (bias.defined()) ops::grouped_bias_add(y, bias, offsets);
  return y;
}

Tensor grouped_bwd(const Params& p, int weight, const LoraSlots& lora, const Tensor& dy, const Tensor& x,
                   const Tensor& lora_u, const Tensor& offsets) {
  Tensor dx = ops::grouped_linear_dx(dy, p.w(weight), offsets);
  if (p.trainable(weight)) {
    float beta = 1.0f;
    Tensor& grad = p.g_write(weight, beta);
    ops::grouped_linear_dw(dy, x, offsets, grad, /*accumulate=*/beta != 0.0f);
  }
  if (!lora.on()) return dx;
  ops::grouped_linear_dw(dy, lora_u, offsets, p.g(lora.b));
  Tensor du = ops::grouped_linear_dx(dy, p.w(lora.b), offsets);
  ops::scale_inplace(du, lora.scale);
  ops::grouped_linear_dw(du, x, offsets, p.g(lora.a));
  ops::add_inplace(dx, ops::grouped_linear_dx(du, p.w(lora.a), offsets));
  return dx;
}

}  // namespace moeforge
