// core/cuda/stream.h in a build without CUDA: there is no stream to be current (null, the
// stand-in for "none"), guards and record_stream do nothing, and a Stream or Event cannot be made.
#ifndef MOEFORGE_WITH_CUDA
#include "core/cuda/stream.h"

#include "core/error.h"
#include "core/tensor.h"

namespace moeforge {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  fail(ErrorCode::kUnsupported, what, ": this moeforge build has no CUDA backend (built without CUDA)");
}

}  // namespace

Stream::Stream(Priority, bool) { no_cuda("a CUDA stream"); }
Stream::~Stream() = default;
Stream::Stream(Stream&& other) noexcept : handle_(other.handle_), device_(other.device_) {}
Stream& Stream::operator=(Stream&&) noexcept { return *this; }
bool Stream::query() const { return true; }
void Stream::synchronize() const {}

Event::Event() { no_cuda("a CUDA event"); }
Event::~Event() = default;
Event::Event(Event&& other) noexcept : handle_(other.handle_) {}
Event& Event::operator=(Event&&) noexcept { return *this; }
void Event::record(StreamHandle) {}
void Event::record() {}
void Event::wait(StreamHandle) const {}
void Event::wait() const {}
bool Event::query() const { return true; }
void Event::synchronize() const {}

StreamHandle compute_stream() { return nullptr; }
StreamHandle comm_stream() { return nullptr; }
StreamHandle current_stream() { return nullptr; }
void set_current_stream(StreamHandle) {}
StreamGuard::StreamGuard(StreamHandle) {}
StreamGuard::~StreamGuard() = default;
void stream_wait(StreamHandle, StreamHandle) {}
void record_stream(const Tensor&, StreamHandle) {}

}  // namespace moeforge
#endif
