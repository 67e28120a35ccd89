#include "daemon/net/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "common/frame_buffer.h"

namespace atomdisk {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

Connection::Connection(asio::ip::tcp::socket socket, FrameSink* sink, std::string name,
                       Options options)
    : socket_(std::move(socket)),
      sink_(sink),
      name_(std::move(name)),
      options_(options),
      write_signal_(socket_.get_executor()),
      read_signal_(socket_.get_executor()),
      watchdog_(socket_.get_executor()) {
  write_signal_.expires_at(asio::steady_timer::time_point::max());
  read_signal_.expires_at(asio::steady_timer::time_point::max());
  boost::system::error_code ec;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  last_read_ = opened_ = std::chrono::steady_clock::now();
}

void Connection::SetSilenceTimeout(std::chrono::milliseconds timeout) {
  if (options_.silence_timeout == timeout) return;
  options_.silence_timeout = timeout;
  last_read_ = std::chrono::steady_clock::now();  // the new rule counts from now
  watchdog_.cancel();                             // re-arms at the new period
}

void Connection::SetPeerSocketOptions(std::chrono::milliseconds timeout) {
  if (closed_ || peer_options_set_) return;
  peer_options_set_ = true;
  const int fd = socket_.native_handle();
  const int user_timeout_ms = static_cast<int>(timeout.count());
  const int idle_s = std::max(1, static_cast<int>(timeout.count() / 1000));
  const int interval_s = idle_s;
  const int probes = 3;
  const int on = 1;
  // Best effort: a kernel without one of these still has the heartbeat.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
  (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
}

std::int64_t Connection::ms_since_read() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               last_read_)
      .count();
}

void Connection::Start() {
  auto self = shared_from_this();
  asio::co_spawn(
      socket_.get_executor(), [self]() { return self->Reader(); }, asio::detached);
  asio::co_spawn(
      socket_.get_executor(), [self]() { return self->Writer(); }, asio::detached);
  asio::co_spawn(
      socket_.get_executor(), [self]() { return self->Watchdog(); }, asio::detached);
}

bool Connection::Send(SharedFrame frame) {
  if (closed_) return false;
  if (queue_.size() >= options_.max_queued_frames) {
    ++frames_dropped_;
    return false;
  }
  const auto now = std::chrono::steady_clock::now();
  const std::size_t bytes = frame->size();
  queued_bytes_ += bytes;
  queue_.push_back(std::move(frame));
  queued_at_.push_back(now);
  if (queue_.size() == 1) {
    write_progress_ = now;
    write_signal_.cancel();
  }
  // Last: the budget's owner may close this or another connection over it.
  if (options_.on_queued_bytes) options_.on_queued_bytes(static_cast<std::int64_t>(bytes));
  return true;
}

void Connection::OpFinished() {
  if (inflight_ > 0) --inflight_;
  if (!Saturated()) read_signal_.cancel();
}

void Connection::Close(const std::string& reason) {
  if (closed_) return;
  closed_ = true;
  close_reason_ = reason;
  if (!reason.empty() && options_.log_close) {
    std::string line = "connection " + name_ + " closed: " + reason;
    if (options_.close_log) {
      options_.close_log(line);
    } else {
      spdlog::info("{}", line);
    }
  }
  boost::system::error_code ec;
  // No TLS close_notify: frames carry their own lengths, so a cut stream cannot pass for a
  // complete one, and a peer being closed for misbehaving gets no more of our time.
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
  write_signal_.cancel();
  read_signal_.cancel();
  watchdog_.cancel();
  queue_.clear();
  queued_at_.clear();
  if (queued_bytes_ > 0 && options_.on_queued_bytes) {
    options_.on_queued_bytes(-static_cast<std::int64_t>(queued_bytes_));
  }
  queued_bytes_ = 0;
  if (on_close_) {
    auto fn = std::move(on_close_);
    on_close_ = nullptr;
    fn();
  }
}

void Connection::RefuseTls(const std::string& why) {
  if (options_.tls_refusal_log && options_.log_close) {
    options_.tls_refusal_log("connection " + name_ + " closed: " + why);
    options_.log_close = false;
  }
  Close(why);
}

