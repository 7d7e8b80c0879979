#include "dist/tcp_rendezvous.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace moeforge {
namespace {

using Clock = std::chrono::steady_clock;

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Waits until `fd` is ready for `events` or `deadline` passes.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
  }
}

void send_all(int fd, const void* data, size_t n, const std::string& where, Clock::time_point deadline) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    MF_CHECK(wait_ready(fd, POLLOUT, deadline), kBackend, "rendezvous at ", where, ": timed out sending");
    const ssize_t sent = ::send(fd, p, n, MSG_NOSIGNAL);
    MF_CHECK(sent > 0 || errno == EINTR, kBackend, "rendezvous at ", where, ": send failed: ", std::strerror(errno));
    if (sent > 0) {
      p += sent;
      n -= static_cast<size_t>(sent);
    }
  }
}

void recv_all(int fd, void* data, size_t n, const std::string& where, Clock::time_point deadline) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    MF_CHECK(wait_ready(fd, POLLIN, deadline), kBackend, "rendezvous at ", where, ": timed out waiting for rank 0's bytes");
    const ssize_t got = ::recv(fd, p, n, 0);
    MF_CHECK(got != 0, kBackend, "rendezvous at ", where, ": rank 0 closed the connection early");
    MF_CHECK(got > 0 || errno == EINTR, kBackend, "rendezvous at ", where, ": receive failed: ", std::strerror(errno));
    if (got > 0) {
      p += got;
      n -= static_cast<size_t>(got);
    }
  }
}

std::vector<uint8_t> serve(int port, int world_size, const std::vector<uint8_t>& bytes, const std::string& where,
                           Clock::time_point deadline) {
  Socket listener(::socket(AF_INET6, SOCK_STREAM, 0));
  MF_CHECK(listener.fd() >= 0, kBackend, "rendezvous at ", where, ": socket failed: ", std::strerror(errno));
  const int off = 0, on = 1;
  ::setsockopt(listener.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);  // IPv4 peers too
  ::setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_any;
  addr.sin6_port = htons(static_cast<uint16_t>(port));
  MF_CHECK(::bind(listener.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0, kBackend,
           "rendezvous at ", where, ": cannot listen on port ", port, ": ", std::strerror(errno),
           " (set MOEFORGE_RENDEZVOUS_PORT to a free port)");
  MF_CHECK(::listen(listener.fd(), world_size) == 0, kBackend, "rendezvous at ", where, ": listen failed: ",
           std::strerror(errno));
  const uint32_t size = static_cast<uint32_t>(bytes.size());
  for (int served = 1; served < world_size; ++served) {
    MF_CHECK(wait_ready(listener.fd(), POLLIN, deadline), kBackend, "rendezvous at ", where, ": ", served - 1, " of ",
             world_size - 1, " ranks connected before the timeout");
    Socket peer(::accept(listener.fd(), nullptr, nullptr));
    MF_CHECK(peer.fd() >= 0, kBackend, "rendezvous at ", where, ": accept failed: ", std::strerror(errno));
    send_all(peer.fd(), &size, sizeof size, where, deadline);
    send_all(peer.fd(), bytes.data(), bytes.size(), where, deadline);
  }
  return bytes;
}

std::vector<uint8_t> fetch(const std::string& host, int port, const std::string& where, Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  MF_CHECK(rc == 0, kBackend, "rendezvous at ", where, ": cannot resolve MASTER_ADDR '", host, "': ", ::gai_strerror(rc));
  Socket s;
  // Rank 0 may not listen yet: try every address again until the deadline.
  while (s.fd() < 0) {
    for (const addrinfo* a = found; a != nullptr && s.fd() < 0; a = a->ai_next) {
      Socket attempt(::socket(a->ai_family, a->ai_socktype, a->ai_protocol));
      if (attempt.fd() >= 0 && ::connect(attempt.fd(), a->ai_addr, a->ai_addrlen) == 0) s = std::move(attempt);
    }
    if (s.fd() >= 0) break;
    if (Clock::now() >= deadline) {
      ::freeaddrinfo(found);
      fail(ErrorCode::kBackend, "rendezvous at ", where, ": rank 0 did not accept a connection before the timeout");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::freeaddrinfo(found);
  uint32_t size = 0;
  recv_all(s.fd(), &size, sizeof size, where, deadline);
  MF_CHECK(size <= (1u << 20), kBackend, "rendezvous at ", where, ": rank 0 announced ", size, " bytes");
  std::vector<uint8_t> bytes(size);
  recv_all(s.fd(), bytes.data(), bytes.size(), where, deadline);
  return bytes;
}

}  // namespace

std::vector<uint8_t> rendezvous_bytes(const std::string& host, int port, int rank, int world_size,
                                      const std::vector<uint8_t>& bytes, std::chrono::milliseconds timeout) {
  MF_CHECK(port > 0 && port < 65536, kInvalidArgument, "rendezvous: port ", port, " is not a TCP port");
  const std::string where = host + ":" + std::to_string(port);
  const Clock::time_point deadline = Clock::now() + timeout;
  return rank == 0 ? serve(port, world_size, bytes, where, deadline) : fetch(host, port, where, deadline);
}

}  // namespace moeforge
