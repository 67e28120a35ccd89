// PeerLiveness: what one outgoing peer link knows about its peer's liveness, as a plain
// state machine with the clock passed in (microseconds of a monotonic clock), so that its
// rules are tested without sockets (tests/daemon/peer_liveness_test.cc).
//
// It decides when a heartbeat Ping is due (every timeout / 4 while connected, only to a
// peer whose HelloReply advertised kFeatureLiveness), matches Pongs to measure the round
// trip, remembers when the peer was last heard, counts the links lost, and words the log
// lines for a peer lost and back, at most one pair per kLogQuietUs: a link that flaps
// faster is logged once and the next line says how many changes went unlogged.
//
// Owned by its PeerLink; io thread only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace atomdisk {

class PeerLiveness {
 public:
  // Lost/back lines closer together than this are counted, not logged.
  static constexpr std::int64_t kLogQuietUs = 10'000'000;

  // `name` names the peer in log lines ("peer 2 (10.0.0.2:7001)").
  PeerLiveness(std::string name, std::int64_t timeout_ms);

  std::int64_t timeout_ms() const { return timeout_ms_; }
  // Heartbeats go this often on an open link to a peer with the feature.
  std::int64_t ping_interval_us() const { return timeout_ms_ * 1000 / 4; }

  // The peer's HelloReply features said it answers Pings (or stopped saying so; PeerLink
  // also forgets it when a link closes before its first Pong: an older binary closes a
  // connection on a sync kind it does not know).
  void SetPeerAnswersPings(bool yes) { answers_pings_ = yes; }
  bool peer_answers_pings() const { return answers_pings_; }

  // A connection is open (its handshake done), not yet known to be up: Pings may go.
  void OnOpened(std::int64_t now_us);
  // The link is up (for a peer that answers Pings: its first Pong came); returns the line
  // to log, if any.
  std::optional<std::string> OnConnected(std::int64_t now_us);
  // The link (up before) closed for `reason`; returns the line to log, if any.
  std::optional<std::string> OnLost(std::int64_t now_us, const std::string& reason);
  // A dial failed (refused, timed out, or connected but never answered a Ping); logged once
  // per outage, and only if the link was never up (a lost link already said so).
  std::optional<std::string> OnDialFailed(const std::string& reason);

  // Something authenticated arrived from the peer (on any connection).
  void OnHeard(std::int64_t now_us) { heard_us_ = now_us; }
  // The id of a Ping to send now, if one is due on an open link.
  std::optional<std::uint64_t> PingDue(std::int64_t now_us);
  // A Pong for `id`; the round trip in microseconds if it answers the latest Ping.
  std::optional<std::int64_t> OnPong(std::uint64_t id, std::int64_t now_us);

  bool connected() const { return connected_; }
  // Microseconds since the peer was last heard; nullopt if never.
  std::optional<std::int64_t> heard_ago_us(std::int64_t now_us) const;
  // The last measured round trip; nullopt before the first Pong.
  std::optional<std::int64_t> rtt_us() const { return rtt_us_; }
  // Links lost since start (each one a reconnect, once it succeeds).
  std::uint64_t losses() const { return losses_; }
  // Why the link went down last ("silent for 1012 ms", "closed by peer", "Connection
  // refused"); empty while it has never been down.
  const std::string& last_loss() const { return last_loss_; }

 private:
  // Whether a lost/back line may be logged now (updates the quiet-period bookkeeping).
  bool MayLog(std::int64_t now_us);

  std::string name_;
  std::int64_t timeout_ms_;
  bool answers_pings_ = false;
  bool connected_ = false;
  bool open_ = false;  // a connection is open (up or not yet)
  bool ever_connected_ = false;
  bool dial_failure_logged_ = false;
  bool loss_logged_ = false;  // the current outage's "lost" line went out
  std::int64_t lost_at_us_ = 0;
  std::int64_t last_log_us_ = 0;
  bool logged_once_ = false;
  std::uint64_t unlogged_ = 0;
  std::optional<std::int64_t> heard_us_;
  std::int64_t next_ping_us_ = 0;
  std::uint64_t next_ping_id_ = 1;
  std::uint64_t pending_ping_id_ = 0;  // 0: none outstanding
  std::int64_t pending_ping_sent_us_ = 0;
  std::optional<std::int64_t> rtt_us_;
  std::uint64_t losses_ = 0;
  std::string last_loss_;
};

}  // namespace atomdisk