awaitable<bool> Connection::SetUp() {
  boost::system::error_code ec;
  if (!options_.tls_dial) {
    std::uint8_t first = 0;
    co_await socket_.async_receive(asio::buffer(&first, 1), asio::socket_base::message_peek,
                                   asio::redirect_error(use_awaitable, ec));
    if (ec || closed_) {
      Close(ec == asio::error::eof ? "closed by peer" : (ec ? ec.message() : ""));
      co_return false;
    }
    if (first != 0x16) co_return true;  // plaintext frames: an atdd client, or an older node
  }
  tls_stream_ = std::make_unique<TlsStream>(
      socket_, *options_.tls,
      options_.tls_dial ? TlsStream::Side::kClient : TlsStream::Side::kServer);
  co_await tls_stream_->Handshake(ec);
  if (closed_) co_return false;
  if (ec) {
    // No certificate of the peer's yet, and the peer hung up: it does not speak TLS.
    tls_refused_by_peer_ = tls_stream_->PeerRefusedTls(ec);
    RefuseTls("TLS handshake failed: " + TlsErrorText(ec, tls_stream_->native_handle()));
    co_return false;
  }
  auto peer = options_.tls->PeerOf(tls_stream_->native_handle());
  if (!peer.ok()) {
    RefuseTls(peer.status().message());
    co_return false;
  }
  if (options_.tls_admit) {
    if (std::string why = options_.tls_admit(*peer); !why.empty()) {
      RefuseTls(peer->identity.ToString() + " refused: " + why);
      co_return false;
    }
  }
  tls_peer_ = std::move(peer).value();
  authenticated_ = true;  // the certificate proved a cluster identity
  co_return true;
}

awaitable<void> Connection::Reader() {
  auto self = shared_from_this();
  if (options_.tls) {
    const bool up = co_await SetUp();
    if (!up) co_return;
  }
  ready_ = true;
  write_signal_.cancel();
  if (options_.on_ready) {
    auto ready = std::move(options_.on_ready);
    options_.on_ready = nullptr;
    ready();
    if (closed_) co_return;
  }
  // Frames come out of a FrameBuffer (common/frame_buffer.h): no buffer until the first bytes
  // arrive (a stranger's connection that never sends, closed after Options::auth_timeout,
  // holds none), 64 KiB then, grown for an extent and given back when the stream goes back
  // to small frames.
  FrameBuffer frames(
      [max = options_.max_frame_body](std::span<const std::uint8_t, kFrameLengthSize> prefix) {
        return DecodeFrameLength(prefix, max);
      });
  while (!closed_) {
    bool parsed_any = false;
    while (!closed_ && !Saturated()) {
      auto frame = frames.Next();
      if (!frame.ok()) {
        Close(frame.status().message());
        co_return;
      }
      if (!frame->has_value()) break;
      sink_->OnFrame(*this, **frame);
      parsed_any = true;
    }
    if (closed_) co_return;
    // The frame deadline runs from the last completed frame while bytes of an incomplete one
    // sit in the buffer (a slow-loris peer); a busy stream keeps resetting it.
    if (frames.buffered() == 0) {
      in_frame_ = false;
    } else if (!in_frame_ || parsed_any) {
      in_frame_ = true;
      frame_started_ = std::chrono::steady_clock::now();
    }
    if (Saturated()) {
      in_frame_ = false;  // we are the ones not reading
      reading_paused_ = true;
      while (Saturated() && !closed_) {
        boost::system::error_code ec;
        read_signal_.expires_at(asio::steady_timer::time_point::max());
        co_await read_signal_.async_wait(asio::redirect_error(use_awaitable, ec));
      }
      reading_paused_ = false;
      last_read_ = std::chrono::steady_clock::now();
      continue;  // frames already buffered are parsed before anything more is read
    }
    if (closed_) co_return;
    boost::system::error_code ec;
    // (A TLS stream may hold decrypted bytes the socket no longer shows: it reads at once.)
    if (frames.capacity() == 0 && !tls_stream_) {
      co_await socket_.async_wait(asio::ip::tcp::socket::wait_read,
                                  asio::redirect_error(use_awaitable, ec));
      if (ec || closed_) {
        Close(ec ? ec.message() : "");
        co_return;
      }
    }
    std::span<std::uint8_t> room = frames.Room();
    std::size_t n = tls_stream_
                        ? co_await tls_stream_->ReadSome(room, ec)
                        : co_await socket_.async_read_some(asio::buffer(room.data(), room.size()),
                                                           asio::redirect_error(use_awaitable, ec));
    if (ec) {
      // A TLS peer that closes without a close_notify has closed all the same (ours don't
      // send one either: Close).
      Close(ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ? "closed by peer"
                                                                               : ec.message());
      co_return;
    }
    last_read_ = std::chrono::steady_clock::now();
    frames.Filled(n);
  }
}

