#include "dist/nccl_process_group.h"

#include "core/error.h"

#ifndef MOEFORGE_WITH_CUDA

namespace moeforge {

namespace {
[[noreturn]] void no_cuda() {
  fail(ErrorCode::kUnsupported, "NCCL: this moeforge build has no CUDA backend (built without CUDA)");
}
}  // namespace

std::vector<uint8_t> nccl_unique_id() { no_cuda(); }
std::shared_ptr<ProcessGroup> nccl_group(const std::vector<uint8_t>&, int, int, ProcessGroup*) { no_cuda(); }
std::shared_ptr<ProcessGroup> nccl_group(ProcessGroup&) { no_cuda(); }

}  // namespace moeforge

#else

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "core/cuda/check.h"
#include "core/cuda/stream.h"

namespace moeforge {
namespace {

void check_nccl(ncclResult_t rc, ncclComm_t comm, const char* call) {
  if (rc == ncclSuccess) return;
  const char* detail = comm != nullptr ? ncclGetLastError(comm) : nullptr;
  fail(ErrorCode::kBackend, "NCCL: ", call, " failed: ", ncclGetErrorString(rc),
       detail != nullptr && *detail != '\0' ? std::string(" (") + detail + ")" : std::string());
}

ncclDataType_t sum_type(DType dtype, const char* what) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kI64: return ncclInt64;
    case DType::kBF16: return ncclBfloat16;
    default: fail(ErrorCode::kUnsupported, "NCCL ", what, ": dtype ", dtype_torch_name(dtype), " (f32, f64, i64, bf16 are)");
  }
}

std::vector<size_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<size_t> off(counts.size() + 1, 0);
  for (size_t p = 0; p < counts.size(); ++p) off[p + 1] = off[p] + static_cast<size_t>(counts[p]);
  return off;
}

// Watches the collectives queued on the device: each is marked by an event after it, and the thread
// polls the oldest one and NCCL's asynchronous error. On an error or a timeout it aborts the
// communicator (which ends its kernels on this GPU) and the process; the launcher ends the others.
class NcclWatchdog {
 public:
  NcclWatchdog(ncclComm_t comm, int device, int rank, int size)
      : comm_(comm), device_(device), rank_(rank), size_(size), timeout_s_(collective_timeout_s()) {
    thread_ = std::thread([this] { run(); });
  }
  ~NcclWatchdog() {
    stop_ = true;
    thread_.join();
  }
  NcclWatchdog(const NcclWatchdog&) = delete;
  NcclWatchdog& operator=(const NcclWatchdog&) = delete;

  // Marks the collective just queued on `stream`.
  void watch(const char* what, StreamHandle stream) {
    Pending p{Event(), what, std::chrono::steady_clock::now()};
    p.done.record(stream);
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back(std::move(p));
  }

 private:
  struct Pending {
    Event done;
    const char* what;
    std::chrono::steady_clock::time_point queued;
  };

  [[noreturn]] void end(const char* what, const std::string& cause) {
    std::fprintf(stderr, "moeforge: rank %d of %d: error: NCCL %s: %s; ending this one\n", rank_, size_, what,
                 cause.c_str());
    std::fflush(stderr);
    ncclCommAbort(comm_);
    std::_Exit(exit_code_for(ErrorCode::kBackend));
  }

