// The MPI backend of ProcessGroup (process_group.h): the CPU backend's collectives, over the MPI
// library the launcher's processes share (Open MPI from the Debian packages here).
#pragma once

#include <memory>

#include "dist/process_group.h"

namespace moeforge {

// Initialises MPI (once per process; finalised at exit) and returns its world as a group.
std::shared_ptr<ProcessGroup> mpi_world();
// Whether this process initialised MPI and has not finalised it.
bool mpi_started();

}  // namespace moeforge