awaitable<void> Connection::Writer() {
  auto self = shared_from_this();
  std::vector<asio::const_buffer> buffers;
  while (!closed_) {
    if (queue_.empty() || !ready_) {
      boost::system::error_code ec;
      write_signal_.expires_at(asio::steady_timer::time_point::max());
      co_await write_signal_.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    // Gather everything queued (up to a bound) into one write: one syscall for many frames.
    buffers.clear();
    std::size_t n = std::min<std::size_t>(queue_.size(), 256);
    if (tls_stream_) {
      // Encrypted before it is sent: at most about 1 MiB at a time, so the ciphertext held
      // at once stays small next to the queue it comes from.
      std::size_t bytes = 0, taken = 0;
      while (taken < n && (taken == 0 || bytes + queue_[taken]->size() <= (1u << 20))) {
        bytes += queue_[taken++]->size();
      }
      n = taken;
    }
    for (std::size_t i = 0; i < n; ++i) buffers.push_back(asio::buffer(*queue_[i]));
    boost::system::error_code ec;
    if (tls_stream_) {
      co_await tls_stream_->Write(buffers, ec);
    } else {
      co_await asio::async_write(socket_, buffers, asio::redirect_error(use_awaitable, ec));
    }
    if (ec || closed_) {
      Close(ec ? ec.message() : "");
      co_return;
    }
    std::size_t written = 0;
    for (std::size_t i = 0; i < n; ++i) written += queue_[i]->size();
    queued_bytes_ -= written;
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
    queued_at_.erase(queued_at_.begin(), queued_at_.begin() + static_cast<std::ptrdiff_t>(n));
    if (options_.on_queued_bytes) options_.on_queued_bytes(-static_cast<std::int64_t>(written));
    write_progress_ = std::chrono::steady_clock::now();
    if (!Saturated()) read_signal_.cancel();
  }
}

awaitable<void> Connection::Watchdog() {
  auto self = shared_from_this();
  // A peer that starts a frame and never finishes it (or stops reading our replies while
  // its queue is full) must not hold the connection forever.
  // A peer link with a silence timeout is checked at a tenth of it, so that a silent link
  // closes at most 10% late.
  while (!closed_) {
    boost::system::error_code ec;
    std::chrono::milliseconds period = options_.frame_deadline / 3;
    if (options_.silence_timeout.count() > 0) {
      period =
          std::min(period, std::max(options_.silence_timeout / 10, std::chrono::milliseconds(10)));
    }
    if (!authenticated_ && options_.auth_timeout.count() > 0) {
      period =
          std::min(period, std::max(options_.auth_timeout / 10, std::chrono::milliseconds(10)));
    }
    if (options_.response_deadline.count() > 0) {
      period = std::min(period,
                        std::max(options_.response_deadline / 10, std::chrono::milliseconds(10)));
    }
    if (!ready_ && options_.handshake_timeout.count() > 0) {
      period = std::min(period,
                        std::max(options_.handshake_timeout / 10, std::chrono::milliseconds(10)));
    }
    watchdog_.expires_after(period);
    co_await watchdog_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (closed_) co_return;
    auto now = std::chrono::steady_clock::now();
    if (options_.silence_timeout.count() > 0 && !reading_paused_ &&
        now - last_read_ > options_.silence_timeout) {
      const auto silent_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(now - last_read_).count();
      Close("silent for " + std::to_string(silent_ms) + " ms");
      co_return;
    }
    if (!ready_ && options_.handshake_timeout.count() > 0 &&
        now - opened_ > options_.handshake_timeout) {
      Close("TLS handshake not done within " + std::to_string(options_.handshake_timeout.count()) +
            " ms");
      co_return;
    }
    if (!authenticated_ && options_.auth_timeout.count() > 0 &&
        now - opened_ > options_.auth_timeout) {
      Close("no frame with a valid tag within " + std::to_string(options_.auth_timeout.count()) +
            " ms");
      co_return;
    }
    if (in_frame_ && now - frame_started_ > options_.frame_deadline) {
      Close("incomplete frame for " + std::to_string(options_.frame_deadline.count()) + " s");
      co_return;
    }
    if (options_.response_deadline.count() > 0 && !queued_at_.empty() &&
        now - queued_at_.front() > options_.response_deadline) {
      const auto waited_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(now - queued_at_.front()).count();
      Close("a response waited " + std::to_string(waited_ms) + " ms for the peer to read it (" +
            std::to_string(queued_bytes_) + " bytes queued)");
      co_return;
    }
    if (!queue_.empty() && now - write_progress_ > options_.frame_deadline) {
      Close("peer has not read our frames for " + std::to_string(options_.frame_deadline.count()) +
            " s");
      co_return;
    }
  }
}

}  // namespace atomdisk
