#include "tests/client/fake_node.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/hmac.h"
#include "common/status.h"
#include "common/wire.h"

namespace atomdisk::client {
namespace {

bool WriteAll(int fd, const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

}  // namespace

FakeNode::FakeNode(std::vector<std::uint8_t> key, std::uint64_t sectors, Rank rank)
    : key_(std::move(key)), sectors_(sectors), rank_(rank) {
  Start();
}

FakeNode::~FakeNode() { Stop(); }

void FakeNode::Start() {
  ATOMDISK_CHECK(listen_fd_ < 0);
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ATOMDISK_CHECK(listen_fd_ >= 0);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port_);
  ATOMDISK_CHECK(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  ATOMDISK_CHECK(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  port_ = ntohs(addr.sin_port);
  ATOMDISK_CHECK(::listen(listen_fd_, 64) == 0);
  ATOMDISK_CHECK(::pipe2(wake_pipe_, O_CLOEXEC) == 0);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

void FakeNode::Stop() {
  if (listen_fd_ < 0) return;
  char c = 'x';
  ATOMDISK_CHECK(::write(wake_pipe_[1], &c, 1) == 1);
  accept_thread_.join();
  ::close(listen_fd_);
  listen_fd_ = -1;
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : conn_fds_) ::shutdown(fd, SHUT_RDWR);
    threads.swap(conn_threads_);
  }
  for (auto& t : threads) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  conn_fds_.clear();
}

void FakeNode::SetBehaviour(const Behaviour& b) {
  std::lock_guard<std::mutex> lock(mu_);
  behaviour_ = b;
}

std::uint64_t FakeNode::writes_applied(SectorIdx s) {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_[s];
}

SectorPtr FakeNode::Get(SectorIdx s) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = data_.find(s);
  return it == data_.end() ? ZeroSector() : it->second;
}

void FakeNode::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) return;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ++connections_;
    std::lock_guard<std::mutex> lock(mu_);
    conn_fds_.push_back(fd);
    conn_threads_.emplace_back([this, fd] { Serve(fd); });
  }
}

void FakeNode::Serve(int fd) {
  Hmac mac(key_);
  std::vector<std::uint8_t> wrong_key(key_);
  wrong_key[0] ^= 0xff;
  Hmac bad_mac(wrong_key);
  std::vector<std::uint8_t> buf;
  std::uint64_t received = 0;
  std::uint8_t chunk[65536];
  bool open = true;
  while (open) {
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) break;
    buf.insert(buf.end(), chunk, chunk + n);
    // Every complete frame read so far is one batch.
    std::vector<ClientCommand> batch;
    std::vector<bool> tag_ok;
    std::size_t pos = 0;
    while (buf.size() - pos >= kFrameLengthSize) {
      std::span<const std::uint8_t, kFrameLengthSize> prefix(buf.data() + pos, kFrameLengthSize);
      Result<std::uint64_t> len = DecodeFrameLength(prefix);
      if (!len.ok()) {
        open = false;
        break;
      }
      if (buf.size() - pos < kFrameLengthSize + *len) break;
      std::span<const std::uint8_t> body(buf.data() + pos + kFrameLengthSize, *len);
      pos += kFrameLengthSize + *len;
      Result<std::span<const std::uint8_t>> payload = VerifyFrameBody(body, mac);
      if (!payload.ok()) {
        auto header = DecodeClientCommandHeader(body.first(body.size() - kMacSize));
        if (!header.ok()) {
          open = false;
          break;
        }
        batch.push_back(*header);
        tag_ok.push_back(false);
        continue;
      }
      Result<ClientCommand> cmd = DecodeClientCommand(*payload);
      if (!cmd.ok()) {
        open = false;
        break;
      }
      batch.push_back(std::move(cmd).value());
      tag_ok.push_back(true);
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(pos));
    if (batch.empty()) continue;
    requests_ += batch.size();
    std::uint64_t mb = max_batch_.load();
    while (batch.size() > mb && !max_batch_.compare_exchange_weak(mb, batch.size())) {
    }
    std::uint64_t mo = max_outstanding_.load();
    while (batch.size() > mo && !max_outstanding_.compare_exchange_weak(mo, batch.size())) {
    }
    Behaviour b;
    {
      std::lock_guard<std::mutex> lock(mu_);
      b = behaviour_;
    }
    if (b.drop_after > 0 && received + batch.size() >= static_cast<std::uint64_t>(b.drop_after)) {
      break;
    }
    received += batch.size();
    bool close_now = false;
    for (const ClientCommand& c : batch) {
      if (b.atdd && c.op != ClientOp::kRead && c.op != ClientOp::kWrite) close_now = true;
      if (IsExtentOp(c.op) && !b.extents) close_now = true;  // unknown op here
    }
    if (close_now) break;
    if (b.silent) continue;
    if (b.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(b.delay_ms));
    std::vector<std::uint8_t> out;
    std::vector<std::size_t> order(batch.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    if (b.reverse_batches) std::reverse(order.begin(), order.end());
    for (std::size_t i : order) {
      const ClientCommand& c = batch[i];
      ClientResponse r;
      r.request_id = c.request_id;
      r.op = c.op;
      if (!tag_ok[i]) {
        r.status = ResponseStatus::kAuthFailure;
      } else if (c.op == ClientOp::kInfo) {
        r.info = "{\"rank\":" + std::to_string(rank_) + ",\"version\":\"fake\"" +
                 (b.extents ? ",\"features\":[\"extents\"]" : "") + "}";
      } else if (c.sector >= sectors_ || (IsExtentOp(c.op) && sectors_ - c.sector < c.count)) {
        r.status = ResponseStatus::kInvalidSectorIndex;
      } else if (IsExtentOp(c.op)) {
        ++extent_requests_;
        std::lock_guard<std::mutex> lock(mu_);
        for (std::uint32_t k = 0; k < c.count; ++k) {
          const bool skip = b.no_quorum || (b.not_done_every > 0 && k % b.not_done_every == 0);
          r.outcomes.push_back(skip ? ExtentOutcome::kNotDone : ExtentOutcome::kDone);
          const SectorIdx s = c.sector + k;
          if (c.op == ClientOp::kReadExtent) {
            auto it = data_.find(s);
            r.sectors.push_back(skip ? nullptr : it == data_.end() ? ZeroSector() : it->second);
          } else if (!skip) {
            data_[s] = c.op == ClientOp::kWriteExtent ? c.sectors[k] : ZeroSector();
            writes_[s]++;
          }
        }
      } else {
        std::lock_guard<std::mutex> lock(mu_);
        if (c.op == ClientOp::kWrite) {
          data_[c.sector] = c.data;
          writes_[c.sector]++;
        } else {
          auto it = data_.find(c.sector);
          r.data = it == data_.end() ? ZeroSector() : it->second;
        }
      }
      if (b.wrong_kind && r.op == ClientOp::kRead) {
        r.op = ClientOp::kWrite;
        r.data = nullptr;
      }
      Frame f = EncodeFrame(r, b.bad_tag ? bad_mac : mac);
      if (b.garbage) std::memset(f.data(), 0xff, kFrameLengthSize);
      out.insert(out.end(), f.begin(), f.end());
    }
    if (!WriteAll(fd, out.data(), out.size())) break;
  }
  ::shutdown(fd, SHUT_RDWR);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find(conn_fds_.begin(), conn_fds_.end(), fd);
  if (it != conn_fds_.end()) conn_fds_.erase(it);
  ::close(fd);
}

}  // namespace atomdisk::client
