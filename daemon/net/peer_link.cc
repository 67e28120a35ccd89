#include "daemon/net/peer_link.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/sync_wire.h"

namespace atomdisk {

namespace asio = boost::asio;
using asio::ip::tcp;

std::int64_t SteadyMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

PeerLink::PeerLink(asio::io_context& io, Rank rank, std::string host, std::uint16_t port,
                   FrameSink* sink, std::int64_t timeout_ms)
    : io_(io),
      rank_(rank),
      host_(std::move(host)),
      port_(port),
      sink_(sink),
      timeout_ms_(timeout_ms),
      liveness_("peer " + std::to_string(rank) + " (" + host_ + ":" + std::to_string(port) + ")",
                timeout_ms),
      wake_(io) {}

void PeerLink::Start() { asio::co_spawn(io_, Run(), asio::detached); }

void PeerLink::Stop() {
  stopped_ = true;
  wake_.cancel();
  if (conn_) conn_->Close("");
}

bool PeerLink::Send(SharedFrame frame) {
  const std::size_t bytes = frame ? frame->size() : 0;
  if (!conn_ || conn_->closed() || !conn_->Send(std::move(frame))) {
    ++dropped_;
    dropped_bytes_ += bytes;
    return false;
  }
  return true;
}

std::chrono::milliseconds PeerLink::SilenceTimeout() const {
  // Only a peer that answers Pings keeps our link busy; an older one sends nothing here.
  return liveness_.peer_answers_pings() ? std::chrono::milliseconds(timeout_ms_)
                                        : std::chrono::milliseconds(0);
}

void PeerLink::SetPeerFeatures(std::uint8_t features) {
  liveness_.SetPeerAnswersPings((features & kFeatureLiveness) != 0);
  if (!conn_ || conn_->closed()) return;
  conn_->SetSilenceTimeout(SilenceTimeout());
  // An older peer never answers our Pings: its link is up as it is, once set up.
  if (!confirmed_ && !liveness_.peer_answers_pings() && conn_->ready()) Confirm();
}

void PeerLink::MaybePing(std::int64_t now_us,
                         const std::function<SharedFrame(std::uint64_t)>& make_ping) {
  if (!conn_ || conn_->closed()) return;
  auto id = liveness_.PingDue(now_us);
  if (id) conn_->Send(make_ping(*id));  // a full queue drops it: the link is busy anyway
}

std::optional<std::int64_t> PeerLink::OnPong(std::uint64_t id, std::int64_t now_us) {
  auto rtt = liveness_.OnPong(id, now_us);
  if (rtt && !confirmed_ && conn_ && !conn_->closed()) Confirm();
  return rtt;
}

void PeerLink::Confirm() {
  confirmed_ = true;
  if (auto line = liveness_.OnConnected(SteadyMicros())) spdlog::info("{}", *line);
  if (on_connected_) on_connected_();
}

void PeerLink::OnConnectionClosed() {
  // Recorded here, as the connection closes, and not when Run wakes up: a status read in
  // between would otherwise show the link down with no reason and no loss counted.
  wake_.cancel();
  if (stopped_ || !conn_) return;
  const std::string reason = conn_->close_reason();
  if (confirmed_) {
    confirmed_ = false;
    if (auto line = liveness_.OnLost(SteadyMicros(), reason)) spdlog::warn("{}", *line);
  } else {
    // Connected but never answered: a hung peer, or an older binary that closed the link
    // on our Ping. Forget the feature until its next HelloReply says it again.
    if (reason == "closed by peer") liveness_.SetPeerAnswersPings(false);
    if (auto line = liveness_.OnDialFailed(reason)) spdlog::warn("{}", *line);
  }
}

asio::awaitable<void> PeerLink::Run() {
  const std::chrono::milliseconds kInitialBackoff(50);
  const std::chrono::milliseconds max_backoff(std::clamp<std::int64_t>(timeout_ms_ / 10, 50, 250));
  const std::chrono::milliseconds dial_deadline(std::max<std::int64_t>(timeout_ms_ / 4, 50));
  backoff_ = kInitialBackoff;
  tcp::resolver resolver(io_);
  while (!stopped_) {
    boost::system::error_code ec;
    auto endpoints = co_await resolver.async_resolve(host_, std::to_string(port_),
                                                     asio::redirect_error(asio::use_awaitable, ec));
    tcp::socket socket(io_);
    bool timed_out = false;
    if (!ec) {
      // Connect with a deadline: a timer closes the socket if the connect hangs (SYNs that
      // vanish in a partition); a fresh dial after the back-off gets through once healed.
      asio::steady_timer deadline(io_);
      deadline.expires_after(dial_deadline);
      deadline.async_wait([&socket, &timed_out](boost::system::error_code e) {
        if (!e) {
          timed_out = true;
          boost::system::error_code ignored;
          socket.close(ignored);
        }
      });
      co_await asio::async_connect(socket, endpoints,
                                   asio::redirect_error(asio::use_awaitable, ec));
      deadline.cancel();
    }
    if (stopped_) co_return;
    if (!ec && socket.is_open()) {
      ++connects_;
      Connection::Options options;
      options.max_queued_frames = 4096;
      options.max_frame_body = kMaxPeerFrameBody;  // peers answer with node messages only
      options.silence_timeout = SilenceTimeout();
      options.log_close = false;  // liveness_ logs the loss, rate-limited
      const bool use_tls = tls_ && !next_in_clear_;
      next_in_clear_ = false;
      const std::uint64_t generation = ++generation_;
      // Up once set up (for a TLS link: handshake done, the peer's certificate says our
      // peer's rank), not at the TCP connect: a hung peer's kernel still completes that.
      options.on_ready = [this, generation, kInitialBackoff] {
        if (generation != generation_ || stopped_) return;
        backoff_ = kInitialBackoff;
        // A peer known to answer Pings is up once it answered one here (OnPong).
        if (!confirmed_ && !liveness_.peer_answers_pings()) Confirm();
      };
      if (use_tls) {
        options.tls = tls_;
        options.tls_dial = true;
        options.handshake_timeout = std::max(
            dial_deadline, std::chrono::milliseconds(std::max<std::int64_t>(timeout_ms_, 1000)));
        options.tls_admit = [rank = rank_](const TlsPeer& peer) -> std::string {
          if (peer.identity.role == TlsIdentity::Role::kNode && peer.identity.rank == rank) {
            return "";
          }
          return "we dialled node " + std::to_string(rank);
        };
      }
      conn_ = std::make_shared<Connection>(std::move(socket), sink_,
                                           "peer " + std::to_string(rank_), options);
      conn_->SetPeerSocketOptions(std::chrono::milliseconds(timeout_ms_));
      conn_->SetOnClose([this] { OnConnectionClosed(); });
      confirmed_ = false;
      conn_->Start();
      liveness_.OnOpened(SteadyMicros());
      // Sleep until the connection closes.
      while (!stopped_ && conn_ && !conn_->closed()) {
        wake_.expires_at(asio::steady_timer::time_point::max());
        co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      if (stopped_) co_return;
      if (use_tls && plaintext_fallback_ && conn_ && conn_->tls_refused_by_peer()) {
        next_in_clear_ = true;  // tls = "accept": perhaps a peer without TLS yet
      }
      // Redial at once: the first back-off step is short, and a closed link is the common
      // case of a peer restart.
    } else {
      std::string why =
          timed_out ? "dial timed out after " + std::to_string(dial_deadline.count()) + " ms"
                    : (ec ? ec.message() : "connect failed");
      if (auto line = liveness_.OnDialFailed(why)) spdlog::warn("{}", *line);
    }
    wake_.expires_after(backoff_);
    co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    backoff_ = std::min(backoff_ * 2, max_backoff);
  }
}

}  // namespace atomdisk
