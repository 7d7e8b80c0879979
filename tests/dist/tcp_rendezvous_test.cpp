// The rendezvous that carries NCCL's unique id in torchrun-style worlds: threads stand in for the
// ranks, on a loopback port the kernel picks free.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "dist/tcp_rendezvous.h"
#include "testing.h"

namespace moeforge {
namespace {

using std::chrono::milliseconds;

// A port nothing listens on as the test starts.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(TcpRendezvous, EveryRankGetsRankZerosBytes) {
  const int port = free_port(), world = 4;
  const std::vector<uint8_t> id = {7, 0, 255, 42, 1, 2, 3};
  std::vector<std::vector<uint8_t>> got(world);
  std::vector<std::thread> ranks;
  // The others start first: they retry until rank 0 listens.
  for (int r = world - 1; r >= 0; --r)
    ranks.emplace_back([&, r] {
      got[r] = rendezvous_bytes("127.0.0.1", port, r, world, r == 0 ? id : std::vector<uint8_t>(), milliseconds(20000));
    });
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(got[r], id) << "rank " << r;
}

TEST(TcpRendezvous, ARankWithoutRankZeroTimesOutNamingTheAddress) {
  const int port = free_port();
  testing::expect_error([&] { rendezvous_bytes("127.0.0.1", port, 1, 2, {}, milliseconds(300)); },
                        {"rendezvous at 127.0.0.1:" + std::to_string(port), "rank 0 did not accept"});
}

TEST(TcpRendezvous, RankZeroTimesOutSayingHowManyCame) {
  const int port = free_port();
  testing::expect_error([&] { rendezvous_bytes("127.0.0.1", port, 0, 3, {1, 2}, milliseconds(300)); },
                        {"rendezvous at 127.0.0.1:" + std::to_string(port), "0 of 2 ranks connected"});
}

TEST(TcpRendezvous, AnUnknownHostIsNamed) {
  testing::expect_error([] { rendezvous_bytes("no-such-host.invalid", 29500, 1, 2, {}, milliseconds(300)); },
                        {"cannot resolve MASTER_ADDR 'no-such-host.invalid'"});
}

}  // namespace
}  // namespace moeforge
