// PeerLink: our outgoing connection to one peer node, kept alive and reconnected
// automatically.
//
// System messages to the peer are queued on the current Connection; while disconnected they
// are dropped (the register retransmits until answered, so a dead peer costs no memory
// beyond one bounded queue). Frames the peer sends back on this connection go to the same
// FrameSink as any other.
//
// Liveness (docs/PROTOCOL.md, "Peer liveness"): once the peer's HelloReply advertised
// kFeatureLiveness, the owner's MaybePing sends a Ping every timeout / 4 and the link closes
// when nothing arrived on it for `timeout_ms`; a new connection counts as up only once its
// first Pong arrived (an older peer sends nothing on our link, so
// there only TCP_USER_TIMEOUT and keepalive, set on every link, end a dead connection). A
// closed or failed link is redialled with a dial deadline of timeout / 4 and a back-off from
// 50 ms to min(250 ms, timeout / 10), so that a healed partition is noticed within about a
// third of the timeout. PeerLiveness words the lost/back log lines and keeps what
// status shows.
//
// Threading: io thread only.
#pragma once

#include <boost/asio.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/types.h"
#include "daemon/net/connection.h"
#include "daemon/net/peer_liveness.h"

namespace atomdisk {

class PeerLink {
 public:
  PeerLink(boost::asio::io_context& io, Rank rank, std::string host, std::uint16_t port,
           FrameSink* sink, std::int64_t timeout_ms);
  // Dial with TLS from now on (before Start). With `plaintext_fallback` (tls = "accept"), a
  // peer that hangs up on our ClientHello before showing a certificate (an older binary drops
  // it as a bad frame length) is dialled in clear next, and with TLS again after that
  // connection ends. Certificate failures and timeouts never fall back.
  void SetTls(std::shared_ptr<TlsContext> tls, bool plaintext_fallback) {
    tls_ = std::move(tls);
    plaintext_fallback_ = plaintext_fallback;
  }
  void Start();
  void Stop();
  // False if not connected or the queue is full (the frame is dropped).
  bool Send(SharedFrame frame);
  // Up: connected, and for a peer that answers Pings, one answered on this connection (a
  // hung peer process still completes TCP handshakes from its listen backlog).
  bool connected() const { return conn_ && !conn_->closed() && confirmed_; }
  Rank rank() const { return rank_; }
  // Whether the current connection is TLS (its frames carry zero tags: docs/TLS.md).
  bool tls() const { return conn_ && !conn_->closed() && conn_->tls_peer() != nullptr; }
  std::uint64_t dropped() const { return dropped_; }
  std::uint64_t dropped_bytes() const { return dropped_bytes_; }
  std::uint64_t connects() const { return connects_; }  // connections made (for metrics)

  // Called each time the link comes up (see connected()).
  void SetOnConnected(std::function<void()> fn) { on_connected_ = std::move(fn); }
  // The peer's latest HelloReply features (kFeature* bits).
  void SetPeerFeatures(std::uint8_t features);
  // Sends a Ping (built by `make_ping` from its id) if one is due; call every tick.
  void MaybePing(std::int64_t now_us, const std::function<SharedFrame(std::uint64_t)>& make_ping);
  // A Pong for `id` arrived; the round trip in microseconds if it answers our latest Ping.
  std::optional<std::int64_t> OnPong(std::uint64_t id, std::int64_t now_us);
  // Something authenticated arrived from the peer, on any connection.
  void NoteHeard(std::int64_t now_us) { liveness_.OnHeard(now_us); }
  const PeerLiveness& liveness() const { return liveness_; }

 private:
  boost::asio::awaitable<void> Run();
  std::chrono::milliseconds SilenceTimeout() const;
  // The current connection is up: logs it and tells the owner.
  void Confirm();
  // The current connection closed: counts and logs the loss, and wakes Run to redial.
  void OnConnectionClosed();

  boost::asio::io_context& io_;
  Rank rank_;
  std::string host_;
  std::uint16_t port_;
  FrameSink* sink_;
  std::int64_t timeout_ms_;
  PeerLiveness liveness_;
  std::shared_ptr<Connection> conn_;
  std::shared_ptr<TlsContext> tls_;
  bool plaintext_fallback_ = false;
  bool next_in_clear_ = false;            // the last TLS dial failed its handshake (fallback only)
  bool confirmed_ = false;                // conn_ is up (see connected())
  std::uint64_t generation_ = 0;          // of conn_, so a late callback of an older one is ignored
  std::chrono::milliseconds backoff_{0};  // the next redial's; reset once a link is set up
  boost::asio::steady_timer wake_;
  bool stopped_ = false;
  std::uint64_t dropped_ = 0;
  std::uint64_t dropped_bytes_ = 0;
  std::uint64_t connects_ = 0;
  std::function<void()> on_connected_;
};

// Microseconds of the steady clock, the time base of PeerLiveness in the daemon.
std::int64_t SteadyMicros();

}  // namespace atomdisk
