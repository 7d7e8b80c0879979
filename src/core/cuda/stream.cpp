// Streams, events and the per-thread current stream (core/cuda/stream.h). Host code, CUDA builds.
#include "core/cuda/stream.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/check.h"
#include "core/cuda/device_copy.h"
#include "core/tensor.h"

namespace moeforge {
namespace {

constexpr int kMaxDevices = 64;

int current_device() {
  int device = 0;
  MF_CUDA_CHECK(cudaGetDevice(&device));
  MF_CHECK(device >= 0 && device < kMaxDevices, kUnsupported, "CUDA device ", device,
           " is beyond the ", kMaxDevices, " this build tracks");
  return device;
}

// MOEFORGE_CUDA_LEGACY_STREAM=1 runs everything on the legacy default stream, as before streams
// existed: for telling a stream-ordering bug from any other.
bool legacy_only() {
  static const bool on = [] {
    const char* v = std::getenv("MOEFORGE_CUDA_LEGACY_STREAM");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

struct StandardStreams {
  std::mutex mutex;
  std::array<std::atomic<StreamHandle>, kMaxDevices> compute{};
  std::array<std::atomic<StreamHandle>, kMaxDevices> comm{};
};

StandardStreams& standard() {
  static auto* s = new StandardStreams();  // never destroyed: streams outlive static destructors
  return *s;
}

StreamHandle create_stream(Stream::Priority priority, bool blocking) {
  int least = 0, greatest = 0;
  MF_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  cudaStream_t s = nullptr;
  MF_CUDA_CHECK(cudaStreamCreateWithPriority(&s, blocking ? cudaStreamDefault : cudaStreamNonBlocking,
                                             priority == Stream::Priority::kHigh ? greatest : least));
  return s;
}

// The device's standard stream in `slot`, made on first use.
StreamHandle standard_stream(std::array<std::atomic<StreamHandle>, kMaxDevices>& slots, int device,
                             Stream::Priority priority, bool blocking) {
  StreamHandle s = slots[device].load(std::memory_order_acquire);
  if (s != nullptr) return s;
  StandardStreams& st = standard();
  std::lock_guard<std::mutex> lock(st.mutex);
  s = slots[device].load(std::memory_order_relaxed);
  if (s == nullptr) {
    s = create_stream(priority, blocking);
    slots[device].store(s, std::memory_order_release);
  }
  return s;
}

StreamHandle compute_stream_of(int device) {
  if (legacy_only()) return nullptr;
  // Blocking (cudaStreamDefault): ordered with the legacy default stream, so cudaMemcpy/cudaMemset
  // and library calls that know no stream stay ordered with the ops, as when all ran on stream 0.
  return standard_stream(standard().compute, device, Stream::Priority::kLow, /*blocking=*/true);
}

// Each thread's chosen stream per device; unset means the compute stream.
struct CurrentStreams {
  std::array<StreamHandle, kMaxDevices> stream{};
  std::array<bool, kMaxDevices> set{};
};
thread_local CurrentStreams t_current;

// Records on `on` and makes `stream` wait: one reusable event per thread (a wait binds to the
// record made before it, so re-recording the event later does not disturb earlier waits).
cudaEvent_t thread_event() {
  thread_local cudaEvent_t event = [] {
    cudaEvent_t e = nullptr;
    MF_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }();
  return event;
}

// A query's answer: done, not yet (cudaErrorNotReady, which is no error), or a thrown error.
bool ready(cudaError_t err) {
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();  // leave no trace for the next check
    return false;
  }
  MF_CUDA_CHECK(err);
  return true;
}

}  // namespace

// ---- Stream ----

Stream::Stream(Priority priority, bool blocking) {
  device_ = current_device();
  handle_ = create_stream(priority, blocking);
}

Stream::~Stream() {
  if (handle_ == nullptr) return;
  cuda_allocator_stream_destroyed(handle_);  // waits for the stream
  cudaStreamDestroy(handle_);                // a destructor does not throw
}

Stream::Stream(Stream&& other) noexcept : handle_(other.handle_), device_(other.device_) {
  other.handle_ = nullptr;
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    Stream old(std::move(*this));
    handle_ = other.handle_;
    device_ = other.device_;
    other.handle_ = nullptr;
  }
  return *this;
}

bool Stream::query() const { return ready(cudaStreamQuery(handle_)); }

void Stream::synchronize() const {
  note_cuda_host_sync();
  MF_CUDA_CHECK(cudaStreamSynchronize(handle_));
}

// ---- Event ----

Event::Event() { MF_CUDA_CHECK(cudaEventCreateWithFlags(&handle_, cudaEventDisableTiming)); }

Event::~Event() {
  if (handle_ != nullptr) cudaEventDestroy(handle_);
}

Event::Event(Event&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) cudaEventDestroy(handle_);
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

void Event::record(StreamHandle stream) { MF_CUDA_CHECK(cudaEventRecord(handle_, stream)); }
void Event::record() { record(current_stream()); }
void Event::wait(StreamHandle stream) const { MF_CUDA_CHECK(cudaStreamWaitEvent(stream, handle_, 0)); }
void Event::wait() const { wait(current_stream()); }
bool Event::query() const { return ready(cudaEventQuery(handle_)); }

void Event::synchronize() const {
  note_cuda_host_sync();
  MF_CUDA_CHECK(cudaEventSynchronize(handle_));
}

// ---- standard and current streams ----

StreamHandle compute_stream() { return compute_stream_of(current_device()); }

StreamHandle comm_stream() {
  if (legacy_only()) return nullptr;
  // Non-blocking: collectives must not wait for unrelated legacy-stream work; the compute stream
  // and this one exchange work only through events.
  return standard_stream(standard().comm, current_device(), Stream::Priority::kHigh, /*blocking=*/false);
}

StreamHandle current_stream() {
  const int device = current_device();
  if (t_current.set[device]) return t_current.stream[device];
  return compute_stream_of(device);
}

void set_current_stream(StreamHandle stream) {
  const int device = current_device();
  t_current.stream[device] = stream;
  t_current.set[device] = true;
}

StreamGuard::StreamGuard(StreamHandle stream) : previous_(current_stream()), device_(current_device()) {
  set_current_stream(stream);
}

// Restores the device the guard was made on, whichever device is current now.
StreamGuard::~StreamGuard() { t_current.stream[device_] = previous_; }  // set[device_] is true

void stream_wait(StreamHandle stream, StreamHandle on) {
  if (stream == on) return;
  cudaEvent_t e = thread_event();
  MF_CUDA_CHECK(cudaEventRecord(e, on));
  MF_CUDA_CHECK(cudaStreamWaitEvent(stream, e, 0));
}

void record_stream(const Tensor& tensor, StreamHandle stream) {
  if (!tensor.defined() || tensor.device() != Device::kCUDA) return;
  cuda_record_stream(tensor.storage()->data(), stream);
}

}  // namespace moeforge
