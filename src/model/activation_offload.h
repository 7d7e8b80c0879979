// Activation offloading (ModelOptions::activation_offload_layers): what the first N layers keep
// between their forward and their backward waits in page-locked host memory instead of on the
// device. A layer's activations are copied out right after its forward and copied back
// kPrefetchLayers layers before its backward, on a stream of their own, so the copies overlap the
// other layers' compute and nothing is recomputed. The device then holds them only while they are
// made and used: the step's peak, at the end of the forward, no longer includes them. (Megatron's
// --cpu-offloading-num-layers; PyTorch's save_on_cpu, without its host waits.) On a CPU model the
// copies are plain host copies: no use but testing the bookkeeping where CI runs.
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "core/cuda/stream.h"
#include "model/decoder_layer.h"

namespace moeforge {

class ActivationOffload {
 public:
  // Copies back start this many layers ahead of the backward that reads them: at Qwen3-30B-A3B's
  // shapes a layer's copy over PCIe takes about as long as a layer's backward.
  static constexpr size_t kPrefetchLayers = 2;
  // CUDA tensors smaller than this stay on the device: a copy's fixed cost (microseconds) would buy
  // too little memory. On a CPU model every activation moves.
  static constexpr size_t kMinCudaBytes = size_t{64} << 10;

  // After layer `layer`'s forward (and drop_recomputable): queues the copies out of st's kept
  // activations and lets their device memory go, to be reused once the copies have read it.
  void offload(size_t layer, LayerState& st);
  // Queues the copies back into new device tensors of st (a no-op for a layer offload() left alone).
  void prefetch(size_t layer, LayerState& st);
  // The current stream waits, on the device, for prefetch(layer)'s copies.
  void wait(size_t layer) const;

 private:
  struct Moved {
    size_t which;  // its place in kept_activations()
    Tensor host;   // its copy, a view of one of `buffers`
  };
  struct LayerCopies {
    Device device = Device::kCPU;
    std::vector<Tensor> buffers;  // flat bytes, page-locked on CUDA; the next steps reuse them
    std::vector<Moved> moved;     // this step's
    std::optional<Event> back;    // CUDA: the copies back are done
  };
  // Host memory for the index-th activation moved out of a layer, shaped like `like`.
  static Tensor host_buffer(LayerCopies& copies, size_t index, const Tensor& like);

  std::optional<Stream> stream_;  // CUDA: the copies' stream (made on first use)
  std::vector<LayerCopies> layers_;
};

}  // namespace moeforge
