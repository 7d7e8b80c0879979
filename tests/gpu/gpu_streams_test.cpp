// The execution context on CUDA: standard streams, the current stream, events between the compute
// and communication streams, the stream-aware caching allocator and the copies.
//
// Ordering is tested deterministically, without timing: a Gate is a host function queued on a
// stream (cudaLaunchHostFunc) that holds that stream until the test opens it, so work queued
// behind it, or behind an event that waits on it, cannot have run while the test looks. Nothing
// here calls into the legacy default stream or frees device memory while a gate is closed (either
// would wait for the gated stream); a gate left closed opens itself after 30 s and fails the test
// rather than hanging it.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/device_copy.h"
#include "core/cuda/stream.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "testing.h"

namespace moeforge {
namespace {

#define SKIP_WITHOUT_STREAMS()                                                             \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";                                 \
  if (std::getenv("MOEFORGE_CUDA_LEGACY_STREAM") != nullptr)                               \
  GTEST_SKIP() << "MOEFORGE_CUDA_LEGACY_STREAM puts all work on the legacy stream"

class Gate {
 public:
  explicit Gate(StreamHandle stream) : stream_(stream) {
    EXPECT_EQ(cudaLaunchHostFunc(stream, &Gate::hold, this), cudaSuccess);
  }
  ~Gate() {
    open();
    cudaStreamSynchronize(stream_);  // the host function must be done before *this goes
  }
  void open() { open_.store(true); }
  bool timed_out() const { return timed_out_.load(); }

