#include "model/activation_offload.h"

#include "core/async_copy.h"

namespace moeforge {

Tensor ActivationOffload::host_buffer(LayerCopies& copies, size_t index, const Tensor& like) {
  if (index == copies.buffers.size()) copies.buffers.emplace_back();
  Tensor& buffer = copies.buffers[index];
  const int64_t bytes = static_cast<int64_t>(like.nbytes());
  // Grown, never shrunk: steps of varying length stop allocating page-locked memory (slow, and
  // freeing it waits for the device) once they have seen their longest.
  if (!buffer.defined() || buffer.numel() < bytes)
    buffer = like.device() == Device::kCUDA ? empty_pinned({bytes}, DType::kU8, "offloaded activations")
                                            : Tensor::empty({bytes}, DType::kU8, Device::kCPU, "offloaded activations");
  return Tensor::borrow(buffer.raw_data(), like.shape(), like.dtype(), Device::kCPU, buffer.storage());
}

void ActivationOffload::offload(size_t layer, LayerState& st) {
  if (layer >= layers_.size()) layers_.resize(layer + 1);
  LayerCopies& copies = layers_[layer];
  copies.moved.clear();
  copies.device = st.x_in.device();
  const bool cuda = copies.device == Device::kCUDA;
  const std::vector<Tensor*> slots = kept_activations(st);
  for (size_t i = 0; i < slots.size(); ++i) {
    const Tensor& t = *slots[i];
    // A tensor whose memory another tensor also holds would free nothing by leaving, and would
    // come back unshared.
    if (t.defined() && t.is_contiguous() && t.nbytes() >= (cuda ? kMinCudaBytes : 0) && t.storage().use_count() == 1)
      copies.moved.push_back({i, Tensor()});
  }
  if (copies.moved.empty()) return;
  std::optional<StreamGuard> on_copies;
  if (cuda) {
    if (!stream_) stream_.emplace(Stream::Priority::kLow);
    stream_wait(stream_->handle(), current_stream());  // the copies read what the forward wrote
    on_copies.emplace(*stream_);
  }
  for (size_t i = 0; i < copies.moved.size(); ++i) {
    Moved& m = copies.moved[i];
    Tensor& t = *slots[m.which];
    m.host = host_buffer(copies, i, t);
    copy_async(m.host, t);
    if (cuda) record_stream(t, stream_->handle());  // its memory is reused once the copy has read it
    t = Tensor();
  }
}

void ActivationOffload::prefetch(size_t layer, LayerState& st) {
  if (layer >= layers_.size() || layers_[layer].moved.empty()) return;
  LayerCopies& copies = layers_[layer];
  const bool cuda = copies.device == Device::kCUDA;
  // Allocated on the current stream, whose queued work may still use this memory: the copies wait.
  std::vector<Tensor> back;
  for (const Moved& m : copies.moved)
    back.push_back(Tensor::empty(m.host.shape(), m.host.dtype(), copies.device, "activations copied back"));
  std::optional<StreamGuard> on_copies;
  if (cuda) {
    stream_wait(stream_->handle(), current_stream());
    on_copies.emplace(*stream_);
  }
  for (size_t i = 0; i < back.size(); ++i) copy_async(back[i], copies.moved[i].host);
  if (cuda) {
    if (!copies.back) copies.back.emplace();
    copies.back->record(stream_->handle());
  }
  const std::vector<Tensor*> slots = kept_activations(st);
  for (size_t i = 0; i < back.size(); ++i) *slots[copies.moved[i].which] = std::move(back[i]);
  copies.moved.clear();
}

void ActivationOffload::wait(size_t layer) const {
  if (layer < layers_.size() && layers_[layer].back) layers_[layer].back->wait();
}

}  // namespace moeforge
