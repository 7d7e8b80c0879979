#include "dist/launch.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/mpi_process_group.h"
#include "dist/nccl_process_group.h"
#include "dist/tcp_rendezvous.h"

namespace moeforge {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (v == nullptr) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  MF_CHECK(end != v && *end == '\0' && x >= 0 && x < (1 << 24), kInvalidArgument, "environment variable ", name,
           "='", v, "' is not a rank or process count");
  return static_cast<int>(x);
}

LaunchInfo read(const char* launcher, const char* rank, const char* size, const char* local_rank) {
  LaunchInfo l;
  l.launcher = launcher;
  l.rank = env_int(rank, 0);
  l.world_size = env_int(size, 1);
  l.local_rank = env_int(local_rank, 0);
  MF_CHECK(l.world_size >= 1 && l.rank < l.world_size, kInvalidArgument, launcher, ": ", rank, "=", l.rank,
           " is not below ", size, "=", l.world_size);
  return l;
}

}  // namespace

LaunchInfo detect_launch() {
  if (env("OMPI_COMM_WORLD_SIZE"))
    return read("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK");
  // SLURM_PROCID alone is set in a batch script too; a task of a job step also has SLURM_STEP_ID.
  if (env("SLURM_PROCID") && env("SLURM_STEP_ID")) return read("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID");
  if (env("WORLD_SIZE")) return read("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK");
  return {};
}

namespace {

std::shared_ptr<ProcessGroup> g_world;  // set once world_process_group() has joined a world

// The GPU's collectives: NCCL where every process has a GPU of its own, else MPI through the host.
std::shared_ptr<ProcessGroup> cuda_world(const std::shared_ptr<ProcessGroup>& mpi, const LaunchInfo& l) {
  const int gpu = select_cuda_device(l.local_rank);
  const bool shared = sum_over_ranks(*mpi, int64_t{gpu != l.local_rank}) > 0;
  const std::string asked = env("MOEFORGE_COLLECTIVES") ? env("MOEFORGE_COLLECTIVES") : "nccl";
  MF_CHECK(asked == "nccl" || asked == "mpi", kInvalidArgument, "MOEFORGE_COLLECTIVES='", asked,
           "': expected 'nccl' (the default) or 'mpi'");
  MF_CHECK(!shared || asked == "mpi" || !env("MOEFORGE_COLLECTIVES"), kUnsupported,
           "MOEFORGE_COLLECTIVES=nccl: processes share GPUs here, which NCCL refuses");
  if (shared || asked == "mpi") {
    if (mpi->rank() == 0)
      MF_LOG_WARN(shared ? "the processes outnumber this machine's GPUs and share them" : "MOEFORGE_COLLECTIVES=mpi",
                  ": collectives go over MPI through the host (for tests, not speed)");
    return mpi;
  }
  return nccl_group(*mpi);
}

// A torchrun-style world has no MPI: NCCL alone, one GPU per process, its id over a TCP rendezvous
// beside torchrun's own store on MASTER_PORT (at MASTER_PORT + 1, or MOEFORGE_RENDEZVOUS_PORT).
std::shared_ptr<ProcessGroup> torchrun_world(Device device, const LaunchInfo& l) {
  MF_CHECK(device == Device::kCUDA, kUnsupported, "torchrun-style launch (WORLD_SIZE=", l.world_size,
           ") on the CPU: the CPU backend's processes join over MPI; start them with mpirun -np ", l.world_size,
           " (or srun)");
  const char* addr = env("MASTER_ADDR");
  MF_CHECK(addr != nullptr && env("MASTER_PORT") != nullptr, kInvalidArgument,
           "torchrun-style launch (WORLD_SIZE=", l.world_size, "): MASTER_ADDR and MASTER_PORT must be set");
  const int port = env("MOEFORGE_RENDEZVOUS_PORT") ? env_int("MOEFORGE_RENDEZVOUS_PORT", 0)
                                                    : env_int("MASTER_PORT", 0) + 1;
  const int gpu = select_cuda_device(l.local_rank);
  MF_CHECK(gpu == l.local_rank, kUnsupported, "torchrun-style launch: LOCAL_RANK=", l.local_rank,
           " but this machine shows fewer GPUs; NCCL needs a GPU per process (processes that share a GPU, as in "
           "tests, run under mpirun)");
  const int64_t timeout_s = collective_timeout_s() > 0 ? collective_timeout_s() : int64_t{1} << 30;
  const std::vector<uint8_t> id = rendezvous_bytes(addr, port, l.rank, l.world_size,
                                                   l.rank == 0 ? nccl_unique_id() : std::vector<uint8_t>(),
                                                   std::chrono::seconds(timeout_s));
  return nccl_group(id, l.rank, l.world_size, nullptr);
}

}  // namespace

std::shared_ptr<ProcessGroup> world_process_group(Device device) {
  if (detect_launch().world_size == 1) return nullptr;
  static const Device first = device;
  MF_CHECK(device == first, kUnsupported, "a process of a run of several computes on one device: this one joined ",
           "its world for ", device_name(first), " and is asked for ", device_name(device));
  static std::shared_ptr<ProcessGroup> world = [device]() -> std::shared_ptr<ProcessGroup> {
    const LaunchInfo l = detect_launch();
    if (l.launcher == "torchrun") return g_world = torchrun_world(device, l);
    std::shared_ptr<ProcessGroup> group = mpi_world();
    MF_CHECK(group->size() == l.world_size && group->rank() == l.rank, kBackend, l.launcher, " started ",
             l.world_size, " processes (this one rank ", l.rank, ") but MPI sees ", group->size(), " (rank ",
             group->rank(), "): is this MPI library the launcher's?");
    g_world = device == Device::kCUDA ? cuda_world(group, l) : group;
    return g_world;
  }();
  return world;
}

void exec_under_mpirun(int nproc) {
  std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string arg; std::getline(cmdline, arg, '\0');) args.push_back(arg);
  MF_CHECK(!args.empty(), kInternal, "cannot read this process's command line (/proc/self/cmdline)");
  std::vector<std::string> command = {"mpirun", "-np", std::to_string(nproc)};
  // Open MPI refuses to start processes as root unless told; here the user asked for them.
  if (::geteuid() == 0) command.push_back("--allow-run-as-root");
  command.push_back(std::filesystem::read_symlink("/proc/self/exe").string());  // this binary, wherever it was found
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--nproc_per_node" || a == "--nproc-per-node") {
      ++i;  // and its value
      continue;
    }
    if (a.starts_with("--nproc_per_node=") || a.starts_with("--nproc-per-node=")) continue;
    command.push_back(a);
  }
  std::vector<char*> argv;
  for (std::string& a : command) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  ::execvp("mpirun", argv.data());
  fail(ErrorCode::kNotFound, "--nproc_per_node ", nproc, ": cannot start mpirun (", std::strerror(errno),
       "); the processes of a run on the CPU backend are started by Open MPI's mpirun (Debian: openmpi-bin)");
}

std::string failing_rank_label() {
  return g_world ? str_cat("rank ", g_world->rank(), " of ", g_world->size(), ": ") : std::string();
}

int end_world_on_failure(int exit_code) {
  if (g_world && exit_code != 0) g_world->abort(exit_code);
  return exit_code;
}

}  // namespace moeforge