 private:
  static void CUDART_CB hold(void* self) {
    auto* g = static_cast<Gate*>(self);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!g->open_.load()) {
      if (std::chrono::steady_clock::now() > deadline) {
        g->timed_out_.store(true);
        return;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  StreamHandle stream_;
  std::atomic<bool> open_{false}, timed_out_{false};
};

// Long enough that the gated work would have finished had the gate not held it.
void linger() { std::this_thread::sleep_for(std::chrono::milliseconds(50)); }

Tensor host_range(int64_t n, float start) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i);
  return Tensor::from_vector(v, {n});
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(GpuStreams, ComputeStreamIsCurrentByDefaultAndGuardsRestore) {
  SKIP_WITHOUT_STREAMS();
  const StreamHandle compute = compute_stream(), comm = comm_stream();
  ASSERT_NE(compute, nullptr) << "the compute stream is not the legacy default stream";
  ASSERT_NE(comm, nullptr);
  EXPECT_NE(compute, comm);
  EXPECT_EQ(current_stream(), compute);
  EXPECT_EQ(compute_stream(), compute) << "made once";
  // Compute is blocking (ordered with the legacy stream), communication is not.
  unsigned flags = 0;
  ASSERT_EQ(cudaStreamGetFlags(compute, &flags), cudaSuccess);
  EXPECT_EQ(flags, static_cast<unsigned>(cudaStreamDefault));
  ASSERT_EQ(cudaStreamGetFlags(comm, &flags), cudaSuccess);
  EXPECT_EQ(flags, static_cast<unsigned>(cudaStreamNonBlocking));
  int least = 0, greatest = 0, p_compute = 0, p_comm = 0;
  ASSERT_EQ(cudaDeviceGetStreamPriorityRange(&least, &greatest), cudaSuccess);
  ASSERT_EQ(cudaStreamGetPriority(compute, &p_compute), cudaSuccess);
  ASSERT_EQ(cudaStreamGetPriority(comm, &p_comm), cudaSuccess);
  EXPECT_EQ(p_compute, least);
  EXPECT_EQ(p_comm, greatest);
  {
    StreamGuard outer(comm);
    EXPECT_EQ(current_stream(), comm);
    {
      Stream mine;
      StreamGuard inner(mine);
      EXPECT_EQ(current_stream(), mine.handle());
    }
    EXPECT_EQ(current_stream(), comm);
  }
  EXPECT_EQ(current_stream(), compute);
  // Another thread starts on the compute stream whatever this one chose.
  StreamGuard here(comm);
  StreamHandle seen = nullptr;
  std::thread([&] { seen = current_stream(); }).join();
  EXPECT_EQ(seen, compute);
}

// Work on the communication stream, an event recorded after it, the compute stream waiting on the
// event: compute's later work sees comm's result, and cannot run before it.
TEST(GpuStreams, EventOrdersCommunicationBeforeCompute) {
  SKIP_WITHOUT_STREAMS();
  const int64_t n = 1 << 16;
  const Tensor values = host_range(n, 1.0f);
  Tensor on_comm = Tensor::zeros({n}, DType::kF32, Device::kCUDA, "written on comm");
  Tensor on_compute = Tensor::zeros({n}, DType::kF32, Device::kCUDA, "copied on compute");
  record_stream(on_comm, comm_stream());
  stream_wait(comm_stream(), compute_stream());  // comm writes after compute's zeroing
  {  // warm the pinned staging buffer of this size, so the gated copy below allocates nothing
    StreamGuard g(comm_stream());
    on_comm.copy_from(values);
    EXPECT_EQ(on_comm.to(Device::kCPU).item_float(7), 8.0f);
  }
  on_comm.fill_zero();
  Event zeroed;
  zeroed.record(compute_stream());
  zeroed.wait(comm_stream());  // comm's write below comes after compute's zeroing

  Event written, copied;
  {
    Gate gate(comm_stream());
    {
      StreamGuard g(comm_stream());
      on_comm.copy_from(values);  // queued behind the gate
      written.record();
    }
    written.wait();  // compute waits for comm's write
    on_compute.copy_from(on_comm);
    copied.record(compute_stream());
    linger();
    EXPECT_FALSE(written.query()) << "the gate did not hold the communication stream";
    EXPECT_FALSE(copied.query()) << "compute ran past an event it waits on";
    gate.open();
    copied.synchronize();
    EXPECT_FALSE(gate.timed_out());
  }
  EXPECT_TRUE(written.query());
  EXPECT_TRUE(same_bits(on_compute.to(Device::kCPU), values)) << "compute read comm's tensor too early";

  // stream_wait is the same through a per-thread event: comm waits for compute this time.
  Tensor back = values.to(Device::kCUDA);
  record_stream(back, comm_stream());
  record_stream(on_compute, comm_stream());
  Event done;
  {
    Gate gate(compute_stream());
    on_compute.fill_zero();  // queued behind the gate on compute
    stream_wait(comm_stream(), compute_stream());
    {
      StreamGuard g(comm_stream());
      back.copy_from(on_compute);  // must see the zeros
      done.record();
    }
    linger();
    EXPECT_FALSE(done.query()) << "comm ran past compute's work it waits for";
    gate.open();
    done.synchronize();
    EXPECT_FALSE(gate.timed_out());
  }
  EXPECT_EQ(back.to(Device::kCPU).to_float_vector(), std::vector<float>(n, 0.0f));
}

// A block used on another stream (record_stream) is not reused, even by its own stream, until an
// event recorded on that stream at free time has completed; without record_stream, the same
// stream reuses a freed block at once; another stream never gets it.
TEST(GpuAllocator, CrossStreamUseDelaysReuseUntilItsEvent) {
  SKIP_WITHOUT_STREAMS();
  const int64_t bytes = int64_t{37} << 20;  // a size no other allocation of this process has
  // Same-stream reuse is immediate.
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "a");
    first = a.raw_data();
  }
  {
    Tensor b = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "b");
    EXPECT_EQ(b.raw_data(), first) << "a block freed on the compute stream is reused by it at once";
  }
  // ...but never by another stream.
  {
    StreamGuard g(comm_stream());
    Tensor c = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "c");
    EXPECT_NE(c.raw_data(), first) << "a compute-stream block went to the communication stream";
  }
  // A spare block of the size on compute, so the gated allocation below needs no cudaMalloc.
  Tensor spare = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "spare");
  Tensor used = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "used on comm");
  void* const used_ptr = used.raw_data();
  void* const spare_ptr = spare.raw_data();
  spare = Tensor();
  ASSERT_EQ(cuda_pending_free_blocks(), 0u);

  Tensor during, after;
  {
    Gate gate(comm_stream());
    {
      StreamGuard g(comm_stream());
      used.fill_zero();  // held behind the gate
    }
    record_stream(used, comm_stream());
    used = Tensor();  // freed while comm may still write it
    EXPECT_EQ(cuda_pending_free_blocks(), 1u);
    linger();
    during = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "during");
    EXPECT_NE(during.raw_data(), used_ptr) << "reused while the other stream's event was pending";
    EXPECT_EQ(during.raw_data(), spare_ptr);
    EXPECT_EQ(cuda_pending_free_blocks(), 1u);
    gate.open();
    Event e;
    e.record(comm_stream());
    e.synchronize();
    EXPECT_FALSE(gate.timed_out());
  }
  after = Tensor::empty({bytes}, DType::kU8, Device::kCUDA, "after");
  EXPECT_EQ(after.raw_data(), used_ptr) << "once the event completed, the block is its stream's again";
  EXPECT_EQ(cuda_pending_free_blocks(), 0u);
}

