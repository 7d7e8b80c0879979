// A group of processes that compute one training step together: expert parallelism sends token
// rows between them, data parallelism sums their gradients. One process per device (one per GPU,
// or one per CPU process on the CPU backend); every collective is called by every rank of the
// group in the same order, as with NCCL and MPI.
//
// Backends (launch.h picks one): MPI (mpi_process_group.cpp), started by mpirun or srun, which takes
// device tensors through the host (processes sharing one GPU in tests); NCCL
// (nccl_process_group.cpp) for processes with a GPU each.
//
// Tensors are contiguous rows of any dtype for the moves; sums take f32, f64, i64, and bf16 on the
// device (MPI sums it in f32 on the host and rounds once; NCCL rounds to bf16 at each step).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace moeforge {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Sums `t` over the ranks, in place on every rank.
  virtual void all_reduce_sum(Tensor& t) = 0;
  // One value to and from each rank: returns what rank p sent to this one at index p.
  virtual std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send) = 0;
  // Rows (dimension 0) of a tensor: the first send_rows[0] rows go to rank 0, the
  // next send_rows[1] to rank 1, ...; returns the rows received, rank 0's first, recv_rows[p] from
  // rank p (what all_to_all_counts(send_rows) returned).
  virtual Tensor all_to_all_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                                 const std::vector<int64_t>& recv_rows) = 0;
  // Every rank's rows of `local` (dimension 0, rows[p] of them on rank p) concatenated in rank order,
  // on every rank.
  virtual Tensor all_gather_rows(const Tensor& local, const std::vector<int64_t>& rows) = 0;
  // Data parallelism's pair over a flat buffer cut into the ranks' parts (parts[p] elements for rank
  // p, in rank order), in place. reduce_scatter_sum: this rank's part becomes its sum over the ranks
  // (f32; the other parts are left as they were). all_gather_parts: every rank's part reaches every
  // rank.
  virtual void reduce_scatter_sum(Tensor& flat, const std::vector<int64_t>& parts) = 0;
  virtual void all_gather_parts(Tensor& flat, const std::vector<int64_t>& parts) = 0;
  // The ranks that pass the same `color` as a group of their own, ordered by `key` (then by rank
  // here); every rank calls it.
  virtual std::shared_ptr<ProcessGroup> split(int color, int key) = 0;
  virtual void barrier() = 0;
  // Ends every process of the group (a failed rank must not leave the others waiting in a collective).
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// The bytes of one row (dimension 0) of `t`: the unit in which the backends move rows.
size_t row_bytes(const Tensor& t);
// MOEFORGE_COLLECTIVE_TIMEOUT in seconds (default 1800, NCCL's; 0: never): how long a collective may
// wait for the other ranks before a backend's watchdog ends the process.
int64_t collective_timeout_s();

// One value summed over the group's ranks.
int64_t sum_over_ranks(ProcessGroup& group, int64_t value);
double sum_over_ranks(ProcessGroup& group, double value);

// The first row of rank r when `count` rows are split over `ranks` as evenly as they go, in order:
// rank r holds rows [split_begin(count, ranks, r), split_begin(count, ranks, r + 1)).
inline int64_t split_begin(int64_t count, int64_t ranks, int64_t r) { return r * count / ranks; }
// The rank holding row `row` of that split.
inline int split_owner(int64_t count, int64_t ranks, int64_t row) {
  int r = 0;
  while (r + 1 < ranks && split_begin(count, ranks, r + 1) <= row) ++r;
  return r;
}

}  // namespace moeforge
