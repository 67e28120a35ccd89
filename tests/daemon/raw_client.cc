#include "tests/daemon/raw_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace atomdisk::itest {

namespace {

using Clock = std::chrono::steady_clock;

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

Bytes BigEndian64(std::uint64_t v) {
  Bytes b(8);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<std::uint8_t>(v >> (56 - 8 * i));
  return b;
}

Bytes SignPayload(std::span<const std::uint8_t> payload, std::span<const std::uint8_t> key) {
  Hmac mac(key);
  MacTag tag = mac.Compute(payload);
  // Sized once, then filled: GCC 12 at -O3 reports a false -Warray-bounds in the inlined
  // insert into an 8-byte vector that has to grow.
  Bytes out;
  out.reserve(kFrameLengthSize + payload.size() + kMacSize);
  const Bytes length = BigEndian64(payload.size() + kMacSize);
  out.insert(out.end(), length.begin(), length.end());
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), tag.begin(), tag.end());
  return out;
}

SectorPtr IdSector(std::uint64_t id) {
  SectorData d;
  for (int i = 0; i < 8; ++i) d[i] = static_cast<std::uint8_t>(id >> (56 - 8 * i));
  std::uint64_t x = id * 0x9E3779B97F4A7C15ULL + 1;
  for (std::size_t i = 8; i < kSectorSize; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    d[i] = static_cast<std::uint8_t>(x);
  }
  return MakeSector(d.data());
}

std::uint64_t CheckedId(const SectorData& data) {
  bool all_zero = true;
  for (auto b : data) {
    if (b != 0) {
      all_zero = false;
      break;
    }
  }
  if (all_zero) return 0;
  std::uint64_t id = 0;
  for (int i = 0; i < 8; ++i) id = id << 8 | data[i];
  if (id == 0 || id == kBadSector) return kBadSector;
  return *IdSector(id) == data ? id : kBadSector;
}

RawClient::RawClient(int fd, std::span<const std::uint8_t> client_key)
    : fd_(fd), mac_(client_key) {}

RawClient::~RawClient() { Close(); }

Result<std::unique_ptr<RawClient>> RawClient::Connect(std::uint16_t port,
                                                      std::span<const std::uint8_t> client_key,
                                                      milliseconds timeout,
                                                      const std::string& source) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::FromErrno("socket", errno);
  if (!source.empty()) {
    sockaddr_in from{};
    from.sin_family = AF_INET;
    if (::inet_pton(AF_INET, source.c_str(), &from.sin_addr) != 1 ||
        ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) {
      int err = errno;
      ::close(fd);
      return Status::FromErrno("bind to " + source, err);
    }
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) {
      int err = errno;
      ::close(fd);
      return Status::FromErrno("connect to port " + std::to_string(port), err);
    }
    pollfd p{fd, POLLOUT, 0};
    int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (n <= 0) {
      ::close(fd);
      return Status::Timeout("connect to port " + std::to_string(port) + " timed out");
    }
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      ::close(fd);
      return Status::FromErrno("connect to port " + std::to_string(port), err);
    }
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return std::unique_ptr<RawClient>(new RawClient(fd, client_key));
}

Status RawClient::SendBytes(std::span<const std::uint8_t> bytes) {
  if (fd_ < 0) return Status::Unavailable("closed");
  std::size_t off = 0;
  Clock::time_point deadline = Clock::now() + std::chrono::seconds(10);
  while (off < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, RemainingMs(deadline)) <= 0) return Status::Timeout("send blocked");
      continue;
    }
    return Status::FromErrno("send", errno);
  }
  return Status::Ok();
}

Status RawClient::Send(const ClientCommand& cmd) { return SendBytes(EncodeFrame(cmd, mac_)); }

Status RawClient::SendSignedWith(const ClientCommand& cmd, std::span<const std::uint8_t> key) {
  Hmac other(key);
  return SendBytes(EncodeFrame(cmd, other));
}

