#include "tests/harness/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace atomdisk::testing {

Result<HttpAnswer> HttpExchange(std::uint16_t port, const std::string& request,
                                std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket", errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Status s = Status::FromErrno("connect to 127.0.0.1:" + std::to_string(port), errno);
    ::close(fd);
    return s;
  }
  // The server may answer (and close) before it has read everything: a failed send is fine.
  std::size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  std::string in;
  char buf[65536];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::close(fd);
      return Status::Timeout("no answer or close from 127.0.0.1:" + std::to_string(port) +
                             " in time (" + std::to_string(in.size()) + " bytes so far)");
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;  // closed (or reset)
    in.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  HttpAnswer a;
  const std::size_t end = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.", 0) != 0 || end == std::string::npos || in.size() < 12) {
    return Status::Corruption("not an HTTP answer: \"" + in.substr(0, 80) + "\"");
  }
  a.status = std::atoi(in.c_str() + 9);
  a.head = in.substr(0, end);
  a.body = in.substr(end + 4);
  return a;
}

Result<std::string> ScrapeMetrics(std::uint16_t port) {
  auto a =
      HttpExchange(port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (!a.ok()) return a.status();
  if (a->status != 200) {
    return Status::IOError("GET /metrics: status " + std::to_string(a->status) + ": " + a->body);
  }
  return a->body;
}

Samples ParseSamples(const std::string& exposition) {
  Samples out;
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

double Value(const Samples& samples, const std::string& key) {
  auto it = samples.find(key);
  return it == samples.end() ? -1 : it->second;
}

}  // namespace atomdisk::testing
