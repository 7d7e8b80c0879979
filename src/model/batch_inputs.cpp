#include "model/batch_inputs.h"

#include <cstring>
#include <vector>

#include "core/error.h"
#include "model/causal_lm.h"

namespace moeforge {

BatchInputs prepare_batch(const Batch& batch, const ModelConfig& config, Device dev, bool backward) {
  MF_CHECK(batch.input_ids.defined() && batch.input_ids.dim() == 2, kShape,
           "input_ids must be [batch, sequence], got ",
           batch.input_ids.defined() ? shape_str(batch.input_ids.shape()) : "nothing");
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1), N = B * T;
  const int64_t V = config.vocab_size;
  for (const Tensor* t : {&batch.labels, &batch.attention_mask, &batch.position_ids})
    MF_CHECK(!t->defined() || t->shape() == batch.input_ids.shape(), kShape,
             "labels, attention_mask and position_ids must have the shape of input_ids ",
             shape_str(batch.input_ids.shape()), ", got ", shape_str(t->shape()));
  MF_CHECK(batch.labels.defined() || !backward, kInvalidArgument, "backward needs labels");
  BatchInputs in;
  in.batch = B;
  in.seq = T;

  Tensor ids_host = batch.input_ids.to(Device::kCPU).contiguous().to(DType::kI64).view({N});
  for (int64_t i = 0; i < N; ++i) {
    int64_t id = ids_host.data<int64_t>()[i];
    MF_CHECK(id >= 0 && id < V, kInvalidArgument, "input_ids[", i / T, ", ", i % T, "] = ", id,
             " is outside the vocabulary [0, ", V, ")");
  }
  Tensor positions = Tensor::empty({N}, DType::kI64);
  Tensor segments;
  if (batch.position_ids.defined()) {
    Tensor pos_in = batch.position_ids.to(Device::kCPU).contiguous().to(DType::kI64);
    std::memcpy(positions.raw_data(), pos_in.raw_data(), N * sizeof(int64_t));
    // A position that does not continue the previous one starts a new packed document.
    segments = Tensor::empty({B, T}, DType::kI32);
    for (int64_t b = 0; b < B; ++b) {
      int32_t seg = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t* p = positions.data<int64_t>() + b * T;
        if (t > 0 && p[t] != p[t - 1] + 1) ++seg;
        segments.data<int32_t>()[b * T + t] = seg;
      }
    }
  } else {
    for (int64_t i = 0; i < N; ++i) positions.data<int64_t>()[i] = i % T;
  }
  std::vector<uint8_t> valid(N, 1);
  if (batch.attention_mask.defined()) {
    Tensor am = batch.attention_mask.to(Device::kCPU).contiguous().to(DType::kF32);
    for (int64_t i = 0; i < N; ++i) valid[i] = am.data<float>()[i] != 0.0f;
  }
  for (int64_t i = 0; i < N; ++i) in.valid_tokens += valid[i];
  std::vector<uint8_t> routed = valid;
  if (batch.labels.defined()) {
    Tensor labels = batch.labels.to(Device::kCPU).contiguous().to(DType::kI64);
    Tensor targets = Tensor::empty({N}, DType::kI64);
    int64_t* tg = targets.data<int64_t>();
    const int64_t* lb = labels.data<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        int64_t v = t + 1 < T ? lb[b * T + t + 1] : -100;  // shift left; the last position has none
        MF_CHECK(v == -100 || (v >= 0 && v < V), kInvalidArgument, "labels[", b, ", ", t + 1,
                 "] = ", v, " is neither -100 nor inside the vocabulary [0, ", V, ")");
        tg[b * T + t] = v;
        in.num_label_tokens += v != -100;
        routed[b * T + t] |= v != -100;
      }
    in.targets = targets.to(dev);
  }
  // A padded row's outputs are read only where it carries a label (a loss term): without one, its
  // attention is left out (ops/attention.h), as its experts are (routed rows).
  bool padded_label = false;
  for (int64_t i = 0; i < N; ++i) padded_label |= !valid[i] && routed[i];
  in.mask.padded_queries_attend = padded_label;
  in.routed = RoutedRows(routed);
  if (in.valid_tokens < in.routed.count()) {
    std::vector<float> row_valid;
    for (int64_t i = 0; i < N; ++i)
      if (routed[i]) row_valid.push_back(valid[i]);
    in.row_valid = Tensor::from_vector(row_valid, {in.routed.count()}).to(dev);
  }
  in.ids = ids_host.to(dev);
  in.positions = positions.to(dev);
  if (batch.attention_mask.defined())
    in.mask.key_valid = batch.attention_mask.to(Device::kCPU).contiguous().to(DType::kI32).to(dev);
  if (segments.defined()) in.mask.segment = segments.to(dev);
  // The same mask as documents, for the variable-length attention kernels (CUDA only reads it).
  if (dev != Device::kCPU && (in.mask.key_valid.defined() || in.mask.segment.defined()))
    in.mask.documents = ops::attention_documents(
        B, T, segments.defined() ? segments.data<int32_t>() : nullptr,
        batch.attention_mask.defined() ? valid.data() : nullptr, dev, in.mask.padded_queries_attend);
  return in;
}

}  // namespace moeforge
