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

#include <memory>

#include "dist/process_group.h"

namespace moeforge {

// An NCCL communicator over the ranks of `bootstrap` (MPI's world under mpirun or srun), which
// carries rank 0's unique id to the others. Every rank calls it, on the GPU it has chosen. Throws
// Error(kUnsupported) in a build without CUDA.
std::shared_ptr<ProcessGroup> nccl_group(ProcessGroup& bootstrap);

}  // namespace moeforge
