// Which launcher started this process and where it sits among the others. The same binary runs
// alone, under mpirun (Open MPI), under Slurm's srun and under torchrun-style environments; each
// launcher says so in the environment:
//
//   mpirun    OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK
//   srun      SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (when SLURM_STEP_ID says a step runs)
//   torchrun  RANK / WORLD_SIZE / LOCAL_RANK, MASTER_ADDR / MASTER_PORT
#pragma once

#include <memory>
#include <string>

#include "dist/process_group.h"

namespace moeforge {

struct LaunchInfo {
  std::string launcher = "none";  // "none", "mpirun", "srun" or "torchrun"
  int rank = 0, world_size = 1, local_rank = 0;
};

// Reads the environment; throws naming the variable when a launcher's variables are inconsistent.
LaunchInfo detect_launch();

// The process group of every process the launcher started, for the collectives of a run on
// `device`, or null when this process runs alone. Under mpirun and srun it joins MPI's world
// (checked against the launcher's counts). On the CPU that world is the group. On CUDA each process
// first takes GPU local_rank (select_cuda_device); where every process has a GPU of its own the
// group is an NCCL communicator over the world (nccl_process_group.h), else (processes sharing a
// GPU, as the one-GPU tests do, or MOEFORGE_COLLECTIVES=mpi) the MPI world, which moves device
// tensors through the host. A torchrun-style world (no MPI) runs on CUDA only: NCCL, its unique id
// over a TCP rendezvous at MASTER_ADDR (tcp_rendezvous.h). Made once per process; later calls return
// the same group.
std::shared_ptr<ProcessGroup> world_process_group(Device device);

// Replaces this process by `nproc` copies of its command line, less its --nproc_per_node option
// (`--nproc_per_node N`, `--nproc-per-node N` or `=N`), under Open MPI's mpirun on this machine: what
// `moeforge train --nproc_per_node N` does. Returns only by throwing (mpirun not found).
[[noreturn]] void exec_under_mpirun(int nproc);

// For a failing process: "rank R of N: " once it has joined a world of several processes, else "".
std::string failing_rank_label();
// A failing process of a world of several ends every rank (the launcher's processes all exit
// with `exit_code`): no rank is left waiting in a collective for it. Returns `exit_code` otherwise.
int end_world_on_failure(int exit_code);

}  // namespace moeforge