  void run() {
    cudaSetDevice(device_);  // the events' device, for this thread
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
        end("communicator", std::string(ncclGetErrorString(async)) + " (asynchronous error)");
      std::lock_guard<std::mutex> lock(mutex_);
      while (!pending_.empty() && pending_.front().done.query()) pending_.pop_front();
      if (pending_.empty() || timeout_s_ == 0) continue;
      const auto waited = std::chrono::steady_clock::now() - pending_.front().queued;
      if (waited >= std::chrono::seconds(timeout_s_))
        end(pending_.front().what,
            "not done on the device after " + std::to_string(timeout_s_) +
                " s (MOEFORGE_COLLECTIVE_TIMEOUT): a rank stopped making progress");
    }
  }

  ncclComm_t comm_;
  const int device_, rank_, size_;
  const int64_t timeout_s_;
  std::mutex mutex_;
  std::deque<Pending> pending_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(ncclComm_t comm, ProcessGroup* launcher) : comm_(comm), launcher_(launcher) {
    check_nccl(ncclCommUserRank(comm_, &rank_), comm_, "ncclCommUserRank");
    check_nccl(ncclCommCount(comm_, &size_), comm_, "ncclCommCount");
    check_nccl(ncclCommCuDevice(comm_, &device_), comm_, "ncclCommCuDevice");
    watchdog_ = std::make_unique<NcclWatchdog>(comm_, device_, rank_, size_);
  }
  ~NcclProcessGroup() override {
    watchdog_.reset();
    ncclCommDestroy(comm_);
  }
  NcclProcessGroup(const NcclProcessGroup&) = delete;
  NcclProcessGroup& operator=(const NcclProcessGroup&) = delete;
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(Tensor& t) override {
    if (t.device() == Device::kCPU) return through_device(t, [this](Tensor& d) { all_reduce_sum(d); });
    check_contiguous(t, "all-reduce");
    const StreamHandle stream = current_stream();
    check_nccl(ncclAllReduce(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()), sum_type(t.dtype(), "all-reduce"),
                             ncclSum, comm_, stream),
               comm_, "ncclAllReduce");
    watchdog_->watch("all-reduce", stream);
  }

  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send) override {
    MF_ASSERT(static_cast<int>(send.size()) == size_);
    const Tensor sent = Tensor::from_vector(send, {size_}).to(Device::kCUDA);
    Tensor received = Tensor::empty({size_}, DType::kI64, Device::kCUDA, "all-to-all counts");
    const StreamHandle stream = current_stream();
    check_nccl(ncclAlltoAll(sent.raw_data(), received.raw_data(), 1, ncclInt64, comm_, stream), comm_, "ncclAlltoAll");
    watchdog_->watch("all-to-all of counts", stream);
    const Tensor host = received.to(Device::kCPU);
    return {host.data<int64_t>(), host.data<int64_t>() + size_};
  }

  Tensor all_to_all_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows) override {
    if (send.device() == Device::kCPU)
      return all_to_all_rows(send.to(Device::kCUDA), send_rows, recv_rows).to(Device::kCPU);
    MF_ASSERT(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_);
    const Tensor s = send.contiguous();
    const std::vector<size_t> so = offsets_of(send_rows), ro = offsets_of(recv_rows);
    MF_ASSERT(static_cast<int64_t>(so.back()) == s.size(0));
    Shape shape = s.shape();
    shape[0] = static_cast<int64_t>(ro.back());
    Tensor recv = Tensor::empty(shape, s.dtype(), Device::kCUDA, "all-to-all rows");
    const size_t row = row_bytes(s);
    const auto* from = static_cast<const char*>(s.raw_data());
    auto* to = static_cast<char*>(recv.raw_data());
    const StreamHandle stream = current_stream();
    check_nccl(ncclGroupStart(), comm_, "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      if (send_rows[p] > 0)
        check_nccl(ncclSend(from + so[p] * row, send_rows[p] * row, ncclUint8, p, comm_, stream), comm_, "ncclSend");
      if (recv_rows[p] > 0)
        check_nccl(ncclRecv(to + ro[p] * row, recv_rows[p] * row, ncclUint8, p, comm_, stream), comm_, "ncclRecv");
    }
    check_nccl(ncclGroupEnd(), comm_, "ncclGroupEnd");
    watchdog_->watch("all-to-all of rows", stream);
    return recv;
  }

  Tensor all_gather_rows(const Tensor& local, const std::vector<int64_t>& rows) override {
    if (local.device() == Device::kCPU) return all_gather_rows(local.to(Device::kCUDA), rows).to(Device::kCPU);
    MF_ASSERT(static_cast<int>(rows.size()) == size_ && rows[rank_] == local.size(0));
    const Tensor l = local.contiguous();
    const std::vector<size_t> off = offsets_of(rows);
    Shape shape = l.shape();
    shape[0] = static_cast<int64_t>(off.back());
    Tensor out = Tensor::empty(shape, l.dtype(), Device::kCUDA, "all-gather rows");
    broadcast_parts(l.raw_data(), out.raw_data(), rows, row_bytes(l), "all-gather");
    return out;
  }

  // Parts of unequal sizes (the optimizer's slices end on 64-element granules), so one reduce or
  // broadcast per part, rooted at its owner, in one NCCL group.
  void reduce_scatter_sum(Tensor& flat, const std::vector<int64_t>& parts) override {
    if (flat.device() == Device::kCPU)
      return through_device(flat, [&](Tensor& d) { reduce_scatter_sum(d, parts); });
    check_flat(flat, parts, "reduce-scatter");
    const ncclDataType_t type = sum_type(flat.dtype(), "reduce-scatter");
    const std::vector<size_t> off = offsets_of(parts);
    auto* base = static_cast<char*>(flat.raw_data());
    const size_t element = flat.element_size();
    const StreamHandle stream = current_stream();
    check_nccl(ncclGroupStart(), comm_, "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      if (parts[p] == 0) continue;
      void* part = base + off[p] * element;
      check_nccl(ncclReduce(part, part, static_cast<size_t>(parts[p]), type, ncclSum, p, comm_, stream), comm_,
                 "ncclReduce");
    }
    check_nccl(ncclGroupEnd(), comm_, "ncclGroupEnd");
    watchdog_->watch("reduce-scatter", stream);
  }

  void all_gather_parts(Tensor& flat, const std::vector<int64_t>& parts) override {
    if (flat.device() == Device::kCPU)
      return through_device(flat, [&](Tensor& d) { all_gather_parts(d, parts); });
    check_flat(flat, parts, "all-gather");
    const std::vector<size_t> off = offsets_of(parts);
    void* mine = static_cast<char*>(flat.raw_data()) + off[rank_] * flat.element_size();
    broadcast_parts(mine, flat.raw_data(), parts, flat.element_size(), "all-gather");
  }

  std::shared_ptr<ProcessGroup> split(int color, int key) override {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    ncclComm_t sub = nullptr;
    check_nccl(ncclCommSplit(comm_, color, key, &sub, &config), comm_, "ncclCommSplit");
    MF_CHECK(sub != nullptr, kInternal, "NCCL: ncclCommSplit gave no communicator for color ", color);
    return std::make_shared<NcclProcessGroup>(sub, launcher_);
  }

  void barrier() override {
    Tensor one = Tensor::zeros({1}, DType::kF32, Device::kCUDA, "barrier");
    all_reduce_sum(one);
    one.to(Device::kCPU);  // waits for the other ranks' contributions
  }

  [[noreturn]] void abort(int exit_code) override {
    ncclCommAbort(comm_);
    if (launcher_ != nullptr) launcher_->abort(exit_code);
    std::_Exit(exit_code);  // the launcher's abort does not return; without one (torchrun) its agent ends the others
  }

 private:
  // A host tensor's collective on a device copy, and the result copied back.
  template <typename Op>
  void through_device(Tensor& host, Op op) {
    Tensor d = host.to(Device::kCUDA);
    op(d);
    host.copy_from(d);
  }

  static void check_contiguous(const Tensor& t, const char* what) {
    MF_CHECK(t.is_contiguous(), kInvalidArgument, "NCCL ", what, ": needs a contiguous tensor");
  }

  void check_flat(const Tensor& flat, const std::vector<int64_t>& parts, const char* what) const {
    check_contiguous(flat, what);
    MF_ASSERT(static_cast<int>(parts.size()) == size_);
    int64_t total = 0;
    for (int64_t p : parts) total += p;
    MF_ASSERT(flat.dim() == 1 && flat.numel() == total);
  }

  // Every rank's part (counts[p] units of `unit` bytes, at their offsets in `out`) to every rank:
  // rank p broadcasts `mine`. `mine` may be its own place in `out` (in place).
  void broadcast_parts(const void* mine, void* out, const std::vector<int64_t>& counts, size_t unit, const char* what) {
    const std::vector<size_t> off = offsets_of(counts);
    const StreamHandle stream = current_stream();
    check_nccl(ncclGroupStart(), comm_, "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      if (counts[p] == 0) continue;
      check_nccl(ncclBroadcast(p == rank_ ? mine : nullptr, static_cast<char*>(out) + off[p] * unit, counts[p] * unit,
                               ncclUint8, p, comm_, stream),
                 comm_, "ncclBroadcast");
    }
    check_nccl(ncclGroupEnd(), comm_, "ncclGroupEnd");
    watchdog_->watch(what, stream);
  }

  ncclComm_t comm_;
  ProcessGroup* launcher_;  // the launcher's group (null under torchrun), which outlives every NCCL group
  int rank_ = 0, size_ = 1, device_ = 0;
  std::unique_ptr<NcclWatchdog> watchdog_;
};

}  // namespace

