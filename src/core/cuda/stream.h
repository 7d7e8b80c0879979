// Streams and events of the CUDA backend, and each thread's current stream (PyTorch's c10 model).
//
// Every kernel launch, library call and Tensor copy runs on the calling thread's *current stream*
// of the current device. It defaults to the device's compute stream; a StreamGuard makes another
// stream current for a scope. Each device has two standard streams, made on first use and kept
// for the process:
//  - compute: a *blocking* stream (cudaStreamDefault) at the lowest priority. Blocking means the
//    legacy default stream (stream 0: cudaMemcpy, cudaMemset, events recorded on 0, libraries that
//    take no stream) stays ordered with it, as it was when every op ran on stream 0.
//  - communication: a non-blocking stream at the highest priority, so collectives are scheduled
//    ahead of compute kernels. Being non-blocking, it is ordered with nothing implicitly: work
//    crosses between it and compute only through Events (record on one, wait on the other).
// Memory used on a stream other than the one it was allocated on must be declared with
// record_stream (core/cuda/caching_allocator), or the allocator may reuse it too early.
//
// The header is CUDA-free (host code of both builds includes it): StreamHandle and EventHandle are
// cudaStream_t and cudaEvent_t by their opaque struct names. In a CPU-only build the current stream
// is null and guards do nothing; making a Stream or an Event throws Error(kUnsupported).
#pragma once

#include <cstdint>

struct CUstream_st;
struct CUevent_st;

namespace moeforge {

class Tensor;

using StreamHandle = CUstream_st*;  // == cudaStream_t; nullptr is the legacy default stream
using EventHandle = CUevent_st*;    // == cudaEvent_t

// An owned CUDA stream on the device current when it was made. Move-only.
class Stream {
 public:
  enum class Priority { kLow, kHigh };
  explicit Stream(Priority priority = Priority::kLow, bool blocking = false);
  ~Stream();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  StreamHandle handle() const { return handle_; }
  int device() const { return device_; }
  bool query() const;  // true when all work queued so far is done; never blocks
  void synchronize() const;  // waits on the host: a host synchronisation (counted)

 private:
  StreamHandle handle_ = nullptr;
  int device_ = 0;
};

// An owned CUDA event without timing (cheap to record and wait on). Move-only.
class Event {
 public:
  Event();
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  EventHandle handle() const { return handle_; }
  void record(StreamHandle stream);      // marks the work queued on `stream` so far
  void record();                         // on the current stream
  void wait(StreamHandle stream) const;  // work queued on `stream` later waits for the mark (no host wait)
  void wait() const;                     // the current stream waits
  bool query() const;                    // the marked work is done (true if never recorded); never blocks
  void synchronize() const;              // waits on the host: a host synchronisation (counted)

 private:
  EventHandle handle_ = nullptr;
};

// The current device's standard streams (made on first use, never destroyed).
StreamHandle compute_stream();
StreamHandle comm_stream();

// This thread's current stream on the current device: the compute stream unless a StreamGuard
// (or set_current_stream) chose another. Cheap: called at every kernel launch.
StreamHandle current_stream();
void set_current_stream(StreamHandle stream);  // for the current device, this thread

// Makes `stream` current for the guard's scope and restores the previous one after.
class StreamGuard {
 public:
  explicit StreamGuard(StreamHandle stream);
  explicit StreamGuard(const Stream& stream) : StreamGuard(stream.handle()) {}
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  StreamHandle previous_ = nullptr;
  int device_ = 0;
};

// `stream` waits (on the device, not the host) for the work queued on `on` so far.
void stream_wait(StreamHandle stream, StreamHandle on);

// PyTorch's Tensor.record_stream: `tensor`'s memory is used by work on `stream`, which is not the
// stream it was allocated on. When the memory is freed, the caching allocator records an event on
// `stream` and reuses the block only once that event has completed. A no-op for CPU tensors,
// borrowed memory, and the allocation stream itself.
void record_stream(const Tensor& tensor, StreamHandle stream);

}  // namespace moeforge
