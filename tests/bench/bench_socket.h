// Blocking socket helpers shared by the benchmark tools in tests/bench/ (hostile clients that
// speak raw frames: slow_readers.cc, sync_replay.cc).
#pragma once

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "common/wire.h"

namespace atomdisk::bench {

// A blocking TCP connection to host:port; -1 on failure.
inline int Dial(const std::string& host, std::uint16_t port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  return fd;
}

inline bool SendAll(int fd, const atomdisk::Frame& f) {
  std::size_t off = 0;
  while (off < f.size()) {
    ssize_t n = ::send(fd, f.data() + off, f.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// Closed by the peer, seen without reading (POLLRDHUP/POLLHUP/POLLERR).
inline bool PeerClosed(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace atomdisk::bench