// Out of memory with a block pending on another stream's event: the allocator waits for the
// device, takes the block back and releases the cache; then allocation works again.
TEST(GpuAllocator, EmptyCacheWaitsForPendingBlocks) {
  SKIP_WITHOUT_STREAMS();
  Tensor used = Tensor::empty({int64_t{1} << 20}, DType::kU8, Device::kCUDA, "used on comm");
  {
    StreamGuard g(comm_stream());
    used.fill_zero();
  }
  record_stream(used, comm_stream());
  used = Tensor();
  const size_t reserved = cuda_memory_stats().reserved;
  cuda_empty_cache();
  EXPECT_EQ(cuda_pending_free_blocks(), 0u);
  EXPECT_LT(cuda_memory_stats().reserved, reserved);
  Tensor again = Tensor::zeros({1024}, DType::kF32, Device::kCUDA);
  EXPECT_EQ(again.to(Device::kCPU).item_float(0), 0.0f);
}

// Host-to-device copies return before the device has run them (the compute stream is held here)
// and read their source at once: the host buffer is overwritten right after each call. Small
// copies go through pinned staging buffers, each reused only after its copy is done; large ones
// through pageable memory. Device-to-host copies are counted host synchronisations, the others not.
TEST(GpuCopies, AsyncCopiesAreCorrectAndCounted) {
  SKIP_WITHOUT_STREAMS();
  const int64_t n = 3000;  // 12 000 bytes: one 16 KiB staging size
  const int copies = 24;
  std::vector<Tensor> dev;
  for (int i = 0; i < copies; ++i) dev.push_back(Tensor::zeros({n}, DType::kF32, Device::kCUDA));
  Tensor dev_copy = Tensor::zeros({n}, DType::kF32, Device::kCUDA);
  const Tensor ones = host_range(n, 1.0f);
  // Warm: with every copy held, each needs a staging buffer of its own (a cudaHostAlloc while the
  // stream is held: this assumes, as PyTorch's pinned-memory cache does, that it does not wait
  // for the device; if it did, the gate would time out here).
  const size_t staged_cold = cuda_staging_bytes();
  {
    Gate gate(compute_stream());
    for (int i = 0; i < copies; ++i) dev[i].copy_from(ones);
    gate.open();
    EXPECT_FALSE(gate.timed_out()) << "allocating pinned memory waited for the held stream";
  }
  EXPECT_GE(cuda_staging_bytes() - staged_cold, static_cast<size_t>(copies) * 16384)
      << "a staging buffer was reused while its copy was pending";
  EXPECT_EQ(dev[copies - 1].to(Device::kCPU).item_float(2), 3.0f);  // everything above has run
  const size_t staged_before = cuda_staging_bytes();
  const int64_t syncs_before = cuda_host_sync_count();
  Tensor source = host_range(n, 0.0f);
  {
    Gate gate(compute_stream());
    for (int i = 0; i < copies; ++i) {
      float* p = source.data<float>();
      for (int64_t j = 0; j < n; ++j) p[j] = static_cast<float>(i * 100000 + j);
      dev[i].copy_from(source);
      std::memset(p, 0xff, source.nbytes());  // the copy has its own snapshot
    }
    dev_copy.copy_from(dev[copies - 1]);  // device to device, queued too
    EXPECT_EQ(cuda_host_sync_count(), syncs_before) << "a host-to-device or device copy waited";
    EXPECT_EQ(cuda_staging_bytes(), staged_before) << "the warmed staging buffers were not reused";
    Event e;
    e.record(compute_stream());
    linger();
    EXPECT_FALSE(e.query()) << "the gate did not hold the compute stream";
    gate.open();
    e.synchronize();
    EXPECT_FALSE(gate.timed_out());
  }
  const int64_t syncs_mid = cuda_host_sync_count();
  for (int i = 0; i < copies; ++i) {
    const std::vector<float> got = dev[i].to(Device::kCPU).to_float_vector();
    for (int64_t j = 0; j < n; j += 997)
      ASSERT_EQ(got[j], static_cast<float>(i * 100000 + j)) << "copy " << i << " element " << j;
  }
  EXPECT_EQ(cuda_host_sync_count() - syncs_mid, copies) << "one counted synchronisation per read";
  EXPECT_TRUE(same_bits(dev_copy.to(Device::kCPU), dev[copies - 1].to(Device::kCPU)));

  // A large copy (past the staging limit), and copies under another current stream.
  const int64_t big = static_cast<int64_t>(kStagedCopyLimit / sizeof(float)) + 4096;
  const Tensor big_host = host_range(big, -5.0f);
  Tensor big_dev = big_host.to(Device::kCUDA);
  EXPECT_TRUE(same_bits(big_dev.to(Device::kCPU), big_host));
  {
    StreamGuard g(comm_stream());
    Tensor on_comm = Tensor::empty({big}, DType::kF32, Device::kCUDA);
    on_comm.copy_from(big_host);
    EXPECT_TRUE(same_bits(on_comm.to(Device::kCPU), big_host));
  }
}

