// The GPU backend of ProcessGroup (process_group.h): one NCCL communicator over processes that each
// drive their own GPU (select_cuda_device in core/allocator.h picks it by local rank first).
//
// Device tensors move and sum on the calling thread's current stream, without a host wait; host
// tensors (counts, scalar sums) go to the device and back, a host synchronisation each. Rows of any
// dtype travel as bytes. A watchdog thread ends the process, naming the collective, when NCCL reports
// an asynchronous error or a collective has not completed on the device after
// MOEFORGE_COLLECTIVE_TIMEOUT seconds (as the MPI group does): it aborts the communicator first, so
// that no rank is left waiting in a kernel.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dist/process_group.h"

namespace moeforge {

// Every function throws Error(kUnsupported) in a build without CUDA.
//
// A new NCCL unique id (rank 0 makes it; the launcher's means carry it to the others).
std::vector<uint8_t> nccl_unique_id();
// The communicator of rank `rank` of `size` with that id, on the GPU this process has chosen; every
// rank calls it. `launcher` (may be null: torchrun's agent ends the others) is aborted after the
// communicator when a rank fails; it must outlive the group.
std::shared_ptr<ProcessGroup> nccl_group(const std::vector<uint8_t>& unique_id, int rank, int size,
                                         ProcessGroup* launcher);
// The same over the ranks of `bootstrap` (MPI's world under mpirun or srun), which carries the id.
std::shared_ptr<ProcessGroup> nccl_group(ProcessGroup& bootstrap);

}  // namespace moeforge