std::vector<uint8_t> nccl_unique_id() {
  ncclUniqueId id{};
  check_nccl(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId");
  const auto* bytes = reinterpret_cast<const uint8_t*>(&id);
  return {bytes, bytes + sizeof id};
}

std::shared_ptr<ProcessGroup> nccl_group(const std::vector<uint8_t>& unique_id, int rank, int size,
                                         ProcessGroup* launcher) {
  ncclUniqueId id{};
  MF_CHECK(unique_id.size() == sizeof id, kBackend, "NCCL: a unique id of ", unique_id.size(), " bytes (", sizeof id,
           " expected)");
  std::memcpy(&id, unique_id.data(), sizeof id);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRankConfig(&comm, size, id, rank, &config), nullptr, "ncclCommInitRankConfig");
  return std::make_shared<NcclProcessGroup>(comm, launcher);
}

std::shared_ptr<ProcessGroup> nccl_group(ProcessGroup& bootstrap) {
  // Rank 0's id, gathered as every rank's bytes over the bootstrap group (which has no broadcast):
  // the others' rows are left unread.
  std::vector<uint8_t> id = bootstrap.rank() == 0 ? nccl_unique_id() : std::vector<uint8_t>(sizeof(ncclUniqueId));
  Tensor mine = Tensor::empty({1, static_cast<int64_t>(id.size())}, DType::kU8, Device::kCPU, "NCCL unique id");
  std::memcpy(mine.raw_data(), id.data(), id.size());
  const Tensor all = bootstrap.all_gather_rows(mine, std::vector<int64_t>(static_cast<size_t>(bootstrap.size()), 1));
  std::memcpy(id.data(), all.raw_data(), id.size());
  return nccl_group(id, bootstrap.rank(), bootstrap.size(), &bootstrap);
}

}  // namespace moeforge

#endif