Status RawClient::Fill(std::size_t n, Clock::time_point deadline) {
  std::uint8_t chunk[16384];
  while (buf_.size() < n) {
    if (fd_ < 0) return Status::Unavailable("closed");
    ssize_t got = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (got > 0) {
      buf_.insert(buf_.end(), chunk, chunk + got);
      continue;
    }
    if (got == 0) return Status::Unavailable("connection closed by the node");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return Status::Unavailable(std::string("recv: ") + std::strerror(errno));
    }
    int left = RemainingMs(deadline);
    if (left == 0) return Status::Timeout("no frame within the deadline");
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, left);
    if (r < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
  }
  return Status::Ok();
}

Result<RawFrame> RawClient::ReadFrame(milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  if (Status s = Fill(kFrameLengthSize, deadline); !s.ok()) return s;
  std::uint64_t l = 0;
  for (std::size_t i = 0; i < kFrameLengthSize; ++i) l = l << 8 | buf_[i];
  // Responses are at most a read response plus an info reply; anything huge is a bug.
  if (l < kMacSize || l > kMaxFrameBody + 8192) {
    return Status::Corruption("response frame length " + std::to_string(l));
  }
  std::size_t total = kFrameLengthSize + static_cast<std::size_t>(l);
  if (Status s = Fill(total, deadline); !s.ok()) return s;
  RawFrame f;
  f.length = l;
  f.bytes.assign(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(total));
  buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(total));
  return f;
}

Result<ClientResponse> RawClient::ReadResponse(milliseconds timeout) {
  auto frame = ReadFrame(timeout);
  if (!frame.ok()) return frame.status();
  auto payload = VerifyFrameBody(frame->body(), mac_);
  if (!payload.ok()) return payload.status();
  return DecodeClientResponse(*payload);
}

Result<ClientResponse> RawClient::Call(const ClientCommand& cmd, milliseconds timeout) {
  if (Status s = Send(cmd); !s.ok()) return s;
  auto resp = ReadResponse(timeout);
  if (!resp.ok()) return resp;
  if (resp->request_id != cmd.request_id) {
    return Status::Corruption("response to request " + std::to_string(resp->request_id) +
                              ", expected " + std::to_string(cmd.request_id));
  }
  return resp;
}

Status RawClient::Write(SectorIdx sector, const SectorPtr& data, milliseconds timeout) {
  ClientCommand cmd{NextRequestId(), sector, ClientOp::kWrite, data};
  auto resp = Call(cmd, timeout);
  if (!resp.ok()) return resp.status();
  if (resp->status != ResponseStatus::kOk || resp->op != ClientOp::kWrite) {
    return Status::Corruption("write of sector " + std::to_string(sector) + " answered status " +
                              std::to_string(static_cast<int>(resp->status)));
  }
  return Status::Ok();
}

Result<SectorPtr> RawClient::Read(SectorIdx sector, milliseconds timeout) {
  ClientCommand cmd{NextRequestId(), sector, ClientOp::kRead, nullptr};
  auto resp = Call(cmd, timeout);
  if (!resp.ok()) return resp.status();
  if (resp->status != ResponseStatus::kOk || resp->op != ClientOp::kRead || !resp->data) {
    return Status::Corruption("read of sector " + std::to_string(sector) + " answered status " +
                              std::to_string(static_cast<int>(resp->status)));
  }
  return resp->data;
}

Result<nlohmann::json> RawClient::Info(milliseconds timeout) {
  ClientCommand cmd{NextRequestId(), 0, ClientOp::kInfo, nullptr};
  auto resp = Call(cmd, timeout);
  if (!resp.ok()) return resp.status();
  if (resp->status != ResponseStatus::kOk || resp->op != ClientOp::kInfo) {
    return Status::Corruption("info answered status " +
                              std::to_string(static_cast<int>(resp->status)));
  }
  auto j = nlohmann::json::parse(resp->info, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::Corruption("info is not a JSON object");
  return j;
}

bool RawClient::WaitForClose(milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  buf_.clear();
  for (;;) {
    Status s = Fill(1, deadline);
    if (s.code() == StatusCode::kTimeout) return false;
    if (!s.ok()) return true;  // EOF, reset or a broken socket
    buf_.clear();              // bytes the node sent before closing: not what we wait for
  }
}

bool RawClient::PeerClosedWithoutReading() {
  if (fd_ < 0) return true;
  pollfd p{fd_, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) < 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void RawClient::ShutdownWrite() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void RawClient::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

}  // namespace atomdisk::itest
