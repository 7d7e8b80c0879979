#include "dist/mpi_process_group.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <thread>

#include "core/error.h"

namespace moeforge {
namespace {

// MPI's counts are int: rows travel as one derived datatype per row size, so a count is a row count
// and a payload may exceed 2 GiB.
int checked_int(int64_t v, const char* what) {
  MF_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), kInvalidArgument, "MPI: ", what, " ", v,
           " does not fit MPI's int counts");
  return static_cast<int>(v);
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail(ErrorCode::kBackend, "MPI: ", call, " failed: ", std::string(text, static_cast<size_t>(len)));
}

void check_cpu_contiguous(const Tensor& t, const char* what) {
  MF_CHECK(t.device() == Device::kCPU && t.is_contiguous(), kInvalidArgument, "MPI ", what,
           ": needs a contiguous CPU tensor");
}

// A datatype of `bytes` contiguous bytes (one row).
class RowType {
 public:
  explicit RowType(size_t bytes) {
    check_mpi(MPI_Type_contiguous(checked_int(static_cast<int64_t>(bytes), "row bytes"), MPI_BYTE, &type_),
              "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&type_), "MPI_Type_commit");
  }
  ~RowType() { MPI_Type_free(&type_); }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// Counts and displacements in rows, as MPI's vector collectives take them.
struct Layout {
  std::vector<int> counts, displs;
  int64_t total = 0;
};
Layout layout(const std::vector<int64_t>& rows) {
  Layout l;
  for (int64_t r : rows) {
    l.counts.push_back(checked_int(r, "row count"));
    l.displs.push_back(checked_int(l.total, "row offset"));
    l.total += r;
  }
  return l;
}

// A rank that hangs without dying (stuck I/O, a deadlock) would hold the others in a collective
// forever. A collective that waits longer than MOEFORGE_COLLECTIVE_TIMEOUT seconds (default 1800,
// NCCL's; 0: never) ends this process, naming the collective, and the launcher then ends the job.
class CollectiveWatchdog {
 public:
  CollectiveWatchdog(int rank, int size) : rank_(rank), size_(size), timeout_s_(collective_timeout_s()) {
    if (timeout_s_ > 0) thread_ = std::thread([this] { run(); });
  }
  ~CollectiveWatchdog() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Marks one collective from construction to destruction.
  class Watch {
   public:
    Watch(CollectiveWatchdog& w, const char* what) : w_(w) {
      w_.what_ = what;
      w_.started_ = std::chrono::steady_clock::now().time_since_epoch().count();
    }
    ~Watch() { w_.started_ = 0; }
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

   private:
    CollectiveWatchdog& w_;
  };

 private:
  void run() {
    using Clock = std::chrono::steady_clock;
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const int64_t started = started_;
      if (started == 0) continue;
      const auto waited = Clock::now() - Clock::time_point(Clock::duration(started));
      if (waited < std::chrono::seconds(timeout_s_)) continue;
      std::fprintf(stderr,
                   "moeforge: rank %d of %d: error: %s waited %lld s for the other ranks "
                   "(MOEFORGE_COLLECTIVE_TIMEOUT): a rank stopped making progress; ending this one\n",
                   rank_, size_, what_.load(), static_cast<long long>(timeout_s_));
      std::fflush(stderr);
      // No MPI call from this thread: the process ends, and the launcher ends the others.
      std::_Exit(exit_code_for(ErrorCode::kBackend));
    }
  }

  const int rank_, size_;
  const int64_t timeout_s_;
  std::atomic<int64_t> started_{0};  // steady_clock ticks when a collective began, 0 when none runs
  std::atomic<const char*> what_{""};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A 1-D buffer of exactly the parts' elements, one part per rank.
void check_flat_parts(const Tensor& flat, const std::vector<int64_t>& parts, const char* what) {
  check_cpu_contiguous(flat, what);
  int64_t total = 0;
  for (int64_t p : parts) total += p;
  MF_ASSERT(flat.dim() == 1 && flat.numel() == total);
}

// Device tensors travel through the host, so that processes sharing one GPU (which NCCL refuses) can
// run the CUDA backend together, as the one-GPU expert-parallel tests do; not a path for speed.
// Sums of bfloat16 are taken in float32 there and rounded once.
bool on_device(const Tensor& t) { return t.device() != Device::kCPU; }
Tensor staged_for_sum(const Tensor& t) {
  Tensor host = t.to(Device::kCPU).contiguous();
  return host.dtype() == DType::kBF16 ? host.to(DType::kF32) : host;
}
void copy_back(Tensor& t, const Tensor& host) { t.copy_from(host.dtype() == t.dtype() ? host : host.to(t.dtype())); }

class MpiProcessGroup final : public ProcessGroup {
 public:
  explicit MpiProcessGroup(MPI_Comm comm) : comm_(comm), rank_(rank_in(comm)), size_(size_of(comm)), watchdog_(rank_, size_) {}
  ~MpiProcessGroup() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm_ != MPI_COMM_WORLD && !finalized) MPI_Comm_free(&comm_);
  }
  MpiProcessGroup(const MpiProcessGroup&) = delete;
  MpiProcessGroup& operator=(const MpiProcessGroup&) = delete;
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(Tensor& t) override {
    if (on_device(t)) {
      Tensor host = staged_for_sum(t);
      all_reduce_sum(host);
      return copy_back(t, host);
    }
    check_cpu_contiguous(t, "all-reduce");
    MPI_Datatype type = MPI_DATATYPE_NULL;
    switch (t.dtype()) {
      case DType::kF32: type = MPI_FLOAT; break;
      case DType::kF64: type = MPI_DOUBLE; break;
      case DType::kI64: type = MPI_INT64_T; break;
      default: fail(ErrorCode::kUnsupported, "MPI all-reduce: dtype ", dtype_torch_name(t.dtype()), " (f32, f64, i64 are)");
    }
    const CollectiveWatchdog::Watch watch(watchdog_, "an all-reduce");
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, t.raw_data(), checked_int(t.numel(), "element count"), type, MPI_SUM,
                            comm_),
              "MPI_Allreduce");
  }

  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send) override {
    MF_ASSERT(static_cast<int>(send.size()) == size_);
    std::vector<int64_t> recv(send.size());
    const CollectiveWatchdog::Watch watch(watchdog_, "an all-to-all of counts");
    check_mpi(MPI_Alltoall(send.data(), 1, MPI_INT64_T, recv.data(), 1, MPI_INT64_T, comm_), "MPI_Alltoall");
    return recv;
  }

  Tensor all_to_all_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows) override {
    if (on_device(send)) return all_to_all_rows(send.to(Device::kCPU).contiguous(), send_rows, recv_rows).to(send.device());
    check_cpu_contiguous(send, "all-to-all");
    MF_ASSERT(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_);
    const Layout s = layout(send_rows), r = layout(recv_rows);
    MF_ASSERT(s.total == send.size(0));
    Shape shape = send.shape();
    shape[0] = r.total;
    Tensor recv = Tensor::empty(shape, send.dtype(), Device::kCPU, "all-to-all rows");
    const RowType row(row_bytes(send));
    const CollectiveWatchdog::Watch watch(watchdog_, "an all-to-all of rows");
    check_mpi(MPI_Alltoallv(send.raw_data(), s.counts.data(), s.displs.data(), row.get(), recv.raw_data(),
                            r.counts.data(), r.displs.data(), row.get(), comm_),
              "MPI_Alltoallv");
    return recv;
  }

  Tensor all_gather_rows(const Tensor& local, const std::vector<int64_t>& rows) override {
    if (on_device(local)) return all_gather_rows(local.to(Device::kCPU).contiguous(), rows).to(local.device());
    check_cpu_contiguous(local, "all-gather");
    MF_ASSERT(static_cast<int>(rows.size()) == size_ && rows[rank_] == local.size(0));
    const Layout l = layout(rows);
    Shape shape = local.shape();
    shape[0] = l.total;
    Tensor out = Tensor::empty(shape, local.dtype(), Device::kCPU, "all-gather rows");
    const RowType row(row_bytes(local));
    const CollectiveWatchdog::Watch watch(watchdog_, "an all-gather");
    check_mpi(MPI_Allgatherv(local.raw_data(), l.counts[rank_], row.get(), out.raw_data(), l.counts.data(),
                             l.displs.data(), row.get(), comm_),
              "MPI_Allgatherv");
    return out;
  }

  void reduce_scatter_sum(Tensor& flat, const std::vector<int64_t>& parts) override {
    if (on_device(flat)) {
      Tensor host = staged_for_sum(flat);
      reduce_scatter_sum(host, parts);
      return copy_back(flat, host);
    }
    check_flat_parts(flat, parts, "reduce-scatter");
    MF_ASSERT(static_cast<int>(parts.size()) == size_);
    MF_CHECK(flat.dtype() == DType::kF32, kUnsupported, "MPI reduce-scatter: dtype ", dtype_torch_name(flat.dtype()),
             " (f32 is)");
    const Layout l = layout(parts);
    Tensor mine = Tensor::empty({parts[rank_]}, DType::kF32, Device::kCPU, "reduce-scatter part");
    {
      const CollectiveWatchdog::Watch watch(watchdog_, "a reduce-scatter");
      check_mpi(MPI_Reduce_scatter(flat.raw_data(), mine.raw_data(), l.counts.data(), MPI_FLOAT, MPI_SUM, comm_),
                "MPI_Reduce_scatter");
    }
    flat.slice(0, l.displs[rank_], l.displs[rank_] + parts[rank_]).copy_from(mine);
  }

  void all_gather_parts(Tensor& flat, const std::vector<int64_t>& parts) override {
    if (on_device(flat)) {
      Tensor host = flat.to(Device::kCPU).contiguous();
      all_gather_parts(host, parts);
      return flat.copy_from(host);
    }
    check_flat_parts(flat, parts, "all-gather");
    MF_ASSERT(static_cast<int>(parts.size()) == size_);
    const Layout l = layout(parts);
    const RowType element(flat.element_size());
    const CollectiveWatchdog::Watch watch(watchdog_, "an all-gather");
    check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, flat.raw_data(), l.counts.data(), l.displs.data(),
                             element.get(), comm_),
              "MPI_Allgatherv");
  }

  std::shared_ptr<ProcessGroup> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    {
      const CollectiveWatchdog::Watch watch(watchdog_, "a communicator split");
      check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    }
    return std::make_shared<MpiProcessGroup>(sub);
  }

  void barrier() override {
    const CollectiveWatchdog::Watch watch(watchdog_, "a barrier");
    check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
  }

  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; should it, this process ends anyway
  }

 private:
  static int rank_in(MPI_Comm comm) {
    int r = 0;
    MPI_Comm_rank(comm, &r);
    return r;
  }
  static int size_of(MPI_Comm comm) {
    int s = 1;
    MPI_Comm_size(comm, &s);
    return s;
  }

  MPI_Comm comm_;
  const int rank_, size_;
  CollectiveWatchdog watchdog_;  // after rank_ and size_, which it is made from
};

bool g_started = false;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  g_started = false;
}

}  // namespace

std::shared_ptr<ProcessGroup> mpi_world() {
  static std::shared_ptr<ProcessGroup> world = [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      // Only the thread that made the group calls MPI (the data loader's threads never do).
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      g_started = true;
      std::atexit(finalize_at_exit);
    }
    return std::shared_ptr<ProcessGroup>(std::make_shared<MpiProcessGroup>(MPI_COMM_WORLD));
  }();
  return world;
}

bool mpi_started() { return g_started; }

}  // namespace moeforge