// Stream and Event own their handles: moved, destroyed; a stream's cached blocks outlive it.
TEST(GpuStreams, OwnedStreamsAndEvents) {
  SKIP_WITHOUT_STREAMS();
  void* block = nullptr;
  {
    Stream s(Stream::Priority::kHigh);
    Stream moved = std::move(s);
    EXPECT_EQ(s.handle(), nullptr);
    StreamGuard g(moved);
    Tensor t = Tensor::zeros({4096}, DType::kF32, Device::kCUDA);
    block = t.raw_data();
    moved.synchronize();
    EXPECT_TRUE(moved.query());
  }
  // The destroyed stream's block went to the compute stream's pool.
  Tensor reuse = Tensor::empty({4096}, DType::kF32, Device::kCUDA);
  EXPECT_EQ(reuse.raw_data(), block);
  Event e;
  EXPECT_TRUE(e.query()) << "an event never recorded is complete";
  Event f = std::move(e);
  EXPECT_EQ(e.handle(), nullptr);
  f.record();
  f.synchronize();
  EXPECT_TRUE(f.query());
}

// A full `moeforge step` (forward, backward, AdamW) of a golden fixture in bf16 on CUDA: on the
// compute stream (the default) and with MOEFORGE_CUDA_LEGACY_STREAM=1 (every op, copy and library
// call on the legacy default stream, as before streams existed). Streams change no arithmetic, so
// each output tensor must be bitwise the legacy run's, wherever two default runs are bitwise equal
// to each other (the float atomics of some weight-gradient kernels may reorder sums from run to
// run; such tensors are counted, printed and held to 1e-2).
class GpuStreamsStep : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuStreamsStep, BitwiseTheLegacyStreamStep) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  namespace fs = std::filesystem;
  const fs::path fixture = testing::test_data_dir() / "golden" / GetParam();
  SafetensorsFile expected = SafetensorsFile::open(fixture / "expected.safetensors");
  const auto& meta = expected.metadata();
  auto step = [&](const std::string& tag, bool legacy) {
    const fs::path out = testing::unique_temp_path("mf_streams_step_" + GetParam() + "_" + tag).concat(".safetensors");
    if (legacy) setenv("MOEFORGE_CUDA_LEGACY_STREAM", "1", 1);
    auto r = testing::run_moeforge({"step", "--model", fixture.string(), "--batch",
                                    (fixture / "batch.safetensors").string(), "--out", out.string(),
                                    "--device", "cuda", "--dtype", "bfloat16", "--reuse-cpu-routing",
                                    "--lr", meta.at("lr"), "--adam-beta1", meta.at("adam_beta1"),
                                    "--adam-beta2", meta.at("adam_beta2"), "--adam-eps", meta.at("adam_epsilon"),
                                    "--weight-decay", meta.at("weight_decay")});
    if (legacy) unsetenv("MOEFORGE_CUDA_LEGACY_STREAM");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return out;
  };
  const fs::path a = step("a", false), b = step("b", false), legacy = step("legacy", true);
  SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b), fl = SafetensorsFile::open(legacy);
  int bitwise = 0, nondeterministic = 0;
  for (const auto& name : fa.names()) {
    ASSERT_TRUE(fl.contains(name)) << name;
    const Tensor ta = fa.get(name), tb = fb.get(name), tl = fl.get(name);
    if (same_bits(ta, tb)) {
      ++bitwise;
      EXPECT_TRUE(same_bits(ta, tl)) << name << " differs from the legacy-stream step";
    } else {
      ++nondeterministic;
      const double run_to_run = testing::rel_l2(ta, tb), vs_legacy = testing::rel_l2(ta, tl);
      std::printf("NONDETERMINISTIC %s/%s run-to-run %.3e, vs legacy stream %.3e\n", GetParam().c_str(),
                  name.c_str(), run_to_run, vs_legacy);
      EXPECT_LE(vs_legacy, 1e-2) << name;
    }
  }
  std::printf("STREAMS %s: %d tensors bitwise run to run (and equal to the legacy-stream step), %d not\n",
              GetParam().c_str(), bitwise, nondeterministic);
  EXPECT_GT(bitwise, 0);
  for (const fs::path& f : {a, b, legacy}) fs::remove(f);
}

INSTANTIATE_TEST_SUITE_P(Qwen3, GpuStreamsStep,
                         ::testing::Values("moe_untied_norm", "moe_tied_dense_aux_pad"));

}  // namespace
}  // namespace moeforge
