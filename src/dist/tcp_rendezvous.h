// How the processes of a torchrun-style launch (no MPI) share a few bytes from rank 0, such as
// NCCL's unique id: rank 0 listens on a TCP port and sends the bytes to each of the other ranks,
// which connect to MASTER_ADDR (retrying while rank 0 starts) and read them. Nothing else travels
// this way; the collectives are NCCL's.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace moeforge {

// Rank 0 passes `bytes` and gets them back once every other rank has them; the others get rank 0's.
// Throws Error(kBackend) naming host:port when a connection or a transfer fails, or when the others
// (or rank 0) have not come within `timeout`.
std::vector<uint8_t> rendezvous_bytes(const std::string& host, int port, int rank, int world_size,
                                      const std::vector<uint8_t>& bytes, std::chrono::milliseconds timeout);

}  // namespace moeforge
